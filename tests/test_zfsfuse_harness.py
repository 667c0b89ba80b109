"""The private zfs-fuse harness (tests/zfsfuse.py) works and leaves the host alone."""

import os
import subprocess
import uuid

import pytest

from zfsfuse import ZfsFuse, require


@pytest.fixture(autouse=True)
def _zfs_fuse_runs_here():
    """Every test here runs a private zfs-fuse: skipped where it cannot run, failed instead
    under FUSEZFS_TEST_STRICT=1 (zfsfuse.require)."""
    require()


def _host_zpool_list():
    """The host's view: no private daemon must ever show up there."""
    try:
        r = subprocess.run(["zpool", "list", "-H"], capture_output=True, text=True, timeout=30,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return repr(e)
    return (r.returncode, r.stdout, r.stderr)


def _host_state():
    paths = ["/run/zfs", "/run/lock/zfs", "/var/lib/zfs/zpool.cache"]
    return {p: os.path.lexists(p) for p in paths}, sorted(os.listdir("/"))


def test_pool_dataset_roundtrip():
    host_before = _host_zpool_list()
    state_before = _host_state()
    pool = "hz" + uuid.uuid4().hex[:8]
    with ZfsFuse() as zf:
        dev = zf.sparse_file("d0", 128 << 20)
        r = zf.zpool("create", pool, dev)
        assert r.returncode == 0, r.stderr
        assert zf.created == [pool]
        r = zf.zpool("list", "-H", "-o", "name,health")
        assert r.returncode == 0 and r.stdout.split() == [pool, "ONLINE"], r
        zf.zfs("create", f"{pool}/ds", check=True)
        r = zf.zfs("list", "-H", "-o", "name", "-r", pool, check=True)
        assert r.stdout.split() == [pool, f"{pool}/ds"]
        zf.zfs("destroy", f"{pool}/ds", check=True, busy_retries=20)
        r = zf.zfs("list", "-H", "-o", "name", "-r", pool, check=True)
        assert r.stdout.split() == [pool]
        # Outside the namespace nothing changed.
        assert _host_zpool_list() == host_before
        workdir = zf.workdir
    assert not workdir.exists()
    assert _host_zpool_list() == host_before
    assert _host_state() == state_before


def test_exported_pool_survives_cleanup(tmp_path):
    with ZfsFuse(workdir=tmp_path) as zf:
        zf.zpool("create", "-m", "none", "hzmine", zf.sparse_file("a", 96 << 20), check=True)
        zf.run(["zpool", "create", "-m", "none", "hzother", zf.sparse_file("b", 96 << 20)], check=True)
        assert zf.created == ["hzmine"]
    assert (tmp_path / "a").exists() and (tmp_path / "b").exists()  # a given workdir is kept
    with ZfsFuse(workdir=tmp_path) as zf:
        r = zf.zpool("import", "-d", tmp_path)
        assert r.returncode == 0
        assert "hzother" in r.stdout and "hzmine" not in r.stdout, r.stdout
        zf.zpool("import", "-d", tmp_path, "hzother", check=True)
        assert zf.imported == ["hzother"] and zf.created == []
        assert zf.pools() == ["hzother"]
    # imported (not created) -> exported again at cleanup, so still importable
    with ZfsFuse(workdir=tmp_path) as zf:
        r = zf.zpool("import", "-d", tmp_path)
        assert "hzother" in r.stdout


def test_two_daemons_are_independent():
    with ZfsFuse() as z1, ZfsFuse() as z2:
        z1.zpool("create", "-m", "none", "hzone", z1.sparse_file("d", 96 << 20), check=True)
        assert z1.pools() == ["hzone"]
        assert z2.pools() == []
