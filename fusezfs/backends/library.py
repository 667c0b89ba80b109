"""One Python library over both backends: the same calls, the same results, on the emulated
store or on a real ZFS.

    from fusezfs.backends import connect
    zfs = connect()                     # the backend chosen here (FUSEZFS_BACKEND, ...)
    zfs.create_pool("tank", ["/tmp/tank.img"], size=256 << 20)
    zfs.create("tank/data", {"compression": "on"})
    zfs.write_file("tank/data", "/hello.txt", b"hello\\n")
    zfs.snapshot("tank/data@v1")

Every call is one command of the backend's own command line, run as a subprocess: on the
emulated backend fusezfs's CLI (`python -m fusezfs.cli ...`, whose commands are the library
functions of fusezfs/cli_*.py, nothing re-implemented here), on passthrough the real `zfs` and
`zpool` (and, for the verbs ZFS lacks, fusezfs's mapping of them, passthrough.py). So a call
has exactly the effect the command line has, an error is the command's own message, and a
pool is touched only by the backend that made it. A failed command raises `ZfsCommandError`
with its exit code and message, prefixed by the backend's name.

Files are read and written through the mount where the dataset is mounted and visible to this
process (FUSEZFS_MOUNT_ROOT names where a real ZFS in another mount namespace shows its
mounts, e.g. /proc/PID/root), else through `fusezfs cp` (on the emulation: the library, no
FUSE needed). Send and receive pipe one backend's `send` into the other's `receive`, so a
stream never has to fit in memory.
"""
from __future__ import annotations

import errno
import fcntl
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping

from fusezfs.backends import (
    BACKEND_VARIABLE,
    LABEL_WRITERS,
    MOUNT_ROOT_VARIABLE,
    ZFS_VARIABLE,
    ZPOOL_VARIABLE,
    BackendError,
    choose,
    real_commands,
)

BUSY_RETRIES = 20           # zfs-fuse (and a kernel ZFS right after use) may answer "busy"


class ZfsCommandError(Exception):
    """A command failed: `backend`, `argv`, `code` (its exit code), `stderr` (its words)."""

    def __init__(self, backend: str, argv: list[str], code: int, stderr: str) -> None:
        self.backend, self.argv, self.code, self.stderr = backend, argv, code, stderr
        super().__init__(f"{backend} backend: '{' '.join(argv)}' failed (exit {code}): "
                         f"{stderr.strip()}")


def _package_parent() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Backend:
    """The operations every backend offers. Names are ZFS's; `argv` lists are in fusezfs's
    form (`["create", ...]` for zfs verbs, `["pool", "create", ...]` for zpool's)."""

    name = ""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(os.environ)
        parent = _package_parent()          # fusezfs importable from a source tree too
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (parent, os.environ.get("PYTHONPATH")) if p)
        self.env.update(env)

    # ---- commands ------------------------------------------------------------------------
    def fusezfs_command(self) -> list[str]:
        return [sys.executable, "-m", "fusezfs.cli"]

    def command(self, argv: list[str]) -> list[str]:
        """The full command line of a fusezfs-form command on this backend."""
        return self.fusezfs_command() + argv

    def run(self, *argv: str, input: bytes | str | None = None, check: bool = True,
            text: bool = True, busy_retries: int = 0) -> subprocess.CompletedProcess:
        """Run a command (fusezfs form) and return its CompletedProcess; ZfsCommandError if
        it fails and `check`. `busy_retries`: retry an answer of "busy" that many times."""
        args = list(argv)
        for attempt in range(busy_retries + 1):
            r = subprocess.run(self.command(args), capture_output=True, text=text, env=self.env,
                               input=input, stdin=None if input is not None else subprocess.DEVNULL)
            err = r.stderr if text else r.stderr.decode(errors="replace")
            if r.returncode == 0 or "busy" not in err or attempt == busy_retries:
                break
            time.sleep(min(0.05 * (attempt + 1), 0.5))
        if check and r.returncode != 0:
            raise ZfsCommandError(self.name, args, r.returncode, err)
        return r

    def popen(self, argv: list[str], **kw) -> subprocess.Popen:
        return subprocess.Popen(self.command(argv), env=self.env, **kw)

    # ---- pools ---------------------------------------------------------------------------
    def create_pool(self, name: str, files: Iterable[str | os.PathLike], *,
                    size: int | None = None, mountpoint: str | None = None,
                    properties: Mapping[str, str] | None = None,
                    fs_properties: Mapping[str, str] | None = None, force: bool = False) -> str:
        """`zpool create` on files (made absolute; created sparse of `size` bytes if given and
        missing). Returns the pool's name."""
        paths = [os.path.abspath(os.fspath(f)) for f in files]
        if size is not None:
            for p in paths:
                if not os.path.exists(p):
                    with open(p, "wb") as f:
                        f.truncate(size)
        opts = ["-f"] if force else []
        if mountpoint is not None:
            opts += ["-m", mountpoint]
        for k, v in (properties or {}).items():
            opts += ["-o", f"{k}={v}"]
        for k, v in (fs_properties or {}).items():
            opts += ["-O", f"{k}={v}"]
        self.run("pool", "create", *opts, name, *paths)
        return name

    def destroy_pool(self, name: str, *, force: bool = False) -> None:
        self.run("pool", "destroy", *(["-f"] if force else []), name, busy_retries=BUSY_RETRIES)

    def export_pool(self, name: str) -> None:
        self.run("pool", "export", name, busy_retries=BUSY_RETRIES)

    def import_pool(self, name: str, directory: str) -> None:
        self.run("pool", "import", "-d", os.path.abspath(directory), name)

    def pools(self) -> list[str]:
        return self.run("pool", "list", "-H", "-o", "name").stdout.split()

    def verify(self, pool: str) -> str:
        """fusezfs's `pool verify` (passthrough: a scrub that waits): its report, or
        ZfsCommandError when it finds damage."""
        return self.run("pool", "verify", pool).stdout

    # ---- datasets ------------------------------------------------------------------------
    def create(self, dataset: str, properties: Mapping[str, str] | None = None, *,
               parents: bool = False) -> None:
        self.run("create", *(["-p"] if parents else []), *_props(properties), dataset)

    def destroy(self, dataset: str, *, recursive: bool = False, force: bool = False) -> None:
        flags = (["-r"] if recursive else []) + (["-f"] if force else [])
        self.run("destroy", *flags, dataset, busy_retries=BUSY_RETRIES)

    def snapshot(self, *snapshots: str, recursive: bool = False) -> None:
        self.run("snapshot", *(["-r"] if recursive else []), *snapshots)

    def clone(self, snapshot: str, target: str,
              properties: Mapping[str, str] | None = None) -> None:
        self.run("clone", *_props(properties), snapshot, target)

    def promote(self, clone: str) -> None:
        self.run("promote", clone)

    def rename(self, old: str, new: str) -> None:
        self.run("rename", old, new)

    def rollback(self, snapshot: str, *, destroy_later: bool = False) -> None:
        """`zfs rollback` (-r with `destroy_later`: later snapshots are destroyed)."""
        self.run("rollback", *(["-r"] if destroy_later else []), snapshot)

    def list(self, root: str | None = None, *, types: str = "filesystem",
             recursive: bool = True) -> list[str]:
        """Dataset names (`zfs list -H -o name -t TYPES [-r] [ROOT]`)."""
        args = ["list", "-H", "-o", "name", "-t", types] + (["-r"] if recursive and root else [])
        return self.run(*args, *([root] if root else [])).stdout.split()

    def exists(self, dataset: str) -> bool:
        return self.run("list", "-H", "-o", "name", "-t", "all", dataset,
                        check=False).returncode == 0

    def get(self, dataset: str, prop: str) -> str:
        """A property's value as `zfs get -H -p -o value` prints it."""
        return self.run("get", "-H", "-p", "-o", "value", prop, dataset).stdout.rstrip("\n")

    def properties(self, dataset: str, *props: str) -> dict[str, tuple[str, str]]:
        """{property: (value, source)} as `zfs get -H -p` prints them (all if none named)."""
        out = self.run("get", "-H", "-p", "-o", "property,value,source",
                       ",".join(props) if props else "all", dataset).stdout
        return {p: (v, s) for p, v, s in (line.split("\t") for line in out.splitlines() if line)}

    def set(self, dataset: str, properties: Mapping[str, str] | None = None,
            **more: str) -> None:
        """`zfs set` of each property (user properties, with a colon, go in the mapping)."""
        for k, v in {**(properties or {}), **more}.items():
            self.run("set", f"{k}={v}", dataset)

    def inherit(self, dataset: str, prop: str, *, recursive: bool = False) -> None:
        self.run("inherit", *(["-r"] if recursive else []), prop, dataset)

    # ---- send and receive ----------------------------------------------------------------
    def send(self, snapshot: str, *, incremental_from: str | None = None) -> bytes:
        """The stream of `zfs send [-i FROM] SNAPSHOT` as bytes (send_to pipes instead)."""
        args = ["send"] + (["-i", incremental_from] if incremental_from else []) + [snapshot]
        return self.run(*args, text=False).stdout

    def receive(self, target: str, stream: bytes, *, force: bool = False) -> None:
        self.run("receive", *(["-F"] if force else []), target, input=stream, text=False)

    def send_to(self, snapshot: str, dest: Backend, target: str, *,
                incremental_from: str | None = None, force: bool = False) -> None:
        """`zfs send SNAPSHOT | zfs receive TARGET`, from this backend into `dest` (this one
        or the other), through a pipe between the two processes."""
        send_argv = ["send"] + (["-i", incremental_from] if incremental_from else []) + [snapshot]
        recv_argv = ["receive"] + (["-F"] if force else []) + [target]
        with tempfile.TemporaryFile() as send_err, tempfile.TemporaryFile() as recv_err, \
                tempfile.TemporaryFile() as spool:
            if self.shares_pool_with(dest, snapshot, target):
                # one emulated pool, not served by a daemon: each command opens its files and
                # the second would find them locked, so the stream goes through a file
                scode = self.popen(send_argv, stdout=spool, stderr=send_err,
                                   stdin=subprocess.DEVNULL).wait()
                spool.seek(0)
                rcode = dest.popen(recv_argv, stdin=spool, stderr=recv_err,
                                   stdout=subprocess.DEVNULL).wait() if scode == 0 else 0
            else:
                sender = self.popen(send_argv, stdout=subprocess.PIPE, stderr=send_err,
                                    stdin=subprocess.DEVNULL)
                receiver = dest.popen(recv_argv, stdin=sender.stdout, stderr=recv_err,
                                      stdout=subprocess.DEVNULL)
                sender.stdout.close()       # the receiver holds the pipe's only reader
                rcode, scode = receiver.wait(), sender.wait()
            # the receiver's failure first: a sender whose reader went away fails with EPIPE,
            # which says nothing of why
            for backend, argv, code, err in ((dest, recv_argv, rcode, recv_err),
                                             (self, send_argv, scode, send_err)):
                if code != 0:
                    err.seek(0)
                    raise ZfsCommandError(backend.name, argv, code,
                                          err.read().decode(errors="replace"))

    def shares_pool_with(self, dest: Backend, snapshot: str, target: str) -> bool:
        """Whether a send and a receive would both open one pool's files themselves."""
        return False

    # ---- mounts and files ----------------------------------------------------------------
    def mount(self, pool: str, mountpoint: str | None = None) -> None:
        self.run("mount", pool, *([os.path.abspath(mountpoint)] if mountpoint else []))

    def unmount(self, target: str) -> None:
        self.run("unmount", target, busy_retries=BUSY_RETRIES)

    def local_root(self) -> str:
        """Where this process sees the backend's mounts ('' : where they are)."""
        return ""

    def mounted_path(self, dataset: str) -> str | None:
        """The directory this process reads `dataset` (a filesystem or a snapshot) through,
        or None where it is not mounted or not visible from here."""
        fs, _, snap = dataset.partition("@")
        r = self.run("get", "-H", "-o", "value", "mountpoint,mounted", fs)
        mp, mounted = r.stdout.split("\n")[:2]
        if mounted != "yes" or not mp.startswith("/"):
            return None
        path = self.local_root() + mp
        if snap:
            path = os.path.join(path, ".zfs", "snapshot", snap)
        return path if os.path.isdir(path) else None

    def read_file(self, dataset: str, path: str) -> bytes:
        """The contents of PATH in a filesystem or snapshot: through its mount where there is
        one, else through `fusezfs cp`. A missing file is FileNotFoundError either way."""
        local = self.mounted_path(dataset)
        if local is not None:
            with open(os.path.join(local, path.lstrip("/")), "rb") as f:
                return f.read()
        with tempfile.TemporaryDirectory(prefix="fusezfs-read-") as tmp:
            out = os.path.join(tmp, "data")
            r = self.run("cp", f"{dataset}:{path}", out, check=False)
            if r.returncode != 0 and "No such file or directory" in r.stderr:
                raise FileNotFoundError(errno.ENOENT, r.stderr.strip(), f"{dataset}:{path}")
            if r.returncode != 0:
                raise ZfsCommandError(self.name, ["cp", f"{dataset}:{path}", out], r.returncode,
                                      r.stderr)
            with open(out, "rb") as f:
                return f.read()

    def write_file(self, dataset: str, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write DATA as PATH in a filesystem (its directory must exist): through its mount
        where there is one, else through `fusezfs cp`."""
        local = self.mounted_path(dataset)
        if local is not None:
            target = os.path.join(local, path.lstrip("/"))
            with open(target, "wb") as f:
                f.write(data)
            os.chmod(target, mode)
            return
        with tempfile.TemporaryDirectory(prefix="fusezfs-write-") as tmp:
            src = os.path.join(tmp, "data")
            with open(src, "wb") as f:
                f.write(data)
            os.chmod(src, mode)
            self.run("cp", src, f"{dataset}:{path}")

    def version(self) -> str:
        """The first line of `zfs version` (which says which ZFS answers)."""
        return self.run("version").stdout.split("\n")[0]

    def describe(self) -> str:
        return self.run("backend").stdout


class EmulatedBackend(Backend):
    """fusezfs's own store; `state_dir` is its registry's directory (FUSEZFS_STATE_DIR)."""

    name = "emulated"

    def __init__(self, state_dir: str | os.PathLike | None = None) -> None:
        env = {BACKEND_VARIABLE: "emulated"}
        if state_dir is not None:
            env["FUSEZFS_STATE_DIR"] = os.path.abspath(os.fspath(state_dir))
        super().__init__(env)
        self.state_dir = env.get("FUSEZFS_STATE_DIR")

    def stop_service(self, timeout: float = 60.0) -> None:
        """End the fusezfs service of this backend's state directory, if one runs: its
        socket file removed, it unmounts, commits and exits (host/service.py); returns once
        it has let go of its lock. For a state directory of one's own (a test's)."""
        if self.state_dir is None:
            raise BackendError("fusezfs: stop_service needs the backend's own state directory")
        try:
            os.unlink(os.path.join(self.state_dir, "service.sock"))
        except FileNotFoundError:
            return
        deadline = time.monotonic() + timeout
        with open(os.path.join(self.state_dir, "service.lock"), "a") as lock:
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise BackendError(f"fusezfs: the service of {self.state_dir} did not "
                                           f"end within {timeout:.0f} s") from None
                    time.sleep(0.05)

    def shares_pool_with(self, dest: Backend, snapshot: str, target: str) -> bool:
        same_pool = snapshot.split("/")[0].split("@")[0] == target.split("/")[0]
        return (isinstance(dest, EmulatedBackend) and dest.state_dir == self.state_dir
                and same_pool and self.mounted_path(snapshot.split("/")[0].split("@")[0]) is None)


class PassthroughBackend(Backend):
    """A real ZFS through its commands (`zfs`, `zpool`: argument lists, a prefix allowed)."""

    name = "passthrough"

    def __init__(self, zfs: list[str], zpool: list[str], mount_root: str | None = None) -> None:
        super().__init__({BACKEND_VARIABLE: "passthrough", ZFS_VARIABLE: shlex.join(zfs),
                          ZPOOL_VARIABLE: shlex.join(zpool)})
        self.zfs, self.zpool = zfs, zpool
        self.mount_root = (mount_root if mount_root is not None
                           else os.environ.get(MOUNT_ROOT_VARIABLE, "")).rstrip("/")

    def command(self, argv: list[str]) -> list[str]:
        """zfs and zpool verbs go to the real commands directly; fusezfs's own verbs (cp,
        mount, unmount, pool verify, backend, version) through fusezfs's mapping of them, and
        so do the zpool verbs that write labels onto files, which fusezfs checks first for an
        emulated pool's (ownership.py)."""
        verb = argv[0] if argv else ""
        if verb in ("cp", "mount", "unmount", "umount", "backend", "version") or \
                argv[:2] == ["pool", "verify"] or \
                argv[:1] == ["pool"] and argv[1:2] and argv[1] in LABEL_WRITERS:
            return self.fusezfs_command() + argv
        if verb == "pool":
            return self.zpool + argv[1:]
        return self.zfs + argv

    def local_root(self) -> str:
        return self.mount_root


def _props(properties: Mapping[str, str] | None) -> list[str]:
    return [x for k, v in (properties or {}).items() for x in ("-o", f"{k}={v}")]


def connect(backend: str | None = None, *, state_dir: str | os.PathLike | None = None,
            zfs: str | list[str] | None = None, zpool: str | list[str] | None = None,
            mount_root: str | None = None) -> Backend:
    """The backend named ("emulated" or "passthrough"), or the one chosen here as the
    command line chooses it (fusezfs.backends.choose). `state_dir`: the emulated registry's
    directory; `zfs`/`zpool`: the real commands (command lines or argument lists; default
    FUSEZFS_ZFS/FUSEZFS_ZPOOL or the system's); `mount_root`: where this process sees the
    real ZFS's mounts (default FUSEZFS_MOUNT_ROOT)."""
    name = backend or choose().name
    if name == "emulated":
        return EmulatedBackend(state_dir)
    if name != "passthrough":
        raise BackendError(f"fusezfs: unknown backend '{name}': must be 'emulated' or "
                           f"'passthrough'")
    zfs_argv = shlex.split(zfs) if isinstance(zfs, str) else zfs
    zpool_argv = shlex.split(zpool) if isinstance(zpool, str) else zpool
    if zfs_argv is None or zpool_argv is None:
        found = real_commands()
        if found is None:
            raise BackendError(f"fusezfs: passthrough backend: no real zfs and zpool commands "
                               f"found; name them with {ZFS_VARIABLE} and {ZPOOL_VARIABLE}")
        zfs_argv, zpool_argv = zfs_argv or found[0], zpool_argv or found[1]
    return PassthroughBackend(zfs_argv, zpool_argv, mount_root)
