"""fallocate(2) (fusezfs/zpl/posix_alloc.py) through the library and through a FUSE mount
(fusezfs/fuse/fuse_extra.py): mode 0 and KEEP_SIZE checked against quotas and the pool up front,
PUNCH_HOLE and ZERO_RANGE freeing records by birth time (a snapshot keeps its data), every
other mode EOPNOTSUPP; SEEK_DATA/SEEK_HOLE report the holes; an fsync'ed punch survives a
crash; and random writes, truncates and fallocates applied to a file in the mount and to a
plain file read the same after every step."""
from __future__ import annotations

import ctypes
import errno
import os
import random
import zlib

import pytest

from fusezfs.api import Handle
from fusezfs.engine.devices import FaultyDevice, MemoryDevice, Power
from fusezfs.engine.pool import Pool
from fusezfs.zpl.posix import (
    FALLOC_FL_KEEP_SIZE as KEEP,
    FALLOC_FL_PUNCH_HOLE as PUNCH,
    FALLOC_FL_ZERO_RANGE as ZERO,
)
from fusezfs.engine.verify import verify

from test_mount import Env

MiB, KiB = 1 << 20, 1 << 10
COLLAPSE, INSERT, UNSHARE = 0x08, 0x20, 0x40

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def fallocate(fd: int, mode: int, offset: int, length: int) -> int:
    """fallocate(2): 0 or the errno."""
    return 0 if _libc.fallocate(fd, mode, offset, length) == 0 else ctypes.get_errno()


def errno_of(fn, *args) -> int:
    try:
        fn(*args)
    except OSError as e:
        return e.errno
    return 0


class Lib:
    """A pool in memory with filesystem tank/fs (its properties given) and file /f."""

    def __init__(self, size: int = 64 * MiB, **props: str) -> None:
        self.power = Power()
        self.dev = FaultyDevice(MemoryDevice(size, "m0"), self.power)
        self.pool = Pool.create("tank", [("file", [self.dev])])
        self.h = Handle(self.pool)
        self.h.dsl.create("tank/fs", dict(props))
        self.fs = self.h.filesystem("tank/fs")
        self.fh, _a = self.fs.create(1, "f")

    def write(self, data: bytes, offset: int = 0) -> None:
        self.fs.write(self.fh, offset, data)

    def read(self) -> bytes:
        return self.fs.read_file("/f")

    @property
    def size(self) -> int:
        return self.fs.getattr(self.fs.resolve("/f")).st_size

    def rec(self):
        return self.h.dsl.get("tank/fs")


def holes(fs, fh, size: int) -> list[tuple[int, int]]:
    """The holes SEEK_HOLE/SEEK_DATA report, as (start, end)."""
    out, pos = [], 0
    while pos < size:
        hole = fs.lseek(fh, pos, os.SEEK_HOLE)
        if hole >= size:
            break
        try:
            data = fs.lseek(fh, hole, os.SEEK_DATA)
        except OSError as e:
            assert e.errno == errno.ENXIO
            data = size
        out.append((hole, data))
        pos = data
    return out


# ---- the library ------------------------------------------------------------------------------
@pytest.mark.parametrize("compression", ["off", "zstd"])
def test_punch_hole_frees_whole_records_and_zeroes_the_edges(compression):
    t = Lib(recordsize="16384", compression=compression)
    data = bytearray(os.urandom(200_000))
    t.write(data)
    t.pool.sync()
    used = t.rec().refer
    t.fs.fallocate(t.fh, PUNCH | KEEP, 10_000, 100_000)
    data[10_000:110_000] = bytes(100_000)
    assert t.read() == data and t.size == 200_000
    t.pool.sync()
    assert t.read() == data
    # records 1..5 (16 KiB .. 96 KiB) were wholly inside: freed, and reported as holes
    assert holes(t.fs, t.fh, t.size) == [(16384, 6 * 16384)]
    assert used - t.rec().refer >= 5 * 16384
    assert verify(t.pool).ok and t.h.dsl.check() == []


def test_punch_to_the_end_and_past_it_keeps_the_size():
    t = Lib(recordsize="4096")
    data = bytearray(os.urandom(10_000))
    t.write(data)
    t.fs.fallocate(t.fh, PUNCH | KEEP, 5000, 1 << 30)
    data[5000:] = bytes(5000)
    assert t.read() == data and t.size == 10_000
    t.fs.fallocate(t.fh, PUNCH | KEEP, 50_000, 10)           # past the end: nothing
    assert t.read() == data and t.size == 10_000
    assert holes(t.fs, t.fh, t.size) == [(8192, 10_000)]


def test_zero_range_with_and_without_keep_size():
    t = Lib(recordsize="8192")
    data = bytearray(os.urandom(30_000))
    t.write(data)
    t.fs.fallocate(t.fh, ZERO | KEEP, 20_000, 50_000)
    data[20_000:] = bytes(10_000)
    assert t.read() == data and t.size == 30_000
    t.fs.fallocate(t.fh, ZERO, 25_000, 50_000)               # grows to the end of the range
    data[25_000:] = bytes(50_000)
    assert t.read() == data and t.size == 75_000
    t.fs.fallocate(t.fh, ZERO, 1000, 100)
    data[1000:1100] = bytes(100)
    assert t.read() == data and t.size == 75_000


def test_mode_0_grows_the_file_keep_size_does_not_and_neither_allocates():
    t = Lib(recordsize="8192")
    t.write(b"x" * 5000)
    t.pool.sync()
    refer = t.rec().refer
    t.fs.fallocate(t.fh, 0, 0, 100_000)
    assert t.size == 100_000 and t.read() == b"x" * 5000 + bytes(95_000)
    t.fs.fallocate(t.fh, KEEP, 0, 1 << 20)
    assert t.size == 100_000
    t.fs.fallocate(t.fh, 0, 50_000, 10)                     # inside: nothing changes
    assert t.size == 100_000
    t.pool.sync()
    assert t.rec().refer - refer < 8192           # the inode only: copy-on-write, as ZFS
    assert holes(t.fs, t.fh, t.size) == [(8192, 100_000)]   # holes as they are


def test_unsupported_modes_and_bad_arguments():
    t = Lib()
    t.write(b"data" * 1000)
    for mode in (COLLAPSE, INSERT, UNSHARE, COLLAPSE | KEEP, 0x04, PUNCH, PUNCH | ZERO | KEEP):
        assert errno_of(t.fs.fallocate, t.fh, mode, 0, 4096) == errno.EOPNOTSUPP, mode
    assert errno_of(t.fs.fallocate, t.fh, 0, 0, 0) == errno.EINVAL
    assert errno_of(t.fs.fallocate, t.fh, 0, -1, 10) == errno.EINVAL
    assert errno_of(t.fs.fallocate, t.fh, 0, 1 << 62, 1 << 62) == errno.EFBIG
    ro = t.fs.open(t.fs.resolve("/f"), os.O_RDONLY)
    assert errno_of(t.fs.fallocate, ro, 0, 0, 10) == errno.EBADF
    d = t.fs.opendir(1)                         # read-only, as every directory handle
    assert errno_of(t.fs.fallocate, d, 0, 0, 10) == errno.EBADF
    assert t.read() == b"data" * 1000


def test_a_snapshot_keeps_what_a_punch_frees_in_the_head():
    """Blocks born before the snapshot go to the head's deadlist (the snapshot still reads
    them, and they count as usedbysnapshots); blocks born after it are freed at once."""
    t = Lib(recordsize="16384", compression="off")
    old = os.urandom(160 * KiB)
    t.write(old)
    t.fs.flush()
    t.h.dsl.snapshot(["tank/fs@before"])
    new = os.urandom(160 * KiB)
    t.write(new, 160 * KiB)
    t.pool.sync()
    free, snap_used = t.pool.free, t.rec().used_snap
    t.fs.fallocate(t.fh, PUNCH | KEEP, 0, 320 * KiB)
    t.pool.sync()
    assert t.read() == bytes(320 * KiB)
    snap = t.h.filesystem("tank/fs@before")
    assert snap.read_file("/f") == old
    assert t.rec().used_snap - snap_used == 160 * KiB     # the head's old blocks: deadlist
    for _ in range(3):
        t.pool.sync()                                   # the freed ones come back (held frees)
    assert t.pool.free - free >= 160 * KiB - 16 * KiB
    assert verify(t.pool).ok and t.h.dsl.check() == []


def test_quota_and_pool_space_are_checked_up_front():
    t = Lib(size=64 * MiB, quota=str(4 * MiB), recordsize="131072")
    t.write(os.urandom(MiB))
    t.pool.sync()
    assert errno_of(t.fs.fallocate, t.fh, 0, 0, 8 * MiB) == errno.EDQUOT
    assert errno_of(t.fs.fallocate, t.fh, KEEP, MiB, 8 * MiB) == errno.EDQUOT
    assert t.size == MiB                                # nothing half done
    t.fs.fallocate(t.fh, 0, 0, 3 * MiB)                 # 2 MiB of holes (+10%) fits
    assert t.size == 3 * MiB
    t.fs.fallocate(t.fh, 0, 0, 3 * MiB)                 # the data it has needs nothing more
    u = Lib(size=64 * MiB)
    assert errno_of(u.fs.fallocate, u.fh, 0, 0, 128 * MiB) == errno.ENOSPC
    assert u.size == 0
    u.fs.fallocate(u.fh, PUNCH | KEEP, 0, 128 * MiB)     # freeing needs no space


def test_a_punch_fsynced_survives_a_crash():
    t = Lib(recordsize="4096")
    data = bytearray(os.urandom(50_000))
    t.write(data)
    t.pool.sync()
    warm = t.fs.create(1, "warm")[0]
    t.fs.fsync(warm)                                    # the log's chain exists now
    t.fs.fallocate(t.fh, PUNCH | KEEP, 3000, 20_000)
    t.fs.fallocate(t.fh, ZERO, 45_000, 10_000)
    data[3000:23_000] = bytes(20_000)
    data[45_000:] = bytes(10_000)
    t.fs.fsync(t.fh)
    txg = t.pool.synced_txg
    rec = Pool.open([t.dev.crash_image("drop")])
    assert rec.synced_txg == txg
    fs = Handle(rec).filesystem("tank/fs")
    assert fs.read_file("/f") == data
    assert verify(rec).ok and Handle(rec).dsl.check() == []


# ---- through a FUSE mount -------------------------------------------------------------------
@pytest.fixture
def env(tmp_path, needs_fuse):
    e = Env(tmp_path)
    try:
        yield e
    finally:
        e.teardown()


def test_every_mode_through_the_mount(env):
    env.create_pool(256 * MiB)
    env.run("create", "-o", "recordsize=16K", "-o", "compression=off", "tank/fs")
    env.run("create", "-o", "quota=8M", "tank/q")
    env.mount()
    m = env.mnt
    data = bytearray(os.urandom(400 * KiB))
    fd = os.open(f"{m}/fs/f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
        orig = bytes(data)
        env.run("snapshot", "tank/fs@s")
        assert fallocate(fd, PUNCH | KEEP, 20 * KiB, 100 * KiB) == 0
        data[20 * KiB:120 * KiB] = bytes(100 * KiB)
        assert fallocate(fd, ZERO | KEEP, 390 * KiB, 100 * KiB) == 0
        data[390 * KiB:] = bytes(10 * KiB)
        assert fallocate(fd, ZERO, 395 * KiB, 10 * KiB) == 0
        data[395 * KiB:] = bytes(10 * KiB)
        assert fallocate(fd, KEEP, 0, 1 * MiB) == 0
        assert os.fstat(fd).st_size == len(data)
        assert fallocate(fd, 0, 0, 600 * KiB) == 0
        data += bytes(600 * KiB - len(data))
        assert os.fstat(fd).st_size == 600 * KiB
        for mode in (COLLAPSE, INSERT, UNSHARE):
            assert fallocate(fd, mode, 0, 16 * KiB) == errno.EOPNOTSUPP, mode
        assert os.pread(fd, 1 * MiB, 0) == bytes(data)
        # SEEK_HOLE/SEEK_DATA see the punched records (32 KiB..112 KiB) and the tail
        assert os.lseek(fd, 0, os.SEEK_HOLE) == 32 * KiB
        assert os.lseek(fd, 32 * KiB, os.SEEK_DATA) == 112 * KiB
        assert os.lseek(fd, 400 * KiB, os.SEEK_HOLE) == 400 * KiB
        with pytest.raises(OSError) as ei:
            os.lseek(fd, 416 * KiB, os.SEEK_DATA)
        assert ei.value.errno == errno.ENXIO
    finally:
        os.close(fd)
    with open(f"{m}/fs/.zfs/snapshot/s/f", "rb") as f:      # the snapshot keeps its data
        assert f.read() == orig
    fd = os.open(f"{m}/q/g", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        assert fallocate(fd, 0, 0, 16 * MiB) == errno.EDQUOT
        assert os.fstat(fd).st_size == 0
        assert fallocate(fd, 0, 0, 4 * MiB) == 0 and os.fstat(fd).st_size == 4 * MiB
    finally:
        os.close(fd)
    env.unmount()
    env.run("pool", "verify", "tank")
    env.mount()
    with open(f"{m}/fs/f", "rb") as f:
        assert f.read() == bytes(data)


def test_the_snapshot_keeps_punched_data_through_the_mount(env):
    env.create_pool(256 * MiB)
    env.run("create", "tank/fs")
    env.mount()
    m = env.mnt
    data = os.urandom(1 * MiB)
    with open(f"{m}/fs/f", "wb") as f:
        f.write(data)
    env.run("snapshot", "tank/fs@s")
    fd = os.open(f"{m}/fs/f", os.O_RDWR)
    try:
        assert fallocate(fd, PUNCH | KEEP, 0, 1 * MiB) == 0
        assert os.pread(fd, 2 * MiB, 0) == bytes(1 * MiB)
    finally:
        os.close(fd)
    with open(f"{m}/fs/.zfs/snapshot/s/f", "rb") as f:
        assert f.read() == data


MODES = [0, KEEP, PUNCH | KEEP, ZERO, ZERO | KEEP]


def _host_supports(path: str) -> bool:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"x" * 8192)
        return all(fallocate(fd, mode, 0, 4096) == 0 for mode in MODES)
    finally:
        os.close(fd)
        os.unlink(path)


@pytest.mark.parametrize("props", [("recordsize=128K", "compression=off"),
                                   ("recordsize=16K", "compression=zstd")])
def test_random_operations_match_a_plain_file(env, props):
    """The same random writes, truncates, fallocates (every supported mode), punches and
    zero ranges on a file in the mount and on a plain file beside the pool; after each step
    both read the same (size and bytes), and every hole SEEK_HOLE reports in the mount reads
    as zeros. fsyncs now and then take the intent log's path."""
    if not _host_supports(str(env.tmp / "probe")):
        pytest.skip("the host file system lacks a fallocate mode to compare with")
    env.create_pool(512 * MiB)
    env.run("create", *[a for p in props for a in ("-o", p)], "tank/fs")
    env.mount()
    rng = random.Random(zlib.crc32(repr(props).encode()))
    ours = os.open(f"{env.mnt}/fs/f", os.O_RDWR | os.O_CREAT, 0o644)
    plain = os.open(str(env.tmp / "plain"), os.O_RDWR | os.O_CREAT, 0o644)
    span = 3 * MiB
    try:
        for step in range(400):
            r = rng.random()
            off = rng.choice([0, rng.randrange(span), rng.randrange(span) // 4096 * 4096])
            length = rng.choice([1, 100, 4096, rng.randrange(1, 400 * KiB)])
            if r < 0.35:
                data = os.urandom(length) if rng.random() < 0.7 else bytes(length)
                assert os.pwrite(ours, data, off) == os.pwrite(plain, data, off)
                what = ("write", off, length)
            elif r < 0.45:
                size = rng.randrange(span)
                os.ftruncate(ours, size)
                os.ftruncate(plain, size)
                what = ("truncate", size)
            else:
                mode = rng.choice(MODES)
                a, b = fallocate(ours, mode, off, length), fallocate(plain, mode, off, length)
                assert a == b, (step, mode, off, length, a, b)
                what = ("fallocate", mode, off, length)
            if rng.random() < 0.1:
                os.fsync(ours)
            size = os.fstat(plain).st_size
            assert os.fstat(ours).st_size == size, (step, what)
            got = os.pread(ours, size + 1, 0)
            assert got == os.pread(plain, size + 1, 0), (step, what)
            if size:
                pos = 0
                while pos < size:
                    try:
                        hole = os.lseek(ours, pos, os.SEEK_HOLE)
                    except OSError as e:
                        raise AssertionError((step, what, pos, size, e)) from None
                    if hole >= size:
                        break
                    try:
                        data_at = os.lseek(ours, hole, os.SEEK_DATA)
                    except OSError:
                        data_at = size
                    assert got[hole:data_at] == bytes(data_at - hole), (step, hole, data_at)
                    pos = data_at
    finally:
        os.close(ours)
        os.close(plain)
    env.unmount()
    env.run("pool", "verify", "tank")
