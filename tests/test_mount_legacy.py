"""`fusezfs mount DATASET PATH`: one dataset (mountpoint=legacy, or a snapshot, read-only) at a
path of its own, as a FUSE mount of its own served by its pool's daemon; `fusezfs unmount
PATH|DATASET|POOL` and `fusermount3 -u`, each syncing first; the errors in zfs's words and exit
codes. (test_mount.py's ordinary-user test mounts a legacy dataset too.)

Commands run in subprocesses through test_mount.py's Env (skipped where FUSE is unusable, or
failed under FUSEZFS_TEST_STRICT=1, as there). Tests that check the mount table run as root.
Teardown unmounts the pool, then every fusezfs mount left below the test's directory (lazily),
and kills a daemon that would not exit.
"""
from __future__ import annotations

import errno
import os
import subprocess
import time

import pytest

from test_mount import Env, _alive, is_fuse_mount, read, write

pytestmark = pytest.mark.usefixtures("needs_fuse")       # tests/conftest.py
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="runs as root (the ordinary user's "
                                "case is in test_mount.py)")


class BindEnv(Env):
    """Env with paths to mount datasets at, and a teardown that finds every mount made."""

    def __init__(self, tmp_path) -> None:
        super().__init__(tmp_path)
        self.root = str(tmp_path / "root")          # the root dataset's mountpoint, with -m
        self.private = os.path.join(self.state, "tank.root")

    def path(self, name: str) -> str:
        p = str(self.tmp / name)
        os.makedirs(p, exist_ok=True)
        return p

    def fuse_mounts(self) -> list[str]:
        below = str(self.tmp) + "/"
        with open("/proc/self/mounts") as f:
            return [parts[1] for parts in map(str.split, f)
                    if len(parts) > 2 and parts[2] == "fuse.fusezfs" and parts[1].startswith(below)]

    def listing(self) -> list[list[str]]:
        return [line.split() for line in self.run("mount").stdout.splitlines()]

    def mounted_prop(self, *names: str) -> list[str]:
        r = self.run("get", "-H", "-o", "value", "mounted", *names)
        return r.stdout.split()

    def teardown(self) -> None:
        try:
            if self.daemon_pid() is not None:
                self.run("unmount", "tank", check=False)
        finally:
            for mp in reversed(self.fuse_mounts()):
                subprocess.run(["umount", "-l", mp], capture_output=True)
            super().teardown()


@pytest.fixture
def env(tmp_path):
    e = BindEnv(tmp_path)
    try:
        yield e
    finally:
        e.teardown()


def wait_for(cond, what: str, timeout: float = 60) -> None:
    """Poll until cond() holds, then assert it: the deadline only guards against hanging,
    the assertion is on the condition."""
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cond(), f"never came true: {what}"


def legacy_pool(env: BindEnv, *pool_opts: str) -> None:
    env.create_pool(256 << 20, *pool_opts)
    env.run("create", "-o", "mountpoint=legacy", "tank/other")
    env.run("create", "tank/legacy")
    env.run("set", "mountpoint=legacy", "tank/legacy")


def copy_out(env: BindEnv, spec: str) -> bytes:
    out = str(env.tmp / "copied")
    env.run("cp", spec, out)
    try:
        return read(out)
    finally:
        os.unlink(out)


# ---- mounting, writing, unmounting ----------------------------------------------------------
@needs_root
def test_legacy_mount_write_and_unmount_by_path_and_dataset(env):
    legacy_pool(env, "-m", "none")          # the root has no mountpoint: a private tree
    p1 = env.path("p1")
    env.run("mount", "tank/legacy", p1)
    assert is_fuse_mount(p1) and not is_fuse_mount(env.private)     # no tree: mountpoint=none
    write(f"{p1}/f", b"written at the legacy mount")
    os.mkdir(f"{p1}/d")
    assert sorted(os.listdir(p1)) == ["d", "f"]
    assert ["tank/legacy", p1] in env.listing()
    assert env.mounted_prop("tank", "tank/legacy", "tank/other") == ["no", "yes", "no"]
    # a mount of its own: its st_dev, its line in the mount table, its statfs
    assert os.stat(p1).st_dev != os.stat(env.tmp).st_dev
    with open("/proc/self/mountinfo") as f:
        assert any(line.split()[4] == p1 and line.split(" - ")[1].split()[:2] ==
                   ["fuse.fusezfs", "tank/legacy"] for line in f)
    env.run("set", "quota=20M", "tank/legacy")
    assert os.statvfs(p1).f_blocks * os.statvfs(p1).f_frsize == 20 << 20
    assert os.listdir(f"{p1}/.zfs") == ["snapshot"]
    # the library sees the file (the command runs in the daemon), and snapshots show at once
    assert copy_out(env, "tank/legacy:/f") == b"written at the legacy mount"
    env.run("snapshot", "tank/legacy@s1")
    assert read(f"{p1}/.zfs/snapshot/s1/f") == b"written at the legacy mount"
    # unmount by path
    env.run("unmount", p1)
    assert not is_fuse_mount(p1)
    assert copy_out(env, "tank/legacy:/f") == b"written at the legacy mount"
    env.run("pool", "verify", "tank")
    # again, unmounted by dataset name
    env.run("mount", "tank/legacy", p1)
    assert read(f"{p1}/f") == b"written at the legacy mount"
    write(f"{p1}/g", b"second time")
    env.run("unmount", "tank/legacy")
    assert not is_fuse_mount(p1)
    assert copy_out(env, "tank/legacy:/g") == b"second time"
    assert env.mounted_prop("tank/legacy") == ["no"]


@needs_root
def test_mounted_once_and_unmount_pool_with_others(env):
    legacy_pool(env, "-m", env.root)
    env.run("create", "tank/a")
    p1, p2, p3 = env.path("p1"), env.path("p2"), env.path("p3")
    env.run("mount", "tank/legacy", p1)
    assert is_fuse_mount(env.root) and os.path.isdir(f"{env.root}/a")    # the pool as usual
    # once only, as zfs mount (a second session would cache on its own); a snapshot may be
    r = env.run("mount", "tank/legacy", p2, check=False)
    assert r.returncode == 1 and r.stderr == \
        f"cannot mount 'tank/legacy': filesystem already mounted at {p1}\n", r.stderr
    write(f"{p1}/f", b"through p1")
    env.run("snapshot", "tank/legacy@s")
    env.run("mount", "tank/legacy@s", p2)
    assert read(f"{p2}/f") == b"through p1"
    assert sorted(map(tuple, env.listing())) == [("tank", env.root), ("tank/a", f"{env.root}/a"),
                                                 ("tank/legacy", p1), ("tank/legacy@s", p2)]
    assert env.mounted_prop("tank", "tank/a", "tank/legacy", "tank/other") == \
        ["yes", "yes", "yes", "no"]
    # a filesystem the tree shows is mounted there already; zfs unmount and mount of it
    r = env.run("mount", "tank/a", p3, check=False)
    assert r.returncode == 1 and "cannot mount 'tank/a': filesystem already mounted at " \
        f"{env.root}/a" in r.stderr, r.stderr
    assert not is_fuse_mount(p3)
    env.run("unmount", "tank/a")                # zfs unmount of a child of the tree
    assert not is_fuse_mount(f"{env.root}/a") and env.mounted_prop("tank/a") == ["no"]
    env.run("unmount", "tank/legacy@s")
    env.run("mount", "tank/a")
    assert is_fuse_mount(f"{env.root}/a") and env.mounted_prop("tank/a") == ["yes"]
    # the pool: its other mounts first, then its tree; everything written is durable
    env.run("unmount", "tank")
    assert env.fuse_mounts() == []
    assert copy_out(env, "tank/legacy:/f") == b"through p1"
    env.run("pool", "verify", "tank")


@needs_root
def test_fusermount_unmounts_single_and_tree_cleanly(env):
    legacy_pool(env, "-m", env.root)
    p1 = env.path("p1")
    env.run("mount", "tank/legacy", p1)
    data = os.urandom(500_000)
    write(f"{p1}/one", data)                             # no fsync
    r = subprocess.run(["fusermount3", "-u", p1], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert not is_fuse_mount(p1) and is_fuse_mount(env.root)
    wait_for(lambda: env.listing() == [["tank", env.root]], "the service to see the unmount")
    assert env.mounted_prop("tank/legacy") == ["no"]
    assert copy_out(env, "tank/legacy:/one") == data
    # the tree's own mount goes: at the next command the service unmounts the pool's others
    env.run("mount", "tank/legacy", p1)
    write(f"{p1}/two", data[::-1])
    r = subprocess.run(["fusermount3", "-u", env.root], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: env.mounted_prop("tank") == ["no"], "the service to see the unmount")
    assert env.fuse_mounts() == []
    os.kill(env.daemon_pid(), 9)            # what was written is durable: nothing is lost
    assert copy_out(env, "tank/legacy:/two") == data[::-1]
    env.run("pool", "verify", "tank")


@needs_root
def test_snapshot_read_only_rename_destroy_and_export(env):
    legacy_pool(env, "-m", "none")
    p1, p2 = env.path("p1"), env.path("p2")
    env.run("mount", "tank/legacy", p1)
    write(f"{p1}/f", b"in the snapshot")
    env.run("snapshot", "tank/legacy@s")
    write(f"{p1}/f", b"after the snapshot")
    env.run("mount", "tank/legacy@s", p2)
    assert read(f"{p2}/f") == b"in the snapshot"
    with pytest.raises(OSError) as ei:
        write(f"{p2}/new", b"x")
    assert ei.value.errno == errno.EROFS
    assert os.statvfs(p2).f_flag & os.ST_RDONLY
    # a rename keeps the mounts and renames them in the listing
    env.run("rename", "tank/legacy", "tank/moved")
    assert sorted(map(tuple, env.listing())) == [("tank/moved", p1), ("tank/moved@s", p2)]
    assert read(f"{p1}/f") == b"after the snapshot"
    env.run("unmount", p2)
    # destroying a mounted dataset takes its mount away
    env.run("create", "-o", "mountpoint=legacy", "tank/gone")
    p3 = env.path("p3")
    env.run("mount", "tank/gone", p3)
    env.run("destroy", "tank/gone")
    assert not is_fuse_mount(p3)
    assert is_fuse_mount(p1)
    # export unmounts everything first
    env.run("pool", "export", "tank")
    assert env.fuse_mounts() == []
    env.run("pool", "import", "-d", str(env.tmp), "tank")
    assert copy_out(env, "tank/moved:/f") == b"after the snapshot"


# ---- errors -----------------------------------------------------------------------------------
def _fails(env: BindEnv, args: tuple, text: str, code: int = 1) -> None:
    r = env.run(*args, check=False)
    assert r.returncode == code and text in r.stderr, (args, r.returncode, r.stderr)


@needs_root
def test_errors_and_exit_codes(env):
    legacy_pool(env, "-m", "none")
    p1, p2 = env.path("p1"), env.path("p2")
    afile = str(env.tmp / "afile")
    write(afile, b"")
    # nothing mounted: nothing is left mounted after a refusal
    _fails(env, ("mount", "tank/legacy"), "cannot mount 'tank/legacy': legacy mountpoint\n"
                                          "use mount(8) to mount this filesystem")
    _fails(env, ("mount", "tank/nope", p1), "cannot open 'tank/nope': dataset does not exist")
    _fails(env, ("mount", "nopool/x", p1), "cannot open 'nopool/x': dataset does not exist")
    _fails(env, ("mount", "tank/legacy", afile), f"cannot mount '{afile}': failed to create "
                                                 f"mountpoint")
    _fails(env, ("mount", "tank/legacy@nosnap", p1), "dataset does not exist")
    _fails(env, ("mount", "-o", "bogus", "tank/legacy", p1), "unknown mount option 'bogus'")
    _fails(env, ("unmount", "tank/legacy"), "cannot unmount 'tank/legacy': not currently mounted")
    assert env.fuse_mounts() == []
    _fails(env, ("mount", "tank"), "cannot mount 'tank': no mountpoint set")
    # served
    env.run("mount", "tank/legacy", p1)
    _fails(env, ("mount", "tank/legacy", p2), f"filesystem already mounted at {p1}")
    _fails(env, ("mount", "tank/other", p1), f"'{p1}' is already a mount point")
    _fails(env, ("mount", "tank/nope", p2), "cannot open 'tank/nope': dataset does not exist")
    _fails(env, ("mount", "-o", "allow_other", "tank/other", p2), "mount options apply to")
    _fails(env, ("unmount", "tank/nope"), "cannot open 'tank/nope': dataset does not exist")
    _fails(env, ("unmount", "tank/other"), "cannot unmount 'tank/other': not currently mounted")
    _fails(env, ("unmount", p2), f"cannot unmount '{p2}': not currently mounted")
    with open(f"{p1}/busy", "wb"):
        _fails(env, ("unmount", p1), f"cannot unmount '{p1}': pool or dataset is busy")
    assert is_fuse_mount(p1)
    assert not is_fuse_mount(p2)
    env.run("unmount", p1)
    assert env.fuse_mounts() == []
