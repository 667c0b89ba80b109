"""The host (fusezfs/host/): one service per state directory owns every imported pool, and the
`zfs`/`zpool`/`fusezfs` programs are its thin clients. Driven as a user would, through the
programs in subprocesses, each test with a state directory of its own whose service is stopped
at the end: concurrent commands over several pools, mounted and not; a kill -9 of the service
during snapshots through a mount (the process always dies; the next command recovers); lost
state (registry corrupted, state directory removed, a pool file deleted); mounts outside the
pool's tree, mount -a/unmount -a, canmount=noauto, mountpoint=none; no FUSE at all. Every
test ends with the consistency checker on its pools."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from clitools import check_pools
from servicetools import alive, service_env, service_pid, stop_service
from test_mount import is_fuse_mount, read, write

BIN = os.path.dirname(sys.executable)
MiB = 1 << 20


class Host:
    """A state directory, pool files, and the programs run against its service."""

    def __init__(self, tmp_path, **env: str) -> None:
        self.tmp = tmp_path
        self.state = str(tmp_path / "state")
        self.env = service_env(self.state, **env)

    def run(self, prog: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run([os.path.join(BIN, prog), *args], env=self.env, text=True,
                           capture_output=True, timeout=120, cwd=str(self.tmp))
        if check and r.returncode != 0:
            raise AssertionError(f"{prog} {' '.join(args)} -> {r.returncode}\n{r.stderr}")
        return r

    def disk(self, name: str, mib: int = 128) -> str:
        path = str(self.tmp / f"{name}.img")
        with open(path, "wb") as f:
            f.truncate(mib * MiB)
        return path

    def pool(self, name: str, mountpoint: str = "none") -> str:
        path = self.disk(name)
        self.run("zpool", "create", "-m", mountpoint, name, path)
        return path

    def check(self, monkeypatch) -> None:
        """Stop the service (it closes every pool), then check the pools here."""
        stop_service(self.state)
        monkeypatch.setenv("FUSEZFS_STATE_DIR", self.state)
        check_pools()


@pytest.fixture
def host(tmp_path):
    h = Host(tmp_path)
    try:
        yield h
    finally:
        stop_service(h.state)


def names(h: Host, *args: str) -> list[str]:
    return h.run("zfs", "list", "-H", "-o", "name", *args).stdout.split()


# ---- one host -------------------------------------------------------------------------------
@pytest.mark.usefixtures("needs_fuse")
def test_sixteen_concurrent_commands_over_three_pools(host, monkeypatch):
    m1, m3 = str(host.tmp / "m1"), str(host.tmp / "m3")
    host.pool("p1", m1)                 # mounted
    host.pool("p2")                     # not mounted (mountpoint=none)
    host.pool("p3", m3)
    write(f"{m1}/f", b"through the mount")
    cmds = []
    for i in range(16):
        p = f"p{i % 3 + 1}"
        cmds.append([("zfs", "snapshot", f"{p}@s{i}"), ("zfs", "create", f"{p}/d{i}"),
                     ("zfs", "list"), ("zpool", "list"), ("zfs", "get", "-r", "compression"),
                     ("zpool", "status"), ("zfs", "set", f"user:n=v{i}", p),
                     ("zfs", "get", "-H", "mounted")][i % 8])
    procs = [subprocess.Popen([os.path.join(BIN, c[0]), *c[1:]], env=host.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in cmds]
    results = [(c, p.wait(120), p.stderr.read()) for c, p in zip(cmds, procs)]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert [(c, code, err) for c, code, err in results if code != 0] == []
    listed = names(host, "-t", "all")
    assert {"p1", "p2", "p3", "p1@s0", "p2/d1", "p1/d9", "p3@s8"} <= set(listed), listed
    assert host.run("zpool", "list", "-H", "-o", "name").stdout.split() == ["p1", "p2", "p3"]
    assert os.path.isdir(f"{m1}/d9") and read(f"{m1}/f") == b"through the mount"
    for p in ("p1", "p2", "p3"):
        host.run("fusezfs", "pool", "verify", p)
    host.check(monkeypatch)


@pytest.mark.usefixtures("needs_fuse")
def test_kill9_during_snapshots_through_the_mount(host, monkeypatch):
    """The service owns the mount it serves but never looks into it: killed with -9 while a
    loop writes through the mount and snapshots, it always dies, and the next command starts a
    new service that imports and mounts the pool again, with every committed snapshot."""
    mnt = str(host.tmp / "mnt")
    host.pool("tank", mnt)
    for round_ in range(3):
        pid = service_pid(host.state)
        stop = threading.Event()
        made: list[int] = []

        def loop() -> None:
            i = 0
            while not stop.is_set():
                try:
                    write(f"{mnt}/f{round_}_{i}", b"x" * 5000)
                except OSError:
                    pass        # the mount died with its service
                r = host.run("zfs", "snapshot", f"tank@r{round_}_{i}", check=False)
                if r.returncode == 0:
                    made.append(i)
                i += 1
        t = threading.Thread(target=loop)
        t.start()
        time.sleep(1.0)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 20       # only a guard: the assertion is on the death
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        t.join(60)
        assert not alive(pid), f"the killed service (pid {pid}) did not die"
        snaps = names(host, "-t", "snapshot")   # the next command: a new service
        assert service_pid(host.state) not in (None, pid)
        assert {f"tank@r{round_}_{i}" for i in made} <= set(snaps)
        assert host.run("zfs", "get", "-H", "-o", "value", "mounted", "tank").stdout == "yes\n"
        assert is_fuse_mount(mnt)
    host.run("zpool", "export", "tank")
    assert not is_fuse_mount(mnt)
    host.run("zpool", "import", "-d", str(host.tmp), "tank")
    host.check(monkeypatch)


# ---- lost state -------------------------------------------------------------------------------
def test_lost_state_ends_with_the_pools_imported_again(tmp_path, monkeypatch):
    """No FUSE needed: the service killed with -9, a corrupt registry, a removed state
    directory, a deleted pool file — each ends with the pools imported and nothing lost."""
    h = Host(tmp_path, FUSEZFS_NO_FUSE="1")
    try:
        h.pool("p1")
        path2 = h.pool("p2")
        h.run("zfs", "create", "p1/keep")
        h.run("zfs", "snapshot", "p1/keep@one")
        # kill -9: the next command's service imports the registry's pools again
        os.kill(service_pid(h.state), signal.SIGKILL)
        assert "p1/keep@one" in names(h, "-t", "all")
        # a corrupt registry: every command says which file and how back, nothing is lost
        registry = os.path.join(h.state, "pools.json")
        with open(registry, "w") as f:
            f.write("{not json")
        r = h.run("zpool", "list", check=False)
        assert r.returncode == 1 and registry in r.stderr and "zpool import -d" in r.stderr
        os.rename(registry, registry + ".bad")
        assert h.run("zpool", "list", "-H", "-o", "name", check=False).stdout == ""
        h.run("zpool", "import", "-d", str(tmp_path), "-f", "p1")
        h.run("zpool", "import", "-d", str(tmp_path), "-f", "p2")
        assert "p1/keep@one" in names(h, "-t", "all")
        # the state directory removed: its service ends, the pools come back by import
        pid = service_pid(h.state)
        subprocess.run(["rm", "-rf", h.state], check=True)
        deadline = time.monotonic() + 20
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(pid)
        r = h.run("zpool", "import", "-d", str(tmp_path))
        assert "last accessed by another system" in r.stdout
        h.run("zpool", "import", "-d", str(tmp_path), "-a", "-f")
        assert {"p1", "p1/keep", "p2"} <= set(names(h))
        # a pool file deleted: that pool is UNAVAIL, the other unharmed, destroy -f forgets it
        stop_service(h.state)
        os.unlink(path2)
        r = h.run("zpool", "list", "-H", "-o", "name,health")
        assert r.stdout.split("\n")[:2] == ["p1\tONLINE", "p2\tUNAVAIL"], r.stdout
        assert "p1/keep" in names(h)
        h.run("zfs", "snapshot", "p1/keep@two")
        h.run("zpool", "destroy", "-f", "p2")
        assert h.run("zpool", "list", "-H", "-o", "name").stdout == "p1\n"
        h.check(monkeypatch)
    finally:
        stop_service(h.state)


def test_no_fuse_every_command_works_and_mounting_says_why(tmp_path, monkeypatch):
    h = Host(tmp_path, FUSEZFS_NO_FUSE="1")
    try:
        r = h.run("zpool", "create", "-m", str(tmp_path / "mnt"), "tank", h.disk("tank"))
        assert r.stderr == ("cannot mount 'tank': FUSE is unavailable here (FUSEZFS_NO_FUSE is "
                            "set); its datasets work unmounted\n")
        h.run("zfs", "create", "tank/a")
        src = tmp_path / "src"
        src.write_bytes(b"copied in")
        h.run("fusezfs", "cp", "src", "tank/a:/f")       # a relative path: the client's cwd
        h.run("fusezfs", "cp", "tank/a:/f", "back")
        assert (tmp_path / "back").read_bytes() == b"copied in"
        r = h.run("zfs", "mount", "tank/a", check=False)
        assert r.returncode == 1 and r.stderr == (
            "cannot mount 'tank/a': FUSE is unavailable here: FUSEZFS_NO_FUSE is set\n")
        assert h.run("zfs", "get", "-H", "-o", "value", "mounted", "tank/a").stdout == "no\n"
        assert h.run("zfs", "mount").stdout == ""
        h.check(monkeypatch)
    finally:
        stop_service(h.state)


# ---- mounts as ZFS makes them ---------------------------------------------------------------
@pytest.mark.usefixtures("needs_fuse")
def test_mounts_anywhere_mount_a_unmount_a_noauto_none(host, monkeypatch):
    root, away = str(host.tmp / "root"), str(host.tmp / "away" / "deep")
    host.pool("tank", root)
    host.run("zfs", "create", "-o", f"mountpoint={away}", "tank/far")   # outside the tree
    host.run("zfs", "create", "tank/near")
    host.run("zfs", "create", "-o", "canmount=noauto", "tank/later")
    host.run("zfs", "create", "-o", "mountpoint=none", "tank/nowhere")
    assert is_fuse_mount(root) and is_fuse_mount(away) and is_fuse_mount(f"{root}/near")
    assert not is_fuse_mount(f"{root}/later")
    write(f"{away}/f", b"far away")
    listing = [line.split() for line in host.run("zfs", "mount").stdout.splitlines()]
    assert sorted(listing) == [["tank", root], ["tank/far", away], ["tank/near", f"{root}/near"]]
    host.run("zfs", "unmount", "-a")
    assert not any(is_fuse_mount(p) for p in (root, away, f"{root}/near"))
    assert host.run("zfs", "get", "-H", "-o", "value", "mounted", "tank/far").stdout == "no\n"
    host.run("zfs", "mount", "-a")
    assert is_fuse_mount(root) and is_fuse_mount(away) and not is_fuse_mount(f"{root}/later")
    assert read(f"{away}/f") == b"far away"
    host.run("zfs", "mount", "tank/later")              # noauto: when named
    assert host.run("zfs", "get", "-H", "-o", "value", "mounted", "tank/later").stdout == "yes\n"
    r = host.run("zfs", "mount", "tank/nowhere", check=False)
    assert (r.returncode, r.stderr) == (1, "cannot mount 'tank/nowhere': no mountpoint set\n")
    r = host.run("zfs", "mount", "tank/far", check=False)
    assert (r.returncode, r.stderr) == (1, "cannot mount 'tank/far': filesystem already "
                                           "mounted\n")
    # set mountpoint moves the mount; rename keeps it; a busy unmount fails at once, -f forces
    moved = str(host.tmp / "moved")
    host.run("zfs", "set", f"mountpoint={moved}", "tank/far")
    assert not is_fuse_mount(away) and read(f"{moved}/f") == b"far away"
    with open(f"{moved}/f", "rb"):
        r = host.run("zfs", "unmount", "tank/far", check=False)
        assert (r.returncode, r.stderr) == (1, f"cannot unmount '{moved}': pool or dataset "
                                               f"is busy\n")
        host.run("zfs", "unmount", "-f", "tank/far")
    assert not is_fuse_mount(moved)
    host.run("zpool", "export", "tank")
    assert not any(is_fuse_mount(p) for p in (root, moved, f"{root}/near"))
    host.run("zpool", "import", "-d", str(host.tmp), "tank")
    assert is_fuse_mount(root) and read(f"{moved}/f") == b"far away"
    host.check(monkeypatch)


@pytest.mark.usefixtures("needs_fuse")
def test_many_creates_at_once_mount_each_pool_once(host, monkeypatch):
    """Eight `zpool create` at once: all succeed, each pool is mounted exactly once at its
    mountpoint (no storm of mounts of every pool), by the one service they started."""
    procs = []
    for i in range(8):
        disk = host.disk(f"q{i}", 64)
        procs.append(subprocess.Popen([os.path.join(BIN, "zpool"), "create", "-m",
                                       str(host.tmp / f"m{i}"), f"q{i}", disk], env=host.env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [(p.wait(120), p.communicate()[1]) for p in procs]
    assert results == [(0, "")] * 8
    with open("/proc/self/mountinfo") as f:
        ours = [line.split()[4] for line in f if str(host.tmp) in line.split()[4]]
    assert sorted(ours) == sorted(str(host.tmp / f"m{i}") for i in range(8))
    assert host.run("zpool", "list", "-H", "-o", "name").stdout.split() == \
        [f"q{i}" for i in range(8)]
    host.check(monkeypatch)


def test_version_and_help_need_no_service(tmp_path):
    h = Host(tmp_path)
    r = h.run("zfs", "version")
    assert r.stdout.startswith("zfs-2.1.11-fusezfs-")
    assert h.run("zpool", "-?").stdout.startswith("usage: zpool command args ...")
    assert service_pid(h.state) is None and not os.path.exists(os.path.join(h.state,
                                                                             "service.sock"))


@pytest.mark.usefixtures("needs_fuse")
def test_a_mounted_receive_target_takes_the_next_incremental(host, monkeypatch):
    """The service mounts what it receives; its own look at the mount's names around the
    receive must not move the root's atime, or the next incremental finds the head "modified
    since most recent snapshot" (as syncoid's second run did)."""
    host.pool("src", str(host.tmp / "ms"))
    host.pool("dst", str(host.tmp / "md"))
    host.run("zfs", "create", "src/fs")
    write(str(host.tmp / "ms" / "fs" / "f"), b"one")
    host.run("zfs", "snapshot", "src/fs@1")
    sh = [os.path.join(BIN, "zfs")]
    for n, (frm, to) in enumerate([(None, "@1"), ("@1", "@2"), ("@2", "@3")]):
        if n:
            write(str(host.tmp / "ms" / "fs" / "f"), b"more" * n)
            host.run("zfs", "snapshot", f"src/fs{to}")
        send = sh + ["send"] + (["-i", frm] if frm else []) + [f"src/fs{to}"]
        r = subprocess.run(" ".join(send) + " | " + " ".join(sh + ["receive", "dst/fs"]),
                           shell=True, env=host.env, text=True, capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert is_fuse_mount(str(host.tmp / "md" / "fs"))
    assert host.run("zfs", "get", "-Hpo", "value", "written", "dst/fs").stdout.strip() == "0"
    # (a read moves atime, and with it the head, as in ZFS: so only after the last receive)
    assert read(str(host.tmp / "md" / "fs" / "f")) == b"more" * 2
    host.check(monkeypatch)


def test_the_callers_posixly_correct_reaches_the_command(host):
    """getopt stops at the first operand when the caller sets POSIXLY_CORRECT (glibc's rule,
    which zfs and zpool follow): the service runs the command with the caller's setting."""
    host.pool("tank")
    assert host.run("zfs", "list", "tank", "-H").stdout.split()[0] == "tank"
    host.env["POSIXLY_CORRECT"] = "1"
    r = host.run("zfs", "list", "tank", "-H", check=False)
    assert r.returncode == 1 and "'-H'" in r.stderr, r.stderr
    del host.env["POSIXLY_CORRECT"]
    assert host.run("zfs", "list", "tank", "-H").returncode == 0
