"""zpool attach, detach, replace, offline, online and add, and pools with a side missing: driven
as a user would, with the data read back and `pool verify` after each change."""
from __future__ import annotations

import os

import pytest

from clitools import pool_files, random_files, run
from fusezfs.cli.cli_pool import open_pool
from fusezfs.dsl.datasets import Datasets
from fusezfs.engine.verify import verify



@pytest.fixture
def env(tmp_path, monkeypatch):
    return tmp_path, pool_files(tmp_path, monkeypatch, 4, prefix="d")


def put_files(tmp, capsys, n: int, seed: int) -> dict[str, bytes]:
    return random_files(tmp, capsys, "tank", n, seed, largest=400_000)


def check(tmp, capsys, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        out = tmp / "back"
        assert run(capsys, "cp", f"tank:{path}", str(out))[0] == 0, path
        assert out.read_bytes() == data, path
    pool = open_pool("tank")
    try:
        report = verify(pool)
        assert report.ok, report.faults
        assert Datasets(pool).check() == []
    finally:
        pool.close()


def rows(out: str) -> dict[str, list[str]]:
    """zpool status config rows: name -> [state, read, write, cksum, extra...]."""
    got = {}
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("\t") and len(parts) >= 5 and parts[0] != "NAME":
            got[parts[0]] = parts[1:]
    return got


def test_attach_resilvers_a_new_side_that_can_then_stand_alone(env, capsys):
    tmp, d = env
    assert run(capsys, "pool", "create", "tank", d[0])[0] == 0
    files = put_files(tmp, capsys, 5, 1)
    code, out, err = run(capsys, "pool", "attach", "tank", d[0], d[1])
    assert (code, err) == (0, "")
    out = run(capsys, "pool", "status", "tank")[1]
    assert "scan: resilvered " in out and " with 0 errors on " in out, out
    r = rows(out)
    assert r["mirror-0"][0] == "ONLINE" and r[d[1]] == ["ONLINE", "0", "0", "0"], out
    more = put_files(tmp, capsys, 2, 2)                 # written to both sides
    # the new side alone holds everything: detach the original and read it all back
    assert run(capsys, "pool", "detach", "tank", d[0]) == (0, "", "")
    out = run(capsys, "pool", "status", "tank")[1]
    assert "mirror" not in out and d[0] not in out and d[1] in out
    check(tmp, capsys, {**files, **more})
    assert run(capsys, "pool", "export", "tank")[0] == 0
    code, out, _ = run(capsys, "pool", "import", "-d", str(tmp))
    assert out.count("  pool: tank") == 1 and d[0] not in out          # its labels are cleared
    assert run(capsys, "pool", "import", "-d", str(tmp), "tank")[0] == 0
    check(tmp, capsys, {**files, **more})


def test_attach_and_detach_errors(env, capsys):
    tmp, d = env
    assert run(capsys, "pool", "create", "tank", d[0])[0] == 0
    code, _, err = run(capsys, "pool", "detach", "tank", d[0])
    # refused by the pool (zpool_vdev_detach/attach return -1): zpool exits 255, as zfs-fuse
    assert (code, err) == (255, f"cannot detach {d[0]}: only applicable to mirror and "
                                f"replacing vdevs\n")
    code, _, err = run(capsys, "pool", "attach", "tank", d[3], d[1])
    assert code == 255 and err == f"cannot attach {d[1]} to {d[3]}: no such device in pool\n"
    assert run(capsys, "pool", "create", "other", d[2])[0] == 0
    code, _, err = run(capsys, "pool", "attach", "tank", d[0], d[2])
    # refused as a vdev specification (make_root_vdev): exit 1
    assert (code, err) == (1, f"invalid vdev specification\nuse '-f' to override the following "
                              f"errors:\n{d[2]} is part of active pool 'other'\n")
    code, _, err = run(capsys, "pool", "attach", "tank", d[0])
    assert code == 2 and err.startswith("missing <new_device> specification\nusage:\n\tattach")


def test_a_missing_mirror_side_imports_degraded_and_keeps_serving(env, capsys):
    tmp, d = env
    assert run(capsys, "pool", "create", "tank", "mirror", d[0], d[1])[0] == 0
    files = put_files(tmp, capsys, 4, 3)
    assert run(capsys, "pool", "export", "tank")[0] == 0
    (tmp / "elsewhere").mkdir()
    os.rename(d[1], str(tmp / "elsewhere" / "d1"))     # not where the import looks
    assert run(capsys, "pool", "import", "-d", str(tmp), "tank")[0] == 0
    code, out, _ = run(capsys, "pool", "status", "tank")
    assert " state: DEGRADED" in out and "ZFS-8000-2Q" in out
    r = rows(out)
    assert r["mirror-0"][0] == "DEGRADED" and r[d[1]][:1] == ["UNAVAIL"]
    assert out.splitlines()[[i for i, ln in enumerate(out.splitlines()) if d[1] in ln][0]] \
        .endswith("cannot open")
    assert run(capsys, "pool", "list", "-H", "-o", "health", "tank")[1] == "DEGRADED\n"
    more = put_files(tmp, capsys, 2, 4)                 # still writable
    check(tmp, capsys, {**files, **more})
    os.rename(str(tmp / "elsewhere" / "d1"), d[1])     # the side comes back: online resilvers
    code, out, err = run(capsys, "pool", "online", "tank", d[1])
    assert (code, err) == (0, "")
    out = run(capsys, "pool", "status", "tank")[1]
    assert " state: ONLINE" in out and "scan: resilvered " in out
    assert run(capsys, "pool", "detach", "tank", d[0])[0] == 0    # and it alone has it all
    check(tmp, capsys, {**files, **more})


def test_offline_online_and_replace(env, capsys):
    tmp, d = env
    assert run(capsys, "pool", "create", "tank", "mirror", d[0], d[1])[0] == 0
    files = put_files(tmp, capsys, 3, 5)
    code, _, err = run(capsys, "pool", "offline", "tank", d[1])
    assert (code, err) == (0, "")
    code, _, err = run(capsys, "pool", "offline", "tank", d[0])
    assert (code, err) == (1, f"cannot offline {d[0]}: no valid replicas\n")
    out = run(capsys, "pool", "status", "tank")[1]
    assert " state: DEGRADED" in out and "taken offline by the administrator" in out
    assert rows(out)[d[1]][0] == "OFFLINE"
    more = put_files(tmp, capsys, 2, 6)                 # d1 misses these
    assert run(capsys, "pool", "online", "tank", d[1])[0] == 0
    out = run(capsys, "pool", "status", "tank")[1]
    assert rows(out)[d[1]] == ["ONLINE", "0", "0", "0"] and "resilvered" in out
    # replace d0 by d2: d2 is resilvered, d0 leaves the pool
    code, _, err = run(capsys, "pool", "replace", "tank", d[0], d[2])
    assert (code, err) == (0, "")
    out = run(capsys, "pool", "status", "tank")[1]
    assert d[0] not in out and d[2] in out and rows(out)["mirror-0"][0] == "ONLINE"
    assert run(capsys, "pool", "detach", "tank", d[1])[0] == 0     # d2 alone has it all
    check(tmp, capsys, {**files, **more})


def test_add_a_top_level_vdev(env, capsys):
    tmp, d = env
    assert run(capsys, "pool", "create", "tank", d[0])[0] == 0
    size = int(run(capsys, "pool", "list", "-Hp", "-o", "size", "tank")[1])
    files = put_files(tmp, capsys, 3, 7)
    # a mirror beside a plain file: zpool wants -f (mismatched replication level)
    assert run(capsys, "pool", "add", "tank", "mirror", d[1], d[2])[0] == 1
    assert run(capsys, "pool", "add", "-f", "tank", "mirror", d[1], d[2]) == (0, "", "")
    assert int(run(capsys, "pool", "list", "-Hp", "-o", "size", "tank")[1]) > 1.9 * size
    more = put_files(tmp, capsys, 8, 8)
    out = run(capsys, "pool", "status", "tank")[1]
    assert "mirror-1" in out and d[1] in out and d[2] in out
    assert run(capsys, "pool", "export", "tank")[0] == 0
    assert run(capsys, "pool", "import", "-d", str(tmp), "tank")[0] == 0
    check(tmp, capsys, {**files, **more})
    pool = open_pool("tank")
    used = {d.vdev for t in [pool.objset(n, create=False) for n in pool.objset_names()]
            for kind, bp in t.walk() if kind == "block" for d in bp.dvas}
    pool.close()
    assert used == {0, 1}, used                          # new data spread over both
