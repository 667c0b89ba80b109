"""One scenario, two backends, the same asserts: datasets, snapshots, clones, rollback,
properties, file contents, send/receive, and the messages and exit codes of common mistakes,
through the library (fusezfs.backends.connect's object) and through the `zfs`/`zpool` programs
of fusezfs.

The real ZFS is Debian's zfs-fuse, started by the test in a private mount namespace
(tests/zfsfuse.py) and reached the way a user reaches one in another namespace:
FUSEZFS_ZFS="nsenter -t PID -m /usr/sbin/zfs", FUSEZFS_ZPOOL likewise, FUSEZFS_MOUNT_ROOT=
/proc/PID/root (where this process sees its mounts). The emulated pool is not mounted: its
files are read and written through the library.

Differences that come from zfs-fuse's age (pool version 23, 2010) are listed in
ZFS_FUSE_AGE, each with the OpenZFS 2.1.11 manual line that decides what a current ZFS does;
the emulation follows the manual, and a check that zfs-fuse cannot pass is asserted there
in its zfs-fuse form, so the difference itself stays tested.
"""
from __future__ import annotations

import os
import uuid

import pytest
from test_backends import program as run_program

from fusezfs.backends import connect
from fusezfs.backends.library import Backend, ZfsCommandError

MiB = 1 << 20

# difference -> (the OpenZFS 2.1.11 manual line that decides it, what zfs-fuse does instead)
ZFS_FUSE_AGE = {
    "compression=zstd": (
        "zfsprops(7): compression=on|off|gzip|gzip-N|lz4|lzjb|zle|zstd|zstd-N|zstd-fast|"
        "zstd-fast-N", "refuses zstd: 'compression' must be one of 'on | off | lzjb | gzip | "
        "gzip-[1-9] | zle'"),
    ".zfs/snapshot": (
        "zfsconcepts(7): File system snapshots can be accessed under the .zfs/snapshot "
        "directory in the root of the file system.", "has no .zfs directory: snapshot files "
        "are read through a clone"),
    "rename of a mounted filesystem": (
        "zfs-rename(8): Renamed file systems can inherit new mount points, in which case they "
        "are unmounted and remounted at the new mount point.", "answers 'dataset is busy' for "
        "some mounted filesystems nothing uses (not for others, nor with mountpoint=none), "
        "so the scenario renames one with mountpoint=none"),
    "zfs version": (
        "zfs(8): zfs version -- Displays the software version of the zfs userland utility and "
        "the zfs kernel module.", "has no version verb: fusezfs answers "
        "zfs-unknown-passthrough for it"),
}


@pytest.fixture(scope="module")
def zfs_fuse():
    from zfsfuse import ZfsFuse, require
    require()
    with ZfsFuse() as zf:
        yield zf


@pytest.fixture(params=["emulated", "passthrough"])
def backend(request, tmp_path) -> Backend:
    if request.param == "emulated":
        emulated = connect("emulated", state_dir=tmp_path / "state")
        emulated.env.pop("FUSEZFS_NO_SERVICE", None)    # the service answers, as for a user
        request.addfinalizer(emulated.stop_service)
        return emulated
    zf = request.getfixturevalue("zfs_fuse")
    pid = zf.helper.pid
    return connect("passthrough", zfs=["nsenter", "-t", str(pid), "-m", "/usr/sbin/zfs"],
                   zpool=["nsenter", "-t", str(pid), "-m", "/usr/sbin/zpool"],
                   mount_root=f"/proc/{pid}/root")


def zfs_fuse_age(backend: Backend) -> bool:
    """The passthrough backend here is zfs-fuse: its listed differences apply."""
    return backend.name == "passthrough"


@pytest.fixture
def pool(backend, tmp_path):
    name = "sc" + uuid.uuid4().hex[:8]
    backend.create_pool(name, [tmp_path / "disk0"], size=128 * MiB,
                        mountpoint=str(tmp_path / "mnt"))
    yield name
    backend.destroy_pool(name, force=True)
    assert name not in backend.pools()


def program(backend: Backend, name: str, *args: str, stdin: bytes | None = None,
            cwd: str | None = None):
    """fusezfs's `zfs`, `zpool` or `fusezfs` program, as a user runs it, on the backend."""
    return run_program(name, *args, environ=backend.env, stdin=stdin, cwd=cwd)


def test_datasets_snapshots_clones_rollback_properties(backend, pool):
    b = backend
    b.create(f"{pool}/a")
    b.create(f"{pool}/a/b/c", parents=True)
    assert b.list(pool) == [pool, f"{pool}/a", f"{pool}/a/b", f"{pool}/a/b/c"]

    b.write_file(f"{pool}/a", "/f1", b"first\n" * 1000)
    assert b.read_file(f"{pool}/a", "/f1") == b"first\n" * 1000
    b.snapshot(f"{pool}/a@s1")
    b.write_file(f"{pool}/a", "/f1", b"second\n")
    b.write_file(f"{pool}/a", "/f2", b"new file\n")
    assert b.list(pool, types="snapshot") == [f"{pool}/a@s1"]

    # a clone of the snapshot holds the snapshot's files, and is a filesystem of its own
    b.clone(f"{pool}/a@s1", f"{pool}/c")
    assert b.get(f"{pool}/c", "origin") == f"{pool}/a@s1"
    assert b.read_file(f"{pool}/c", "/f1") == b"first\n" * 1000
    with pytest.raises(FileNotFoundError):
        b.read_file(f"{pool}/c", "/f2")
    b.write_file(f"{pool}/c", "/f3", b"only in the clone\n")
    assert b.read_file(f"{pool}/a", "/f1") == b"second\n"

    # the snapshot's own directory (ZFS_FUSE_AGE[".zfs/snapshot"])
    if zfs_fuse_age(b):
        assert program(b, "zfs", "list", "-H", "-o", "name", f"{pool}/a@s1").returncode == 0
    else:
        assert b.read_file(f"{pool}/a@s1", "/f1") == b"first\n" * 1000

    # rollback: the head is the snapshot's again
    b.rollback(f"{pool}/a@s1")
    assert b.read_file(f"{pool}/a", "/f1") == b"first\n" * 1000
    with pytest.raises(FileNotFoundError):
        b.read_file(f"{pool}/a", "/f2")

    # properties: set, inherited, user properties, sources
    b.set(pool, {"org.example:tag": "v1"}, compression="gzip", atime="off")
    assert b.properties(f"{pool}/a/b", "compression", "atime", "org.example:tag") == {
        "compression": ("gzip", f"inherited from {pool}"),
        "atime": ("off", f"inherited from {pool}"),
        "org.example:tag": ("v1", f"inherited from {pool}")}
    b.set(f"{pool}/a", quota=str(64 * MiB))
    assert b.get(f"{pool}/a", "quota") == str(64 * MiB)
    assert b.properties(f"{pool}/a", "quota")["quota"][1] == "local"
    b.set(f"{pool}/a", quota="none")
    assert b.get(f"{pool}/a", "quota") == "0"
    b.set(f"{pool}/a", {"org.example:tag": "v2"})
    assert b.properties(f"{pool}/a/b", "org.example:tag") == {
        "org.example:tag": ("v2", f"inherited from {pool}/a")}
    b.inherit(f"{pool}/a", "org.example:tag")
    assert b.properties(f"{pool}/a/b", "org.example:tag") == {
        "org.example:tag": ("v1", f"inherited from {pool}")}
    zstd = program(b, "zfs", "set", "compression=zstd", f"{pool}/a")
    if zfs_fuse_age(b):                                     # ZFS_FUSE_AGE["compression=zstd"]
        assert zstd.returncode == 1 and b"must be one of" in zstd.stderr
    else:
        assert zstd.returncode == 0 and b.get(f"{pool}/a", "compression") == "zstd"

    # renames (ZFS_FUSE_AGE["rename of a mounted filesystem"]) and destroys
    b.set(f"{pool}/a/b/c", mountpoint="none")
    b.rename(f"{pool}/a/b/c", f"{pool}/a/b/d")
    assert b.list(f"{pool}/a/b") == [f"{pool}/a/b", f"{pool}/a/b/d"]
    b.destroy(f"{pool}/c")
    b.destroy(f"{pool}/a", recursive=True)
    assert b.list(pool, types="all") == [pool]
    assert b.verify(pool)


def test_send_receive(backend, pool):
    b = backend
    b.create(f"{pool}/src")
    b.write_file(f"{pool}/src", "/data", bytes(range(256)) * 512)
    b.snapshot(f"{pool}/src@one")
    b.write_file(f"{pool}/src", "/more", b"incremental\n")
    b.snapshot(f"{pool}/src@two")

    b.send_to(f"{pool}/src@one", b, f"{pool}/copy")
    assert b.read_file(f"{pool}/copy", "/data") == bytes(range(256)) * 512
    # (not probing for /more here: zfs-fuse's mount would keep the negative lookup cached
    # across the receive below)
    assert b.list(f"{pool}/copy", types="snapshot") == [f"{pool}/copy@one"]
    stream = b.send(f"{pool}/src@two", incremental_from=f"{pool}/src@one")
    # -F: reading through a mount updates atime, which counts as a change since @one
    b.receive(f"{pool}/copy", stream, force=True)
    assert b.read_file(f"{pool}/copy", "/more") == b"incremental\n"
    assert b.list(f"{pool}/copy", types="snapshot") == [f"{pool}/copy@one", f"{pool}/copy@two"]

    # a receive that fails says why, whichever end broke the pipe
    with pytest.raises(ZfsCommandError) as e:
        b.send_to(f"{pool}/src@one", b, f"{pool}/copy")
    assert (e.value.backend, e.value.code, e.value.argv) == (b.name, 1,
                                                            ["receive", f"{pool}/copy"])
    assert "destination '" + f"{pool}/copy' exists" in e.value.stderr
    # a full stream onto an existing filesystem needs -F
    again = program(b, "zfs", "receive", f"{pool}/copy", stdin=b.send(f"{pool}/src@one"))
    assert (again.returncode, again.stderr.decode()) == (
        1, f"cannot receive new filesystem stream: destination '{pool}/copy' exists\n"
           f"must specify -F to overwrite it\n")


def test_mistakes_answer_in_zfs_words(backend, pool, tmp_path):
    b = backend
    b.create(f"{pool}/a")
    b.snapshot(f"{pool}/a@s")

    def answer(name, *args):
        r = program(b, name, *args)
        return r.returncode, r.stderr.decode().split("\n")[0]

    assert answer("zfs", "create", f"{pool}/a") == (
        1, f"cannot create '{pool}/a': dataset already exists")
    assert answer("zfs", "destroy", f"{pool}/a") == (
        1, f"cannot destroy '{pool}/a': filesystem has children")
    assert answer("zfs", "list", f"{pool}/nosuch") == (
        1, f"cannot open '{pool}/nosuch': dataset does not exist")
    assert answer("zfs", "snapshot", f"{pool}/a@s") == (
        1, f"cannot create snapshot '{pool}/a@s': dataset already exists")
    assert answer("zfs", "rollback", f"{pool}/a@nosuch") == (
        1, f"cannot open '{pool}/a@nosuch': dataset does not exist")
    assert answer("zfs", "clone", f"{pool}/a@nosuch", f"{pool}/x") == (
        1, f"cannot open '{pool}/a@nosuch': dataset does not exist")
    code, message = answer("zfs", "set", "compression=bogus", pool)
    assert code == 1 and message.startswith(
        f"cannot set property for '{pool}': 'compression' must be one of 'on | off | lzjb | "
        f"gzip | gzip-[1-9] | zle")
    assert answer("zfs", "get", "nosuchprop", pool) == (
        2, "bad property list: invalid property 'nosuchprop'")
    assert answer("zpool", "destroy", "nosuchpool") == (1, "cannot open 'nosuchpool': no such pool")
    # the library raises the command's own words, with the backend named
    with pytest.raises(ZfsCommandError) as e:
        b.create(f"{pool}/a")
    assert e.value.code == 1 and e.value.backend == b.name
    assert str(e.value).startswith(f"{b.name} backend: 'create {pool}/a' failed (exit 1): "
                                   f"cannot create '{pool}/a': dataset already exists")
    assert b.list(pool, types="all") == [pool, f"{pool}/a", f"{pool}/a@s"]   # nothing changed


def test_fusezfs_pool_create_takes_relative_files(backend, tmp_path):
    """`fusezfs pool create` takes pool files relative to the working directory on both
    backends (the real zpool itself wants full paths: passthrough makes them absolute)."""
    name = "rel" + uuid.uuid4().hex[:6]
    with open(tmp_path / "rel.img", "wb") as f:
        f.truncate(128 * MiB)
    r = program(backend, "fusezfs", "pool", "create", "-m", "none", name, "rel.img",
                cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    try:
        status = backend.run("pool", "status", name).stdout
        assert str(tmp_path / "rel.img") in status
    finally:
        backend.destroy_pool(name)
    assert name not in backend.pools()


def test_fusezfs_cp_in_and_out(backend, pool, tmp_path):
    """`fusezfs cp` between the host and a dataset (passthrough: through the mountpoint, cp
    run where the real ZFS's mounts are), and out of a snapshot."""
    b = backend
    b.create(f"{pool}/docs")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_bytes(b"alpha\n")
    (tree / "sub" / "b.bin").write_bytes(bytes(range(256)) * 40)
    r = program(b, "fusezfs", "cp", "-r", "tree", f"{pool}/docs:/copy", cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert b.read_file(f"{pool}/docs", "/copy/sub/b.bin") == bytes(range(256)) * 40
    b.snapshot(f"{pool}/docs@s")
    b.write_file(f"{pool}/docs", "/copy/a.txt", b"changed\n")
    r = program(b, "fusezfs", "cp", f"{pool}/docs:/copy/a.txt", str(tmp_path / "out.txt"))
    assert r.returncode == 0 and (tmp_path / "out.txt").read_bytes() == b"changed\n"
    r = program(b, "fusezfs", "cp", f"{pool}/docs@s:/copy/a.txt", str(tmp_path / "old.txt"))
    if zfs_fuse_age(b):                                     # ZFS_FUSE_AGE[".zfs/snapshot"]
        assert r.returncode == 1
        assert r.stderr.decode().startswith(f"cp: cannot open '{pool}/docs@s': ")
    else:
        assert r.returncode == 0 and (tmp_path / "old.txt").read_bytes() == b"alpha\n"
    r = program(b, "fusezfs", "cp", str(tmp_path / "out.txt"), f"{pool}/nosuch:/x")
    assert (r.returncode, r.stderr.decode()) == (
        1, f"cp: cannot open '{pool}/nosuch': dataset does not exist\n")


def test_mount_and_unmount(backend, pool, needs_fuse):
    """`fusezfs mount`/`unmount` of a pool: the emulation's service mounts with FUSE, the real
    ZFS mounts its own; the same answers either way."""
    b = backend
    b.create(f"{pool}/www")
    b.write_file(f"{pool}/www", "/index.html", b"<h1>hi</h1>\n")
    assert b.mounted_path(f"{pool}/www") is not None          # mounted at creation, as ZFS
    again = program(b, "fusezfs", "mount", pool)
    assert (again.returncode, again.stderr.decode()) == (
        1, f"cannot mount '{pool}': filesystem already mounted\n")
    assert program(b, "fusezfs", "unmount", pool).returncode == 0
    assert b.get(f"{pool}/www", "mounted") == "no" and b.get(pool, "mounted") == "no"
    assert b.mounted_path(f"{pool}/www") is None
    again = program(b, "fusezfs", "unmount", pool)
    assert (again.returncode, again.stderr.decode()) == (
        1, f"cannot unmount '{pool}': not currently mounted\n")
    assert program(b, "fusezfs", "mount", pool).returncode == 0          # zfs mount: the root
    assert (b.get(pool, "mounted"), b.get(f"{pool}/www", "mounted")) == ("yes", "no")
    assert program(b, "fusezfs", "mount", f"{pool}/www").returncode == 0
    assert b.get(f"{pool}/www", "mounted") == "yes"
    with open(os.path.join(b.mounted_path(f"{pool}/www"), "index.html"), "rb") as f:
        assert f.read() == b"<h1>hi</h1>\n"


def test_version_and_backend_say_who_answers(backend):
    version = program(backend, "zfs", "version")
    assert version.returncode == 0
    lines = version.stdout.decode().splitlines()
    assert len(lines) == 2 and lines[0].startswith("zfs-") and lines[1].startswith("zfs-kmod-")
    if backend.name == "emulated":
        assert "-fusezfs-" in lines[0]
    else:                                                   # ZFS_FUSE_AGE["zfs version"]
        assert lines == ["zfs-unknown-passthrough", "zfs-kmod-unknown-passthrough"]
    assert backend.describe().splitlines()[0] == f"backend: {backend.name}"


def test_send_between_backends(zfs_fuse, tmp_path):
    """A snapshot made on the emulation is received by the real ZFS through a pipe, and back."""
    emu = connect("emulated", state_dir=tmp_path / "state")
    emu.env.pop("FUSEZFS_NO_SERVICE", None)
    pid = zfs_fuse.helper.pid
    real = connect("passthrough", zfs=["nsenter", "-t", str(pid), "-m", "/usr/sbin/zfs"],
                   zpool=["nsenter", "-t", str(pid), "-m", "/usr/sbin/zpool"],
                   mount_root=f"/proc/{pid}/root")
    epool, rpool = "em" + uuid.uuid4().hex[:6], "re" + uuid.uuid4().hex[:6]
    emu.create_pool(epool, [tmp_path / "e0"], size=128 * MiB, mountpoint=str(tmp_path / "em"))
    real.create_pool(rpool, [tmp_path / "r0"], size=128 * MiB, mountpoint=str(tmp_path / "rm"))
    try:
        emu.create(f"{epool}/fs", {"compression": "off"})
        emu.write_file(f"{epool}/fs", "/hello", b"from the emulation\n" * 300)
        emu.snapshot(f"{epool}/fs@s")
        emu.send_to(f"{epool}/fs@s", real, f"{rpool}/fs")
        assert real.read_file(f"{rpool}/fs", "/hello") == b"from the emulation\n" * 300
        real.write_file(f"{rpool}/fs", "/reply", b"from the real ZFS\n")
        real.snapshot(f"{rpool}/fs@t")
        real.send_to(f"{rpool}/fs@t", emu, f"{epool}/back")
        assert emu.read_file(f"{epool}/back", "/reply") == b"from the real ZFS\n"
        assert emu.read_file(f"{epool}/back", "/hello") == b"from the emulation\n" * 300
        assert emu.verify(epool) and real.verify(rpool)
        # neither backend touches the other's pool
        assert rpool not in emu.pools() and epool not in real.pools()
    finally:
        real.destroy_pool(rpool, force=True)
        emu.destroy_pool(epool, force=True)
        emu.stop_service()
