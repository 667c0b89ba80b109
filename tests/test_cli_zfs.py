"""The zfs verbs and `fusezfs cp`, driven as a user would, with the consistency checker
(reachability + space invariants of every dataset) run on every pool after every test."""
from __future__ import annotations

import os

import pytest

from clitools import check_pools, ok, run
from fusezfs import cli

MiB = 1 << 20


@pytest.fixture
def env(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FUSEZFS_STATE_DIR", str(tmp_path / "state"))
    disk = tmp_path / "disk"
    with open(disk, "wb") as f:
        f.truncate(256 * MiB)
    assert cli.main(["pool", "create", "-O", "compression=off", "tank", str(disk)]) == 0
    yield tmp_path
    capsys.readouterr()
    check_pools()


def put(tmp, capsys, dest: str, data: bytes, name: str = "f") -> None:
    src = tmp / name
    src.write_bytes(data)
    ok(capsys, "cp", str(src), dest)


def get(tmp, capsys, spec: str) -> bytes | None:
    out = tmp / "out"
    if out.exists():
        out.unlink()
    code, _o, _e = run(capsys, "cp", spec, str(out))
    return out.read_bytes() if code == 0 else None


def test_clone_of_clone_of_clone_reads_the_right_data(env, capsys):
    ok(capsys, "create", "tank/base")
    put(env, capsys, "tank/base:/layer0", b"base layer")
    ok(capsys, "snapshot", "tank/base@s")
    parent = "tank/base"
    for level in range(1, 4):
        ok(capsys, "clone", f"{parent}@s", f"tank/l{level}")
        put(env, capsys, f"tank/l{level}:/layer{level}", b"layer %d" % level)
        put(env, capsys, f"tank/l{level}:/layer0", b"base as seen by %d" % level)
        ok(capsys, "snapshot", f"tank/l{level}@s")
        parent = f"tank/l{level}"
    assert get(env, capsys, "tank/base:/layer0") == b"base layer"
    for level in range(1, 4):
        for k in range(1, 4):
            got = get(env, capsys, f"tank/l{level}:/layer{k}")
            assert got == (b"layer %d" % k if k <= level else None)
        assert get(env, capsys, f"tank/l{level}:/layer0") == b"base as seen by %d" % level
        assert get(env, capsys, f"tank/l{level - 1 if level > 1 else 1}@s:/layer0") is not None
    out = ok(capsys, "list", "-H", "-o", "name,origin", "-r", "tank")
    assert "tank/l3\ttank/l2@s" in out and "tank/l1\ttank/base@s" in out


def test_destroying_a_snapshot_with_clones_fails_and_changes_nothing(env, capsys):
    ok(capsys, "create", "tank/a")
    put(env, capsys, "tank/a:/x", b"x" * 5000)
    ok(capsys, "snapshot", "tank/a@s")
    ok(capsys, "clone", "tank/a@s", "tank/c")
    before = ok(capsys, "list", "-Hp", "-t", "all", "-o", "name,used,refer,origin")
    code, out, err = run(capsys, "destroy", "tank/a@s")
    assert code == 1
    assert err == ("cannot destroy 'tank/a@s': snapshot has dependent clones\n"
                   "use '-R' to destroy the following datasets:\ntank/c\n")
    assert ok(capsys, "list", "-Hp", "-t", "all", "-o", "name,used,refer,origin") == before
    ok(capsys, "destroy", "-R", "tank/a@s")
    assert ok(capsys, "list", "-H", "-t", "all", "-o", "name") == "tank\ntank/a\n"


def test_rollback_past_later_snapshots_needs_r(env, capsys):
    ok(capsys, "create", "tank/a")
    put(env, capsys, "tank/a:/f", b"one")
    ok(capsys, "snapshot", "tank/a@1")
    put(env, capsys, "tank/a:/f", b"two")
    ok(capsys, "snapshot", "tank/a@2")
    put(env, capsys, "tank/a:/f", b"three")
    code, _o, err = run(capsys, "rollback", "tank/a@1")
    assert code == 1 and err.splitlines() == [
        "cannot rollback to 'tank/a@1': more recent snapshots or bookmarks exist",
        "use '-r' to force deletion of the following snapshots and bookmarks:", "tank/a@2"]
    assert get(env, capsys, "tank/a:/f") == b"three"
    ok(capsys, "rollback", "tank/a@2")
    assert get(env, capsys, "tank/a:/f") == b"two"
    ok(capsys, "rollback", "-r", "tank/a@1")
    assert get(env, capsys, "tank/a:/f") == b"one"
    assert ok(capsys, "list", "-H", "-t", "snapshot", "-o", "name") == "tank/a@1\n"


def test_recursive_snapshot_is_atomic(env, capsys):
    for name in ("tank/a", "tank/a/b", "tank/a/b/c", "tank/z"):
        ok(capsys, "create", name)
    ok(capsys, "snapshot", "-r", "tank@now")
    out = ok(capsys, "get", "-H", "-p", "-o", "name,value", "-t", "snapshot", "createtxg")
    txgs = {line.split("\t")[1] for line in out.splitlines()}
    names = [line.split("\t")[0] for line in out.splitlines()]
    assert len(txgs) == 1 and len(names) == 5
    code, _o, err = run(capsys, "snapshot", "-r", "tank@now")
    assert code == 1 and "dataset already exists" in err


def test_promote_swaps_origin_and_moves_snapshots_and_space(env, capsys):
    ok(capsys, "create", "tank/fs")
    put(env, capsys, "tank/fs:/a", os.urandom(300_000))
    ok(capsys, "snapshot", "tank/fs@1")
    put(env, capsys, "tank/fs:/b", os.urandom(300_000))
    ok(capsys, "snapshot", "tank/fs@2")
    ok(capsys, "clone", "tank/fs@2", "tank/c")
    used_before = int(ok(capsys, "get", "-Hp", "-o", "value", "used", "tank/fs"))
    ok(capsys, "promote", "tank/c")
    out = ok(capsys, "list", "-H", "-t", "all", "-o", "name,origin")
    assert out.splitlines() == ["tank\t-", "tank/c\t-", "tank/c@1\t-", "tank/c@2\t-",
                                "tank/fs\ttank/c@2"]
    used_c = int(ok(capsys, "get", "-Hp", "-o", "value", "used", "tank/c"))
    used_fs = int(ok(capsys, "get", "-Hp", "-o", "value", "used", "tank/fs"))
    assert used_c >= 600_000 > used_fs         # the snapshots' space moved with them
    assert used_c + used_fs <= used_before + 100_000
    code, _o, err = run(capsys, "promote", "tank/c")
    assert code == 1 and "not a cloned filesystem" in err


def test_quota_stops_writes_cleanly(env, capsys):
    ok(capsys, "create", "-o", "quota=1M", "tank/q")
    put(env, capsys, "tank/q:/small", b"s" * 100_000)
    big = env / "big"
    big.write_bytes(os.urandom(3 * MiB))
    code, _o, err = run(capsys, "cp", str(big), "tank/q:/big")
    assert code == 1 and "quota exceeded" in err.lower()
    assert get(env, capsys, "tank/q:/small") == b"s" * 100_000
    used = int(ok(capsys, "get", "-Hp", "-o", "value", "used", "tank/q"))
    assert used <= MiB
    code, _o, err = run(capsys, "set", "quota=10K", "tank/q")
    assert code == 1 and "size is less than current used or reserved space" in err


def test_list_get_set_inherit(env, capsys):
    ok(capsys, "create", "-p", "tank/a/b")
    ok(capsys, "set", "compression=gzip-9", "atime=off", "com.example:tag=hello", "tank/a")
    out = ok(capsys, "get", "-H", "-r", "-o", "name,property,value,source",
             "compression,atime,com.example:tag", "tank/a")
    assert out.splitlines() == [
        "tank/a\tcompression\tgzip-9\tlocal", "tank/a\tatime\toff\tlocal",
        "tank/a\tcom.example:tag\thello\tlocal",
        "tank/a/b\tcompression\tgzip-9\tinherited from tank/a",
        "tank/a/b\tatime\toff\tinherited from tank/a",
        "tank/a/b\tcom.example:tag\thello\tinherited from tank/a"]
    ok(capsys, "inherit", "-r", "compression", "tank/a")
    out = ok(capsys, "get", "-H", "-o", "value,source", "compression", "tank/a/b")
    assert out == "off\tinherited from tank\n"
    code, _o, err = run(capsys, "set", "compression=bogus", "tank/a")
    assert code == 1 and err.startswith("cannot set property for 'tank/a': 'compression' must be one of")
    code, _o, err = run(capsys, "get", "compression", "tank/nosuch")
    assert code == 1 and err == "cannot open 'tank/nosuch': dataset does not exist\n"
    code, _o, err = run(capsys, "list", "-o", "bogus")
    assert code == 2 and "bad property list: invalid property 'bogus'" in err
    out = ok(capsys, "list", "-H", "-o", "name", "-s", "name", "-d", "1", "tank")
    assert out == "tank\ntank/a\n"


def test_cp_round_trips_a_tree_with_attributes(env, capsys):
    src = env / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "file").write_bytes(b"data" * 1000)
    (src / "exec").write_bytes(b"#!/bin/sh\n")
    os.chmod(src / "exec", 0o751)
    os.symlink("sub/file", src / "link")
    os.utime(src / "exec", ns=(1_000_000_000_123, 2_000_000_000_456))
    ok(capsys, "create", "tank/t")
    ok(capsys, "cp", "-a", str(src), "tank/t:/")
    ok(capsys, "snapshot", "tank/t@s")
    back = env / "back"
    ok(capsys, "cp", "-a", "tank/t@s:/src", str(back))
    assert (back / "sub" / "file").read_bytes() == b"data" * 1000
    assert os.readlink(back / "link") == "sub/file"
    st = os.stat(back / "exec")
    assert st.st_mode & 0o7777 == 0o751 and st.st_mtime_ns == 2_000_000_000_456
    code, _o, err = run(capsys, "cp", str(src / "exec"), "tank/t@s:/new")
    assert code == 1 and "Read-only file system" in err
    code, _o, err = run(capsys, "cp", str(src), "tank/t:/x")
    assert code == 1 and "-r not specified" in err


def test_destroy_forms_dry_runs_and_deferred(env, capsys):
    ok(capsys, "create", "tank/d")
    for i in range(1, 6):
        put(env, capsys, "tank/d:/f", os.urandom(20_000 * i))
        ok(capsys, "snapshot", f"tank/d@s{i}")
    out = ok(capsys, "destroy", "-nv", "tank/d@s1,s2")
    assert out.splitlines()[:2] == ["would destroy tank/d@s1", "would destroy tank/d@s2"]
    assert out.splitlines()[-1].startswith("would reclaim ")
    out = ok(capsys, "destroy", "-np", "tank/d@s2%s4")
    assert [l.split("\t")[1] for l in out.splitlines() if l.startswith("destroy")] == \
        ["tank/d@s2", "tank/d@s3", "tank/d@s4"]
    assert len(ok(capsys, "list", "-H", "-t", "snapshot", "-o", "name").splitlines()) == 5
    ok(capsys, "destroy", "tank/d@s1,s3")
    ok(capsys, "destroy", "tank/d@s4%")
    assert ok(capsys, "list", "-H", "-t", "snapshot", "-o", "name") == "tank/d@s2\n"
    ok(capsys, "hold", "keep", "tank/d@s2")
    out = ok(capsys, "holds", "-H", "tank/d@s2")
    assert out.split("\t")[:2] == ["tank/d@s2", "keep"]
    assert ok(capsys, "get", "-H", "-o", "value", "userrefs", "tank/d@s2") == "1\n"
    code, _o, err = run(capsys, "destroy", "tank/d@s2")
    assert code == 1 and err == "cannot destroy snapshot tank/d@s2: dataset is busy\n"
    ok(capsys, "destroy", "-d", "tank/d@s2")
    assert ok(capsys, "get", "-H", "-o", "value", "defer_destroy", "tank/d@s2") == "on\n"
    code, _o, err = run(capsys, "release", "nope", "tank/d@s2")
    assert code == 1 and "no such tag on this dataset" in err
    ok(capsys, "release", "keep", "tank/d@s2")
    assert ok(capsys, "list", "-H", "-t", "snapshot", "-o", "name") == ""


def test_rename_forms(env, capsys):
    ok(capsys, "create", "-p", "tank/a/b")
    ok(capsys, "snapshot", "-r", "tank/a@x")
    ok(capsys, "rename", "-r", "tank/a@x", "tank/a@y")
    assert ok(capsys, "list", "-H", "-t", "snapshot", "-o", "name") == "tank/a@y\ntank/a/b@y\n"
    ok(capsys, "rename", "-p", "tank/a", "tank/m/n/a")
    assert ok(capsys, "list", "-H", "-o", "name") == "tank\ntank/m\ntank/m/n\ntank/m/n/a\ntank/m/n/a/b\n"
    code, _o, err = run(capsys, "rename", "tank/m", "tank/m/n/a/b/c")
    assert code == 1 and "cannot rename to 'tank/m/n/a/b/c'" in err


def test_list_types_sorting_and_written(env, capsys):
    for name, size in (("tank/big", 400_000), ("tank/small", 10_000), ("tank/mid", 100_000)):
        ok(capsys, "create", name)
        put(env, capsys, f"{name}:/f", os.urandom(size))
    ok(capsys, "snapshot", "tank/mid@1")
    put(env, capsys, "tank/mid:/g", os.urandom(50_000))
    out = ok(capsys, "list", "-H", "-o", "name", "-s", "used", "-d", "1", "tank")
    assert out.splitlines()[1:] == ["tank/small", "tank/mid", "tank/big"] or \
        out.splitlines()[:3] == ["tank/small", "tank/mid", "tank/big"]
    out = ok(capsys, "list", "-H", "-o", "name", "-S", "referenced", "-t", "filesystem,snapshot", "-r", "tank")
    assert out.splitlines()[0] == "tank/big"
    assert ok(capsys, "list", "-H", "-o", "name", "-t", "snap") == "tank/mid@1\n"
    written = int(ok(capsys, "get", "-Hp", "-o", "value", "written@1", "tank/mid"))
    assert 50_000 <= written < 100_000
    out = ok(capsys, "get", "-H", "-o", "name", "-t", "snapshot", "type")
    assert out == "tank/mid@1\n"


def test_reservations_set_space_aside(env, capsys):
    ok(capsys, "create", "tank/r")
    ok(capsys, "create", "tank/other")
    avail = int(ok(capsys, "get", "-Hp", "-o", "value", "available", "tank/other"))
    ok(capsys, "set", "reservation=50M", "tank/r")
    after = int(ok(capsys, "get", "-Hp", "-o", "value", "available", "tank/other"))
    assert avail - after >= 50 * MiB - 64 * 1024
    assert int(ok(capsys, "get", "-Hp", "-o", "value", "available", "tank/r")) >= after + 49 * MiB
    ok(capsys, "set", "refreservation=30M", "tank/other")
    assert int(ok(capsys, "get", "-Hp", "-o", "value", "usedbyrefreservation", "tank/other")) > 29 * MiB
    used_root = int(ok(capsys, "get", "-Hp", "-o", "value", "used", "tank"))
    assert used_root >= 80 * MiB
    code, _o, err = run(capsys, "set", "reservation=10G", "tank/r")
    assert code == 1 and "size is greater than available space" in err


def test_every_verb_is_routed_to_its_module():
    from fusezfs.cli import cli_mount, cli_send, cli_zfs
    routed = {v for v, m in cli.VERB_MODULES.items() if m == "cli_zfs"}
    assert routed == set(cli_zfs.VERBS)
    assert {v for v, m in cli.VERB_MODULES.items() if m == "cli_send"} == set(cli_send.COMMANDS)
    assert set(cli.ZFS_VERBS) <= set(cli.VERB_MODULES)
    assert set(cli_mount.COMMANDS) <= set(cli.VERB_MODULES)


def test_compressratio_is_logical_over_physical_in_sectors(env, capsys):
    """20 MiB of one repeated byte under zstd: each 128 KiB record compresses to a few bytes,
    which still take a 512-byte sector, as ZFS rounds psize: about 256x, not thousands; an
    empty filesystem is 1.00x or close (only its root directory's metadata)."""
    tmp = env
    assert run(capsys, "create", "-o", "compression=zstd", "tank/z")[0] == 0
    (tmp / "same").write_bytes(b"a" * (20 * MiB))
    assert run(capsys, "cp", str(tmp / "same"), "tank/z:/same")[0] == 0
    out = ok(capsys, "get", "-Hp", "-o", "value", "compressratio,refcompressratio,"
             "logicalreferenced,referenced", "tank/z").split()
    ratio, refratio, logical, referenced = float(out[0]), float(out[1]), int(out[2]), int(out[3])
    assert ratio == refratio and 240 <= ratio <= 256, out
    assert abs(ratio - logical / referenced) < 0.05 * ratio
    assert run(capsys, "create", "-o", "compression=zstd", "tank/empty")[0] == 0
    assert ok(capsys, "get", "-H", "-o", "value", "compressratio", "tank/empty") == "1.00x\n"
