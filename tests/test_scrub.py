"""`zpool scrub` driven as a user would: every copy of every block is read (each DVA, each mirror
side), bad copies are rewritten from good ones and counted on their device, `zpool status`
says so in OpenZFS's words, a second scrub finds nothing, and an interrupted scrub resumes
where it was after export and import."""
from __future__ import annotations

import re

import pytest

from clitools import pool_files, random_files, run
from fusezfs.engine import scrub
from fusezfs.cli.cli_pool import open_pool
from fusezfs.dsl.datasets import Datasets

FINISHED = re.compile(r"  scan: scrub repaired (\S+) in (\d\d:\d\d:\d\d) with (\d+) errors on "
                      r"\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}")


@pytest.fixture
def env(tmp_path, monkeypatch):
    return tmp_path, pool_files(tmp_path, monkeypatch, 2)


def fill(tmp, capsys, dataset: str, n: int, seed: int) -> dict[str, bytes]:
    return random_files(tmp, capsys, dataset, n, seed)


def all_blocks(name: str) -> list:
    """Every block pointer the pool reaches (data, nodes, space map), deduplicated."""
    pool = open_pool(name)
    try:
        seen, out = set(), [pool.spacemap_bp]
        for tree in [pool.mos] + [pool.objset(n, create=False) for n in pool.objset_names()]:
            for kind, bp in tree.walk(seen):
                if kind in ("node", "block"):
                    out.append(bp)
        return out
    finally:
        pool.close()


def damage(path: str, bps: list, pick) -> int:
    """Overwrite the copies `pick(bp)` names (indexes into bp.dvas) with garbage; how many."""
    n = 0
    with open(path, "r+b") as f:
        for bp in bps:
            for i in pick(bp):
                f.seek(bp.dvas[i].offset)
                f.write(b"\xa5" * min(bp.psize, 512))
                n += 1
    return n


def status_row(out: str, path: str) -> list[str]:
    return next(line for line in out.splitlines() if path in line).split()[1:]


def test_scrub_repairs_a_mirrors_second_side_and_second_copies(env, capsys):
    """Damage only the mirror's second side, which reads never reach while the first side is
    good: the scrub finds and repairs every damaged copy, counts them on that device, and a
    second scrub is clean."""
    tmp, disks = env
    assert run(capsys, "pool", "create", "tank", "mirror", *disks)[0] == 0
    files = fill(tmp, capsys, "tank", 6, 1)
    bps = all_blocks("tank")
    damaged = damage(disks[1], bps, lambda bp: range(len(bp.dvas)))
    assert run(capsys, "pool", "status", "-x")[1] == "all pools are healthy\n"   # unseen so far
    code, out, err = run(capsys, "pool", "scrub", "tank")
    assert (code, out, err) == (0, "", "")
    code, out, _ = run(capsys, "pool", "status", "tank")
    m = FINISHED.search(out)
    assert m and m.group(3) == "0", out
    assert m.group(1) != "0B"
    assert status_row(out, disks[0]) == ["ONLINE", "0", "0", "0"]
    assert status_row(out, disks[1]) == ["ONLINE", "0", "0", str(damaged)]
    assert "errors: No known data errors" in out
    assert run(capsys, "pool", "clear", "tank")[0] == 0
    assert run(capsys, "pool", "scrub", "tank")[0] == 0
    code, out, _ = run(capsys, "pool", "status", "tank")
    m = FINISHED.search(out)
    assert m and m.group(1) == "0B" and m.group(3) == "0", out
    assert status_row(out, disks[1]) == ["ONLINE", "0", "0", "0"]
    for path, data in files.items():
        out_file = tmp / "back"
        assert run(capsys, "cp", f"tank:{path}", str(out_file))[0] == 0
        assert out_file.read_bytes() == data


def test_scrub_repairs_second_copies_and_reports_lost_blocks(env, capsys):
    """On one device: the second DVA of every block with two (metadata, copies=2 data) is
    damaged and repaired; a copies=1 block damaged is lost, reported as an error."""
    tmp, disks = env
    assert run(capsys, "pool", "create", "tank", disks[0])[0] == 0
    assert run(capsys, "create", "-o", "copies=2", "tank/two")[0] == 0
    fill(tmp, capsys, "tank/two", 3, 2)
    one = fill(tmp, capsys, "tank", 1, 3)
    bps = all_blocks("tank")
    seconds = damage(disks[0], bps, lambda bp: [1] if len(bp.dvas) > 1 else [])
    assert seconds > 5
    pool = open_pool("tank")
    single = [bp for bp in bps if len(bp.dvas) == 1 and bp.psize > 500 and
              bp.identity() not in {b.identity() for b in [pool.spacemap_bp]}]
    pool.close()
    victim = max(single, key=lambda bp: bp.psize)          # a data block of tank's one file
    damage(disks[0], [victim], lambda bp: [0])
    assert run(capsys, "pool", "scrub", "tank")[0] == 0
    code, out, _ = run(capsys, "pool", "status", "-v", "tank")
    m = FINISHED.search(out)
    assert m and m.group(3) == "1", out
    assert status_row(out, disks[0])[:3] == ["ONLINE", "0", "0"]
    assert int(status_row(out, disks[0])[3]) == seconds + 1
    assert "Permanent errors have been detected" in out
    code, out, err = run(capsys, "cp", f"tank:{next(iter(one))}", str(tmp / "lost"))
    assert code == 1 and len(one) == 1
    assert run(capsys, "pool", "clear", "tank")[0] == 0
    assert run(capsys, "pool", "scrub", "tank")[0] == 0
    out = run(capsys, "pool", "status", "tank")[1]
    assert int(status_row(out, disks[0])[3]) == 1           # only the lost block, met again


def test_an_interrupted_scrub_resumes_after_export_and_import(env, capsys, monkeypatch):
    tmp, disks = env
    assert run(capsys, "pool", "create", "tank", disks[0])[0] == 0
    for i in range(4):
        assert run(capsys, "create", f"tank/d{i}")[0] == 0
        fill(tmp, capsys, f"tank/d{i}", 2, 10 + i)
    pool = open_pool("tank")
    scrubber = scrub.Scrubber(pool)
    scrubber.start()
    calls = []
    real = scrub.Scrubber._scan

    def interrupted(self, tree, st, nested=True):
        calls.append(1)
        real(self, tree, st, nested)
        if len(calls) == 3:
            raise KeyboardInterrupt        # the process dies three trees in
    monkeypatch.setattr(scrub.Scrubber, "_scan", interrupted)
    with pytest.raises(KeyboardInterrupt):
        scrubber.run(commit_each=True)
    pool.close()
    monkeypatch.setattr(scrub.Scrubber, "_scan", real)
    assert run(capsys, "pool", "export", "tank")[0] == 0
    assert run(capsys, "pool", "import", "-d", str(tmp), "tank")[0] == 0
    code, out, _ = run(capsys, "pool", "status", "tank")
    assert "  scan: scrub in progress since " in out and "% done" in out, out
    pool = open_pool("tank")
    halfway = scrub.load(pool)
    pool.close()
    assert halfway.state == "scanning" and halfway.cursor and halfway.examined > 0
    code, out, err = run(capsys, "pool", "scrub", "tank")     # resumes, to the end here
    assert (code, err) == (0, "")
    pool = open_pool("tank")
    done = scrub.load(pool)
    assert Datasets(pool).check() == []
    pool.close()
    assert done.state == "finished" and done.start == halfway.start
    assert done.examined > halfway.examined
    assert FINISHED.search(run(capsys, "pool", "status", "tank")[1])


def test_scrub_usage_and_errors(env, capsys):
    tmp, disks = env
    assert run(capsys, "pool", "create", "tank", disks[0])[0] == 0
    code, _, err = run(capsys, "pool", "scrub", "-s", "tank")
    assert (code, err) == (1, "cannot cancel scrubbing tank: there is no active scrub\n")
    code, _, err = run(capsys, "pool", "scrub", "-p", "tank")
    assert (code, err) == (1, "cannot pause scrubbing tank: there is no active scrub\n")
    code, _, err = run(capsys, "pool", "scrub", "-s", "-p", "tank")
    assert code == 2 and err.startswith("invalid option combination: -s and -p are mutually "
                                        "exclusive\nusage:\n\tscrub [-s | -p] [-w] <pool> ...")
    code, _, err = run(capsys, "pool", "scrub", "-w", "-s", "tank")
    assert code == 2 and err.startswith("invalid option combination: -w cannot be used with "
                                        "-p or -s")
    code, _, err = run(capsys, "pool", "scrub")
    assert code == 2 and err.startswith("missing pool name argument")
    code, _, err = run(capsys, "pool", "scrub", "nosuch")
    assert code == 1 and "no such pool" in err
    # a paused scrub: status says so, pausing again is refused, scrub resumes it
    pool = open_pool("tank")
    scrub.Scrubber(pool).start()
    scrub.Scrubber(pool).pause()
    pool.close()
    out = run(capsys, "pool", "status", "tank")[1]
    assert "  scan: scrub paused since " in out and "\tscrub started on " in out
    code, _, err = run(capsys, "pool", "scrub", "-p", "tank")
    assert (code, err) == (1, "cannot pause scrubbing tank: scrub is paused; use 'zpool scrub' "
                              "to resume\n")
    assert run(capsys, "pool", "scrub", "tank")[0] == 0
    assert FINISHED.search(run(capsys, "pool", "status", "tank")[1])
    assert run(capsys, "pool", "scrub", "-s", "tank")[0] == 1       # finished: nothing active


@pytest.mark.usefixtures("needs_fuse")
def test_a_served_pool_scrubs_in_the_background(env, capsys):
    """With the pool mounted, the daemon owns it: `zpool scrub` returns at once, the scrub runs
    on the daemon's thread while the mount serves, and status shows it finished."""
    import os
    import subprocess
    import sys
    import time
    tmp, disks = env
    exe = os.path.join(os.path.dirname(sys.executable), "fusezfs")

    def fz(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)
    assert fz("pool", "create", "tank", "mirror", *disks).returncode == 0
    files = fill(tmp, capsys, "tank", 4, 7)
    damaged = damage(disks[1], all_blocks("tank"), lambda bp: range(len(bp.dvas)))
    mnt = tmp / "mnt"
    r = fz("mount", "tank", str(mnt))
    assert r.returncode == 0, r.stderr
    try:
        r = fz("pool", "scrub", "tank")
        assert (r.returncode, r.stdout, r.stderr) == (0, "", "")

        def finished() -> str:
            deadline = time.monotonic() + 60       # guards against a hang; asserted below
            while time.monotonic() < deadline:
                out = fz("pool", "status", "tank").stdout
                if FINISHED.search(out):
                    break
                time.sleep(0.2)
            assert FINISHED.search(out), out
            return out
        # (the mount's own first commits may have replaced some damaged metadata already)
        assert 0 < int(status_row(finished(), disks[1])[3]) <= damaged
        assert fz("pool", "clear", "tank").returncode == 0
        assert fz("pool", "scrub", "tank").returncode == 0
        assert status_row(finished(), disks[1]) == ["ONLINE", "0", "0", "0"]
        for path, data in files.items():
            assert (mnt / path.lstrip("/")).read_bytes() == data
    finally:
        assert fz("unmount", "tank").returncode == 0
