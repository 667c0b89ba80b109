"""Power cuts at every write: the pool always imports clean with the last committed state."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fusezfs import crashsim

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


def test_a_cut_mid_workload_loses_only_the_uncommitted_txg():
    total = crashsim.count_writes("file", SEED, STEPS)
    outcome = crashsim.run_cut("file", SEED, STEPS, total // 2, "drop")
    assert outcome.clean, outcome.detail


def test_crashtest_tool_prints_its_summary():
    tool = os.path.join(os.path.dirname(__file__), "..", "tools", "crashtest")
    out = subprocess.run([sys.executable, tool, "--kinds", "file", "--modes", "drop",
                          "--steps", "3", "--stride", "7"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    last = out.stdout.strip().splitlines()[-1]
    n, clean = int(last.split()[0]), int(last.split()[2])
    assert last == f"{n} cuts, {n} clean, 0 damaged" and clean == n > 0


@pytest.mark.parametrize("seed", [1, 2])
def test_dataset_operations_survive_cuts_at_every_write(seed):
    """Files in several filesystems, snapshots, clones, snapshot destroys and rollbacks: after
    a cut at any write the pool imports with exactly the files and datasets of the txg it
    finds, the space accounting of every dataset recounts right, and the pool goes on."""
    summary = crashsim.run(["file"], ["drop", "reorder"], seed, 24, 1, load="datasets")
    assert summary.cuts > 100
    assert not summary.damaged, summary.damaged[:3]


def test_pipelined_commits_survive_cuts_at_every_write():
    """The FUSE daemon's pipelined commits: a writer filling the budget starts the next txg
    while the commit thread flushes and writes the uberblock. A cut at any write, on either
    thread, still imports as exactly one committed txg, with correct space accounting."""
    summary = crashsim.run(["file", "mirror"], ["keep", "drop", "reorder"], 3, 16, 2,
                           load="pipelined")
    assert summary.cuts > 100
    assert not summary.damaged, summary.damaged[:3]
