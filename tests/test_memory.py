"""Bounded memory on a large tree (issue 4, "Bounded resources"): the POSIX layer's inode cache
stays under its bound while 20,000 files are created, looked up, listed and read; dirty inodes
are bounded by the pool's dirty budget; lookup counts and open handles are dropped by forget and
release. Then the same through a real mount: the daemon's RSS grows by a bounded amount over
20,000 files (skipped with the reason where FUSE is unusable, failed there under
FUSEZFS_TEST_STRICT=1). tools/bench-memory measures the same at 100,000 files.
"""
from __future__ import annotations

import os

import pytest

import fusezfs.zpl.posix as posix_mod
from fusezfs.api import Handle
from fusezfs.engine.devices import MemoryDevice
from fusezfs.engine.pool import Pool
from fusezfs.zpl.posix import ROOT_INO
from fusezfs.engine.verify import verify

from test_mount import Env

MiB = 1 << 20
FILES = 20_000
DIRS = 100


def names():
    for i in range(FILES):
        yield i % DIRS, f"f{i:05d}"


@pytest.fixture
def lib():
    pool = Pool.create("tank", [("file", [MemoryDevice(128 * MiB)])])
    h = Handle(pool)
    h.dsl.create("tank/fs")
    fs = h.filesystem("tank/fs", track_lookups=True)
    yield pool, fs
    if not pool.closed:
        pool.close()


def test_inode_cache_and_dirty_inodes_stay_bounded_on_20000_files(lib, monkeypatch):
    pool, fs = lib
    monkeypatch.setattr(posix_mod, "INODE_CACHE", 1000)
    pool.dirty_max = 4 * MiB                    # 1,024 dirty inodes at DIRTY_INODE_COST
    max_dirty = pool.dirty_max // posix_mod.DIRTY_INODE_COST + 8
    bound = posix_mod.INODE_CACHE + 1           # clean records + the root, beyond the pinned
    peak = {"inodes": 0, "dirty": 0}

    def check():
        pinned = len(fs._dirty) + len(fs._opens) + len(fs._records)
        assert len(fs._inodes) <= bound + pinned + 2        # + the operation's own
        assert len(fs._dirty) <= max_dirty
        peak["inodes"] = max(peak["inodes"], len(fs._inodes))
        peak["dirty"] = max(peak["dirty"], len(fs._dirty))

    txg = pool.synced_txg
    dirs = [fs.mkdir(ROOT_INO, f"d{d:03d}").st_ino for d in range(DIRS)]
    for d, n in names():                        # metadata-only work: no explicit sync
        fh, _attr = fs.create(dirs[d], n)
        fs.release(fh)
        fs.forget(_attr.st_ino)                 # create counts a lookup, as FUSE's does
        check()
    assert pool.synced_txg >= txg + 5           # the dirty budget forced syncs
    assert not fs._opens and not fs._handles
    for d in dirs:
        fs.forget(d)
    assert not fs._lookups

    # lookups: counted for every file, yet the inode records stay bounded
    for d, n in names():
        fs.getattr(fs.lookup(dirs[d], n).st_ino)
        check()
    assert len(fs._lookups) == FILES
    for d in dirs:                              # readdir pins nothing
        assert len(fs.readdir(d)) == FILES // DIRS + 2
        check()
    for d, n in names():                        # open, read, release: atime dirties each
        attr = fs.lookup(dirs[d], n)
        fh = fs.open(attr.st_ino)
        assert fs.read(fh, 0, 10) == b""
        fs.release(fh)
        fs.forget(attr.st_ino, 2)               # the kernel forgets both lookups
        check()
    assert not fs._lookups and not fs._opens    # forget and release really drop entries
    pool.sync()
    fs.getattr(ROOT_INO)                        # the next operation trims after the flush
    assert not fs._dirty and len(fs._inodes) <= bound
    assert peak["inodes"] <= bound + max_dirty + 2
    assert fs.objects == FILES + DIRS + 1
    assert verify(pool).ok


def test_evicted_records_read_back_the_same(lib, monkeypatch):
    """Records dropped from the cache are read again from the tree, changes included."""
    pool, fs = lib
    monkeypatch.setattr(posix_mod, "INODE_CACHE", 4)
    inos = []
    for i in range(50):
        fh, attr = fs.create(ROOT_INO, f"f{i}", mode=0o600)
        fs.write(fh, 0, b"x" * i)
        fs.release(fh)
        inos.append(attr.st_ino)
    for i, ino in enumerate(inos):
        fs.setattr(ino, mode=0o640 + (i % 8))
        if i % 7 == 0:
            pool.sync()
    pool.sync()
    fs.getattr(ROOT_INO)
    assert len(fs._inodes) <= 5
    for i, ino in enumerate(inos):
        a = fs.getattr(ino)
        assert (a.st_mode & 0o777, a.st_size) == (0o640 + (i % 8), i)


# ---- through a real mount -------------------------------------------------------------------
def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.usefixtures("needs_fuse")      # tests/conftest.py: skip, or fail in CI
def test_daemon_rss_growth_is_bounded_over_20000_files(tmp_path):
    env = Env(tmp_path)
    try:
        env.create_pool(256 * MiB)
        env.mount()
        pid = env.daemon_pid()
        root = os.path.join(env.mnt, "files")
        os.mkdir(root)
        for d in range(DIRS):
            os.mkdir(os.path.join(root, f"d{d:03d}"))
        base = _rss(pid)
        for d, n in names():
            os.mknod(os.path.join(root, f"d{d:03d}", n), 0o644)
        for d, n in names():
            os.stat(os.path.join(root, f"d{d:03d}", n))
        listed = sum(len(os.listdir(os.path.join(root, f"d{d:03d}"))) for d in range(DIRS))
        assert listed == FILES
        grown = _rss(pid) - base
        # The kernel may hold every inode it looked up (a lookup count each, no record), so
        # allow ~2 KiB per file; unbounded caching of records and dirty state took far more.
        assert grown < 64 * MiB, f"daemon RSS grew by {grown / MiB:.1f} MiB over {FILES} files"
        env.unmount()
    finally:
        env.teardown()
