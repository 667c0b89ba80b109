"""The control socket: while the service serves a pool, fusezfs commands run in the service and the
mount shows their effect at once (the kernel's caches are invalidated before they return).

Every check that a name appears or vanishes first makes the kernel cache the old answer (a
negative or positive dentry, attributes, page cache) so that a missing invalidation shows.
Skipped where FUSE is unusable, or failed under FUSEZFS_TEST_STRICT=1, as test_mount.py.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import stat
import struct
import threading
import time

import pytest

from test_mount import Env, _alive, is_fuse_mount, read, write

pytestmark = pytest.mark.usefixtures("needs_fuse")       # tests/conftest.py


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    try:
        e.create_pool()
        e.mount()
        yield e
    finally:
        e.teardown()


def log_has_commands(env, n: int = 1) -> bool:
    return env.log().count(" command ") >= n


def test_socket_is_private(env):
    sock = os.path.join(env.state, "service.sock")
    st = os.stat(sock)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.getuid()


def test_create_and_destroy_show_at_once(env):
    m = env.mnt
    assert not os.path.exists(f"{m}/new")           # a negative dentry now
    env.run("create", "tank/new")
    assert os.path.isdir(f"{m}/new")
    assert log_has_commands(env)                    # it ran in the service
    write(f"{m}/new/f", b"in new")
    assert os.stat(f"{m}/new/f").st_ino != os.stat(f"{m}/new").st_ino
    with pytest.raises(OSError) as ei:              # a different dataset: EXDEV
        os.rename(f"{m}/new/f", f"{m}/f")
    assert ei.value.errno == errno.EXDEV
    env.run("create", "-p", "tank/new/deep/er")
    assert os.path.isdir(f"{m}/new/deep/er")
    write(f"{m}/new/deep/er/g", b"g")
    r = env.run("list", "-H", "-o", "name,mountpoint")
    assert "tank/new/deep/er" in r.stdout
    os.listdir(f"{m}/new")                          # cached listing and dentries
    env.run("destroy", "-r", "tank/new/deep")
    assert not os.path.exists(f"{m}/new/deep")
    assert os.listdir(f"{m}/new") == ["f"]
    env.run("destroy", "-r", "tank/new")
    assert not os.path.exists(f"{m}/new")
    assert os.listdir(m) == []
    env.unmount()
    env.run("pool", "verify", "tank")


def test_snapshot_and_rollback_show_at_once(env):
    m = env.mnt
    write(f"{m}/a", b"version 1")
    write(f"{m}/c", b"removed later")
    os.mkdir(f"{m}/d")
    write(f"{m}/d/x", b"x1")
    assert not os.path.exists(f"{m}/.zfs/snapshot/s1")
    env.run("snapshot", "tank@s1")
    assert read(f"{m}/.zfs/snapshot/s1/a") == b"version 1"
    assert os.listdir(f"{m}/.zfs/snapshot") == ["s1"]
    write(f"{m}/a", b"version 2, longer")
    write(f"{m}/b", b"new since s1")
    write(f"{m}/d/x", b"x2")
    os.unlink(f"{m}/c")
    assert not os.path.exists(f"{m}/c")             # negative dentry
    assert read(f"{m}/a") == b"version 2, longer"   # page cache filled
    assert sorted(os.listdir(m)) == ["a", "b", "d"]
    env.run("rollback", "tank@s1")
    assert read(f"{m}/a") == b"version 1"
    assert os.stat(f"{m}/a").st_size == len(b"version 1")
    assert not os.path.exists(f"{m}/b")
    assert read(f"{m}/c") == b"removed later"
    assert read(f"{m}/d/x") == b"x1"
    assert sorted(os.listdir(m)) == ["a", "c", "d"]
    write(f"{m}/after", b"written after the rollback")
    env.run("snapshot", "tank@s2")
    env.run("rename", "tank@s2", "tank@s3")
    assert not os.path.exists(f"{m}/.zfs/snapshot/s2")
    assert read(f"{m}/.zfs/snapshot/s3/after") == b"written after the rollback"
    env.run("destroy", "tank@s3")
    assert not os.path.exists(f"{m}/.zfs/snapshot/s3")
    env.run("destroy", "tank@s1")
    assert os.listdir(f"{m}/.zfs/snapshot") == []
    env.unmount()
    env.run("pool", "verify", "tank")
    env.mount()
    assert read(f"{m}/after") == b"written after the rollback"


def test_clone_rename_and_properties(env):
    m = env.mnt
    env.run("create", "tank/fs")
    write(f"{m}/fs/file", b"origin")
    env.run("snapshot", "tank/fs@base")
    env.run("clone", "tank/fs@base", "tank/cl")
    assert read(f"{m}/cl/file") == b"origin"
    env.run("rename", "tank/cl", "tank/moved")
    assert not os.path.exists(f"{m}/cl")
    assert read(f"{m}/moved/file") == b"origin"
    env.run("set", "readonly=on", "tank/moved")
    with pytest.raises(OSError) as ei:
        write(f"{m}/moved/g", b"x")
    assert ei.value.errno == errno.EROFS
    env.run("set", "readonly=off", "tank/moved")
    write(f"{m}/moved/g", b"x")
    env.run("set", "canmount=off", "tank/moved")
    assert not os.path.exists(f"{m}/moved")
    env.run("set", "canmount=on", "tank/moved")
    assert read(f"{m}/moved/g") == b"x"
    env.run("set", f"mountpoint={m}/elsewhere/mv", "tank/moved")
    assert not os.path.exists(f"{m}/moved")
    assert read(f"{m}/elsewhere/mv/g") == b"x"
    env.run("promote", "tank/moved")
    r = env.run("get", "-H", "-o", "value", "origin", "tank/fs")
    assert r.stdout.strip() == "tank/moved@base"
    assert read(f"{m}/fs/file") == b"origin"
    env.run("set", "snapdir=visible", "tank/moved")
    assert ".zfs" in os.listdir(f"{m}/elsewhere/mv")
    env.unmount()
    env.run("pool", "verify", "tank")


def test_read_commands_while_mounted(env):
    m = env.mnt
    write(f"{m}/f", b"x" * 100_000)
    r = env.run("list", "-H", "-o", "name")
    assert r.stdout.split() == ["tank"]
    r = env.run("get", "-H", "-o", "value", "mounted,type", "tank")
    assert r.stdout.split()[-1] == "filesystem"
    r = env.run("pool", "status", "tank")
    assert "pool: tank" in r.stdout and "No known data errors" in r.stdout
    r = env.run("pool", "status")
    assert "pool: tank" in r.stdout
    r = env.run("pool", "list", "-H", "-o", "name,health")
    assert r.stdout.split() == ["tank", "ONLINE"]
    r = env.run("pool", "get", "-H", "-o", "value", "health", "tank")
    assert r.stdout.strip() == "ONLINE"
    env.run("pool", "set", "comment=hello", "tank")
    r = env.run("pool", "get", "-H", "-o", "value", "comment", "tank")
    assert r.stdout.strip() == "hello"
    env.run("pool", "sync", "tank")
    r = env.run("pool", "verify", "tank")
    assert "no errors found" in r.stdout
    r = env.run("get", "-H", "-o", "value", "nosuchprop", "tank", check=False)
    assert r.returncode == 2 and "bad property list" in r.stderr   # usage errors as zfs
    r = env.run("destroy", "tank/nope", check=False)
    assert r.returncode == 1 and "dataset does not exist" in r.stderr
    env.run("snapshot", "tank@h")
    env.run("hold", "keep", "tank@h")
    r = env.run("holds", "-H", "tank@h")
    assert "keep" in r.stdout
    r = env.run("destroy", "tank@h", check=False)
    assert r.returncode == 1
    env.run("release", "keep", "tank@h")
    assert log_has_commands(env, 10)


def test_cp_in_and_out_while_mounted(env):
    m = env.mnt
    src = env.tmp / "src"
    src.mkdir()
    (src / "one").write_bytes(b"one" * 1000)
    (src / "sub").mkdir()
    (src / "sub" / "two").write_bytes(b"two")
    assert not os.path.exists(f"{m}/src")
    env.run("cp", "-a", "src", "tank:/")            # relative to the client's directory
    assert read(f"{m}/src/one") == b"one" * 1000
    assert read(f"{m}/src/sub/two") == b"two"
    assert read(f"{m}/src/one") == b"one" * 1000    # cached now
    (src / "one").write_bytes(b"changed")
    env.run("cp", "src/one", "tank:/src/one")       # over an existing file
    assert read(f"{m}/src/one") == b"changed"
    write(f"{m}/made_in_mount", b"from the mount")
    env.run("cp", "tank:/made_in_mount", "out")
    assert (env.tmp / "out").read_bytes() == b"from the mount"
    # a local side inside the very mount the daemon serves (no deadlock)
    env.run("cp", "tank:/made_in_mount", f"{m}/copy_via_mount")
    assert read(f"{m}/copy_via_mount") == b"from the mount"
    env.run("cp", f"{m}/copy_via_mount", "tank:/copy_back")
    assert read(f"{m}/copy_back") == b"from the mount"
    env.run("snapshot", "tank@s")
    env.run("cp", "tank@s:/src/one", "snapout")
    assert (env.tmp / "snapout").read_bytes() == b"changed"
    env.unmount()
    env.run("pool", "verify", "tank")


def test_other_uid_is_refused(env):
    """SO_PEERCRED: a client of another uid is refused even if it can reach the socket."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another uid")
    sock_path = os.path.join(env.state, "service.sock")
    os.chmod(env.state, 0o755)          # let nobody reach the socket, to test the check itself
    os.chmod(sock_path, 0o666)
    dirfd = os.open(env.state, os.O_PATH | os.O_DIRECTORY)   # past the private ancestors
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                        # the child: become nobody, ask for `list`
        code = 99
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(f"/proc/self/fd/{dirfd}/service.sock")
            data = json.dumps({"argv": ["list"], "cwd": "/", "env": {}}).encode()
            s.sendall(struct.pack(">I", len(data)) + data)
            got = b""
            while chunk := s.recv(65536):
                got += chunk
            os.write(w, got)
            code = 0
        except BaseException as e:      # noqa: BLE001
            os.write(w, repr(e).encode())
        finally:
            os._exit(code)
    os.close(w)
    os.close(dirfd)
    out = b""
    while chunk := os.read(r, 65536):
        out += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0, out
    assert b"permission denied" in out and b'"exit": 1' in out, out
    assert b"tank" not in out.replace(b"'tank'", b"")   # no listing came back
    assert "refused a command from uid 65534" in env.log()


def test_export_unmounts(env):
    write(f"{env.mnt}/f", b"kept")
    env.run("pool", "export", "tank")
    assert not is_fuse_mount(env.mnt)
    assert not os.path.exists(os.path.join(env.state, "mount-tank.json"))
    r = env.run("list", check=False)
    assert "tank" not in r.stdout
    env.run("pool", "import", "-d", str(env.tmp), "tank")     # mounted again, as zpool does
    assert read(f"{env.mnt}/f") == b"kept"
    env.run("pool", "verify", "tank")


def record(i: int) -> bytes:
    """The writer's i-th append in test_commands_during_writes: 4 KiB naming its number."""
    return b"%08d" % i * 512


def test_commands_during_writes(env):
    """Commands run while the mount is busy writing: no deadlock, and snapshots consistent.
    A writer appends numbered 4 KiB records to one file; each snapshot must hold exactly
    records 0..k-1, byte for byte (nothing torn, reordered or lost inside), with every append
    that had finished before the snapshot command started (the daemon writes the kernel's
    dirty pages before a command) and none that had not begun when it returned."""
    m = env.mnt
    stop = threading.Event()
    errors: list[BaseException] = []
    begun = finished = 0                # appends begun / finished (file closed)

    def writer() -> None:
        nonlocal begun, finished
        try:
            while not stop.is_set():
                begun += 1
                with open(f"{m}/busy", "ab") as f:
                    f.write(record(begun - 1))
                    f.flush()
                finished += 1
        except BaseException as e:      # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=writer)
    t.start()
    bounds = []
    try:
        for n in range(3):
            before = finished
            env.run("snapshot", f"tank@w{n}", timeout=60)
            bounds.append((before, begun))
            env.run("list", "-t", "all", timeout=60)
        env.run("create", "tank/during", timeout=60)
    finally:
        stop.set()
        t.join(60)
    assert not errors and not t.is_alive()
    counts = []
    for n, (lo, hi) in enumerate(bounds):
        path = f"{m}/.zfs/snapshot/w{n}/busy"
        data = read(path) if os.path.exists(path) else b""
        k = len(data) // 4096
        assert data == b"".join(record(i) for i in range(k)), f"w{n}: not records 0..{k - 1}"
        assert lo <= k <= hi, (n, lo, k, hi)
        counts.append(k)
    assert counts == sorted(counts)
    assert read(f"{m}/busy") == b"".join(record(i) for i in range(finished))
    assert os.path.isdir(f"{m}/during")
    env.unmount()
    env.run("pool", "verify", "tank")


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_idle_slow_and_oversized_clients_cost_no_threads(env):
    """Idle connections wait in the accept thread's selector, not on threads of their own; a
    request announcing more than REQUEST_MAX bytes is dropped before it is read; commands keep
    working throughout."""
    from fusezfs.host import control
    pid = env.daemon_pid()
    path = os.path.join(env.state, "service.sock")
    before = _threads(pid)
    idle = []
    try:
        for _ in range(200):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            idle.append(s)
        env.run("list", "-H", "-o", "name", "tank")        # served while 200 connections idle
        assert _threads(pid) <= before + 4, (before, _threads(pid))
        big = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        big.connect(path)
        big.sendall(struct.pack(">I", control.REQUEST_MAX + 1))   # announces too much
        big.settimeout(30)
        assert big.recv(1) == b""                          # dropped unread
        big.close()
        assert env.run("list", "-H", "-o", "name", "tank").stdout == "tank\n"
    finally:
        for s in idle:
            s.close()
