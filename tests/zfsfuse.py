"""A private zfs-fuse daemon for tests: real ZFS (pool version 23) beside the emulation.

Debian's ``zfs-fuse`` keeps its state in machine-wide places (the control socket
/var/run/zfs/zfs_socket, the lock /var/lock/zfs/zfs_lock and /var/lib/zfs/zpool.cache), so
one daemon would otherwise serve every pool on the machine.  ``ZfsFuse`` gives each test its own:

* a helper process ``unshare -m --propagation private sh -c ...`` holds a new, private mount
  namespace for the lifetime of the harness;
* inside it, fresh tmpfs mounts hide those three directories (if /run/zfs does not exist on the
  host, the tmpfs goes over /run itself and the directories are created inside it, so that
  nothing is ever created in the host's /run);
* ``zfs-fuse --no-daemon --no-kstat-mount --pidfile ...`` runs in that namespace as our child;
* every ``zpool``/``zfs`` command runs there too, through ``nsenter -t HELPER -m``.

Usage::

    with ZfsFuse() as zf:
        dev = zf.sparse_file("d0", 128 << 20)
        zf.zpool("create", "tank", dev, check=True)
        print(zf.zfs("list", "-H", "-o", "name").stdout)

Cleanup destroys only the pools this harness created (retrying "pool is busy"), exports any
other pool the private daemon holds (imported by the test) instead of destroying it, stops the
daemon and the namespace, removes mountpoint directories the pools left in the host's file
system (only empty ones that did not exist before) and deletes the work directory.

Every subprocess has a timeout.  The helper and the daemon get PR_SET_PDEATHSIG, so they die
with the Python thread that started them if the test process is killed outright.
"""

from __future__ import annotations

import ctypes
import os
import re
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Sequence

__all__ = ["ZfsFuse", "ZfsFuseError", "available", "require"]

ZFS_RUN_DIR = "/var/run/zfs"      # holds zfs_socket
ZFS_LOCK_DIR = "/var/lock/zfs"    # holds zfs_lock
ZFS_LIB_DIR = "/var/lib/zfs"      # holds zpool.cache
TOOLS = ("zfs-fuse", "zpool", "zfs", "unshare", "nsenter", "mount")
SBIN = "/usr/sbin:/sbin:"

DEFAULT_TIMEOUT = 60.0
BUSY_RE = re.compile(r"busy", re.IGNORECASE)

_available_cache: list[str | None] = []


class ZfsFuseError(RuntimeError):
    """The private daemon could not be started or a checked command failed."""


def _which_all() -> dict[str, str | None]:
    path = SBIN + os.environ.get("PATH", "")
    return {t: shutil.which(t, path=path) for t in TOOLS}


def available() -> str | None:
    """Return None when a private zfs-fuse can run here, else the reason why not."""
    if _available_cache:
        return _available_cache[0]
    reason = _probe()
    _available_cache.append(reason)
    return reason


def require() -> None:
    """pytest helper: the calling test needs a private zfs-fuse. Without root it is skipped
    (how the suite is run, not what the machine lacks); with root, a missing zfs-fuse, tool,
    /dev/fuse or namespace support skips it, or fails it under FUSEZFS_TEST_STRICT=1
    (tests/prerequisites.py's skip_or_fail decides)."""
    import pytest
    from prerequisites import skip_or_fail

    if not _is_root():
        pytest.skip(NEEDS_ROOT)
    skip_or_fail(available())


NEEDS_ROOT = "zfs-fuse harness needs root (mount namespaces, FUSE, tmpfs mounts)"


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _probe() -> str | None:
    if not _is_root():
        return NEEDS_ROOT
    missing = [t for t, p in _which_all().items() if p is None]
    if missing:
        return "zfs-fuse harness: missing " + ", ".join(missing) + " (apt-get install zfs-fuse util-linux)"
    if not os.path.exists("/dev/fuse"):
        return "zfs-fuse harness: /dev/fuse is missing"
    try:
        r = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "mount", "-t", "tmpfs", "fusezfs-probe", "/mnt"],
            capture_output=True, text=True, timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"zfs-fuse harness: unshare probe failed: {e}"
    if r.returncode != 0:
        return "zfs-fuse harness: cannot make a private mount namespace: " + (r.stderr.strip() or f"rc={r.returncode}")
    return None


def _pdeathsig() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _plan_mounts() -> list[str]:
    """Shell commands (run inside the new namespace) that hide zfs-fuse's global state dirs."""
    cmds: list[str] = []
    tmpfs_roots: list[str] = []

    def under_tmpfs(p: str) -> bool:
        return any(p == r or p.startswith(r.rstrip("/") + "/") for r in tmpfs_roots)

    for d in (ZFS_RUN_DIR, ZFS_LOCK_DIR, ZFS_LIB_DIR):
        real = os.path.realpath(d)  # as seen on the host before any of our mounts
        if under_tmpfs(real):
            cmds.append(f"mkdir -p '{real}'")
        elif os.path.isdir(real):
            cmds.append(f"mount -t tmpfs -o mode=0755 fusezfs '{real}'")
            tmpfs_roots.append(real)
        else:
            parent = os.path.dirname(real)
            if not os.path.isdir(parent) or parent == "/":
                raise ZfsFuseError(f"cannot place a private {d}: {parent} is not a directory")
            # Mounting over the parent keeps the host's tree untouched (no mkdir outside).
            cmds.append(f"mount -t tmpfs -o mode=0755 fusezfs '{parent}'")
            tmpfs_roots.append(parent)
            cmds.append(f"mkdir -p '{real}'")
    return cmds


class ZfsFuse:
    """A zfs-fuse daemon private to one test.  Use as a context manager."""

    def __init__(self, workdir: str | os.PathLike | None = None, *, keep_workdir: bool = False,
                 start_timeout: float = 30.0, env: dict[str, str] | None = None):
        self._given_workdir = workdir
        self.keep_workdir = keep_workdir
        self.start_timeout = start_timeout
        self.workdir: Path | None = None
        self.helper: subprocess.Popen | None = None
        self.daemon: subprocess.Popen | None = None
        self.daemon_log: Path | None = None
        self.pidfile = os.path.join(os.path.realpath(ZFS_RUN_DIR), "zfs-fuse.pid")
        self.created: list[str] = []      # pools created by this harness (ours to destroy)
        self.imported: list[str] = []     # pools imported by this harness (exported on cleanup)
        self._host_dirs_before: dict[str, bool] = {}
        # zfs-fuse's zfs and zpool (in /sbin) come before fusezfs's own zfs and zpool programs,
        # which an activated virtualenv puts first on PATH
        self.env = dict(os.environ, LC_ALL="C", LANG="C", PATH=SBIN + os.environ.get("PATH", ""))
        self.env.pop("LANGUAGE", None)
        if env:
            self.env.update(env)

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "ZfsFuse":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        reason = available()
        if reason is not None:
            raise ZfsFuseError(reason)
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        if self._given_workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="zfsfuse-"))
            self._own_workdir = True
        else:
            self.workdir = Path(self._given_workdir).resolve()
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._own_workdir = False
        script = "set -e\n" + "\n".join(_plan_mounts()) + "\necho ready\nexec sleep infinity\n"
        self.helper = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            preexec_fn=_pdeathsig, start_new_session=True, env=self.env,
        )
        line = self._read_line(self.helper, self.start_timeout)
        if line.strip() != b"ready":
            err = self.helper.stderr.read().decode(errors="replace") if self.helper.poll() is not None else ""
            raise ZfsFuseError(f"namespace helper failed: {line!r} {err.strip()}")
        # The private tmpfs must be in place: zfs-fuse silently exits on a stale pidfile,
        # and we must never talk to a host-wide daemon.
        sock = self._ns_path(os.path.join(ZFS_RUN_DIR, "zfs_socket"))
        if os.path.lexists(sock) or os.path.exists(self._ns_path(self.pidfile)):
            raise ZfsFuseError("private /var/run/zfs is not empty; refusing to start")

        self.daemon_log = self.workdir / "zfs-fuse.log"
        with open(self.daemon_log, "wb") as log:
            self.daemon = subprocess.Popen(
                self._ns_argv(["zfs-fuse", "--no-daemon", "--no-kstat-mount", "--pidfile", self.pidfile]),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_pdeathsig, start_new_session=True, env=self.env,
            )
        deadline = time.monotonic() + self.start_timeout
        last = None
        while True:
            if self.daemon.poll() is not None:
                raise ZfsFuseError(f"zfs-fuse exited with {self.daemon.returncode}: {self._log_tail()}")
            if os.path.exists(sock):
                try:
                    last = self.run(["zpool", "list", "-H"], timeout=10)
                    if last.returncode == 0:
                        break
                except subprocess.TimeoutExpired as e:
                    last = e
            if time.monotonic() > deadline:
                raise ZfsFuseError(f"zfs-fuse did not answer within {self.start_timeout}s: {last!r} {self._log_tail()}")
            time.sleep(0.1)
        if last.stdout.strip():
            # A brand-new daemon over an empty zpool.cache holds no pool; anything else means
            # we are not talking to our own daemon.
            raise ZfsFuseError(f"private zfs-fuse unexpectedly holds pools: {last.stdout!r}")

    @staticmethod
    def _read_line(proc: subprocess.Popen, timeout: float) -> bytes:
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        buf = b""
        deadline = time.monotonic() + timeout
        try:
            while not buf.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    break
                chunk = os.read(proc.stdout.fileno(), 1)
                if not chunk:
                    break
                buf += chunk
        finally:
            sel.close()
        return buf

    def _log_tail(self) -> str:
        try:
            return self.daemon_log.read_text(errors="replace")[-2000:]
        except Exception:
            return ""

    def _ns_path(self, path: str) -> str:
        """A path as seen inside the namespace, reachable from the host via /proc/PID/root."""
        return f"/proc/{self.helper.pid}/root{os.path.realpath(path)}"

    def _ns_argv(self, argv: Sequence[str], cwd: str | os.PathLike | None = None) -> list[str]:
        wd = os.fspath(cwd if cwd is not None else self.workdir)
        return ["nsenter", "-t", str(self.helper.pid), "-m", f"--wd={wd}", "--", *map(os.fspath, argv)]

    # ------------------------------------------------------------------ commands
    def run(self, argv: Sequence[str | os.PathLike], *, timeout: float = DEFAULT_TIMEOUT,
            check: bool = False, input: str | None = None, cwd: str | os.PathLike | None = None,
            busy_retries: int = 0) -> subprocess.CompletedProcess:
        """Run argv inside the private namespace (cwd defaults to the work directory).

        zfs-fuse answers "dataset is busy" / "pool is busy" for a moment after a dataset was
        created or used (its FUSE mount is still settling); busy_retries=N retries such failures
        up to N times with a short back-off.  stdout/stderr are text; LC_ALL=C.
        """
        if self.helper is None or self.helper.poll() is not None:
            raise ZfsFuseError("namespace helper is not running")
        for attempt in range(busy_retries + 1):
            r = subprocess.run(self._ns_argv(argv, cwd), capture_output=True, text=True, timeout=timeout,
                               input=input, stdin=None if input is not None else subprocess.DEVNULL,
                               env=self.env)
            if r.returncode == 0 or not BUSY_RE.search(r.stderr):
                break
            if attempt < busy_retries:
                time.sleep(min(0.2 * (attempt + 1), 2.0))
        r.args = list(map(os.fspath, argv))
        if check and r.returncode != 0:
            raise ZfsFuseError(f"{' '.join(r.args)} -> rc={r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}")
        return r

    def zfs(self, *args: str | os.PathLike, **kw) -> subprocess.CompletedProcess:
        return self.run(["zfs", *args], **kw)

    def zpool(self, *args: str | os.PathLike, **kw) -> subprocess.CompletedProcess:
        """Run zpool; remembers pools created/imported here so cleanup can undo exactly those."""
        verb = os.fspath(args[0]) if args else ""
        if verb not in ("create", "import"):
            return self.run(["zpool", *args], **kw)
        before = set(self.pools())
        self._note_host_dirs()
        r = self.run(["zpool", *args], **kw)
        new = [p for p in self.pools() if p not in before]
        for p in new:
            if verb == "create":
                self.created.append(p)
            elif p not in self.created and p not in self.imported:
                self.imported.append(p)
        return r

    def pools(self) -> list[str]:
        r = self.run(["zpool", "list", "-H", "-o", "name"], timeout=30)
        return [l for l in r.stdout.split("\n") if l] if r.returncode == 0 else []

    def sparse_file(self, name: str, size: int) -> Path:
        """Create a sparse file of `size` bytes in the work directory; return its absolute path."""
        p = self.workdir / name
        with open(p, "wb") as f:
            f.truncate(size)
        return p

    # ------------------------------------------------------------------ cleanup
    def _note_host_dirs(self) -> None:
        # Default mountpoints (/POOL) are created by zfs-fuse in the host's file system (mkdir is
        # not namespaced).  Remember which top-level directories already existed.
        try:
            for e in os.listdir("/"):
                self._host_dirs_before.setdefault(e, True)
        except OSError:
            pass

    def _destroy(self, pool: str, attempts: int = 20) -> None:
        for i in range(attempts):
            r = self.run(["zpool", "destroy", "-f", pool], timeout=60)
            if r.returncode == 0 or pool not in self.pools():
                return
            if not BUSY_RE.search(r.stderr + r.stdout):
                break
            time.sleep(min(0.25 * (i + 1), 2.0))
        raise ZfsFuseError(f"could not destroy {pool}: {r.stderr.strip()}")

    def close(self) -> None:
        errors: list[str] = []
        if self.helper is not None and self.helper.poll() is None and self.daemon is not None \
                and self.daemon.poll() is None:
            try:
                present = set(self.pools())
                for p in reversed(self.created):
                    if p in present:
                        try:
                            self._destroy(p)
                        except (ZfsFuseError, subprocess.TimeoutExpired) as e:
                            errors.append(str(e))
                # Pools we did not create (imported by the test): export, never destroy.
                for p in self.pools():
                    if p not in self.created:
                        try:
                            self.run(["zpool", "export", "-f", p], timeout=60)
                        except subprocess.TimeoutExpired as e:
                            errors.append(str(e))
            except Exception as e:  # keep tearing down
                errors.append(f"cleanup: {e!r}")
        if self.daemon is not None:
            _stop(self.daemon, signal.SIGTERM, 20)
            self.daemon = None
        if self.helper is not None:
            _stop(self.helper, signal.SIGKILL, 10)
            for s in (self.helper.stdout, self.helper.stderr):
                if s:
                    s.close()
            self.helper = None
        # Empty mountpoint directories our pools left behind in the host's root.
        for name in set(self.created) | set(self.imported):
            top = name.split("/")[0]
            d = "/" + top
            if top and not self._host_dirs_before.get(top) and os.path.isdir(d) \
                    and not os.path.ismount(d):
                try:
                    os.rmdir(d)
                except OSError:
                    pass
        if self.workdir is not None and getattr(self, "_own_workdir", False) and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if errors:
            raise ZfsFuseError("; ".join(errors))


def _stop(proc: subprocess.Popen, sig: int, timeout: float) -> None:
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(sig)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass
