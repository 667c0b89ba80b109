"""Volumes (zfs create -V), driven as a user would: the command line for creating, listing,
properties, snapshots, clones, rollback, rename, destroy and space; `fusezfs cp POOL/VOL:` and
the library (volumes.Volume) for the bytes. The consistency checker runs after every test."""
from __future__ import annotations

import os
import random

import pytest
from clitools import check_pools, ok, pool_files, run

from fusezfs import cli

MiB = 1 << 20


@pytest.fixture
def env(tmp_path, monkeypatch, capsys):
    disk, = pool_files(tmp_path, monkeypatch, 1, 256)
    assert cli.main(["pool", "create", "tank", disk]) == 0
    yield tmp_path
    capsys.readouterr()
    check_pools()


def props(capsys, name: str, *names: str) -> dict[str, tuple[str, str]]:
    """`zfs get -Hp` of `names`: {property: (value, source)}."""
    out = ok(capsys, "get", "-Hp", "-o", "property,value,source", ",".join(names), name)
    return {p: (v, s) for p, v, s in (line.split("\t") for line in out.splitlines())}


def fails(capsys, *argv: str) -> tuple[int, str]:
    code, _out, err = run(capsys, *argv)
    assert code != 0, argv
    return code, err.strip()


def reservation(volsize: int, blocksize: int, copies: int = 1) -> int:
    """zvol_volsize_to_reservation written out for the test: data, plus 7 meta-dnode levels and
    one 128 KiB indirect block per 1024 block pointers at each level, with copies + 1 DVAs."""
    blocks = volsize // blocksize
    indirect = 7
    level = blocks
    while level > 1:
        level = -(-level // 1024)
        indirect += level
    return volsize * copies + indirect * min(3, copies + 1) * 128 * 1024


def env_file(env, data: bytes):
    path = env / "in.img"
    path.write_bytes(data)
    return path


def cp_in(env, capsys, data: bytes, target: str) -> None:
    ok(capsys, "cp", str(env_file(env, data)), target)


def cp_out(env, capsys, spec: str) -> bytes:
    out = env / "out.img"
    if out.exists():
        out.unlink()
    ok(capsys, "cp", spec, str(out))
    return out.read_bytes()


# ---- create --------------------------------------------------------------------------------
def test_create_lists_and_gets_a_volume(env, capsys):
    ok(capsys, "create", "-V", "100M", "tank/vol")
    got = props(capsys, "tank/vol", "type", "volsize", "volblocksize", "refreservation",
                "mountpoint", "usedbyrefreservation", "used")
    assert got["type"] == ("volume", "-")
    assert got["volsize"] == (str(100 * MiB), "local")
    assert got["volblocksize"] == ("8192", "default")           # OpenZFS 2.1's default
    assert got["refreservation"] == (str(reservation(100 * MiB, 8192)), "local")
    assert got["mountpoint"] == ("-", "-")
    # nothing written: the refreservation is what it uses, beside its few metadata blocks
    assert int(got["usedbyrefreservation"][0]) > 100 * MiB
    assert int(got["used"][0]) >= reservation(100 * MiB, 8192)
    out = ok(capsys, "list", "-H", "-t", "volume", "-o", "name,type,volsize")
    assert out == "tank/vol\tvolume\t100M\n"
    assert ok(capsys, "list", "-H", "-t", "filesystem", "-o", "name") == "tank\n"
    assert "tank/vol" in ok(capsys, "list", "-H", "-o", "name")
    assert "tank/vol\tvolume" in ok(capsys, "list", "-H", "-t", "all", "-o", "name,type")
    # the parent's used counts the volume's refreservation
    assert int(props(capsys, "tank", "used")["used"][0]) >= reservation(100 * MiB, 8192)


def test_create_options(env, capsys):
    ok(capsys, "create", "-b", "16K", "-V", "10M", "tank/b16")
    got = props(capsys, "tank/b16", "volblocksize", "refreservation")
    assert got["volblocksize"] == (str(16384), "-")
    assert got["refreservation"][0] == str(reservation(10 * MiB, 16384))
    ok(capsys, "create", "-s", "-V", "1G", "tank/sparse")          # more than the pool
    assert props(capsys, "tank/sparse", "refreservation")["refreservation"] == ("0", "default")
    ok(capsys, "create", "-V", "10M", "-o", "refreservation=1M", "tank/given")
    assert props(capsys, "tank/given", "refreservation")["refreservation"] == (str(MiB), "local")
    ok(capsys, "create", "-V", "10M", "-o", "copies=2", "-o", "compression=off", "tank/two")
    assert props(capsys, "tank/two", "refreservation")["refreservation"][0] == \
        str(reservation(10 * MiB, 8192, copies=2))
    ok(capsys, "create", "-V", "1000", "tank/round")                # rounded up to a block
    assert props(capsys, "tank/round", "volsize")["volsize"][0] == "8192"
    code, _o, err = run(capsys, "create", "-b", "4K", "-V", "8K", "tank/small")
    assert code == 0 and err.startswith("Warning: volblocksize (4096) is less than the default")
    ok(capsys, "create", "-p", "-V", "8K", "tank/a/b/vol")
    assert ok(capsys, "list", "-H", "-o", "type", "tank/a/b") == "filesystem\n"
    ok(capsys, "create", "-p", "-V", "8K", "tank/a/b/vol")          # -p: exists, fine


def test_create_errors_in_openzfs_words(env, capsys):
    ok(capsys, "create", "-V", "8M", "tank/vol")
    cases = [
        (["-V", "0", "tank/z"], "cannot create 'tank/z': volume size cannot be zero"),
        (["-V", "abc", "tank/z"], "bad volume size 'abc': bad numeric value 'abc'"),
        (["-b", "x", "-V", "8M", "tank/z"], "bad volume block size 'x': bad numeric value 'x'"),
        (["-b", "1000", "-V", "8M", "tank/z"],
         "cannot create 'tank/z': 'volblocksize' must be power of 2 from 512B to 128K"),
        (["-V", "8M", "tank/no/z"], "cannot create 'tank/no/z': parent does not exist"),
        (["-V", "8M", "tank/vol/z"], "cannot create 'tank/vol/z': parent is not a filesystem"),
        (["tank/vol/z"], "cannot create 'tank/vol/z': parent is not a filesystem"),
        (["-V", "8M", "tank/vol"], "cannot create 'tank/vol': dataset already exists"),
        (["-V", "8M", "-o", "mountpoint=/x", "tank/z"],
         "cannot create 'tank/z': 'mountpoint' does not apply to datasets of this type"),
        (["-V", "8M", "-o", "recordsize=8K", "tank/z"],
         "cannot create 'tank/z': 'recordsize' does not apply to datasets of this type"),
        (["-V", "8M", "-o", "volsize=8M", "tank/z"],
         "property 'volsize' specified multiple times"),
        (["-V", "1G", "tank/z"], "cannot create 'tank/z': out of space"),
        (["-V", "8M", "nopool/z"], "cannot open 'nopool': no such pool"),
        (["-V", "8M", "tank/z@s"],
         "cannot create 'tank/z@s': snapshot delimiter '@' is not expected here"),
    ]
    for argv, message in cases:
        code, err = fails(capsys, "create", *argv)
        assert (code, err) == (1, message), argv
    only_volumes = "'-s' and '-b' can only be used when creating a volume"
    for argv, message in [(["-s", "tank/z"], only_volumes),
                          (["-b", "8K", "tank/z"], only_volumes),
                          (["-V", "8M"], "missing volume argument")]:
        code, err = fails(capsys, "create", *argv)
        assert code == 2 and err.splitlines()[0] == message, argv
    assert ok(capsys, "list", "-H", "-o", "name", "-r", "tank") == "tank\ntank/vol\n"


def test_library_create_checks_geometry(env):
    from fusezfs.api import Handle
    from fusezfs.cli.cli_pool import open_pool
    from fusezfs.dsl.datasets import DatasetError
    from fusezfs.zpl.volumes import create_volume
    pool = open_pool("tank")
    try:
        with pool.lock:
            with pytest.raises(DatasetError, match="must be a multiple of volume block size"):
                create_volume(Handle(pool), "tank/v", 10000, {"volblocksize": 8192})
            with pytest.raises(DatasetError, match="volume size cannot be zero"):
                create_volume(Handle(pool), "tank/v", 0)
            assert Handle(pool).dsl.lookup("tank/v") is None
    finally:
        pool.close()


# ---- properties ----------------------------------------------------------------------------
def test_volsize_moves_the_refreservation_with_it(env, capsys):
    ok(capsys, "create", "-V", "20M", "tank/vol")
    ok(capsys, "set", "volsize=40M", "tank/vol")
    got = props(capsys, "tank/vol", "volsize", "refreservation")
    assert got["volsize"][0] == str(40 * MiB)
    assert got["refreservation"][0] == str(reservation(40 * MiB, 8192))
    ok(capsys, "set", "volsize=16M", "tank/vol")
    assert props(capsys, "tank/vol", "refreservation")["refreservation"][0] == \
        str(reservation(16 * MiB, 8192))
    # a refreservation set by hand stays where it was put
    ok(capsys, "set", "refreservation=2M", "tank/vol")
    ok(capsys, "set", "volsize=24M", "tank/vol")
    assert props(capsys, "tank/vol", "refreservation")["refreservation"][0] == str(2 * MiB)
    ok(capsys, "set", "refreservation=auto", "tank/vol")
    assert props(capsys, "tank/vol", "refreservation")["refreservation"][0] == \
        str(reservation(24 * MiB, 8192))
    ok(capsys, "set", "refreserv=none", "tank/vol")
    ok(capsys, "set", "refreserv=auto", "volsize=8M", "tank/vol")      # the short name too
    assert props(capsys, "tank/vol", "refreservation")["refreservation"][0] == \
        str(reservation(8 * MiB, 8192))
    # readonly=on: no writes, but volsize still changes (a property, not a write)
    ok(capsys, "set", "readonly=on", "tank/vol")
    _code, err = fails(capsys, "cp", str(env_file(env, b"x" * 100)), "tank/vol:")
    assert "Read-only file system" in err
    ok(capsys, "set", "volsize=32M", "tank/vol")
    assert props(capsys, "tank/vol", "volsize")["volsize"][0] == str(32 * MiB)
    ok(capsys, "set", "readonly=off", "tank/vol")
    cp_in(env, capsys, b"y" * 100, "tank/vol:")
    assert cp_out(env, capsys, "tank/vol:")[:101] == b"y" * 100 + b"\0"
    # sparse: none before, none after
    ok(capsys, "create", "-s", "-V", "8M", "tank/sparse")
    ok(capsys, "set", "volsize=64M", "tank/sparse")
    assert props(capsys, "tank/sparse", "refreservation")["refreservation"][0] == "0"


def test_property_errors_in_openzfs_words(env, capsys):
    ok(capsys, "create", "-V", "8M", "tank/vol")
    ok(capsys, "snapshot", "tank/vol@s")
    cases = [
        ("volsize=1000", "tank/vol", "'volsize' must be a multiple of volume block size (8K)"),
        ("volsize=0", "tank/vol", "'volsize' cannot be zero"),
        ("volblocksize=16K", "tank/vol", "'volblocksize' is readonly"),
        ("mountpoint=/x", "tank/vol", "'mountpoint' does not apply to datasets of this type"),
        ("atime=off", "tank/vol", "'atime' does not apply to datasets of this type"),
        ("volsize=8M", "tank", "'volsize' does not apply to datasets of this type"),
        ("refreservation=auto", "tank", "'refreservation=auto' only allowed on volumes"),
        ("quota=auto", "tank", "'auto' is invalid value for 'quota'"),
        ("volsize=16M", "tank/vol@s", "this property can not be modified for snapshots"),
        ("volsize=1G", "tank/vol", "size is greater than available space"),
    ]
    for assignment, name, message in cases:
        _code, err = fails(capsys, "set", assignment, name)
        assert err == f"cannot set property for '{name}': {message}", assignment
    got = props(capsys, "tank/vol", "volsize", "refreservation")
    assert got["volsize"][0] == str(8 * MiB)                        # nothing changed
    assert got["refreservation"][0] == str(reservation(8 * MiB, 8192))
    assert props(capsys, "tank/vol@s", "volsize")["volsize"] == (str(8 * MiB), "-")
    all_props = ok(capsys, "get", "-H", "-o", "property", "all", "tank/vol").split()
    assert "volsize" in all_props and "volblocksize" in all_props
    assert "mountpoint" not in all_props and "recordsize" not in all_props
    snap_props = ok(capsys, "get", "-H", "-o", "property", "all", "tank/vol@s").split()
    assert "volsize" in snap_props and "volblocksize" not in snap_props


# ---- data, snapshots, clones, rollback ---------------------------------------------------------
def test_bytes_through_cp_snapshots_clones_and_rollback(env, capsys):
    ok(capsys, "create", "-V", "16M", "tank/vol")
    rng = random.Random(7)
    first = rng.randbytes(3 * MiB)
    cp_in(env, capsys, first, "tank/vol:")
    image = cp_out(env, capsys, "tank/vol:")
    assert len(image) == 16 * MiB and image[:3 * MiB] == first and not image[3 * MiB:].strip(b"\0")
    ok(capsys, "snapshot", "tank/vol@one")
    second = rng.randbytes(MiB)
    cp_in(env, capsys, second, "tank/vol:")
    assert cp_out(env, capsys, "tank/vol@one:")[:3 * MiB] == first
    now = cp_out(env, capsys, "tank/vol:")
    assert now[:MiB] == second and now[MiB:3 * MiB] == first[MiB:]
    ok(capsys, "clone", "tank/vol@one", "tank/copy")
    assert props(capsys, "tank/copy", "type", "origin", "volsize") == {
        "type": ("volume", "-"), "origin": ("tank/vol@one", "-"),
        "volsize": (str(16 * MiB), "local")}
    assert cp_out(env, capsys, "tank/copy:")[:3 * MiB] == first
    ok(capsys, "rollback", "tank/vol@one")
    assert cp_out(env, capsys, "tank/vol:") == image
    # shrinking drops the end; growing again shows zeros there
    ok(capsys, "set", "volsize=2M", "tank/copy")
    ok(capsys, "set", "volsize=4M", "tank/copy")
    back = cp_out(env, capsys, "tank/copy:")
    assert back[:2 * MiB] == first[:2 * MiB] and back[2 * MiB:] == bytes(2 * MiB)
    ok(capsys, "rename", "tank/copy", "tank/renamed")
    assert ok(capsys, "get", "-H", "-o", "value", "type", "tank/renamed") == "volume\n"
    assert cp_out(env, capsys, "tank/renamed:")[:MiB] == first[:MiB]
    _code, err = fails(capsys, "cp", str(env / "in.img"), "tank/vol@one:")
    assert "Read-only file system" in err
    _code, err = fails(capsys, "cp", "tank/vol:/x", str(env / "x"))
    assert err == "cp: cannot stat 'tank/vol:/x': No such file or directory"
    (env / "big.img").write_bytes(b"")
    os.truncate(env / "big.img", 17 * MiB)
    _code, err = fails(capsys, "cp", str(env / "big.img"), "tank/vol:")
    assert "No space left on device" in err
    assert cp_out(env, capsys, "tank/vol:") == image               # nothing past the end


def test_holes_stay_holes_and_writing_a_shorter_image_keeps_the_rest(env, capsys):
    ok(capsys, "create", "-V", "8M", "tank/vol")
    cp_in(env, capsys, b"\xff" * (8 * MiB), "tank/vol:")
    sparse = env / "sparse.img"
    with open(sparse, "wb") as f:
        f.truncate(4 * MiB)
        f.seek(MiB)
        f.write(b"x" * 100)
    ok(capsys, "cp", str(sparse), "tank/vol:")
    got = cp_out(env, capsys, "tank/vol:")
    want = bytearray(4 * MiB)
    want[MiB:MiB + 100] = b"x" * 100
    assert got[:4 * MiB] == want and got[4 * MiB:] == b"\xff" * (4 * MiB)


def test_library_reads_writes_discards(env):
    from fusezfs.api import Handle
    from fusezfs.cli.cli_pool import open_pool
    from fusezfs.zpl.volumes import create_volume, open_volume
    pool = open_pool("tank")
    try:
        with pool.lock:
            h = Handle(pool)
            create_volume(h, "tank/v", 4 * MiB, {"volblocksize": 4096})
            vol = open_volume(h, "tank/v")
            assert (vol.size, vol.blocksize) == (4 * MiB, 4096)
            vol.write(0, b"a" * 10000)
            with pytest.raises(OSError) as e:
                vol.write(4 * MiB - 1, b"zz")
            assert e.value.errno == 28
            assert vol.read(4 * MiB - 1, 10) == b"\0"
            vol.discard(4096, 4096)
            assert vol.read(0, 10000) == b"a" * 4096 + bytes(4096) + b"a" * 1808
            assert vol.extents() == [(0, 4096), (8192, 12288)]
            vol.fsync()
            vol.close()
    finally:
        pool.close()


# ---- space -------------------------------------------------------------------------------------
def test_space_accounting(env, capsys):
    before = int(props(capsys, "tank", "available")["available"][0])
    ok(capsys, "create", "-V", "32M", "tank/vol")
    resv = reservation(32 * MiB, 8192)
    got = props(capsys, "tank/vol", "used", "usedbydataset", "usedbyrefreservation",
                "referenced", "available")
    assert int(got["usedbydataset"][0]) + int(got["usedbyrefreservation"][0]) == resv
    assert int(got["used"][0]) == resv
    # the pool's other datasets lost what was promised to the volume
    assert before - int(props(capsys, "tank", "available")["available"][0]) in \
        range(resv, resv + MiB)
    cp_in(env, capsys, random.Random(1).randbytes(8 * MiB), "tank/vol:")
    got = props(capsys, "tank/vol", "used", "usedbydataset", "usedbyrefreservation",
                "referenced")
    assert int(got["usedbydataset"][0]) >= 8 * MiB
    assert int(got["used"][0]) == resv                 # still within its refreservation
    ok(capsys, "snapshot", "tank/vol@s")
    cp_in(env, capsys, random.Random(2).randbytes(8 * MiB), "tank/vol:")
    got = props(capsys, "tank/vol", "used", "usedbysnapshots", "usedbydataset",
                "usedbyrefreservation")
    assert int(got["usedbysnapshots"][0]) >= 8 * MiB
    assert int(got["used"][0]) == sum(int(got[k][0]) for k in (
        "usedbysnapshots", "usedbydataset", "usedbyrefreservation"))
    ok(capsys, "destroy", "-r", "tank/vol")
    assert abs(int(props(capsys, "tank", "available")["available"][0]) - before) < MiB


def test_snapshot_recursive_destroy_and_verify(env, capsys):
    ok(capsys, "create", "tank/fs")
    ok(capsys, "create", "-V", "4M", "tank/fs/vol")
    cp_in(env, capsys, b"v" * MiB, "tank/fs/vol:")
    ok(capsys, "snapshot", "-r", "tank/fs@r")
    assert ok(capsys, "list", "-H", "-t", "snapshot", "-o", "name", "-r", "tank") == \
        "tank/fs@r\ntank/fs/vol@r\n"
    _code, err = fails(capsys, "destroy", "tank/fs/vol")
    assert err.splitlines()[0] == "cannot destroy 'tank/fs/vol': volume has children"
    ok(capsys, "destroy", "-r", "tank/fs")
    assert ok(capsys, "list", "-H", "-o", "name", "-t", "all") == "tank\n"
    assert ok(capsys, "pool", "verify", "tank").strip().endswith("no errors found")


# ---- the volume as a file (FUSE) and a loop device -----------------------------------------------
@pytest.fixture
def served(env, capsys, needs_fuse):
    """tank/vol (8 MiB) served as a file by `python -m fusezfs.host.volume_serve`, which opens
    the pool itself; stopped with SIGTERM, after which the file is no mount any more and the
    volume holds what the test left in `expect` (if anything)."""
    import subprocess
    import sys

    from fusezfs.host.volume_mount import mount_device
    ok(capsys, "create", "-V", "8M", "tank/vol")
    path = ServedPath(env / "zvol" / "tank" / "vol")
    proc = subprocess.Popen([sys.executable, "-m", "fusezfs.host.volume_serve", "tank/vol",
                             str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == str(path), proc.stderr.read() if proc.poll() is not None else line
        yield path
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert mount_device(str(path)) is None
    if path.expect is not None:
        assert cp_out(env, capsys, "tank/vol:") == path.expect


class ServedPath(type(__import__("pathlib").Path())):
    """The served file's path, with what the volume must hold once it is unmounted."""
    expect: bytes | None = None


def test_volume_file_reads_writes_discards_and_fsyncs(served, env, capsys):
    import ctypes
    import errno
    import stat as st
    info = os.stat(served)
    assert st.S_ISREG(info.st_mode) and info.st_size == 8 * MiB
    data = random.Random(3).randbytes(2 * MiB)
    fd = os.open(served, os.O_RDWR)
    try:
        assert os.pwrite(fd, data, MiB) == len(data)
        os.fsync(fd)
        assert os.pread(fd, len(data), MiB) == data
        libc = ctypes.CDLL(None, use_errno=True)
        libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        assert libc.fallocate(fd, 3, 2 * MiB, 8192) == 0, os.strerror(ctypes.get_errno())
        assert os.pread(fd, 8192, 2 * MiB) == bytes(8192)
        with pytest.raises(OSError) as e:
            os.pwrite(fd, b"x" * 10, 8 * MiB)           # at the end, as a block device
        assert e.value.errno == errno.ENOSPC
        os.fsync(fd)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as e:
        os.truncate(served, 4 * MiB)
    assert e.value.errno == errno.EPERM
    want = bytearray(8 * MiB)
    want[MiB:3 * MiB] = data
    want[2 * MiB:2 * MiB + 8192] = bytes(8192)
    assert served.read_bytes() == want
    served.expect = bytes(want)         # read again through cp once the file is unmounted


def test_losetup_attaches_the_volume_file(served, env):
    import shutil
    import subprocess
    if os.geteuid() != 0 or shutil.which("losetup") is None or \
            not os.path.exists("/dev/loop-control"):
        pytest.skip("losetup needs root, losetup and /dev/loop-control")
    got = subprocess.run(["losetup", "-f", "--show", str(served)], check=False,
                         capture_output=True, text=True)
    if got.returncode != 0:
        pytest.skip(f"no loop device here: {got.stderr.strip()}")
    loop = got.stdout.strip()
    try:
        with open(f"/sys/block/{os.path.basename(loop)}/size") as f:
            assert int(f.read()) * 512 == 8 * MiB
        data = random.Random(4).randbytes(64 * 1024)
        fd = os.open(loop, os.O_RDWR)
        try:
            os.pwrite(fd, data, 3 * MiB)
            os.fsync(fd)
        finally:
            os.close(fd)
        subprocess.run(["blkdiscard", "-o", str(3 * MiB), "-l", "8192", loop], check=True)
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)
    with open(served, "rb") as f:
        image = f.read()
    assert image[3 * MiB:3 * MiB + 64 * 1024] == bytes(8192) + data[8192:]
    served.expect = image


def _stream(pool, snap: str, source: str | None = None) -> bytes:
    """`zfs send [-i SOURCE] SNAP` through the library: the stream's bytes."""
    from fusezfs.api import Handle
    from fusezfs.send.outgoing import Stream, source_of
    dsl = Handle(pool).dsl
    with pool.lock:
        src = source_of(dsl, dsl.get(source)) if source else None
        stream = Stream(dsl, dsl.get(snap), src, pool.lock)
    return b"".join(stream.chunks())


def _receive(pool, target: str, data: bytes, force: bool = False):
    import io

    from fusezfs.api import Handle
    from fusezfs.send.incoming import receive_stream
    with pool.lock:
        return receive_stream(Handle(pool).dsl, target, io.BytesIO(data), force=force)


def test_send_and_receive_volumes(env, capsys):
    """Full and incremental streams of a volume (DMU_OST_ZVOL) read by OpenZFS's zstream and
    received into a new volume that then reads back byte for byte; a volume stream never goes
    over a filesystem, nor a filesystem's over a volume."""
    import zstream

    from fusezfs.cli.cli_pool import open_pool
    from fusezfs.send.receiver import ReceiveError
    ok(capsys, "create", "-V", "8M", "-b", "16K", "tank/vol")
    rng = random.Random(9)
    cp_in(env, capsys, rng.randbytes(3 * MiB), "tank/vol:")
    ok(capsys, "snapshot", "tank/vol@a")
    ok(capsys, "set", "volsize=16M", "tank/vol")
    cp_in(env, capsys, rng.randbytes(100_000), "tank/vol:")
    ok(capsys, "snapshot", "tank/vol@b")
    ok(capsys, "create", "tank/fs")
    ok(capsys, "snapshot", "tank/fs@s")
    pool = open_pool("tank")
    try:
        full, inc = _stream(pool, "tank/vol@a"), _stream(pool, "tank/vol@b", "tank/vol@a")
        fs_stream = _stream(pool, "tank/fs@s")
        _receive(pool, "tank/copy", full)
        with pytest.raises(ReceiveError) as e:
            _receive(pool, "tank/fs", full, force=True)
        assert e.value.message.endswith("destination 'tank/fs' is a filesystem: the stream is "
                                        "of a volume")
        with pytest.raises(ReceiveError) as e:
            _receive(pool, "tank/vol", fs_stream, force=True)
        assert e.value.message.endswith("destination 'tank/vol' is a volume: the stream is of "
                                        "a filesystem")
    finally:
        pool.close()
    assert cp_out(env, capsys, "tank/copy:") == cp_out(env, capsys, "tank/vol@a:")
    pool = open_pool("tank")
    try:
        _receive(pool, "tank/copy", inc)
    finally:
        pool.close()
    assert cp_out(env, capsys, "tank/copy:") == cp_out(env, capsys, "tank/vol@b:")
    got = props(capsys, "tank/copy@b", "volsize", "type")
    assert got["volsize"][0] == str(16 * MiB)
    assert props(capsys, "tank/copy", "volblocksize")["volblocksize"][0] == "16384"
    zstream.require()
    for name, data, writes in (("full", full, 3 * MiB // 16384 + 1), ("inc", inc, 8)):
        path = env / f"{name}.zs"
        path.write_bytes(data)
        dump = zstream.dump(path)
        assert dump.returncode == 0, dump.stderr
        counts = zstream.summary(dump.stdout)
        assert counts["BEGIN"] == counts["END"] == counts["FREEOBJECTS"] == 1
        assert counts["OBJECT"] == 2 and counts["WRITE"] == writes, counts
        assert "type = 23" in dump.stdout and "type = 24" in dump.stdout


def test_bookmarks_holds_and_promote_of_volumes(env, capsys):
    ok(capsys, "create", "-V", "4M", "tank/vol")
    cp_in(env, capsys, b"1" * MiB, "tank/vol:")
    ok(capsys, "snapshot", "tank/vol@a")
    ok(capsys, "bookmark", "tank/vol@a", "tank/vol#a")
    assert ok(capsys, "list", "-H", "-t", "bookmark", "-o", "name,type") == "tank/vol#a\tbookmark\n"
    ok(capsys, "hold", "keep", "tank/vol@a")
    _code, err = fails(capsys, "destroy", "tank/vol@a")
    assert err == "cannot destroy snapshot tank/vol@a: dataset is busy"
    ok(capsys, "release", "keep", "tank/vol@a")
    ok(capsys, "clone", "tank/vol@a", "tank/copy")
    cp_in(env, capsys, b"2" * MiB, "tank/copy:")
    ok(capsys, "promote", "tank/copy")
    assert ok(capsys, "get", "-H", "-o", "value", "origin", "tank/vol") == "tank/copy@a\n"
    assert cp_out(env, capsys, "tank/copy@a:")[:MiB] == b"1" * MiB
    assert cp_out(env, capsys, "tank/copy:")[:MiB] == b"2" * MiB
    assert cp_out(env, capsys, "tank/vol:")[:MiB] == b"1" * MiB
    ok(capsys, "destroy", "tank/vol")
    ok(capsys, "destroy", "-r", "tank/copy")
    assert ok(capsys, "list", "-H", "-o", "name", "-t", "all") == "tank\n"


def test_volume_files_follow_the_pool(env, needs_fuse):
    """VolumeFiles, as the service runs it: one file per volume under the root, made, moved
    and removed as volumes are created, renamed and destroyed, all in one trio loop."""
    import threading

    import trio

    from fusezfs.api import Handle
    from fusezfs.cli.cli_pool import open_pool
    from fusezfs.fuse.fuse_sessions import instance, release
    from fusezfs.host.volume_mount import VolumeFiles, mount_device
    from fusezfs.zpl.volumes import create_volume, open_volume
    pool = open_pool("tank")
    handle = Handle(pool)
    root = str(env / "zvol")
    started = threading.Event()
    loop: dict = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            loop["nursery"], loop["token"] = nursery, trio.lowlevel.current_trio_token()
            loop["cancel"] = nursery.cancel_scope
            started.set()
            await trio.sleep_forever()

    thread = threading.Thread(target=trio.run, args=(main,))
    thread.start()
    started.wait()
    files = VolumeFiles(handle, root, loop["nursery"], loop["token"], instance, release)
    try:
        with pool.lock:
            create_volume(handle, "tank/a", 2 * MiB)
            create_volume(handle, "tank/b", 4 * MiB)
        assert files.refresh() == []
        a, b = os.path.join(root, "tank", "a"), os.path.join(root, "tank", "b")
        assert os.path.getsize(a) == 2 * MiB and os.path.getsize(b) == 4 * MiB
        with open(b, "r+b") as f:
            f.seek(MiB)
            f.write(b"through the file")
            f.flush()
            os.fsync(f.fileno())
        with pool.lock:
            vol = open_volume(handle, "tank/b")
            assert vol.read(MiB, 16) == b"through the file"
            vol.close()
            dsl = handle.dsl
            dsl.rename(dsl.get("tank/b"), "tank/c")
            handle.forget(dsl.get("tank/a").id)
            dsl.destroy_filesystem(dsl.get("tank/a"))
        assert files.refresh() == []
        c = os.path.join(root, "tank", "c")
        with open(c, "rb") as f:
            f.seek(MiB)
            assert f.read(16) == b"through the file"
        assert sorted(files.files) == ["tank/c"]
        assert files.close() == [] and files.files == {}
        assert not os.path.exists(a) and not os.path.exists(b) and not os.path.exists(c)
        assert mount_device(c) is None
    finally:
        files.close()
        trio.from_thread.run_sync(loop["cancel"].cancel, trio_token=loop["token"])
        thread.join()
        with pool.lock:
            pool.sync()
        pool.close()


def test_a_volume_survives_export_and_import(env, capsys):
    ok(capsys, "create", "-V", "4M", "-b", "4K", "tank/vol")
    data = random.Random(5).randbytes(MiB)
    cp_in(env, capsys, data, "tank/vol:")
    ok(capsys, "snapshot", "tank/vol@s")
    ok(capsys, "pool", "export", "tank")
    ok(capsys, "pool", "import", "-d", str(env), "tank")
    got = props(capsys, "tank/vol", "type", "volsize", "volblocksize", "refreservation")
    assert got == {"type": ("volume", "-"), "volsize": (str(4 * MiB), "local"),
                   "volblocksize": ("4096", "-"),
                   "refreservation": (str(reservation(4 * MiB, 4096)), "local")}
    assert cp_out(env, capsys, "tank/vol:")[:MiB] == data
    assert cp_out(env, capsys, "tank/vol@s:")[:MiB] == data


def test_fsync_through_the_file_survives_a_killed_server(env, capsys, needs_fuse):
    """What an fsync on the served file returned for is in the pool after the serving
    process is killed with SIGKILL (the txg it committed), and the pool verifies."""
    import signal
    import subprocess
    import sys

    from fusezfs.host.volume_mount import mount_device
    ok(capsys, "create", "-V", "4M", "tank/vol")
    path = str(env / "vol.file")
    proc = subprocess.Popen([sys.executable, "-m", "fusezfs.host.volume_serve", "tank/vol",
                             path],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    data = random.Random(6).randbytes(300_000)
    try:
        assert proc.stdout.readline().strip() == path
        fd = os.open(path, os.O_RDWR)
        try:
            os.pwrite(fd, data, 12345)
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        if mount_device(path) is not None:              # the dead mount, detached
            subprocess.run(["fusermount3", "-uz", path], check=False, capture_output=True)
            if mount_device(path) is not None and os.geteuid() == 0:
                subprocess.run(["umount", "-l", path], check=True)
    # (compared as one bool: pytest's diff of two 300 kB byte strings that mostly agree, as a
    # partial write-back makes them, runs for minutes)
    same = cp_out(env, capsys, "tank/vol:")[12345:12345 + len(data)] == data
    assert same, "the bytes an fsync returned for are not in the pool"
