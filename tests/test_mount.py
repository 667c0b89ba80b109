"""Through a real FUSE mount: `fusezfs mount` / `unmount`, a model-based comparison with a
plain directory, snapshots under .zfs/snapshot, clones, child datasets, and a daemon killed
with SIGKILL during writes.

Every fusezfs command runs in a subprocess (the daemon holds the pool's device locks while it
serves). Tests skip, with the reason, where /dev/fuse or fusermount3 is unusable, and fail
instead under FUSEZFS_TEST_STRICT=1 (tests/prerequisites.py); without pyfuse3 they fail.
Teardown always unmounts (lazily as a last resort) and kills a daemon that would not exit.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest

from prerequisites import skip_or_fail
from servicetools import alive as _alive

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# FUSE must be usable (else skipped, or failed under FUSEZFS_TEST_STRICT=1) and pyfuse3 and
# trio importable (else failed): the needs_fuse fixture (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("needs_fuse")


class Env:
    """A state directory, a pool on a temporary file, and the mounts made from it."""

    def __init__(self, tmp_path) -> None:
        self.tmp = tmp_path
        self.state = str(tmp_path / "state")
        self.mnt = str(tmp_path / "mnt")
        os.makedirs(self.mnt)
        self.env = dict(os.environ, FUSEZFS_STATE_DIR=self.state,
                        PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
        self.env.pop("FUSEZFS_NO_SERVICE", None)        # the service owns the pool and its mounts
        self.mounted = False

    def run(self, *args, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        r = subprocess.run([sys.executable, "-m", "fusezfs.cli", *args], env=self.env,
                           capture_output=True, text=True, timeout=timeout, cwd=str(self.tmp))
        if check and r.returncode != 0:
            raise AssertionError(f"fusezfs {' '.join(args)} -> {r.returncode}\n{r.stdout}{r.stderr}")
        return r

    def create_pool(self, size: int = 256 << 20, *opts: str) -> None:
        disk = str(self.tmp / "disk")
        with open(disk, "wb") as f:
            f.truncate(size)
        self.run("pool", "create", "-m", self.mnt, *opts, "tank", disk)

    def mount(self, *opts: str) -> None:
        self.run("mount", *opts, "tank", self.mnt)
        self.mounted = True

    def daemon_pid(self) -> int | None:
        """The pid of the service (which owns the pool and serves its mounts)."""
        try:
            with open(os.path.join(self.state, "service.pid")) as f:
                pid = int(f.read())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def unmount(self) -> None:
        self.run("unmount", "tank")
        self.mounted = False
        assert not is_fuse_mount(self.mnt)

    def log(self) -> str:
        try:
            with open(os.path.join(self.state, "service.log")) as f:
                return f.read()
        except OSError:
            return ""

    def teardown(self) -> None:
        if is_fuse_mount(self.mnt):
            r = self.run("unmount", "tank", check=False)
            if r.returncode != 0 or is_fuse_mount(self.mnt):
                subprocess.run(["fusermount3", "-u", "-z", self.mnt], capture_output=True)
        pid = self.daemon_pid()
        if pid is not None:         # the service ends (it unmounts and closes every pool)
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 20
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def is_fuse_mount(path: str) -> bool:
    path = os.path.abspath(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == path for line in f if len(line.split()) > 2)


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    try:
        yield e
    finally:
        e.teardown()


def write(path: str, data: bytes, sync: bool = False) -> None:
    with open(path, "wb") as f:
        f.write(data)
        if sync:
            f.flush()
            os.fsync(f.fileno())


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# ---- mount basics -----------------------------------------------------------------------
def test_mount_unmount_and_children(env):
    env.create_pool()
    env.run("create", "tank/a")
    env.run("create", "tank/a/b")
    env.run("create", "-o", "canmount=off", "tank/off")
    env.run("create", "-o", "readonly=on", "tank/ro")
    env.mount()
    m = env.mnt
    assert sorted(os.listdir(m)) == ["a", "ro"]        # canmount=off: no mountpoint made
    assert os.path.isdir(f"{m}/a/b")
    write(f"{m}/top", b"root")
    write(f"{m}/a/x", b"in a")
    write(f"{m}/a/b/y", b"in b")
    # each dataset is its own mount, as in zfs: its own st_dev, line in mountinfo and statfs
    devs = [os.stat(p).st_dev for p in (m, f"{m}/a", f"{m}/a/b")]
    assert len(set(devs)) == 3
    assert os.stat(f"{m}/a/x").st_dev == devs[1] and os.stat(f"{m}/a/b/y").st_dev == devs[2]
    assert os.stat(f"{m}/top").st_ino != os.stat(f"{m}/ro").st_ino
    table = {line.split()[4]: line.split(" - ")[1].split()[:2]
             for line in open("/proc/self/mountinfo")}
    assert table[f"{m}/a/b"] == ["fuse.fusezfs", "tank/a/b"]
    assert table[m] == ["fuse.fusezfs", "tank"] and f"{m}/ro" in table
    assert f"{m}/off" not in table
    env.run("set", "quota=10M", "tank/a/b")
    assert os.statvfs(f"{m}/a/b").f_blocks * os.statvfs(f"{m}/a/b").f_frsize == 10 << 20
    assert os.statvfs(m).f_blocks * os.statvfs(m).f_frsize > 100 << 20
    # EXDEV across datasets, EBUSY on mountpoints, EROFS on readonly=on
    with pytest.raises(OSError) as ei:
        os.link(f"{m}/top", f"{m}/a/top")
    assert ei.value.errno == errno.EXDEV
    with pytest.raises(OSError) as ei:
        os.rename(f"{m}/top", f"{m}/a/top")
    assert ei.value.errno == errno.EXDEV
    with pytest.raises(OSError) as ei:
        os.rmdir(f"{m}/a/b")
    assert ei.value.errno in (errno.EBUSY, errno.ENOTEMPTY)
    with pytest.raises(OSError) as ei:
        write(f"{m}/ro/f", b"x")
    assert ei.value.errno == errno.EROFS
    st = os.statvfs(m)
    assert st.f_namemax == 255 and st.f_blocks > 0
    with pytest.raises(OSError) as ei:
        write(f"{m}/" + "n" * 256, b"")
    assert ei.value.errno == errno.ENAMETOOLONG
    # mount POOL PATH of a mounted pool moves its tree (and its children) there
    other = str(env.tmp / "other")
    env.run("mount", "tank", other)
    assert not is_fuse_mount(m) and is_fuse_mount(other) and is_fuse_mount(f"{other}/a/b")
    assert read(f"{other}/a/b/y") == b"in b"
    env.run("mount", "tank", m)
    assert not is_fuse_mount(other) and is_fuse_mount(f"{m}/a/b")
    env.unmount()
    env.run("pool", "verify", "tank")
    env.mount()
    assert read(f"{m}/a/b/y") == b"in b" and read(f"{m}/top") == b"root"


def test_fusermount_unmount_syncs(env):
    env.create_pool()
    env.mount()
    data = os.urandom(300_000)
    write(f"{env.mnt}/f", data)              # no fsync
    pid = env.daemon_pid()
    subprocess.run(["fusermount3", "-u", env.mnt], check=True)
    deadline = time.monotonic() + 30
    while mounted(env, "tank") != "no" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mounted(env, "tank") == "no", env.log()
    os.kill(pid, signal.SIGKILL)        # what the unmount wrote was committed before it ended
    env.run("pool", "verify", "tank")
    env.mount()
    assert read(f"{env.mnt}/f") == data


def test_sigterm_unmounts(env):
    env.create_pool()
    env.run("create", "tank/a")
    env.run("create", "tank/a/b")
    env.mount()
    write(f"{env.mnt}/f", b"hello")
    write(f"{env.mnt}/a/b/g", b"deep")           # no fsync: the unmount writes it
    pid = env.daemon_pid()
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid) and not is_fuse_mount(env.mnt), env.log()
    assert mounts_below(env.mnt) == []           # the children went first
    env.run("unmount", "tank")                   # the next service mounts it again: not now
    env.run("pool", "verify", "tank")
    env.mount()
    assert read(f"{env.mnt}/f") == b"hello" and read(f"{env.mnt}/a/b/g") == b"deep"


def mounts_below(top: str) -> list[str]:
    """The mountpoints at or below `top`, in mount order."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4]
            if mp == top or mp.startswith(top + "/"):
                out.append(mp)
    return out


def mounted(env, name: str) -> str:
    return env.run("get", "-H", "-o", "value", "mounted", name).stdout.strip()


@pytest.mark.skipif(os.geteuid() != 0, reason="children get their own session as root")
def test_children_follow_commands_as_mounts_of_their_own(env):
    """Children are separate mounts, as in zfs: created, renamed, moved by a mountpoint
    change and destroyed while the pool is mounted, the mount table follows; one unmounted
    from outside stays unmounted (`mounted` says no); a rollback of the parent leaves the
    child mounted; the pool's own mount cannot go from under its children, but `unmount`
    of the pool takes them first."""
    env.create_pool()
    env.run("create", "tank/a")
    env.mount()
    m = env.mnt
    root_dev = os.stat(m).st_dev
    env.run("snapshot", "tank@before")
    write(f"{m}/top", b"top")
    write(f"{m}/a/x", b"x")
    env.run("create", "tank/new")
    assert mounts_below(m) == [m, f"{m}/a", f"{m}/new"]
    new_dev = os.stat(f"{m}/new").st_dev
    assert new_dev not in (root_dev, os.stat(f"{m}/a").st_dev)
    write(f"{m}/new/f", b"new")
    env.run("rename", "tank/new", "tank/renamed")
    assert mounts_below(m) == [m, f"{m}/a", f"{m}/renamed"]
    assert read(f"{m}/renamed/f") == b"new" and not os.path.exists(f"{m}/new")
    env.run("set", f"mountpoint={m}/a/deeper", "tank/renamed")
    assert mounts_below(m) == [m, f"{m}/a", f"{m}/a/deeper"]
    assert read(f"{m}/a/deeper/f") == b"new"
    env.run("destroy", "tank/renamed")
    assert mounts_below(m) == [m, f"{m}/a"] and mounted(env, "tank/a") == "yes"
    # a rollback of the parent keeps its child's mount (the kernel is not told to drop the
    # name the child is mounted on)
    env.run("rollback", "tank@before")
    assert not os.path.exists(f"{m}/top")       # written after the snapshot: gone
    assert mounts_below(m) == [m, f"{m}/a"] and read(f"{m}/a/x") == b"x"
    # the root cannot be unmounted from under a child (EBUSY, as with zfs)
    r = subprocess.run(["umount", m], capture_output=True, text=True)
    assert r.returncode != 0 and is_fuse_mount(m)
    # zfs unmount / zfs mount of a child; a legacy one is refused in zfs's words
    env.run("unmount", "tank/a")
    assert mounts_below(m) == [m] and mounted(env, "tank/a") == "no"
    r = env.run("unmount", "tank/a", check=False)
    assert r.returncode == 1 and "not currently mounted" in r.stderr, r.stderr
    env.run("mount", "tank/a")
    assert mounts_below(m) == [m, f"{m}/a"] and read(f"{m}/a/x") == b"x"
    r = env.run("mount", "tank/a", check=False)
    assert r.returncode == 1 and "filesystem already mounted" in r.stderr, r.stderr
    env.run("create", "-o", "mountpoint=legacy", "tank/leg")
    r = env.run("mount", "tank/leg", check=False)
    assert r.returncode == 1 and "legacy mountpoint" in r.stderr, r.stderr
    # a child unmounted from outside stays unmounted, and its data is safe
    subprocess.run(["umount", f"{m}/a"], check=True)
    deadline = time.monotonic() + 20
    while mounted(env, "tank/a") != "no" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert mounted(env, "tank/a") == "no", env.log()
    assert mounts_below(m) == [m] and os.listdir(f"{m}/a") == []
    env.run("create", "tank/c")                 # a later command does not remount it
    assert mounts_below(m) == [m, f"{m}/c"]
    env.unmount()
    assert mounts_below(m) == []
    env.run("pool", "verify", "tank")
    env.mount()
    assert read(f"{m}/a/x") == b"x" and sorted(os.listdir(m)) == ["a", "c"]


# ---- model-based ------------------------------------------------------------------------
NAMES = ["a", "b", "c", "dd", "e", "longer name"]


def tree_state(top: str) -> dict:
    """Everything the model compares: type, permissions, size, content or target, link
    count, user xattrs; and which names are links of one file."""
    out = {}
    groups: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if not (dirpath == top and d == ".zfs")]
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, top)
            st = os.lstat(p)
            item = [stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_nlink]
            if stat.S_ISREG(st.st_mode):
                item += [st.st_size, hashlib.sha256(read(p)).hexdigest()]
                groups.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISLNK(st.st_mode):
                item.append(os.readlink(p))
            if not stat.S_ISLNK(st.st_mode):
                item.append(sorted((n, os.getxattr(p, n, follow_symlinks=False))
                                   for n in os.listxattr(p, follow_symlinks=False)
                                   if n.startswith("user.")))
            out[rel] = item
    out["#links"] = sorted(sorted(g) for g in groups.values() if len(g) > 1)
    return out


class Model:
    """Random file operations, applied to two trees alike; the outcome (errno or not) of each
    must agree, and so must the trees."""

    def __init__(self, seed: int, xattrs: bool) -> None:
        self.rng = random.Random(seed)
        self.xattrs = xattrs

    def paths(self, top: str) -> list[str]:
        out = []
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = [d for d in dirnames if not (dirpath == top and d == ".zfs")]
            for n in dirnames + filenames:
                out.append(os.path.relpath(os.path.join(dirpath, n), top))
        return sorted(out)

    def op(self, ref_top: str) -> tuple:
        """One operation, mostly one that can succeed (a parent that is a directory, a file
        where a file is wanted), sometimes one that must fail the same way on both sides."""
        r = self.rng
        every = self.paths(ref_top)
        kinds = {p: os.lstat(os.path.join(ref_top, p)).st_mode for p in every}
        dirs = [""] + [p for p in every if stat.S_ISDIR(kinds[p])]
        files = [p for p in every if stat.S_ISREG(kinds[p])]
        others = [p for p in every if not stat.S_ISDIR(kinds[p])]

        def new() -> str:
            d = r.choice(dirs)
            return os.path.join(d, r.choice(NAMES)) if d else r.choice(NAMES)

        def pick(pool: list[str]) -> str:
            return r.choice(pool) if pool and r.random() < 0.9 else r.choice(every or [new()])

        ops = ["create"] * 4 + ["write"] * 4 + ["mkdir"] * 2 + \
            ["truncate", "rename", "rename", "link", "unlink", "rmdir", "symlink", "chmod"] + \
            (["setxattr"] if self.xattrs else [])
        kind = r.choice(ops)
        if kind == "create":
            return (kind, new(), r.randbytes(r.choice([0, 1, 100, 5000, 70000])))
        if kind == "write":
            return (kind, pick(files), r.choice([0, 10, 4095, 65536, 131072 + 7]),
                    r.randbytes(r.choice([1, 300, 8192, 140000])))
        if kind == "truncate":
            return (kind, pick(files), r.choice([0, 1, 5000, 200000]))
        if kind == "rename":
            return (kind, pick(every), new() if r.random() < 0.6 else pick(every))
        if kind == "link":
            return (kind, pick(files), new())
        if kind == "unlink":
            return (kind, pick(others))
        if kind == "rmdir":
            empty = [d for d in dirs[1:] if not os.listdir(os.path.join(ref_top, d))]
            return (kind, pick(empty if empty and r.random() < 0.7 else dirs[1:]))
        if kind == "mkdir":
            return (kind, new())
        if kind == "symlink":
            return (kind, new(), r.choice(["a", "../b", "/nonexistent", "c/dd"]))
        if kind == "chmod":
            return (kind, pick(every), r.choice([0o644, 0o600, 0o755, 0o700, 0o4755, 0o1777]))
        return (kind, pick(every), "user." + r.choice(["x", "y"]),
                r.randbytes(r.choice([0, 10, 1000])))   # ext4 holds ~4 KiB of xattrs


def apply(top: str, op: tuple):
    """Run one operation under `top`; returns None or the errno it failed with."""
    kind, rel = op[0], op[1]
    p = os.path.join(top, rel)
    try:
        if kind == "create":
            fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            try:
                os.write(fd, op[2])
            finally:
                os.close(fd)
        elif kind == "write":
            fd = os.open(p, os.O_WRONLY | os.O_NOFOLLOW)
            try:
                os.pwrite(fd, op[3], op[2])
            finally:
                os.close(fd)
        elif kind == "truncate":
            os.truncate(p, op[2])
        elif kind == "rename":
            os.rename(p, os.path.join(top, op[2]))
        elif kind == "link":
            os.link(p, os.path.join(top, op[2]), follow_symlinks=False)
        elif kind == "unlink":
            os.unlink(p)
        elif kind == "mkdir":
            os.mkdir(p, 0o755)
        elif kind == "rmdir":
            os.rmdir(p)
        elif kind == "symlink":
            os.symlink(op[2], p)
        elif kind == "chmod":
            os.chmod(p, op[2], follow_symlinks=True)
        elif kind == "setxattr":
            os.setxattr(p, op[2], op[3], follow_symlinks=False)
    except OSError as e:
        return e.errno
    return None


def _xattrs_supported(path: str) -> bool:
    probe = os.path.join(path, ".xattr-probe")
    write(probe, b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
        return True
    except OSError:
        return False
    finally:
        os.unlink(probe)


@pytest.mark.parametrize("seed", [int(s) for s in os.environ.get("FUSEZFS_MODEL_SEEDS", "1,2").split(",")])
def test_model_random_ops(env, seed):
    env.create_pool()
    env.mount()
    ref = str(env.tmp / "ref")
    os.makedirs(ref)
    os.chmod(ref, 0o755)
    os.chmod(env.mnt, 0o755)
    model = Model(seed, _xattrs_supported(ref))
    for step in range(120):
        op = model.op(ref)
        want = apply(ref, op)
        got = apply(env.mnt, op)
        assert got == want, (step, op[:2], "errno", got, "expected", want)
        a, b = tree_state(env.mnt), tree_state(ref)
        assert a == b, (step, op[:2], {k: (a.get(k), b.get(k)) for k in set(a) | set(b)
                                       if a.get(k) != b.get(k)})
    expect = tree_state(ref)
    env.unmount()
    env.run("pool", "verify", "tank")
    env.mount()
    assert tree_state(env.mnt) == expect


# ---- page cache, mmap and writeback ------------------------------------------------------
def test_mmap_coherent_with_read_write_truncate(env):
    """mmap writes are seen by read(), write()s by the mapping, and truncate after an mmap
    write cuts what the mapping wrote (the kernel's writeback cache is on)."""
    import mmap
    env.create_pool()
    env.mount()
    p = f"{env.mnt}/m"
    write(p, b"a" * 8192)
    fd = os.open(p, os.O_RDWR)
    try:
        mm = mmap.mmap(fd, 8192)
        mm[100:105] = b"HELLO"
        assert os.pread(fd, 5, 100) == b"HELLO"          # mmap write -> read()
        with open(p, "rb") as f:                          # and through another open file
            assert f.read()[100:105] == b"HELLO"
        os.pwrite(fd, b"WORLD", 4096)                      # write() -> the mapping
        assert mm[4096:4101] == b"WORLD"
        mm[5000:5003] = b"xyz"
        mm.flush()
        mm.close()
        os.truncate(p, 4098)                               # truncate after mmap writes
        assert os.stat(p).st_size == 4098
        data = read(p)
        assert len(data) == 4098 and data[100:105] == b"HELLO" and data[4096:] == b"WO"
        os.truncate(p, 6000)                               # grown again: zeros, not "xyz"
        data = read(p)
        assert data[4098:] == bytes(6000 - 4098)
        mm = mmap.mmap(fd, 6000)
        assert mm[5000:5003] == bytes(3)
        mm.close()
    finally:
        os.close(fd)
    env.unmount()
    env.mount()
    data = read(p)
    assert len(data) == 6000 and data[100:105] == b"HELLO" and data[4096:4098] == b"WO" \
        and data[4098:] == bytes(6000 - 4098)


def test_o_append_from_two_fds(env):
    env.create_pool()
    env.mount()
    p = f"{env.mnt}/log"
    write(p, b"start\n")
    a = os.open(p, os.O_WRONLY | os.O_APPEND)
    b = os.open(p, os.O_WRONLY | os.O_APPEND)
    try:
        for i in range(50):
            os.write(a, b"a%03d\n" % i)
            os.write(b, b"b%03d\n" % i)
        assert os.fstat(a).st_size == 6 + 100 * 5
    finally:
        os.close(a)
        os.close(b)
    want = b"start\n" + b"".join(b"a%03d\nb%03d\n" % (i, i) for i in range(50))
    assert read(p) == want
    env.unmount()
    env.mount()
    assert read(p) == want


def _as_user(uid: int, cwd: str, fn) -> int:
    """Run fn() in a child process as `uid` (gid too) in `cwd` (entered first: the test's
    temporary directories are not searchable by others); its exit status (0: fn returned)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chdir(cwd)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            fn()
            code = 0
        except BaseException as e:      # noqa: BLE001 - reported through the exit status
            try:
                os.write(2, f"as uid {uid}: {e!r}\n".encode())
            except OSError:
                pass
        os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_non_owner_write_and_truncate_clear_setuid(env):
    if os.geteuid() != 0:
        pytest.skip("needs root (to write as another uid)")
    env.create_pool()
    env.mount("-o", "allow_other")
    os.chmod(env.mnt, 0o777)
    w, t = f"{env.mnt}/w", f"{env.mnt}/t"
    for p in (w, t):
        write(p, b"x" * 100)
        os.chmod(p, 0o6777)
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o6777

    def do_write():
        fd = os.open("w", os.O_WRONLY)
        os.pwrite(fd, b"yy", 10)
        os.close(fd)

    assert _as_user(4321, env.mnt, do_write) == 0
    assert stat.S_IMODE(os.stat(w).st_mode) == 0o0777
    assert read(w) == b"x" * 10 + b"yy" + b"x" * 88
    assert _as_user(4321, env.mnt, lambda: os.truncate("t", 5)) == 0
    assert stat.S_IMODE(os.stat(t).st_mode) == 0o0777 and os.stat(t).st_size == 5
    write(w, b"root writes")          # root (CAP_FSETID) keeps the bits, as on ext4
    os.chmod(w, 0o4755)
    with open(w, "r+b") as f:
        f.write(b"R")
    assert stat.S_IMODE(os.stat(w).st_mode) == 0o4755
    env.unmount()
    env.mount()
    assert stat.S_IMODE(os.stat(t).st_mode) == 0o0777
    assert stat.S_IMODE(os.stat(w).st_mode) == 0o4755


# ---- snapshots and clones -----------------------------------------------------------------
def test_cp_a_keeps_modes_owners_and_times(env):
    """`cp -a` into the mount gives every file and directory its mode, owner and mtime (it
    sets modes through system.posix_acl_access, which must be refused, not stored)."""
    src = env.tmp / "src"
    (src / "sub").mkdir(parents=True)
    for name, mode in (("a", 0o644), ("x", 0o755), ("sub/p", 0o600), ("sub/g", 0o664)):
        (src / name).write_bytes(name.encode() * 1000)
        os.chmod(src / name, mode)
    os.chmod(src / "sub", 0o750)
    os.utime(src / "a", ns=(10**18, 10**18))
    if os.geteuid() == 0:
        os.chown(src / "x", 1234, 5678)
    env.create_pool()
    env.mount()
    subprocess.run(["cp", "-a", str(src), f"{env.mnt}/dst"], check=True)
    for rel in ("", "a", "x", "sub", "sub/p", "sub/g"):
        want, got = os.lstat(src / rel), os.lstat(f"{env.mnt}/dst/{rel}")
        assert (got.st_mode, got.st_uid, got.st_gid) == (want.st_mode, want.st_uid,
                                                         want.st_gid), rel
        assert got.st_mtime_ns == want.st_mtime_ns, rel
    assert os.listxattr(f"{env.mnt}/dst/a") == []


def test_snapshots_hold_their_time(env):
    env.create_pool()
    env.mount()
    m = env.mnt
    write(f"{m}/f", b"version 1")
    os.mkdir(f"{m}/d")
    write(f"{m}/d/g", b"gone later")
    env.unmount()
    env.run("snapshot", "tank@s1")
    env.mount()
    write(f"{m}/f", b"version 2")
    os.unlink(f"{m}/d/g")
    write(f"{m}/new", b"new")
    env.unmount()
    env.run("snapshot", "tank@s2")
    env.mount()
    write(f"{m}/f", b"version 3")
    assert ".zfs" not in os.listdir(m)                  # hidden, yet reachable
    assert sorted(os.listdir(f"{m}/.zfs/snapshot")) == ["s1", "s2"]
    s1, s2 = f"{m}/.zfs/snapshot/s1", f"{m}/.zfs/snapshot/s2"
    assert read(f"{s1}/f") == b"version 1" and read(f"{s1}/d/g") == b"gone later"
    assert not os.path.exists(f"{s1}/new")
    assert read(f"{s2}/f") == b"version 2" and os.listdir(f"{s2}/d") == []
    assert read(f"{s2}/new") == b"new" and read(f"{m}/f") == b"version 3"
    for bad in (lambda: write(f"{s1}/f", b"x"), lambda: os.unlink(f"{s1}/f"),
                lambda: os.mkdir(f"{s1}/z")):
        with pytest.raises(OSError) as ei:
            bad()
        assert ei.value.errno == errno.EROFS
    assert not os.path.exists(f"{m}/.zfs/snapshot/nope")
    inos = {os.stat(p).st_ino for p in (m, s1, s2, f"{s1}/f", f"{s2}/f", f"{m}/f")}
    assert len(inos) == 6
    env.unmount()
    env.run("set", "snapdir=visible", "tank")
    env.mount()
    assert ".zfs" in os.listdir(m)
    env.unmount()
    env.run("pool", "verify", "tank")


def test_clone_written_origin_unchanged(env):
    env.create_pool()
    env.run("create", "tank/fs")
    env.mount()
    m = env.mnt
    write(f"{m}/fs/file", b"origin data" * 1000)
    os.mkdir(f"{m}/fs/dir")
    env.unmount()
    env.run("snapshot", "tank/fs@base")
    env.run("clone", "tank/fs@base", "tank/cl")
    env.mount()
    assert read(f"{m}/cl/file") == b"origin data" * 1000
    with open(f"{m}/cl/file", "r+b") as f:
        f.seek(5)
        f.write(b"CLONE")
    write(f"{m}/cl/dir/extra", b"only in clone")
    assert read(f"{m}/fs/file") == b"origin data" * 1000
    assert os.listdir(f"{m}/fs/dir") == []
    assert read(f"{m}/fs/.zfs/snapshot/base/file") == b"origin data" * 1000
    assert read(f"{m}/cl/file")[:12] == b"origiCLONEao"
    assert os.stat(f"{m}/cl/file").st_ino != os.stat(f"{m}/fs/file").st_ino
    with pytest.raises(OSError) as ei:
        os.rename(f"{m}/cl/dir/extra", f"{m}/fs/extra")
    assert ei.value.errno == errno.EXDEV
    env.unmount()
    env.run("pool", "verify", "tank")
    env.mount()
    assert read(f"{m}/cl/dir/extra") == b"only in clone"
    assert read(f"{m}/fs/file") == b"origin data" * 1000


# ---- crash ----------------------------------------------------------------------------------
def test_kill9_during_writes(env):
    env.create_pool(512 << 20)
    env.run("create", "tank/w")                 # the writes go to a child's session
    env.mount("-o", "sync_interval=0.5")
    m = env.mnt
    durable: dict[str, str] = {}
    stop = threading.Event()
    rng = random.Random(7)

    def writer() -> None:
        i = 0
        while not stop.is_set():
            data = rng.randbytes(rng.choice([100, 10_000, 200_000]))
            name = f"w/f{i}"
            try:
                with open(f"{m}/{name}", "wb") as f:
                    f.write(data)
                    if i % 3 == 0:
                        f.flush()
                        os.fsync(f.fileno())
                        durable[name] = hashlib.sha256(data).hexdigest()
            except OSError:
                return
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    deadline = time.monotonic() + 30
    while len(durable) < 15 and time.monotonic() < deadline and t.is_alive():
        time.sleep(0.05)
    time.sleep(0.3)
    pid = env.daemon_pid()
    os.kill(pid, signal.SIGKILL)
    stop.set()
    t.join(30)
    assert not t.is_alive()
    assert len(durable) >= 15, env.log()
    while _alive(pid):
        time.sleep(0.05)
    env.run("pool", "verify", "tank")
    env.mount()                     # detaches the dead mounts (the child's too), imports again
    assert mounts_below(m) == [m, f"{m}/w"]
    for name, digest in durable.items():
        assert hashlib.sha256(read(f"{m}/{name}")).hexdigest() == digest, name
    env.unmount()
    env.run("pool", "verify", "tank")


def test_fsync_of_a_directory_commits_everything(env):
    """syncfs(2) never reaches a FUSE daemon on /dev/fuse (the kernel sends FUSE_SYNCFS to
    virtiofs only), so the whole-filesystem checkpoint is fsync of a directory: it commits the
    pool's open txg, with every file written before it, fsync'ed or not."""
    env.create_pool()
    env.run("create", "tank/c")
    env.mount("-o", "sync_interval=3600")
    write(f"{env.mnt}/a", b"not fsynced")
    write(f"{env.mnt}/c/b", b"nor this, in a child")
    fd = os.open(env.mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    pid = env.daemon_pid()
    os.kill(pid, signal.SIGKILL)
    while _alive(pid):
        time.sleep(0.05)
    env.run("pool", "verify", "tank")
    env.mount()
    assert read(f"{env.mnt}/a") == b"not fsynced" and read(f"{env.mnt}/c/b") == \
        b"nor this, in a child"


# ---- command line ---------------------------------------------------------------------------
def test_mount_options_are_checked_before_anything_starts(env):
    """Bad -o values are refused with the option's name; good ones take effect: four reader
    tasks per session (fuse_tasks=4) and no writeback cache still serve every session."""
    env.create_pool()
    for opts, word in (("fuse_tasks=0", "fuse_tasks"), ("fuse_tasks=x", "fuse_tasks"),
                       ("writeback_cache=2", "writeback_cache"), ("bogus=1", "bogus"),
                       ("entry_timeout=-1", "entry_timeout")):
        r = env.run("mount", "-o", opts, "tank", env.mnt, check=False)
        assert r.returncode == 1 and f"'{word}'" in r.stderr, (opts, r.stderr)
        assert is_fuse_mount(env.mnt)           # mounted at its creation, and left so
    env.run("create", "tank/c")
    env.mount("-o", "fuse_tasks=4,writeback_cache=0")
    write(f"{env.mnt}/c/f", b"one task")
    with open(f"{env.mnt}/c/f", "ab") as f:      # O_APPEND is the daemon's without writeback
        f.write(b", appended")
    assert read(f"{env.mnt}/c/f") == b"one task, appended"
    env.unmount()
    env.mount()
    assert read(f"{env.mnt}/c/f") == b"one task, appended"


def test_mount_listing_and_unmount_by_path(env):
    env.create_pool()
    write(f"{env.mnt}/f", b"kept")
    listing = env.run("mount").stdout
    assert listing.split() == ["tank", env.mnt]
    env.run("unmount", env.mnt)                                # by path
    assert not is_fuse_mount(env.mnt)
    env.mount()
    assert read(f"{env.mnt}/f") == b"kept"
    env.run("unmount", env.mnt)
    assert not is_fuse_mount(env.mnt)
    r = env.run("unmount", "tank", check=False)
    assert r.returncode == 1 and "not currently mounted" in r.stderr


def test_pool_inside_a_mount_is_refused(env):
    env.create_pool()
    env.mount()
    inner = f"{env.mnt}/inner.img"
    with open(inner, "wb") as f:
        f.truncate(96 << 20)
    r = env.run("pool", "create", "inner", inner, check=False)
    assert r.returncode == 1 and "inside the fusezfs mount" in r.stderr, r.stderr


# ---- as an ordinary user ----------------------------------------------------------------
USER_PYTHONS = (sys.executable, "/usr/bin/python3")
USER_MODULES = ("pyfuse3", "trio", "xxhash", "zstandard")


def _user_python(user: str, lib: str) -> tuple[str | None, str]:
    """An interpreter `user` can run with fusezfs (its copy in `lib`) and its dependencies:
    this test's own, else Debian's /usr/bin/python3 with python3-pyfuse3, python3-trio,
    python3-xxhash and python3-zstandard (the suite's own Python often lies under a home
    directory others cannot enter). Returns (path, "") or (None, why none would do)."""
    code = ("import sys; assert sys.version_info >= (3, 11), 'Python ' + sys.version.split()[0]; "
            f"import {', '.join(USER_MODULES)}, fusezfs.cli")
    why = []
    for py in dict.fromkeys(USER_PYTHONS):
        if not os.path.exists(py):
            why.append(f"{py}: not found")
            continue
        r = subprocess.run(["runuser", "-u", user, "--", "env", "-i", f"PYTHONPATH={lib}",
                            "PYTHONDONTWRITEBYTECODE=1", py, "-c", code],
                           capture_output=True, text=True, cwd="/", timeout=60)
        if r.returncode == 0:
            return py, ""
        lines = r.stderr.strip().splitlines()
        why.append(f"{py}: {lines[-1] if lines else f'exit {r.returncode}'}")
    return None, "; ".join(why)


class _MountNamespace:
    """A private mount namespace, held open by a root `sleep`, in which /dev/fuse is a node of
    this test's own with mode 0666: what udev makes of the real one on an ordinary Debian
    system. Machines with no udev (containers, CI) leave /dev/fuse 0600, where no ordinary
    user can mount; nothing is changed outside the namespace, and it goes with its last
    process. Commands run inside it with `nsenter`; its mounts are seen in /proc/PID/mounts."""

    def __init__(self, devdir: str) -> None:
        os.mkdir(devdir)
        rdev = os.stat("/dev/fuse").st_rdev
        script = ('mount -t tmpfs -o mode=0755,size=64k fusezfs-test-dev "$1" && '
                  f'mknod -m 0666 "$1/fuse" c {os.major(rdev)} {os.minor(rdev)} && '
                  'mount --bind "$1/fuse" /dev/fuse && echo ready && exec sleep 86400')
        # unshare execs sh, which execs sleep: self.proc.pid is the holder throughout
        self.proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--",
                                      "sh", "-c", script, "sh", devdir],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            err = self.proc.stderr.read().strip()
            self.proc.wait()
            raise OSError(f"cannot make a private mount namespace: {err or 'failed'}")
        self.pid = self.proc.pid

    def enter(self) -> list[str]:
        """The command prefix that runs a command inside, in its "/" (nsenter's --wd would
        resolve a directory outside the namespace, where the mountpoint is a plain
        directory: give commands absolute paths)."""
        return ["nsenter", "-t", str(self.pid), "-m", "--"]

    def mount_line(self, path: str) -> list[str] | None:
        """The fields of the namespace's mount at `path`, or None."""
        try:
            with open(f"/proc/{self.pid}/mounts") as f:
                lines = f.read().splitlines()
        except OSError:
            return None
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[1] == path:
                return fields
        return None

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()


def test_mount_as_ordinary_user():
    """`nobody` makes a pool in a file, mounts it through the setuid fusermount3, writes a
    file through the mount, creates a child dataset while it is mounted (over the daemon's
    control socket) and unmounts, all with the commands a user types; then the file is read
    back from the unmounted pool. Everything lives in a directory of the test's own under /tmp
    (the suite's temporary directories are not searchable by others), with a copy of the
    fusezfs package and a `fusezfs` command as pip would install it."""
    import pwd
    import tempfile

    if os.geteuid() != 0:
        pytest.skip("needs root (to become nobody)")
    for tool in ("runuser", "unshare", "nsenter"):
        skip_or_fail(None if shutil.which(tool) else f"needs {tool} (util-linux)")
    try:
        pw = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    uid, gid = pw.pw_uid, pw.pw_gid
    top = tempfile.mkdtemp(prefix="fusezfs-user-", dir="/tmp")
    ns = None
    daemons: set[int] = set()
    home = os.path.join(top, "home")
    mnt = os.path.join(home, "mnt")
    state = os.path.join(home, ".local", "state", "fusezfs")     # the default for a user

    def daemon_pid() -> int | None:
        """The service's pid (it owns the pool and serves the mounts)."""
        try:
            with open(os.path.join(state, "service.pid")) as f:
                return int(f.read())
        except (OSError, ValueError):
            return None

    try:
        os.chmod(top, 0o755)
        lib = os.path.join(top, "lib")
        shutil.copytree(os.path.join(ROOT, "fusezfs"), os.path.join(lib, "fusezfs"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        for d, _, files in os.walk(lib):
            os.chmod(d, 0o755)
            for name in files:
                os.chmod(os.path.join(d, name), 0o644)
        python, why = _user_python("nobody", lib)
        if python is None:      # .ci/run installs Debian's python3-pyfuse3 etc. for this
            skip_or_fail("no Python that nobody can run with fusezfs and its dependencies "
                         f"(pyfuse3, trio, xxhash, zstandard): {why}")
        bindir = os.path.join(top, "bin")
        os.mkdir(bindir)
        with open(os.path.join(bindir, "fusezfs"), "w") as f:
            f.write(f"#!{python}\nimport sys\nfrom fusezfs.cli import main\nsys.exit(main())\n")
        os.chmod(os.path.join(bindir, "fusezfs"), 0o755)
        os.mkdir(home)
        os.chown(home, uid, gid)
        try:
            ns = _MountNamespace(os.path.join(top, "dev"))
        except OSError as e:
            skip_or_fail(str(e))
        user_env = [f"PATH={bindir}:/usr/local/bin:/usr/bin:/bin", f"HOME={home}",
                    "LANG=C.UTF-8", f"PYTHONPATH={lib}", "PYTHONDONTWRITEBYTECODE=1"]

        def user(*argv: str) -> str:
            """Run argv as nobody in the namespace; its stdout."""
            r = subprocess.run(ns.enter() + ["runuser", "-u", "nobody", "--",
                                             "env", "-i", *user_env, *argv],
                               capture_output=True, text=True, timeout=120)
            if r.returncode != 0:
                try:
                    with open(os.path.join(state, "service.log")) as f:
                        log = f.read()[-3000:]
                except OSError:
                    log = ""
                pytest.fail(f"{' '.join(argv)} -> {r.returncode}\n{r.stdout}{r.stderr}\n"
                            f"service log:\n{log}")
            return r.stdout

        img = os.path.join(home, "tank.img")
        user("truncate", "-s", "128M", img)
        user("fusezfs", "pool", "create", "tank", img)
        user("fusezfs", "mount", "tank", mnt)
        pid = daemon_pid()
        if pid is not None:
            daemons.add(pid)
        line = ns.mount_line(mnt)
        assert line is not None and line[2] == "fuse.fusezfs", line
        assert f"user_id={uid}" in line[3].split(","), line
        assert pid is not None and os.stat(f"/proc/{pid}").st_uid == uid

        hello = os.path.join(mnt, "hello.txt")
        user("sh", "-c", f'echo "written by nobody" > {hello}')
        assert user("stat", "-c", "%u:%g", hello).split() == [f"{uid}:{gid}"]
        assert user("cat", hello) == "written by nobody\n"

        user("fusezfs", "create", "tank/child")         # runs in the daemon, over its socket
        assert "tank/child" in user("fusezfs", "list", "-H", "-o", "name").split()
        child = os.path.join(mnt, "child")
        user("test", "-d", child)                       # the mount shows it at once
        user("touch", os.path.join(child, "mine"))      # and it is the creator's, as in zfs

        # a legacy dataset at a path of nobody's: a FUSE mount of its own, via fusermount3
        legacy = os.path.join(home, "legacy")
        user("mkdir", legacy)
        user("fusezfs", "create", "-o", "mountpoint=legacy", "tank/legacy")
        user("fusezfs", "mount", "tank/legacy", legacy)
        line = ns.mount_line(legacy)
        assert line is not None and line[2] == "fuse.fusezfs", line
        user("sh", "-c", f'echo legacy > {legacy}/l.txt')
        assert user("fusezfs", "get", "-H", "-o", "value", "mounted", "tank/legacy") == "yes\n"
        user("fusezfs", "unmount", legacy)
        assert ns.mount_line(legacy) is None and ns.mount_line(mnt) is not None

        user("fusezfs", "unmount", "tank")
        assert ns.mount_line(mnt) is None
        assert "hello.txt" not in os.listdir(mnt)       # it went into the pool, not the dir
        user("fusezfs", "cp", "tank:/hello.txt", os.path.join(home, "back.txt"))
        with open(os.path.join(home, "back.txt")) as f:
            assert f.read() == "written by nobody\n"
        user("fusezfs", "cp", "tank/legacy:/l.txt", os.path.join(home, "l.txt"))
        with open(os.path.join(home, "l.txt")) as f:
            assert f.read() == "legacy\n"
        user("fusezfs", "pool", "verify", "tank")
    finally:
        pid = daemon_pid()
        if pid is not None:
            daemons.add(pid)
        if ns is not None:
            if ns.mount_line(mnt) is not None:
                subprocess.run(ns.enter() + ["fusermount3", "-u", "-z", mnt],
                               capture_output=True, timeout=60)
            for pid in daemons:
                if _alive(pid):
                    os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + 20
                while _alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)
            ns.close()
        # the namespace, and with it every mount under `top`, is gone with its last process
        shutil.rmtree(top, ignore_errors=True)


def test_destroy_of_a_busy_filesystem_is_refused(env):
    """A file open in a mounted filesystem makes `destroy` fail as zfs's does (the unmount is
    busy) and changes nothing; -f destroys it anyway; closed, it goes."""
    env.create_pool()
    env.run("create", "tank/busy")
    env.run("create", "tank/busy/kid")
    env.run("create", "tank/other")
    env.mount()
    write(f"{env.mnt}/busy/kid/f", b"open me")
    with open(f"{env.mnt}/busy/kid/f", "rb") as f:
        r = env.run("destroy", "-r", "tank/busy", check=False)
        assert r.returncode == 1
        assert r.stderr == f"cannot unmount '{env.mnt}/busy/kid': pool or dataset is busy\n"
        assert env.run("list", "-H", "-o", "name", "-r", "tank/busy").stdout.split() == [
            "tank/busy", "tank/busy/kid"]
        assert f.read() == b"open me"
        d = os.open(f"{env.mnt}/other", os.O_RDONLY | os.O_DIRECTORY)   # an open directory
        try:
            r = env.run("destroy", "tank/other", check=False)
            assert r.returncode == 1 and "pool or dataset is busy" in r.stderr
            env.run("destroy", "-f", "tank/other")
        finally:
            os.close(d)
    # a process whose working directory is inside keeps it busy too, as the kernel would
    sleeper = subprocess.Popen(["sleep", "60"], cwd=f"{env.mnt}/busy")
    try:
        r = env.run("destroy", "-r", "tank/busy", check=False)
        assert r.returncode == 1
        assert r.stderr == f"cannot unmount '{env.mnt}/busy': pool or dataset is busy\n"
    finally:
        sleeper.kill()
        sleeper.wait()
    env.run("destroy", "-r", "tank/busy")
    assert env.run("list", "-H", "-o", "name").stdout.split() == ["tank"]
    assert not os.path.exists(f"{env.mnt}/busy")
