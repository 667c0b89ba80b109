"""The POSIX layer (fusezfs/zpl/posix.py) driven as a user would: trees of files, offsets, holes,
truncate, renames, links, open-unlinked files, xattrs, symlinks, readdir cookies, errors, read-only
datasets, space errors; all checked again after the pool is closed and imported. A model-based
test runs random operation sequences against fusezfs and a real directory on the host and
compares the two trees."""
from __future__ import annotations

import errno
import functools
import os
import random
import shutil
import stat
import tempfile
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fusezfs.engine.blocks import Policy
from fusezfs.engine.devices import FaultyDevice, MemoryDevice, Power, PowerCut
from fusezfs.formats.bp import BT_DATA, COMP_ZSTD, decode_bp
from fusezfs.engine.pool import Pool
from fusezfs.zpl.posix import (
    MAX_FILE_SIZE,
    NOW,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    ROOT_INO,
    XATTR_CREATE,
    XATTR_REPLACE,
    Posix,
)
from fusezfs.zpl import posix_names
from fusezfs.zpl.posix_layout import (
    CD_BITS,
    K_DATA,
    UNLINKED_HI,
    UNLINKED_LO,
    ino_prefix,
    kind_hi,
    kind_lo,
    unlinked_key,
)
from fusezfs.engine.tree import Tree
from fusezfs.engine.verify import verify

MiB = 1 << 20
KiB = 1 << 10


class PoolIO:
    """The ObjsetIO protocol over a bare pool objset (the dataset layer provides the real one)."""

    def __init__(self, pool: Pool, name: bytes = b"fs", *, readonly: bool = False,
                 recordsize: int = 128 * KiB, compress: bool = False, atime: bool = False,
                 quota: int | None = None) -> None:
        self.pool = pool
        self.tree = pool.objset(name)
        self.readonly = readonly
        self.recordsize = recordsize
        self.compress = compress
        self.atime = atime
        self.lock = pool.lock
        self.quota = quota
        self.written = 0
        self.policy = Policy(COMP_ZSTD, 1) if compress else Policy()
        self.clock: int | None = None       # a fixed clock, when a test wants one

    @property
    def txg(self) -> int:
        return self.pool.txg

    def write_blocks(self, datas):
        bps = self.pool.blocks.write_many(list(datas), BT_DATA, self.policy)
        self.written += sum(bp.asize for bp in bps)
        return bps

    def prepare_ahead(self, data):
        self.pool.blocks.prepare_ahead(data, self.policy)

    def cancel_ahead(self, data):
        self.pool.blocks.cancel_ahead(data)

    def read_blocks(self, bps):
        return self.pool.blocks.read_many(bps)

    def check_space(self, nbytes: int) -> None:
        if self.quota is not None and self.written + nbytes > self.quota:
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
        if nbytes > self.pool.free - (self.pool.size >> 5):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def note_written(self, nbytes: int) -> None:
        self.pool.note_written(nbytes)

    def now_ns(self) -> int:
        return time.time_ns() if self.clock is None else self.clock

    def space(self):
        return self.written, self.pool.free

    def sync(self) -> None:
        self.pool.sync()


class FS:
    """A pool on memory devices with one POSIX filesystem, reopenable."""

    def __init__(self, size: int = 64 * MiB, devs: list | None = None, **io_args) -> None:
        self.devs = devs or [MemoryDevice(size)]
        self.io_args = io_args
        self.pool = Pool.create("tank", [("file", self.devs)])
        self._mount()

    def _mount(self, **override) -> None:
        args = dict(self.io_args, **override)
        self.io = PoolIO(self.pool, **args)
        self.fs = Posix(self.io)
        self.pool.sync_hooks.append(lambda pool, fs=self.fs: fs.flush())

    def reopen(self, **override) -> Posix:
        """Close the pool cleanly and import it again."""
        self.pool.close()
        self.pool = Pool.open(self.devs)
        self._mount(**override)
        return self.fs

    def crash(self, **override) -> Posix:
        """Import the last committed state, as if the process had died now."""
        copies = [MemoryDevice(d.size, d.path, bytes(d.data)) for d in self.devs]
        self.pool.closed = True
        self.pool.blocks.close()
        self.devs = copies
        self.pool = Pool.open(self.devs)
        self._mount(**override)
        return self.fs

    def check(self) -> None:
        assert verify(self.pool).ok


@pytest.fixture
def t():
    return FS()


def errno_of(fn, *args, **kwargs) -> int:
    with pytest.raises(OSError) as e:
        fn(*args, **kwargs)
    return e.value.errno


def data_items(fs: Posix, ino: int) -> dict[int, object]:
    return {int.from_bytes(k[9:], "big"): decode_bp(v)
            for k, v in fs.tree.scan(kind_lo(ino, K_DATA), kind_hi(ino, K_DATA))}


def rand(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


# ---- files --------------------------------------------------------------------------------
def test_tree_of_files_survives_reopen(t):
    fs = t.fs
    fs.makedirs("/usr/share/doc")
    fs.makedirs("/var/log")
    files = {f"/usr/share/doc/f{i}": rand(i * 997, i) for i in range(20)}
    files["/var/log/big"] = rand(3 * MiB + 17, 99)
    for path, data in files.items():
        fs.write_file(path, data)
    fs.symlink(fs.resolve("/usr"), "doc", "share/doc")
    fs.link(fs.resolve("/var/log/big"), fs.resolve("/var"), "big-link")
    fs.mknod(ROOT_INO, "fifo", stat.S_IFIFO | 0o600)
    fs.mknod(ROOT_INO, "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    fs.setxattr(fs.resolve("/var/log/big"), "user.origin", b"test")
    for step in ("as written", "reopened", "after a crash"):
        fs = {"as written": lambda: t.fs, "reopened": t.reopen, "after a crash": t.crash}[step]()
        for path, data in files.items():
            assert fs.read_file(path) == data
        assert fs.read_file("/usr/doc/f3") == files["/usr/share/doc/f3"]
        assert fs.stat("/var/big-link").st_nlink == 2
        assert fs.stat("/var/big-link").st_ino == fs.stat("/var/log/big").st_ino
        assert stat.S_ISFIFO(fs.stat("/fifo").st_mode)
        a = fs.stat("/null")
        assert stat.S_ISCHR(a.st_mode) and a.st_rdev == os.makedev(1, 3)
        assert fs.getxattr(fs.resolve("/var/big-link"), "user.origin") == b"test"
        assert sorted(fs.listdir("/")) == [b"fifo", b"null", b"usr", b"var"]
        assert fs.stat("/").st_nlink == 4            # 2 + usr + var
        assert fs.stat("/usr/share/doc").st_size == 2 + 20
    t.check()


def test_small_file_is_one_block_of_its_own_size_and_records_after(t):
    fs = t.fs
    ino = fs.write_file("/small", rand(5000))
    big = fs.write_file("/big", rand(300_000))
    fs.flush()
    items = data_items(fs, ino)
    assert list(items) == [0] and items[0].lsize == 5000
    items = data_items(fs, big)
    assert {b: bp.lsize for b, bp in items.items()} == {0: 131072, 1: 131072, 2: 300_000 - 262144}
    assert fs.getattr(big).st_blocks * 512 >= 300_000
    # growing a small file keeps its record size: block 0 grows up to a full record
    fh = fs.open(ino, os.O_WRONLY)
    fs.write(fh, 200_000, b"x")
    fs.release(fh)
    fs.flush()
    assert {b: bp.lsize for b, bp in data_items(fs, ino).items()} == {0: 5000, 1: 200_001 - 131072}
    assert fs.read_file("/small") == rand(5000) + bytes(195_000) + b"x"


def test_recordsize_change_applies_to_new_files_only():
    t = FS(recordsize=4 * KiB)
    fs = t.fs
    old = fs.write_file("/old", rand(20_000))
    fs = t.reopen(recordsize=64 * KiB)
    new = fs.write_file("/new", rand(20_000))
    fs.flush()
    assert len(data_items(fs, old)) == 5 and fs.getattr(old).st_blksize == 4096
    assert len(data_items(fs, new)) == 1 and fs.getattr(new).st_blksize == 65536
    assert fs.read_file("/old") == fs.read_file("/new") == rand(20_000)


def test_writes_at_offsets_and_holes(t):
    fs = t.fs
    fh, _attr = fs.create(ROOT_INO, "sparse")
    model = bytearray()
    rng = random.Random(5)
    for _ in range(60):
        off = rng.choice([0, 1, 4095, 131071, 131072, 200_000, 10 * MiB + 3])
        data = rng.randbytes(rng.choice([1, 100, 4096, 131072, 131073, 300_000]))
        fs.write(fh, off, data)
        if len(model) < off:
            model += bytes(off - len(model))
        model[off:off + len(data)] = data
        if rng.random() < 0.2:
            fs.flush()
        off = rng.randrange(len(model) + 10)
        assert fs.read(fh, off, 200_000) == bytes(model[off:off + 200_000])
    fs.release(fh)
    fs = t.reopen()
    assert fs.read_file("/sparse") == bytes(model)
    # a file written only at its end has a single stored record
    fh = fs.open_path("/hole", os.O_CREAT | os.O_WRONLY)
    fs.write(fh, 50 * MiB, b"end")
    fs.release(fh)
    fs.flush()
    hole = fs.resolve("/hole")
    assert list(data_items(fs, hole)) == [50 * MiB // (128 * KiB)]
    assert fs.getattr(hole).st_size == 50 * MiB + 3 and fs.getattr(hole).st_blocks < 16
    fh = fs.open(hole)
    assert fs.read(fh, 10 * MiB, 10) == bytes(10)
    assert fs.lseek(fh, 0, os.SEEK_DATA) == 50 * MiB
    assert fs.lseek(fh, 0, os.SEEK_HOLE) == 0
    assert fs.lseek(fh, 50 * MiB + 1, os.SEEK_HOLE) == 50 * MiB + 3
    assert errno_of(fs.lseek, fh, 50 * MiB + 3, os.SEEK_DATA) == errno.ENXIO
    fs.release(fh)
    t.check()


def test_all_zero_records_are_holes_with_compression():
    t = FS(compress=True)
    fs = t.fs
    data = bytes(1 * MiB) + rand(1000) + bytes(MiB)
    ino = fs.write_file("/z", data)
    fs.flush()
    assert list(data_items(fs, ino)) == [8]
    assert fs.read_file("/z") == data
    # overwriting data with zeros frees the record
    fh = fs.open(ino, os.O_WRONLY)
    fs.write(fh, 8 * 128 * KiB, bytes(128 * KiB))
    fs.release(fh)
    fs.flush()
    assert data_items(fs, ino) == {}
    assert fs.read_file("/z") == bytes(len(data))
    t.check()


@pytest.mark.parametrize("flush_first", [False, True])
def test_truncate_down_and_up(t, flush_first):
    fs = t.fs
    data = rand(300_000)
    ino = fs.write_file("/f", data)
    if flush_first:
        fs.flush()
    fs.setattr(ino, size=200_000)
    fs.setattr(ino, size=400_000)
    expect = data[:200_000] + bytes(200_000)
    assert fs.read_file("/f") == expect
    fs.flush()
    items = data_items(fs, ino)
    assert list(items) == [0, 1] and items[1].lsize == 200_000 - 131072
    assert fs.read_file("/f") == expect
    fs.setattr(ino, size=10)
    fs.setattr(ino, size=131072 + 5)
    assert t.reopen().read_file("/f") == data[:10] + bytes(131072 - 5)
    fs = t.fs
    fs.setattr(ino, size=0)
    fs.flush()
    assert data_items(fs, ino) == {} and fs.getattr(ino).st_blocks == 0
    assert errno_of(fs.setattr, ino, size=MAX_FILE_SIZE + 1) == errno.EFBIG
    assert errno_of(fs.setattr, ROOT_INO, size=0) == errno.EISDIR
    t.check()


def test_o_trunc_and_o_append(t):
    fs = t.fs
    fs.write_file("/f", b"0123456789")
    fh = fs.open_path("/f", os.O_WRONLY | os.O_APPEND)
    fs.write(fh, 0, b"ab")
    fs.release(fh)
    assert fs.read_file("/f") == b"0123456789ab"
    fs.release(fs.open_path("/f", os.O_WRONLY | os.O_TRUNC))
    assert fs.read_file("/f") == b""
    assert errno_of(fs.open_path, "/f", os.O_CREAT | os.O_EXCL | os.O_WRONLY) == errno.EEXIST


# ---- names ---------------------------------------------------------------------------------
def test_hard_links_and_directory_nlink(t):
    fs = t.fs
    ino = fs.write_file("/a", b"data")
    d = fs.mkdir(ROOT_INO, "d").st_ino
    fs.link(ino, d, "b")
    fs.link(ino, ROOT_INO, "c")
    assert fs.getattr(ino).st_nlink == 3
    fs.unlink(ROOT_INO, "a")
    assert fs.getattr(ino).st_nlink == 2 and fs.read_file("/d/b") == b"data"
    assert errno_of(fs.link, d, ROOT_INO, "dlink") == errno.EPERM
    assert errno_of(fs.link, ino, ROOT_INO, "c") == errno.EEXIST
    assert fs.getattr(ROOT_INO).st_nlink == 3
    for name in ("x", "y", "z"):
        fs.mkdir(d, name)
    assert fs.getattr(d).st_nlink == 5 and fs.getattr(d).st_size == 2 + 4
    fs.rmdir(d, "y")
    assert fs.getattr(d).st_nlink == 4
    fs = t.reopen()
    assert fs.getattr(d).st_nlink == 4 and fs.getattr(ino).st_nlink == 2
    fs.unlink(d, "b")
    fs.unlink(ROOT_INO, "c")
    assert errno_of(fs.getattr, ino) == errno.ENOENT
    t.check()


def test_rename_cases(t):
    fs = t.fs
    R = ROOT_INO
    a = fs.write_file("/a", b"A")
    fs.write_file("/b", b"B")
    d1 = fs.makedirs("/d1/sub")
    d1 = fs.resolve("/d1")
    e = fs.makedirs("/empty")
    fs.makedirs("/full/x")
    # over an existing file: the target inode goes
    b = fs.resolve("/b")
    fs.rename(R, "a", R, "b")
    assert fs.read_file("/b") == b"A" and errno_of(fs.getattr, b) == errno.ENOENT
    assert fs.resolve("/b") == a and errno_of(fs.resolve, "/a") == errno.ENOENT
    # type and emptiness rules
    assert errno_of(fs.rename, R, "d1", R, "full") == errno.ENOTEMPTY
    assert errno_of(fs.rename, R, "d1", R, "b") == errno.ENOTDIR
    assert errno_of(fs.rename, R, "b", R, "empty") == errno.EISDIR
    assert errno_of(fs.rename, R, "d1", d1, "x") == errno.EINVAL
    assert errno_of(fs.rename, R, "d1", fs.resolve("/d1/sub"), "x") == errno.EINVAL
    assert errno_of(fs.rename, d1, "sub", R, "d1") == errno.ENOTEMPTY     # target holds source
    assert errno_of(fs.rename, R, "nope", R, "x") == errno.ENOENT
    # a directory over an empty one, moving between parents: nlinks follow
    assert fs.getattr(R).st_nlink == 2 + 3
    fs.rename(d1, "sub", R, "empty")
    assert fs.getattr(R).st_nlink == 2 + 3 and fs.getattr(d1).st_nlink == 2
    assert errno_of(fs.getattr, e) == errno.ENOENT
    sub = fs.resolve("/empty")
    assert [x.ino for x in fs.readdir(sub) if x.name == b".."] == [R]
    # noreplace and exchange
    assert errno_of(fs.rename, R, "b", R, "full", RENAME_NOREPLACE) == errno.EEXIST
    fs.rename(R, "b", d1, "moved", RENAME_NOREPLACE)
    fs.rename(d1, "moved", R, "full", RENAME_EXCHANGE)
    assert fs.read_file("/full") == b"A" and fs.resolve("/d1/moved/x")
    assert fs.getattr(d1).st_nlink == 3 and fs.getattr(R).st_nlink == 2 + 2
    assert [x.ino for x in fs.readdir(fs.resolve("/d1/moved")) if x.name == b".."] == [d1]
    assert errno_of(fs.rename, R, "full", R, "nothing", RENAME_EXCHANGE) == errno.ENOENT
    assert errno_of(fs.rename, R, "d1", d1, "moved", RENAME_EXCHANGE) == errno.EINVAL
    # two names of one file: nothing happens
    fs.link(fs.resolve("/full"), R, "alias")
    fs.rename(R, "alias", R, "full")
    assert fs.getattr(fs.resolve("/full")).st_nlink == 2 and fs.resolve("/alias")
    fs = t.reopen()
    assert fs.read_file("/alias") == b"A" and fs.getattr(R).st_nlink == 4
    t.check()


def test_parent_times_follow_changes(t):
    fs = t.fs
    io = t.io
    io.clock = 1_000
    d = fs.mkdir(ROOT_INO, "d").st_ino
    assert fs.getattr(ROOT_INO).st_mtime_ns == 1_000
    for step, op in enumerate([lambda: fs.create(d, "f"),
                               lambda: fs.link(fs.lookup(d, "f").st_ino, d, "g"),
                               lambda: fs.rename(d, "g", d, "h"),
                               lambda: fs.unlink(d, "h"),
                               lambda: fs.symlink(d, "s", "f"),
                               lambda: fs.mkdir(d, "e")]):
        io.clock = 2_000 + step
        op()
        a = fs.getattr(d)
        assert a.st_mtime_ns == a.st_ctime_ns == 2_000 + step
    f = fs.lookup(d, "f").st_ino
    io.clock = 5_000
    fs.setattr(f, mode=0o600)
    a = fs.getattr(f)
    assert a.st_ctime_ns == 5_000 and a.st_mtime_ns == 2_000 and a.st_birthtime_ns == 2_000
    fs.setattr(f, atime=123, mtime=456)
    a = fs.getattr(f)
    assert (a.st_atime_ns, a.st_mtime_ns) == (123, 456)
    io.clock = 6_000
    fs.setattr(f, mtime=NOW)
    assert fs.getattr(f).st_mtime_ns == 6_000 and stat.S_IMODE(fs.getattr(f).st_mode) == 0o600
    fh = fs.open(f, os.O_WRONLY)
    io.clock = 7_000
    fs.write(fh, 0, b"x")
    fs.release(fh)
    assert fs.getattr(f).st_mtime_ns == fs.getattr(f).st_ctime_ns == 7_000
    fs = t.reopen()
    a = fs.getattr(f)
    assert (a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns, a.st_birthtime_ns) == \
        (123, 7_000, 7_000, 2_000)


def test_atime_relatime():
    t = FS(atime=True)
    fs = t.fs
    t.io.clock = 10
    ino = fs.write_file("/f", b"abc")
    t.io.clock = 20
    assert fs.read_file("/f") == b"abc"
    assert fs.getattr(ino).st_atime_ns == 20           # atime <= mtime: updated
    t.io.clock = 30
    fs.read_file("/f")
    assert fs.getattr(ino).st_atime_ns == 20           # relatime: not again within a day
    t.io.clock = 20 + 86400 * 10**9
    fs.read_file("/f")
    assert fs.getattr(ino).st_atime_ns == t.io.clock


def test_mode_uid_gid_and_setgid_directories(t):
    fs = t.fs
    d = fs.mkdir(ROOT_INO, "shared", 0o2775, uid=10, gid=100).st_ino
    f = fs.mknod(d, "f", 0o640, uid=11, gid=200)
    sub = fs.mkdir(d, "sub", 0o755, uid=11, gid=200)
    assert (f.st_uid, f.st_gid, stat.S_IMODE(f.st_mode)) == (11, 100, 0o640)
    assert sub.st_gid == 100 and sub.st_mode & stat.S_ISGID
    fs.setattr(f.st_ino, mode=0o4755, uid=0, gid=0)
    a = fs.getattr(f.st_ino)
    assert stat.S_ISREG(a.st_mode) and stat.S_IMODE(a.st_mode) == 0o4755
    assert (a.st_uid, a.st_gid) == (0, 0)


def test_generation_and_inode_numbers_are_never_reused(t):
    fs = t.fs
    seen = set()
    for i in range(5):
        a = fs.mknod(ROOT_INO, "f", 0o644)
        assert a.st_ino not in seen and a.generation == t.pool.txg
        seen.add(a.st_ino)
        fs.unlink(ROOT_INO, "f")
        t.pool.sync()
    fs = t.reopen()
    assert fs.mknod(ROOT_INO, "f", 0o644).st_ino > max(seen)
    assert fs.objects == 2


# ---- open files -----------------------------------------------------------------------------
def test_unlinked_file_lives_while_open(t):
    fs = t.fs
    data = rand(MiB)
    ino = fs.write_file("/f", data)
    t.pool.sync()
    fh = fs.open(ino, os.O_RDWR)
    fs.unlink(ROOT_INO, "f")
    assert errno_of(fs.resolve, "/f") == errno.ENOENT
    assert fs.getattr(ino).st_nlink == 0
    fs.write(fh, MiB, b"more")
    assert fs.read(fh, 0, 2 * MiB) == data + b"more"
    t.pool.sync()
    assert fs.read(fh, MiB - 2, 10) == data[-2:] + b"more"
    assert list(fs.tree.scan(UNLINKED_LO, UNLINKED_HI))
    before = t.pool.allocated
    fs.release(fh)
    assert errno_of(fs.getattr, ino) == errno.ENOENT
    assert not list(fs.tree.scan(ino_prefix(ino), ino_prefix(ino + 1)))
    t.pool.sync()
    t.pool.sync()
    assert t.pool.allocated < before - MiB
    assert not list(fs.tree.scan(UNLINKED_LO, UNLINKED_HI))
    assert fs.objects == 1
    t.check()


def test_unlinked_set_items_are_written_at_flush_for_files_still_known(t):
    """rm -rf through FUSE: the kernel knows each file it unlinks and forgets it soon after.
    One forgotten in the same txg never reaches the unlinked set; one still known at the sync
    is in it; close() reclaims both those in the tree and those not flushed yet."""
    fs = t.fs
    fs.track_lookups = True
    inos = [fs.write_file(f"/{n}", n.encode() * 100) for n in "fgh"]
    t.pool.sync()
    for n in "fgh":
        fs.lookup(ROOT_INO, n)
    fs.unlink(ROOT_INO, "f")
    fs.unlink(ROOT_INO, "g")
    assert fs.getattr(inos[0]).st_nlink == 0
    fs.forget(inos[0])
    assert errno_of(fs.getattr, inos[0]) == errno.ENOENT
    t.pool.sync()
    assert [k for k, _v in fs.tree.scan(UNLINKED_LO, UNLINKED_HI)] == [unlinked_key(inos[1])]
    fs.unlink(ROOT_INO, "h")                # still known: in the set from the next flush on
    fs.close()
    t.pool.sync()
    assert not list(fs.tree.scan(UNLINKED_LO, UNLINKED_HI))
    for ino in inos:
        assert not list(fs.tree.scan(ino_prefix(ino), ino_prefix(ino + 1)))
    assert fs.objects == 1
    t.check()


def test_unlinked_open_files_are_reclaimed_after_a_crash(t):
    fs = t.fs
    fs.makedirs("/keep")
    fs.write_file("/keep/k", b"k")
    inos = [fs.write_file(f"/f{i}", rand(512 * KiB, i)) for i in range(3)]
    fs.mkdir(ROOT_INO, "gone")
    dh = fs.opendir(fs.resolve("/gone"))
    handles = [fs.open(ino) for ino in inos]
    for i in range(3):
        fs.unlink(ROOT_INO, f"f{i}")
    fs.rmdir(ROOT_INO, "gone")
    t.pool.sync()
    assert len(list(fs.tree.scan(UNLINKED_LO, UNLINKED_HI))) == 4
    before = t.pool.allocated
    assert fs.read(handles[1], 0, 10) == rand(512 * KiB, 1)[:10]
    fs = t.crash()                                          # the process dies holding them
    assert not list(fs.tree.scan(UNLINKED_LO, UNLINKED_HI))
    for ino in inos:
        assert errno_of(fs.getattr, ino) == errno.ENOENT
    t.pool.sync()
    t.pool.sync()
    assert t.pool.allocated <= before - 3 * 512 * KiB
    assert fs.objects == 3 and fs.read_file("/keep/k") == b"k"
    t.check()
    del dh


def test_lookup_counts_keep_unlinked_inodes_for_fuse(t):
    fs = Posix(t.io, track_lookups=True)
    a = fs.mknod(ROOT_INO, "f", 0o644)          # counts one lookup
    fs.lookup(ROOT_INO, "f")                    # two
    fs.unlink(ROOT_INO, "f")
    assert fs.getattr(a.st_ino).st_nlink == 0
    fs.forget(a.st_ino, 1)
    assert fs.getattr(a.st_ino).st_nlink == 0
    fs.forget(a.st_ino, 1)
    assert errno_of(fs.getattr, a.st_ino) == errno.ENOENT


def test_close_reclaims_unlinked_files(t):
    fs = t.fs
    ino = fs.write_file("/f", b"x" * 1000)
    fs.open(ino)
    fs.unlink(ROOT_INO, "f")
    fs.close()
    assert errno_of(fs.getattr, ino) == errno.ENOENT


def test_reload_after_the_tree_is_replaced(t):
    """A rollback replaces the dataset's tree: reload() drops buffered changes and rereads."""
    fs = t.fs
    ino = fs.write_file("/f", b"old")
    fs.makedirs("/d")
    t.pool.sync()
    old_root = fs.tree.root
    fs.write_file("/f", b"new content")
    fs.makedirs("/e")
    t.pool.sync()
    fh = fs.open(ino, os.O_WRONLY)
    fs.write(fh, 0, b"buffered")                 # not flushed: must not survive the reload
    fs.reload(Tree(fs.tree.store, old_root))
    assert fs.read_file("/f") == b"old" and sorted(fs.listdir("/")) == [b"d", b"f"]
    assert fs.read(fs.open(ino), 0, 100) == b"old"
    fs.release(fh)
    assert fs.dirty_bytes == 0


# ---- xattrs ----------------------------------------------------------------------------------
def test_xattrs(t):
    fs = t.fs
    f = fs.write_file("/f", b"")
    d = fs.mkdir(ROOT_INO, "d").st_ino
    s = fs.symlink(ROOT_INO, "s", "f").st_ino
    big = rand(64 * KiB)
    fs.setxattr(f, "user.a", b"1")
    fs.setxattr(f, b"user.big", big)
    fs.setxattr(f, "user.mid", rand(5000))
    fs.setxattr(d, "trusted.x", b"")
    fs.setxattr(s, "user.s", b"link")
    assert sorted(fs.listxattr(f)) == [b"user.a", b"user.big", b"user.mid"]
    assert fs.getxattr(f, "user.big") == big and fs.getxattr(d, "trusted.x") == b""
    assert errno_of(fs.setxattr, f, "user.a", b"2", XATTR_CREATE) == errno.EEXIST
    assert errno_of(fs.setxattr, f, "user.n", b"2", XATTR_REPLACE) == errno.ENODATA
    assert errno_of(fs.getxattr, f, "user.n") == errno.ENODATA
    assert errno_of(fs.removexattr, f, "user.n") == errno.ENODATA
    assert errno_of(fs.setxattr, f, "user.huge", bytes(64 * KiB + 1)) == errno.E2BIG
    assert errno_of(fs.setxattr, f, "u" * 256, b"") == errno.ERANGE
    # acltype=off: POSIX ACLs are refused, not stored (cp -a then falls back to chmod)
    for call in (fs.getxattr, fs.removexattr):
        assert errno_of(call, f, "system.posix_acl_access") == errno.EOPNOTSUPP
    assert errno_of(fs.setxattr, d, "system.posix_acl_default", b"\2\0\0\0") == errno.EOPNOTSUPP
    fs.setxattr(f, "user.a", b"22", XATTR_REPLACE)
    used = fs.getattr(f).st_blocks
    assert used * 512 >= 64 * KiB
    fs.setxattr(f, "user.big", b"small now")
    assert fs.getattr(f).st_blocks < used
    fs = t.reopen()
    assert fs.getxattr(f, "user.a") == b"22" and fs.getxattr(f, "user.big") == b"small now"
    assert fs.getxattr(f, "user.mid") == rand(5000) and fs.getxattr(s, "user.s") == b"link"
    fs.removexattr(f, "user.mid")
    assert sorted(fs.listxattr(f)) == [b"user.a", b"user.big"]
    fs.unlink(ROOT_INO, "f")
    t.check()


# ---- symlinks and paths ----------------------------------------------------------------------
def test_symlinks_and_path_resolution(t):
    fs = t.fs
    fs.makedirs("/a/b")
    fs.write_file("/a/b/file", b"content")
    fs.symlink(ROOT_INO, "abs", "/a/b")
    fs.symlink(fs.resolve("/a"), "rel", "b/file")
    fs.symlink(fs.resolve("/a"), "up", "../abs/file")
    fs.symlink(ROOT_INO, "loop1", "loop2")
    fs.symlink(ROOT_INO, "loop2", "loop1")
    fs.symlink(ROOT_INO, "dangling", "a/new")
    assert fs.readlink(fs.resolve("/a/rel", follow=False)) == b"b/file"
    assert fs.read_file("/abs/file") == fs.read_file("/a/rel") == fs.read_file("/a/up") == b"content"
    assert fs.stat("/a/rel", follow=False).st_size == 6
    assert errno_of(fs.resolve, "/loop1") == errno.ELOOP
    assert errno_of(fs.resolve, "/a/b/file/x") == errno.ENOTDIR
    assert errno_of(fs.resolve, "/a/b/file/") == errno.ENOTDIR
    assert errno_of(fs.readlink, fs.resolve("/a")) == errno.EINVAL
    assert fs.resolve("/a/b/../b/./file") == fs.resolve("/a/rel")
    fs.write_file("/dangling", b"through the link")          # O_CREAT follows a dangling link
    assert fs.read_file("/a/new") == b"through the link"
    assert errno_of(fs.symlink, ROOT_INO, "long", b"x" * 4096) == errno.ENAMETOOLONG
    assert errno_of(fs.open, fs.resolve("/abs", follow=False)) == errno.ELOOP


def test_error_numbers(t):
    fs = t.fs
    R = ROOT_INO
    f = fs.write_file("/f", b"x")
    d = fs.makedirs("/d/e")
    d = fs.resolve("/d")
    assert fs.mknod(R, "n" * 255, 0o644)
    assert errno_of(fs.mknod, R, "n" * 256, 0o644) == errno.ENAMETOOLONG
    assert errno_of(fs.lookup, R, "n" * 256) == errno.ENAMETOOLONG
    assert errno_of(fs.mkdir, R, "f") == errno.EEXIST
    assert errno_of(fs.mkdir, R, ".") == errno.EEXIST
    assert errno_of(fs.mkdir, f, "x") == errno.ENOTDIR
    assert errno_of(fs.mknod, R, "a/b", 0o644) == errno.EINVAL
    assert errno_of(fs.mknod, R, "dir", stat.S_IFDIR | 0o755) == errno.EINVAL
    assert errno_of(fs.lookup, R, "missing") == errno.ENOENT
    assert errno_of(fs.rmdir, R, "d") == errno.ENOTEMPTY
    assert errno_of(fs.rmdir, R, "f") == errno.ENOTDIR
    assert errno_of(fs.rmdir, d, ".") == errno.EINVAL
    assert errno_of(fs.unlink, R, "d") == errno.EISDIR
    assert errno_of(fs.unlink, R, "missing") == errno.ENOENT
    assert errno_of(fs.open, d, os.O_WRONLY) == errno.EISDIR
    assert errno_of(fs.opendir, f) == errno.ENOTDIR
    assert errno_of(fs.readdir, f) == errno.ENOTDIR
    assert errno_of(fs.getattr, 999_999) == errno.ENOENT
    assert errno_of(fs.getattr, 0) == errno.ENOENT
    fh = fs.open(f, os.O_RDONLY)
    assert errno_of(fs.write, fh, 0, b"x") == errno.EBADF
    fs.release(fh)
    assert errno_of(fs.read, fh, 0, 1) == errno.EBADF
    fh = fs.open(f, os.O_WRONLY)
    assert errno_of(fs.read, fh, 0, 1) == errno.EBADF
    assert errno_of(fs.write, fh, MAX_FILE_SIZE, b"x") == errno.EFBIG
    assert fs.write(fh, MAX_FILE_SIZE - 1, b"x") == 1      # the last byte a file can have
    assert fs.getattr(f).st_size == MAX_FILE_SIZE
    fs.release(fh)
    fs.setattr(f, size=1)
    dead = fs.mkdir(d, "dead").st_ino
    fs.rmdir(d, "dead")
    assert errno_of(fs.mknod, dead, "x", 0o644) == errno.ENOENT
    t.check()


def test_read_only_filesystem_refuses_every_change(t):
    fs = t.fs
    f = fs.write_file("/f", b"data")
    fs.setxattr(f, "user.x", b"1")
    fs.makedirs("/d")
    t.pool.sync()
    fs = t.reopen(readonly=True)
    txg = t.pool.synced_txg
    R = ROOT_INO
    changes = [lambda: fs.mknod(R, "n", 0o644), lambda: fs.mkdir(R, "n"),
               lambda: fs.symlink(R, "n", "f"), lambda: fs.link(f, R, "n"),
               lambda: fs.unlink(R, "f"), lambda: fs.rmdir(R, "d"),
               lambda: fs.rename(R, "f", R, "g"), lambda: fs.setattr(f, mode=0o600),
               lambda: fs.setattr(f, size=0), lambda: fs.open(f, os.O_WRONLY),
               lambda: fs.open(f, os.O_RDONLY | os.O_TRUNC),
               lambda: fs.setxattr(f, "user.y", b""), lambda: fs.removexattr(f, "user.x"),
               lambda: fs.create(R, "n"), lambda: fs.write_file("/f", b"")]
    for change in changes:
        assert errno_of(change) == errno.EROFS
    assert fs.read_file("/f") == b"data" and fs.getxattr(f, "user.x") == b"1"
    assert sorted(fs.listdir("/")) == [b"d", b"f"]
    fs.fsync()
    assert t.pool.sync() == txg


def test_empty_read_only_dataset_shows_an_empty_root():
    pool = Pool.create("tank", [("file", [MemoryDevice(16 * MiB)])])
    fs = Posix(PoolIO(pool, b"empty", readonly=True))
    assert fs.listdir("/") == [] and stat.S_ISDIR(fs.getattr(ROOT_INO).st_mode)
    assert fs.tree.get(b"\0" * 9) is None


# ---- space -----------------------------------------------------------------------------------
def test_quota_stops_writes_cleanly():
    t = FS(quota=2 * MiB)
    fs = t.fs
    fh, attr = fs.create(ROOT_INO, "f")
    chunk = rand(256 * KiB)
    written = 0
    with pytest.raises(OSError) as e:
        while True:
            fs.write(fh, written, chunk)
            written += len(chunk)
    assert e.value.errno == errno.EDQUOT
    assert 0 < written <= 2 * MiB
    assert fs.getattr(attr.st_ino).st_size == written
    fs.release(fh)
    fs = t.reopen()
    assert fs.read_file("/f") == chunk * (written // len(chunk))
    fs.unlink(ROOT_INO, "f")                      # removing needs no space
    t.check()


def test_full_pool_gives_enospc_and_nothing_half_written():
    t = FS(size=16 * MiB)
    fs = t.fs
    fh, attr = fs.create(ROOT_INO, "f")
    chunk = rand(MiB)
    n = 0
    with pytest.raises(OSError) as e:
        while True:
            fs.write(fh, n * MiB, chunk)
            n += 1
            t.pool.sync()
    assert e.value.errno == errno.ENOSPC and n > 5
    assert errno_of(fs.write, fh, n * MiB, chunk) == errno.ENOSPC
    assert fs.getattr(attr.st_ino).st_size == n * MiB
    fs.release(fh)
    fs = t.reopen()
    assert fs.read_file("/f") == chunk * n
    st = fs.statfs()
    assert st.f_bavail * 512 <= 2 * MiB and st.f_namemax == 255 and st.f_files >= fs.objects
    t.check()


def test_dirty_data_is_bounded_by_the_pool_budget(t):
    t.pool.dirty_max = 2 * MiB
    fs = t.fs
    fh, attr = fs.create(ROOT_INO, "f")
    txg = t.pool.synced_txg
    peak = 0
    for off in range(0, 16 * MiB, 4 * KiB):
        fs.write(fh, off, b"y" * 4096)
        peak = max(peak, fs.dirty_bytes)
    fs.release(fh)
    assert peak <= 2 * MiB + 128 * KiB
    assert t.pool.synced_txg >= txg + 7
    assert fs.read_file("/f") == b"y" * 16 * MiB


# ---- readdir -------------------------------------------------------------------------------
def test_readdir_cookies_survive_concurrent_changes(t):
    fs = t.fs
    d = fs.mkdir(ROOT_INO, "d").st_ino
    for i in range(400):
        fs.mknod(d, f"f{i}", 0o644)
    first = fs.readdir(d, 0, limit=100)
    assert [e.name for e in first[:2]] == [b".", b".."]
    seen = [e.name for e in first]
    # meanwhile: 300 new names, 100 removals of names not seen yet, 50 of names seen
    later = [e.name for e in fs.readdir(d, first[-1].cookie)]
    for i in range(300):
        fs.mknod(d, f"n{i}", 0o644)
    for name in later[:100]:
        fs.unlink(d, name)
    for name in seen[2:52]:
        fs.unlink(d, name)
    t.pool.sync()
    cookie = first[-1].cookie
    while True:
        batch = fs.readdir(d, cookie, limit=37)
        if not batch:
            break
        seen += [e.name for e in batch]
        cookie = batch[-1].cookie
    assert len(seen) == len(set(seen))
    survivors = {f"f{i}".encode() for i in range(400)} - set(later[:100]) - set(seen[2:52])
    assert survivors <= set(seen)
    assert not set(later[:100]) & set(seen[100:])
    cookies = [e.cookie for e in fs.readdir(d)]
    assert cookies == sorted(cookies) and len(cookies) == 2 + 400 - 150 + 300
    assert fs.getattr(d).st_size == len(cookies)


def test_names_whose_hashes_collide_take_the_lowest_free_differentiator(t, monkeypatch):
    """Every name hashes alike: entries share one cookie range, told apart by the collision
    differentiator, which a new entry takes as the lowest one no entry of that hash holds."""
    monkeypatch.setattr(posix_names, "name_hash", lambda name: 7)
    fs = t.fs
    d = fs.mkdir(ROOT_INO, "d").st_ino
    names = [f"n{i}".encode() for i in range(6)]
    for name in names:
        fs.mknod(d, name, 0o644)
    base = 7 << CD_BITS

    def cookies() -> dict[bytes, int]:
        return {e.name: e.cookie for e in fs.readdir(d)[2:]}
    assert cookies() == {name: base + i for i, name in enumerate(names)}
    fs.unlink(d, b"n1")
    fs.rename(d, b"n4", d, b"m4")           # leaves cd 4, then takes the lowest free: 1
    assert errno_of(fs.mknod, d, b"n0", 0o644) == errno.EEXIST
    fs.mknod(d, b"x", 0o644)                # cd 4
    fs.link(fs.lookup(d, b"x").st_ino, d, b"y")     # cd 6
    assert cookies() == {b"n0": base, b"m4": base + 1, b"n2": base + 2, b"n3": base + 3,
                         b"x": base + 4, b"n5": base + 5, b"y": base + 6}
    for name, cookie in cookies().items():
        assert fs.lookup(d, name).st_ino == fs.readdir(d, cookie - 1, 1)[0].ino
    assert errno_of(fs.lookup, d, b"n1") == errno.ENOENT
    fs = t.reopen()
    assert sorted(fs.listdir("/d")) == [b"m4", b"n0", b"n2", b"n3", b"n5", b"x", b"y"]
    t.check()


def test_many_entries_with_long_names_survive_reopen(t):
    fs = t.fs
    names = {("%03d" % i + "x" * 250).encode() for i in range(300)}
    for name in names:
        fs.mkdir(ROOT_INO, name)
    fs = t.reopen()
    assert set(fs.listdir("/")) == names and fs.getattr(ROOT_INO).st_nlink == 302
    for name in names:
        fs.rmdir(ROOT_INO, name)
    assert fs.listdir("/") == []
    t.check()


def test_tiny_inode_cache_changes_nothing(monkeypatch):
    """The same random operations with the inode cache trimmed all the time and with no trimming
    give the same filesystem."""
    import fusezfs.zpl.posix as posix_mod
    trees = []
    for tiny in (False, True):
        if tiny:
            monkeypatch.setattr(posix_mod, "INODE_CACHE", 2)
        t = FS(size=32 * MiB, recordsize=4096)
        side = OurSide(t)
        rng = random.Random(11)
        paths = [f"{a}/{b}" for a in "abcdef" for b in "xyz"] + list("abcdef")
        for i in range(600):
            op = rng.choice(OPS_FOR_CRASH)(rng)
            op = (op[0],) + tuple(rng.choice(paths) if isinstance(x, str) and x in PATHS
                                  else x for x in op[1:])
            if op[0] in ("hold", "release"):
                continue
            try:
                side.run(op)
            except OSError:
                pass
            if i % 97 == 0:
                t.pool.sync()
        before = our_tree(t.fs)
        t.reopen()
        assert our_tree(t.fs) == before and len(before) > 10
        trees.append(before)
        t.check()
    assert trees[0] == trees[1]


# ---- the model: fusezfs against a directory on the host ------------------------------------
NAMES = ["a", "b", "c"]
PATHS = NAMES + [f"{x}/{y}" for x in NAMES for y in NAMES]
TARGETS = ["a", "b", "c", "a/b", "x"]
# Times a test sets explicitly are before 2001; every other time is one an operation stamped,
# at or after the test's start. describe() shows the first exactly and the second as "recent",
# and allows nothing else: an operation that must stamp a time turns an explicit value into
# "recent" on both sides, and one that must not leaves it.
EXPLICIT_BEFORE = 978_307_200 * 10**9                          # 2001-01-01
OLD_TIMES = [631_152_000_123_456_789, 700_000_000_000_000_001, 946_684_799_999_999_999]
LOADED = time.time_ns() - 10**9     # the kernel stamps with a coarse clock, a tick behind
IDS = [0, 1000, 65534]
NOATIME = getattr(os, "O_NOATIME", 0)

path_st = st.sampled_from(PATHS)
time_st = st.sampled_from(OLD_TIMES)
op_st = st.one_of(
    st.tuples(st.just("write"), path_st, st.sampled_from([0, 1000, 131072 - 100, 300_000]),
              st.sampled_from([0, 1, 5000, 140_000]), st.integers(0, 1000)),
    st.tuples(st.just("truncate"), path_st, st.sampled_from([0, 10, 4096, 131072, 200_000])),
    st.tuples(st.just("mkdir"), path_st),
    st.tuples(st.just("rmdir"), path_st),
    st.tuples(st.just("unlink"), path_st),
    st.tuples(st.just("rename"), path_st, path_st),
    st.tuples(st.just("link"), path_st, path_st),
    st.tuples(st.just("symlink"), st.sampled_from(TARGETS), path_st),
    st.tuples(st.just("chmod"), path_st, st.sampled_from([0o600, 0o640, 0o755])),
    st.tuples(st.just("utime"), path_st, time_st, time_st),
    st.tuples(st.just("read"), path_st),
    st.tuples(st.just("listdir"), path_st),
    st.tuples(st.just("setxattr"), path_st, st.sampled_from(["user.a", "user.b"]),
              st.sampled_from([b"", b"v", b"w" * 1000])),
    st.tuples(st.just("openunlink"), path_st, st.integers(0, 1000)),
    st.tuples(st.just("sync")),
    st.tuples(st.just("reopen")),
    # owners: only root may give files away (on the host side)
    *([st.tuples(st.just("chown"), path_st, st.sampled_from(IDS), st.sampled_from(IDS))]
      if os.geteuid() == 0 else []),
)


# every sequence starts from this small tree, so that most operations meet something (and
# some times set long ago, that the operations must stamp anew or leave)
PRELUDE = [("mkdir", "a"), ("mkdir", "b"), ("mkdir", "a/b"), ("write", "c", 0, 5000, 1),
           ("write", "a/a", 0, 140_000, 2), ("write", "b/c", 300_000, 1, 3),
           ("symlink", "a/b", "b/b"), ("link", "c", "a/c"), ("setxattr", "c", "user.a", b"v"),
           ("utime", "c", OLD_TIMES[0], OLD_TIMES[1]), ("utime", "a", OLD_TIMES[1], OLD_TIMES[2]),
           ("utime", "a/a", OLD_TIMES[2], OLD_TIMES[0]), ("utime", "b", OLD_TIMES[0], OLD_TIMES[0])]


def host_read(path: str, fd: int | None = None) -> bytes:
    """A file's bytes (through `fd`, or opened without touching its atime)."""
    own = fd is None
    if own:
        fd = _open_noatime(path)
    try:
        out, off = [], 0
        while chunk := os.pread(fd, 1 << 20, off):
            out.append(chunk)
            off += len(chunk)
        return b"".join(out)
    finally:
        if own:
            os.close(fd)


def _open_noatime(path: str, flags: int = os.O_RDONLY) -> int:
    try:
        return os.open(path, flags | NOATIME)
    except PermissionError:             # O_NOATIME: the owner's or CAP_FOWNER's only
        return os.open(path, flags)


class HostSide:
    def __init__(self, root: str) -> None:
        self.root = root

    def p(self, path: str) -> str:
        return os.path.join(self.root, path)

    def run(self, op):
        kind, *args = op
        p = self.p
        if kind == "write":
            path, off, n, seed = args
            fd = os.open(p(path), os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.pwrite(fd, rand(n, seed), off)
            finally:
                os.close(fd)
        elif kind == "truncate":
            same = os.stat(p(args[0])).st_size == args[1]
            os.truncate(p(args[0]), args[1])
            if same:
                # ZFS stamps mtime and ctime on every size change asked for, the same size
                # too (zfs_setattr: ATTR_SIZE without ATTR_MTIME is CONTENT_MODIFIED); ext4
                # and tmpfs only when the size changes
                os.utime(p(args[0]), ns=(os.stat(p(args[0])).st_atime_ns, time.time_ns()))
        elif kind == "mkdir":
            os.mkdir(p(args[0]), 0o755)
        elif kind == "rmdir":
            os.rmdir(p(args[0]))
        elif kind == "unlink":
            os.unlink(p(args[0]))
        elif kind == "rename":
            os.rename(p(args[0]), p(args[1]))
        elif kind == "link":
            os.link(p(args[0]), p(args[1]), follow_symlinks=False)
        elif kind == "symlink":
            os.symlink(args[0], p(args[1]))
        elif kind == "chmod":
            os.chmod(p(args[0]), args[1])
        elif kind == "chown":
            os.chown(p(args[0]), args[1], args[2])
        elif kind == "utime":
            os.utime(p(args[0]), ns=(args[1], args[2]))
        elif kind == "read":
            fd = os.open(p(args[0]), os.O_RDONLY)
            try:
                return host_read(p(args[0]), fd)
            finally:
                os.close(fd)
        elif kind == "listdir":
            return sorted(os.listdir(p(args[0])))
        elif kind == "setxattr":
            os.setxattr(p(args[0]), args[1], args[2])
        elif kind == "openunlink":
            path, seed = args
            if not stat.S_ISREG(os.lstat(p(path)).st_mode):
                return None
            fd = os.open(p(path), os.O_RDWR)
            try:
                os.unlink(p(path))
                os.pwrite(fd, rand(100, seed), 7)
                return os.pread(fd, 1 << 20, 0)
            finally:
                os.close(fd)
        return None


class OurSide:
    def __init__(self, t: FS) -> None:
        self.t = t
        self.ids = {"uid": os.geteuid(), "gid": os.getegid()}     # the host side's creator

    def run(self, op):
        fs = self.t.fs
        kind, *args = op
        if kind == "write":
            path, off, n, seed = args
            fh = fs.open_path(path, os.O_WRONLY | os.O_CREAT, 0o644, **self.ids)
            try:
                fs.write(fh, off, rand(n, seed))
            finally:
                fs.release(fh)
        elif kind == "truncate":
            fs.setattr(fs.resolve(args[0]), size=args[1])
        elif kind == "mkdir":
            fs.mkdir(*fs.parent_of(args[0]), 0o755, **self.ids)
        elif kind == "rmdir":
            fs.rmdir(*fs.parent_of(args[0]))
        elif kind == "unlink":
            fs.unlink(*fs.parent_of(args[0]))
        elif kind == "rename":
            fs.rename(*fs.parent_of(args[0]), *fs.parent_of(args[1]))
        elif kind == "link":
            ino = fs.resolve(args[0], follow=False)
            fs.link(ino, *fs.parent_of(args[1]))
        elif kind == "symlink":
            fs.symlink(*fs.parent_of(args[1]), args[0], **self.ids)
        elif kind == "chmod":
            fs.setattr(fs.resolve(args[0]), mode=args[1])
        elif kind == "chown":
            fs.setattr(fs.resolve(args[0]), uid=args[1], gid=args[2])
        elif kind == "utime":
            fs.setattr(fs.resolve(args[0]), atime=args[1], mtime=args[2])
        elif kind == "read":
            fh = fs.open(fs.resolve(args[0]))
            try:
                return fs.read(fh, 0, 1 << 20)
            finally:
                fs.release(fh)
        elif kind == "listdir":
            return sorted(n.decode() for n in fs.listdir(args[0]))
        elif kind == "setxattr":
            fs.setxattr(fs.resolve(args[0]), args[1], args[2])
        elif kind == "openunlink":
            path, seed = args
            if not stat.S_ISREG(fs.stat(path, follow=False).st_mode):
                return None
            fh = fs.open_path(path, os.O_RDWR)
            try:
                fs.unlink(*fs.parent_of(path))
                fs.write(fh, 7, rand(100, seed))
                return fs.read(fh, 0, 1 << 20)
            finally:
                fs.release(fh)
        elif kind == "sync":
            self.t.pool.sync()
        elif kind == "reopen":
            self.t.reopen()
        return None


def host_tree(root: str, since: int = LOADED, atime: bool = False) -> dict:
    """Every name below `root`, described; the walk reads without touching atimes."""
    out = {}

    def walk(path: str, prefix: str) -> None:
        fd = _open_noatime(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            names = os.listdir(fd)
        finally:
            os.close(fd)
        for name in names:
            full, rel = os.path.join(path, name), prefix + name
            s = os.lstat(full)
            out[rel] = describe(s, lambda: host_read(full), lambda: os.readlink(full).encode(),
                                lambda: {x.encode(): os.getxattr(full, x, follow_symlinks=False)
                                         for x in os.listxattr(full, follow_symlinks=False)},
                                since, atime)
            if stat.S_ISDIR(s.st_mode):
                walk(full, rel + "/")

    walk(root, "")
    return canonical_links(out)


def our_tree(fs: Posix, since: int = LOADED, atime: bool = False) -> dict:
    """Every name in `fs`, described; the walk's reads are not accesses (as the host side's
    O_NOATIME), so the atime an operation left is what is seen."""
    out = {}

    def walk(ino: int, prefix: str) -> None:
        for e in fs.readdir(ino):
            if e.name in (b".", b".."):
                continue
            rel = prefix + e.name.decode()
            a = fs.getattr(e.ino)
            assert a.st_ino == e.ino and stat.S_IFMT(a.st_mode) >> 12 == e.type
            fh = None
            if stat.S_ISREG(a.st_mode):
                fh = fs.open(e.ino)
            out[rel] = describe(a, lambda: fs.read(fh, 0, a.st_size), lambda: fs.readlink(e.ino),
                                lambda: {x: fs.getxattr(e.ino, x) for x in fs.listxattr(e.ino)},
                                since, atime)
            if fh is not None:
                fs.release(fh)
            if stat.S_ISDIR(a.st_mode):
                walk(e.ino, rel + "/")

    saved = getattr(fs.io, "atime", False)
    fs.io.atime = False
    try:
        walk(ROOT_INO, "")
    finally:
        fs.io.atime = saved
    return canonical_links(out)


def when(ns: int, since: int):
    """A time as the model compares it (see EXPLICIT_BEFORE)."""
    if ns < EXPLICIT_BEFORE:
        return ns
    assert ns >= since, f"time {ns} is neither one set explicitly nor one stamped since {since}"
    return "recent"


def describe(s, content, target, xattrs, since: int = LOADED, atime: bool = False) -> dict:
    """What is compared of a name: `s` is an os.stat_result or a posix Attr."""
    mode = s.st_mode
    d = {"type": stat.S_IFMT(mode), "nlink": s.st_nlink, "ino": s.st_ino, "uid": s.st_uid,
         "gid": s.st_gid, "mtime": when(s.st_mtime_ns, since), "ctime": when(s.st_ctime_ns, since)}
    if atime:
        d["atime"] = when(s.st_atime_ns, since)
    if stat.S_ISREG(mode):
        d.update(size=s.st_size, data=content(), mode=stat.S_IMODE(mode), xattrs=xattrs())
    elif stat.S_ISLNK(mode):
        d.update(size=s.st_size, target=target())
    else:
        d.update(mode=stat.S_IMODE(mode), xattrs=xattrs())
    return d


def canonical_links(tree: dict) -> dict:
    """Replace inode numbers by the first path of each inode (hard links name the same one)."""
    first: dict[int, str] = {}
    for rel in sorted(tree):
        first.setdefault(tree[rel]["ino"], rel)
    for rel in tree:
        tree[rel]["ino"] = first[tree[rel]["ino"]]
    return tree


def outcome(side, op):
    try:
        return ("ok", side.run(op))
    except OSError as e:
        return ("error", errno.errorcode.get(e.errno, e.errno))


@functools.cache
def host_updates_atime() -> bool:
    """Whether a read updates atime where the tests make their host directories (relatime or
    strictatime; not noatime): then fusezfs runs with atime=on and atimes are compared too."""
    root = tempfile.mkdtemp(prefix="fzatime-")
    try:
        path = os.path.join(root, "f")
        with open(path, "wb") as f:
            f.write(b"x")
        os.utime(path, ns=(OLD_TIMES[0], OLD_TIMES[0]))
        with open(path, "rb") as f:
            f.read()
        return os.stat(path).st_atime_ns != OLD_TIMES[0]
    finally:
        shutil.rmtree(root)


@settings(max_examples=int(os.environ.get("FUSEZFS_MODEL_EXAMPLES", 200)), deadline=None,
          suppress_health_check=list(HealthCheck))
@given(ops=st.lists(op_st, min_size=5, max_size=30),
       recordsize=st.sampled_from([512, 4096, 128 * KiB]), compress=st.booleans())
def test_model_against_host_directory(ops, recordsize, compress):
    """Operations, their results, and the trees (types, links, sizes, bytes, modes, xattrs,
    owners, times, after every operation that changes them) of fusezfs and a host directory."""
    since = time.time_ns() - 10**9     # the kernel's coarse clock may stamp a tick behind
    atime = host_updates_atime()
    root = tempfile.mkdtemp(prefix="fzposix-")
    try:
        t = FS(size=16 * MiB, recordsize=recordsize, compress=compress, atime=atime)
        host, ours = HostSide(root), OurSide(t)
        for i, op in enumerate(PRELUDE + ops):
            want = outcome(host, op) if op[0] not in ("sync", "reopen") else ("ok", None)
            got = outcome(ours, op)
            assert got == want, (i, op)
        assert our_tree(t.fs, since, atime) == host_tree(root, since, atime)
        t.reopen()
        assert our_tree(t.fs, since, atime) == host_tree(root, since, atime)
        t.check()
    finally:
        shutil.rmtree(root)


# ---- power cuts --------------------------------------------------------------------------
class Commits:
    """What a crash workload committed: for every txg it asked to commit, the tree the host
    directory (the model) had then; `durable`, the last txg whose sync returned (everything
    fsync'ed is in it), and `in_flight`, the one being synced when the power went (if any)."""

    def __init__(self, txg: int, tree: dict) -> None:
        self.trees = {txg: tree}
        self.durable = self.in_flight = txg

    def allowed(self) -> list[int]:
        """The txgs an import may find: the durable one, or the one in flight, never older."""
        return sorted({self.durable, self.in_flight})


def crash_workload(t: FS, seed: int, steps: int, commits: Commits | None = None,
                   host: HostSide | None = None) -> None:
    """Random POSIX operations (open-unlinked files held across syncs included) on fusezfs
    and, if given, the same on a host directory (outcomes must agree); each step ends in an
    fsync. Before it, the host directory's tree is recorded as what that txg commits."""
    rng = random.Random(seed)
    side = OurSide(t)
    held: list[tuple[int, int | None]] = []         # (our handle, the host's descriptor)
    try:
        for _step in range(steps):
            for _ in range(rng.randint(2, 6)):
                op = rng.choice(CRASH_MIX)(rng)
                if op[0] == "hold":
                    tree = host_tree(host.root) if host else our_tree(t.fs)
                    files = sorted(p for p, d in tree.items() if d["type"] == stat.S_IFREG)
                    if files:
                        path = rng.choice(files)
                        fd = None
                        if host:
                            fd = os.open(host.p(path), os.O_RDWR)
                            os.unlink(host.p(path))
                            os.pwrite(fd, b"still here", 0)
                        held.append((t.fs.open_path(path, os.O_RDWR), fd))
                        t.fs.unlink(*t.fs.parent_of(path))
                        t.fs.write(held[-1][0], 0, b"still here")
                elif op[0] == "release":
                    if held:
                        fh, fd = held.pop(rng.randrange(len(held)))
                        if fd is not None:
                            os.close(fd)
                        t.fs.release(fh)
                elif host:
                    want = outcome(host, op)
                    assert outcome(side, op) == want, op
                else:
                    outcome(side, op)
            txg = t.pool.txg
            if commits is not None:
                assert t.pool.synced_txg == commits.durable     # no sync but these
                commits.trees[txg] = host_tree(host.root)
                commits.in_flight = txg
            t.fs.fsync()
            done = t.pool.synced_txg
            if commits is not None:
                if done != txg:                 # nothing to commit: nothing changed
                    assert done == commits.durable
                    assert commits.trees.pop(txg) == commits.trees[done]
                commits.durable = commits.in_flight = done
    finally:
        for _fh, fd in held:
            if fd is not None:
                os.close(fd)


def _crash_write(r: random.Random):
    return ("write", r.choice(PATHS), r.choice([0, 5000, 200_000]),
            r.choice([10, 70_000, 150_000]), r.randrange(100))


OPS_FOR_CRASH = [
    _crash_write,
    lambda r: ("truncate", r.choice(PATHS), r.choice([0, 100, 140_000])),
    lambda r: ("mkdir", r.choice(PATHS)),
    lambda r: ("unlink", r.choice(PATHS)),
    lambda r: ("rename", r.choice(PATHS), r.choice(PATHS)),
    lambda r: ("link", r.choice(PATHS), r.choice(PATHS)),
    # 3500 bytes: past fusezfs's inline xattrs (a block), within ext4's (one block for all)
    lambda r: ("setxattr", r.choice(PATHS), "user.x", r.choice([b"1", b"2" * 3500])),
    lambda r: ("utime", r.choice(PATHS), r.choice(OLD_TIMES), r.choice(OLD_TIMES)),
    lambda r: ("chmod", r.choice(PATHS), r.choice([0o600, 0o755])),
    *([lambda r: ("chown", r.choice(PATHS), r.choice(IDS), r.choice(IDS))]
      if os.geteuid() == 0 else []),
    lambda r: ("hold",),
    lambda r: ("hold",),
    lambda r: ("release",),
]
CRASH_MIX = OPS_FOR_CRASH + [_crash_write] * 3     # the crash workload's: mostly writes
CRASH_STEPS = 40


def test_power_cuts_leave_the_last_committed_filesystem():
    """Cut the power at every write of a POSIX workload (each step fsync'ed), run on fusezfs
    and on a host directory alike: the pool imports the last txg whose fsync returned, or the
    one being committed at the cut, never an older one; the filesystem is exactly the host
    directory's tree when that txg was asked for (names, bytes, modes, owners, times,
    xattrs, links); files held open-unlinked are reclaimed, nothing leaks, and the
    filesystem keeps working."""
    def fresh(root: str):
        power = Power()
        devs = [FaultyDevice(MemoryDevice(16 * MiB, "mem0"), power)]
        t = FS(devs=devs, recordsize=64 * KiB, compress=True)
        host = HostSide(root)
        for op in PRELUDE:
            host.run(op)
            OurSide(t).run(op)
        t.fs.fsync()
        return power, t, host

    root = tempfile.mkdtemp(prefix="fzcrash-")
    try:
        power, t, host = fresh(root)
        start = power.writes
        crash_workload(t, 7, CRASH_STEPS, Commits(t.pool.synced_txg, host_tree(root)), host)
        total = power.writes - start
        reclaimed = 0
        flights = 0
        for mode, cut in [(m, c) for c in range(total) for m in ("drop", "reorder")]:
            shutil.rmtree(root)
            os.mkdir(root)
            power, t, host = fresh(root)
            commits = Commits(t.pool.synced_txg, host_tree(root))
            power.cut_after(cut)
            with pytest.raises(PowerCut):
                crash_workload(t, 7, CRASH_STEPS, commits, host)
            rng = random.Random(cut)
            images = [d.crash_image(mode, rng) for d in t.devs]
            t.pool.closed = True
            t.pool.blocks.close()
            t.devs = images
            t.pool = Pool.open(images)
            reclaimed += len(list(t.pool.objset(b"fs").scan(UNLINKED_LO, UNLINKED_HI)))
            t._mount()
            txg = t.pool.synced_txg
            assert txg in commits.allowed(), (mode, cut, txg, commits.allowed())
            flights += txg == commits.in_flight != commits.durable
            assert our_tree(t.fs) == commits.trees[txg], (mode, cut, txg)
            assert not list(t.fs.tree.scan(UNLINKED_LO, UNLINKED_HI))
            t.check()
            crash_workload(t, 8, 2)
            t.check()
        assert reclaimed > 100 and flights > 0, (reclaimed, flights)
    finally:
        shutil.rmtree(root)


def test_streaming_reads_of_stored_records():
    """Reads spanning several stored records: whole runs come back as the disk buffer itself
    (no copy), partial and unaligned ones are assembled; a record changed since (dirty) and a
    hole in the middle are honoured; a damaged block in the run is an error, not wrong data."""
    t = FS(size=32 * MiB)
    fs = t.fs
    data = rand(MiB + 3000)
    fh, a = fs.create(ROOT_INO, "f")
    fs.write(fh, 0, data)
    fs.write(fh, 5 * 128 * KiB + 17, bytes(128 * KiB))    # zeros: stored, not a hole here
    expect = bytearray(data)
    expect[5 * 128 * KiB + 17:6 * 128 * KiB + 17] = bytes(128 * KiB)
    fs.release(fh)
    t.pool.sync()
    fs = t.reopen()
    ino = fs.lookup(ROOT_INO, "f").st_ino
    fh = fs.open(ino, os.O_RDWR)
    t.pool.blocks.drop_cache()
    whole = fs.read(fh, 0, MiB)
    assert type(whole) is bytes and whole == expect[:MiB]
    for off, size in ((1, MiB), (128 * KiB - 5, 300 * KiB), (MiB - 10, 8000), (0, 2 * MiB)):
        assert fs.read(fh, off, size) == expect[off:off + size], (off, size)
    fs.write(fh, 3 * 128 * KiB, b"dirty")                  # a buffered record inside the run
    expect[3 * 128 * KiB:3 * 128 * KiB + 5] = b"dirty"
    assert fs.read(fh, 0, MiB) == expect[:MiB]
    fs.release(fh)
    t.pool.sync()
    bp = data_items(fs, ino)[2]
    t.pool.blocks.drop_cache()
    t.devs[0].data[bp.dvas[0].offset + 100] ^= 1
    fh = fs.open(ino)
    assert errno_of(fs.read, fh, 0, MiB) == errno.EIO
    assert fs.read(fh, 3 * 128 * KiB, 128 * KiB) == expect[3 * 128 * KiB:4 * 128 * KiB]


def test_early_writes_do_not_hold_space_twice():
    """On a small pool, a file that fills most of it can be written and rewritten within one
    txg: records written early are not counted twice by the space check, and the space of
    the first version is given back as soon as the rewrite replaces it."""
    t = FS(size=128 * MiB)
    fs = t.fs
    fh, _a = fs.create(ROOT_INO, "big")
    data = rand(MiB)
    for rnd in range(2):
        for i in range(100):
            fs.write(fh, i * MiB, data)
    assert t.pool.blocks.ahead_bytes < 100 * MiB       # the first version's space went back
    fs.fsync(fh)
    fs.release(fh)
    assert t.pool.blocks.ahead_bytes == 0
    assert fs.read_file("/big") == data * 100
    t.check()
