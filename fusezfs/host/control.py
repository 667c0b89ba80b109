"""The service's control socket: every fusezfs, zfs and zpool command arrives here.

The socket is STATE/service.sock, mode 0600 (made under umask 077, then chmod), and every
connection's SO_PEERCRED uid must be the service's own or root: checked when the connection is
accepted, before anything it sent is read (a refused peer gets its answer unread). An accepted
connection waits in the accept thread's selector, holding no thread, until its request arrives
(at most IDLE_TIMEOUT, MAX_WAITING at once); the request must then arrive whole within
REQUEST_TIMEOUT and be at most REQUEST_MAX bytes, so idle or slow clients cost neither threads
nor buffers. Then the connection gets a thread of its own, which hands the request to the
service (service.py: `execute` for ordinary commands, one at a time; `execute_stream` for send
and receive, which run beside the others). A command's stdout and stderr are captured per
thread (`_Switch` stands in for sys.stdout/sys.stderr) and sent back with its exit code.

The wire format is wire.py's module comment.
"""
from __future__ import annotations

import io
import logging
import os
import selectors
import socket
import struct
import sys
import threading
import time

from fusezfs.host.wire import ControlError, SOCKET_NAME, address, recv_request, send

log = logging.getLogger("fusezfs.control")

REQUEST_MAX = 1 << 20       # a command's request frame (argv, cwd, env): far more than any needs
REQUEST_TIMEOUT = 10.0      # seconds for a request to arrive whole, once its first bytes have
IDLE_TIMEOUT = 60.0         # seconds a connection may wait before sending anything
MAX_WAITING = 256           # connections waiting for their request at once
STREAM_VERBS = {"send", "receive", "recv"}


def socket_path() -> str:
    from fusezfs.host import registry
    return os.path.join(registry.state_dir(), SOCKET_NAME)


class _Switch(io.TextIOBase):
    """sys.stdout/sys.stderr of the service: a command's thread writes into its capture buffer,
    everyone else to the original stream."""

    def __init__(self, orig, which: str, local: threading.local) -> None:
        self._orig = orig
        self._which = which
        self._local = local

    def _target(self):
        return getattr(self._local, self._which, None) or self._orig

    def write(self, s: str) -> int:
        return self._target().write(s)

    def flush(self) -> None:
        self._target().flush()

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._orig.fileno()

    def isatty(self) -> bool:
        return False


class Server:
    """The control socket of the service (see the module comment). `service` runs the
    commands: execute(argv, cwd, env, caller) -> (code, out, err) and
    execute_stream(conn, argv, cwd, env, caller, tty) -> code."""

    def __init__(self, service) -> None:
        self.service = service
        self.path = socket_path()
        self.sock: socket.socket | None = None
        self.local = threading.local()
        self.thread: threading.Thread | None = None
        self.stopping = False
        self.bound_ino: int | None = None

    def start(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        addr, fd = address(self.path)
        old = os.umask(0o177)
        try:
            sock.bind(addr)
        finally:
            os.umask(old)
            if fd is not None:
                os.close(fd)
        os.chmod(self.path, 0o600)
        self.bound_ino = os.stat(self.path).st_ino
        sock.listen(16)
        self.sock = sock
        if not isinstance(sys.stdout, _Switch):
            sys.stdout = _Switch(sys.stdout, "out", self.local)
        if not isinstance(sys.stderr, _Switch):
            sys.stderr = _Switch(sys.stderr, "err", self.local)
        self.thread = threading.Thread(target=self._accept_loop, name="fusezfs-control",
                                       daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """No new connections (the socket file goes, if it is still ours)."""
        self.stopping = True
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
        if self.still_ours():
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def still_ours(self) -> bool:
        """The socket file is still the one this service bound (not removed with its state
        directory, nor replaced by a newer service's)."""
        try:
            return os.stat(self.path).st_ino == self.bound_ino
        except OSError:
            return False

    def _accept_loop(self) -> None:
        """Accept connections and check each peer's credentials at once, before anything it
        sent is read; a connection then waits in a selector, holding no thread, until its
        request arrives (or IDLE_TIMEOUT passes, or MAX_WAITING others wait already), and only
        then gets a thread of its own to run the command."""
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ)
        waiting: dict[socket.socket, tuple[int, int, float]] = {}
        try:
            while not self.stopping:
                try:
                    events = sel.select(timeout=1.0)
                except OSError:
                    return
                for key, _mask in events:
                    if key.fileobj is self.sock:
                        try:
                            conn, _ = self.sock.accept()
                        except OSError:
                            if self.stopping:
                                return
                            continue
                        ok, uid, gid = self._allowed(conn)
                        if not ok or len(waiting) >= MAX_WAITING:
                            self._refuse(conn, uid, ok)
                            continue
                        waiting[conn] = (uid, gid, time.monotonic())
                        sel.register(conn, selectors.EVENT_READ)
                    else:
                        conn = key.fileobj
                        sel.unregister(conn)
                        uid, gid, _t = waiting.pop(conn)
                        threading.Thread(target=self._serve_conn, args=(conn, uid, gid),
                                         name="fusezfs-command", daemon=True).start()
                now = time.monotonic()
                for conn, (_u, _g, since) in list(waiting.items()):
                    if now - since > IDLE_TIMEOUT:
                        sel.unregister(conn)
                        del waiting[conn]
                        conn.close()
        finally:
            for conn in waiting:
                conn.close()
            sel.close()

    def _refuse(self, conn: socket.socket, uid: int, allowed: bool) -> None:
        """Answer before reading anything the peer sent, then discard (never parse) what it
        sends for a moment, at most REQUEST_MAX bytes: closing a unix socket with data unread
        would reset the connection and lose the answer."""
        with conn:
            try:
                conn.settimeout(1.0)
                if not allowed:
                    log.warning("refused a command from uid %d", uid)
                    send(conn, {"err": f"cannot use the fusezfs service at {self.path}: "
                                       f"permission denied (uid {uid} is neither its owner, "
                                       f"uid {os.getuid()}, nor root)\n"})
                else:
                    send(conn, {"err": "the fusezfs service has too many connections "
                                       "waiting; try again\n"})
                send(conn, {"exit": 1})
                conn.shutdown(socket.SHUT_WR)
                left = REQUEST_MAX
                while left > 0:
                    got = conn.recv(min(left, 65536))
                    if not got:
                        break
                    left -= len(got)
            except OSError:
                pass

    def _allowed(self, conn: socket.socket) -> tuple[bool, int, int]:
        raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, gid = struct.unpack("3i", raw)
        return uid in (os.getuid(), 0), uid, gid

    def _serve_conn(self, conn: socket.socket, uid: int, gid: int) -> None:
        """Run the request of a peer whose credentials were checked on accept: it must arrive
        whole within REQUEST_TIMEOUT and be at most REQUEST_MAX bytes."""
        with conn:
            try:
                conn.settimeout(REQUEST_TIMEOUT)
                try:
                    req, compact = recv_request(conn, REQUEST_MAX)
                except (ControlError, OSError, ValueError) as e:
                    log.warning("dropped a malformed or slow request: %s", e)
                    return
                conn.settimeout(None)
                if req is None:
                    return
                argv = [str(a) for a in req.get("argv", [])]
                cwd = str(req.get("cwd") or "/")
                env = req.get("env") or {}
                if argv and argv[0] in STREAM_VERBS:
                    tty = req.get("tty") or [False, False]
                    code = self.service.execute_stream(conn, argv, cwd, env, (uid, gid),
                                                       (bool(tty[0]), bool(tty[1])), compact)
                    try:
                        send(conn, {"exit": code}, compact)
                    except OSError:
                        pass            # the client went away (the command saw it too)
                    return
                code, out, err = self.service.execute(argv, cwd, env, (uid, gid))
                if out:
                    send(conn, {"out": out}, compact)
                if err:
                    send(conn, {"err": err}, compact)
                send(conn, {"exit": code}, compact)
            except Exception:
                log.exception("control connection")

