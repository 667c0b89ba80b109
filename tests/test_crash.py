"""Power cuts at every write: the pool always imports as exactly its last durable txg (or the one
in flight), holding what an oracle kept outside fusezfs says that txg holds.

The checks themselves are tested too: a planted lost commit (import of an older uberblock) and a
torn write must be seen, or the sweeps could pass while proving nothing."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fusezfs.testing import crashsim
from fusezfs.engine.devices import SECTOR, FaultyDevice, MemoryDevice, Power, PowerCut
from fusezfs.engine.pool import Pool

SEED, STEPS = 3, 15


@pytest.mark.parametrize("kind", ["file", "mirror", "stripe"])
def test_cut_at_every_write_keeping_unflushed_writes(kind):
    summary = crashsim.run([kind], ["keep"], SEED, STEPS)
    assert summary.cuts > 60
    assert not summary.damaged, summary.damaged[:3]


@pytest.mark.parametrize("mode", ["drop", "reorder"])
def test_cut_at_every_write_losing_or_reordering_unflushed_writes(mode):
    summary = crashsim.run(["file", "mirror"], [mode], SEED + 1, STEPS)
    assert not summary.damaged, summary.damaged[:3]


def test_a_cut_mid_workload_imports_the_last_durable_txg():
    """The oracle of durability sees which txg was durable at the cut; the recovered pool is
    that txg (or the one in flight), with exactly the content the workload's model gave it."""
    total = crashsim.count_writes("file", SEED, STEPS)
    outcomes = [crashsim.run_cut("file", SEED, STEPS, cut, "drop") for cut in (total // 3, total // 2)]
    assert all(o.clean for o in outcomes), [o.detail for o in outcomes]


def _older_uberblock(monkeypatch) -> None:
    """Plant the fault the checks exist for: import loads the second-newest uberblock."""
    original = Pool._load

    def load_older(self, ub):
        older = [u for leaf in self.leaves() for u in leaf.read_uberblocks()
                 if u.pool_guid == self.guid and u.txg < ub.txg]
        return original(self, max(older, key=lambda u: u.txg) if older else ub)
    monkeypatch.setattr(Pool, "_load", load_older)


@pytest.mark.parametrize("load", ["objects", "datasets"])
def test_a_lost_commit_is_damage(monkeypatch, load):
    """With import going one txg back, cuts report the lost commit instead of passing clean."""
    _older_uberblock(monkeypatch)
    total = crashsim.count_writes("file", SEED, 8, load)
    outcome = crashsim.run_cut("file", SEED, 8, total, "keep", load)
    assert not outcome.clean and "lost commit" in outcome.detail, outcome


def test_the_write_that_meets_the_cut_is_torn():
    """The write the power fails in lands as a prefix of whole sectors (never all of it), and
    sweeping the cut over a run of equal writes tears at several lengths, none included."""
    seen = set()
    for cut in range(12):
        power = Power()
        dev = FaultyDevice(MemoryDevice(1 << 20), power)
        dev.write(0, b"\1" * 4096)
        dev.flush()
        power.cut_after(cut)
        with pytest.raises(PowerCut):
            for i in range(1, 100):
                dev.write(i * 4096, bytes([i % 250 + 2]) * (8 * SECTOR))
        image = dev.crash_image("keep")
        torn = image.read((cut + 1) * 4096, 8 * SECTOR)
        landed = len(torn) - len(torn.lstrip(torn[:1])) if torn[:1] != b"\0" else 0
        assert landed % SECTOR == 0 and landed < 8 * SECTOR, (cut, landed)
        assert torn[landed:] == bytes(8 * SECTOR - landed)
        assert image.read((cut + 2) * 4096, 8 * SECTOR) == bytes(8 * SECTOR)
        seen.add(landed)
    assert 0 in seen and len(seen) >= 3, seen
    untorn = Power(tear=False)
    dev = FaultyDevice(MemoryDevice(1 << 20), untorn)
    untorn.cut_after(0)
    with pytest.raises(PowerCut):
        dev.write(0, b"\1" * 4096)
    assert dev.crash_image("keep").read(0, 4096) == bytes(4096)


def test_crashtest_tool_prints_its_summary():
    tool = os.path.join(os.path.dirname(__file__), "..", "tools", "crashtest")
    out = subprocess.run([sys.executable, tool, "--workloads", "objects,datasets",
                          "--kinds", "file", "--modes", "drop", "--steps", "3"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.strip().splitlines()
    assert [ln.split()[0] for ln in lines[:-1]] == ["workload=objects", "workload=datasets"]
    assert all("stride=1" in ln and ln.endswith("0 damaged") for ln in lines[:-1]), lines
    n = int(lines[-1].split()[0])
    assert lines[-1] == f"{n} cuts, {n} clean, 0 damaged" and n > 20


@pytest.mark.parametrize("seed", [1, 2])
def test_dataset_operations_survive_cuts_at_every_write(seed):
    """Files in several filesystems, snapshots, clones, snapshot destroys and rollbacks: after
    a cut at any write the pool imports with exactly the files and datasets the model says the
    txg it finds holds, the space accounting of every dataset recounts right, and the pool goes
    on."""
    summary = crashsim.run(["file"], ["drop", "reorder"], seed, 24, load="datasets")
    assert summary.cuts > 100
    assert not summary.damaged, summary.damaged[:3]


def test_pipelined_commits_survive_cuts_at_every_write():
    """The FUSE daemon's pipelined commits: a writer filling the budget starts the next txg
    while the commit thread flushes and writes the uberblock. A cut at any write, on either
    thread, still imports as exactly the durable or in-flight txg, with correct space
    accounting."""
    summary = crashsim.run(["file", "mirror"], ["keep", "drop", "reorder"], 3, 16,
                           load="pipelined")
    assert summary.cuts > 100
    assert not summary.damaged, summary.damaged[:3]


def test_a_scrub_in_progress_survives_cuts_at_every_write():
    """A scrub going on while files, snapshots and clones change: its progress commits with the
    txgs; after a cut at any write the pool is what the model says, and the interrupted scrub
    resumes and finishes with nothing to repair."""
    summary = crashsim.run(["file", "mirror"], ["drop", "reorder"], 5, 12, load="scrubbing")
    assert summary.cuts > 100
    assert not summary.damaged, summary.damaged[:3]


def test_attach_and_resilver_survive_cuts_at_every_write():
    """A second device attached a third of the way into the datasets workload and resilvered
    one object tree per sync: after a cut at any write the pool is what the model says, a
    resilver the new side still needs resumes (even when the cut fell between the labels
    naming the side and the MOS recording its resilver), and then a scrub repairs nothing."""
    summary = crashsim.run(["file"], ["keep", "drop", "reorder"], 2, 12, load="resilver")
    assert summary.cuts > 150
    assert not summary.damaged, summary.damaged[:3]


@pytest.mark.parametrize("kind", ["file", "mirror", "stripe"])
def test_nothing_an_fsync_returned_for_is_lost(kind):
    """The intent log: random writes, truncates, creates, renames and removes in filesystems
    with sync=standard (logbias latency and throughput), always and disabled, fsync'ed one
    file at a time. After a cut at any write (unflushed writes kept, lost or reordered) the
    pool imports its durable txg, the log's whole commits are replayed, and every filesystem
    holds names of one instant since its last promise and every file what it held at some
    instant since its own: nothing an fsync returned for is lost (crashsim_fsync.py)."""
    summary = crashsim.run([kind], ["keep", "drop", "reorder"], 2, 60, load="fsync")
    assert summary.cuts > 250
    assert not summary.damaged, summary.damaged[:3]


def test_the_fsync_oracle_sees_a_lost_fsync():
    """The oracle itself: a log whose commits are not flushed loses what fsync returned for,
    and the sweep must say so."""
    from fusezfs.engine import zil
    from fusezfs.engine.devices import FaultyDevice

    original = zil.IntentLog.commit

    def unflushed(self, records):
        flush = FaultyDevice.flush
        FaultyDevice.flush = lambda dev: None
        try:
            return original(self, records)
        finally:
            FaultyDevice.flush = flush
    zil.IntentLog.commit = unflushed
    try:
        summary = crashsim.run(["file"], ["drop"], 1, 30, load="fsync")
    finally:
        zil.IntentLog.commit = original
    assert summary.damaged and all("differs from the oracle" in o.detail
                                   for o in summary.damaged), summary.damaged[:3]
