"""The prober: the one process that looks at paths for the service.

The service answers the FUSE requests of its own mounts on its trio thread. If one of its own
threads opened, stat'ed or synced a path under one of those mounts, that thread would wait on
a request only this very process can answer; and when the service is killed (kill -9) while
such a request is pending, the kernel cannot finish the dying process (its own thread holds the
connection open while it waits on it), leaving an unkillable process that holds the pools'
locks (issue 11). So no thread of the service ever touches a path that may lie under a mount:
it asks this separate process, over a pipe, one request at a time. If the service dies, its
/dev/fuse descriptors close, the kernel aborts the connections, this process's pending call
fails with ENOTCONN, it reads end-of-file on its pipe and exits. The service waits on the pipe,
which a signal interrupts, so the service itself always dies.

Requests are JSON lines [op, path, arg] and each answer a JSON line [errno, strerror, value]:
  "stat"      -> [st_dev major, minor, is a directory] of the path (following symlinks)
  "prepare"   -> makes the directory (and its parents) a mountpoint needs, as zfs mount does
  "syncfs"    -> syncfs(2) of the file system mounted at the path: the kernel writes its
                 dirty pages (through FUSE, to the service) and waits for them
  "readahead" -> stat the mount (so its FUSE INIT is answered), then set its backing device's
                 read_ahead_kb to arg (root only; the kernel resets it while answering INIT)
"""
from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import stat
import subprocess
import sys
import threading


def _syncfs(path: str) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if libc.syncfs(fd) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
    finally:
        os.close(fd)


def handle(op: str, path: str, arg) -> object:
    if op == "stat":
        st = os.stat(path)
        return [os.major(st.st_dev), os.minor(st.st_dev), stat.S_ISDIR(st.st_mode)]
    if op == "prepare":
        os.makedirs(path, mode=0o755, exist_ok=True)
        if not stat.S_ISDIR(os.stat(path).st_mode):
            raise NotADirectoryError(20, "Not a directory")
        return None
    if op == "syncfs":
        _syncfs(path)
        return None
    if op == "readahead":
        dev = os.stat(path).st_dev
        try:
            with open(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb", "w") as f:
                f.write(str(int(arg)))
        except OSError:
            pass            # not root: the kernel's default stays
        return None
    raise ValueError(f"unknown request {op!r}")


def main() -> int:
    for line in sys.stdin:
        try:
            op, path, arg = json.loads(line)
            answer = [0, "", handle(op, path, arg)]
        except OSError as e:
            answer = [e.errno or 5, e.strerror or str(e), None]
        except Exception as e:
            answer = [22, str(e), None]
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    return 0


class Prober:
    """The service's end: `call(op, path, arg)` answers the value or raises OSError. One
    request at a time; a prober that died is started again at the next call."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        return subprocess.Popen([sys.executable, "-m", "fusezfs.host.prober"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env=env, cwd="/",
                                close_fds=True)

    def pid(self) -> int:
        """The prober's pid (started if need be): what it opens is never a user's."""
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self.proc = self._start()
            return self.proc.pid

    def call(self, op: str, path: str, arg=None):
        with self.lock:
            for attempt in range(2):
                if self.proc is None or self.proc.poll() is not None:
                    self.proc = self._start()
                try:
                    self.proc.stdin.write(json.dumps([op, path, arg]) + "\n")
                    self.proc.stdin.flush()
                    line = self.proc.stdout.readline()
                except (OSError, ValueError):
                    line = ""
                if line:
                    err, why, value = json.loads(line)
                    if err:
                        raise OSError(err, why, path)
                    return value
                self.proc = None            # it died: once more with a new one
            raise OSError(5, "the prober process died", path)

    def close(self) -> None:
        with self.lock:
            if self.proc is not None:
                try:
                    self.proc.stdin.close()
                    self.proc.wait(timeout=5)
                except (OSError, subprocess.TimeoutExpired):
                    self.proc.kill()
                self.proc = None


if __name__ == "__main__":
    sys.exit(main())
