"""The control socket: fusezfs commands on a pool a daemon serves run in that daemon.

Client (`route`, called by `fusezfs.cli.main` before it runs anything): find the pools a
command names (a dataset operand's pool, `pool VERB ... NAME`, the DATASET: sides of cp; for
list, get, pool list/get/status/sync with no target: every imported pool). If none is served,
the command runs in this process as always. If one is, argv, the working directory and TZ go
to `STATE/POOL.sock`; the daemon's stdout, stderr and exit code come back. Relative local
paths of cp are made absolute here (the daemon's working directory is /). `pool export` and
`pool destroy` of a served pool first unmount it (the daemon syncs and exits), then run here.
A command spanning pools served by two daemons is refused with a message saying so.
`mount`/`unmount` run here (cli_mount.py); those of a single dataset send the daemon
`mount DATASET PATH` or `unmount [-f] DATASET|PATH|-a` (daemon.SingleMounts mounts it).

Server (`Server`, started by daemon.serve before the mount exists): the socket is mode 0600
(made under umask 077, then chmod), and every connection's SO_PEERCRED uid must be the
daemon's own or root: checked when the connection is accepted, before anything it sent is read
(a refused peer gets its answer unread). An accepted connection waits in the accept thread's
selector, holding no thread, until its request arrives (at most IDLE_TIMEOUT, MAX_WAITING at
once); the request must then arrive whole within REQUEST_TIMEOUT and be at most REQUEST_MAX
bytes, so idle or slow clients cost neither threads nor buffers. Commands run one at a time on the connection's thread through
`cli.dispatch` with `sessions.serving` answering the served pool's Handle, so they change the
very datasets the mount shows. The pool lock is held for the whole command (except cp, whose
local side may be inside this very mount: its POSIX calls take the lock one by one). Before a
command the mount's buffers are committed; after it `Operations.refresh` brings the views in
line (new datasets mounted, destroyed ones gone, rollbacks reloaded) and the kernel's caches
are invalidated after the lock is released, before the exit code is sent: when the command
returns, the mount shows its effect (mounts of datasets it destroyed are gone too).

Streaming commands (`send`, `receive`/`recv`) carry binary streams both ways and may run as long
as the pipes they are given: they do not hold the command lock or the pool lock while they run.
They take the pool lock for bounded steps (a chunk of a stream produced, or a batch of received
records applied; never while waiting on the client), run beside other commands (so `fusezfs send
tank@s | fusezfs receive tank/copy`, both ends in one daemon, works), and take their turn with
the other commands only for the step the mount can see (`sessions.critical`: a received
filesystem appears, a head's contents are replaced). What they print reaches the client as it is
printed (`send -v` reports progress every second), from any of their threads. `stop` cuts their
connections, so they fail (a receive then leaves its target as it was), and waits for them.

Wire format: frames of a 4-byte big-endian length and a payload. A length with bit 31 clear is
a JSON object; with bit 31 set, the low 31 bits count raw bytes (a binary frame). Request
{"argv": [...], "cwd": str, "env": {...}, "tty": [stdin is a terminal, stdout is one]}; replies
{"out": text}, {"err": text}, binary frames (bytes for the client's stdout, written in order
with the text), {"read": n} (the client answers with one binary frame holding 1 to n bytes of
its stdin, or none at its end), then {"exit": code}. The daemon asks for stdin a chunk at a
time, with one request in flight ahead of what it consumes, and writes stdout with blocking
sends: a slow reader or writer at the client's end slows the command down (backpressure), and
neither side ever holds more than a chunk or two. The client reads its stdin on a thread of its
own, so the exit frame is taken even while it waits for input nobody will use.
"""
from __future__ import annotations

import io
import json
import logging
import os
import selectors
import socket
import struct
import sys
import threading
import time

from . import daemon, registry

log = logging.getLogger("fusezfs.control")

ENV_KEYS = ("TZ",)
MAX_FRAME = 64 << 20
REQUEST_MAX = 1 << 20       # a command's request frame (argv, cwd, env): far more than any needs
REQUEST_TIMEOUT = 10.0      # seconds for a request to arrive whole, once its first bytes have
IDLE_TIMEOUT = 60.0         # seconds a connection may wait before sending anything
MAX_WAITING = 256           # connections waiting for their request at once
BINARY = 1 << 31                 # in a frame's length: raw bytes follow, not JSON
CHUNK = 1 << 20                  # bytes of a stream in one binary frame
STREAM_VERBS = {"send", "receive", "recv"}
ALL_POOL_VERBS = {"list", "status", "get", "sync"}   # pool verbs meaning every pool if none named
LOCAL_POOL_VERBS = {"create", "import"}
UNMOUNT_POOL_VERBS = {"export", "destroy"}
LOCAL_VERBS = {"mount", "unmount", "umount"}


class ControlError(Exception):
    pass


def socket_path(pool: str) -> str:
    return os.path.join(registry.state_dir(), f"{pool}.sock")


# ---- frames -----------------------------------------------------------------------------------
def send(sock: socket.socket, obj: dict) -> None:
    data = json.dumps(obj).encode()
    sock.sendall(struct.pack(">I", len(data)) + data)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    if not n:
        return b""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if not k:
            return None
        got += k
    return bytes(buf)


def send_bytes(sock: socket.socket, data: bytes | memoryview) -> None:
    """A binary frame (see the module comment); b"" is a frame too (the end of stdin)."""
    sock.sendall(struct.pack(">I", BINARY | len(data)))
    if len(data):
        sock.sendall(data)


def recv_frame(sock: socket.socket, limit: int = MAX_FRAME) -> dict | bytes | None:
    """The next frame: a JSON object, or the bytes of a binary frame; None at end of input.
    A frame announcing more than `limit` bytes is refused before any of it is read."""
    head = _recv_exact(sock, 4)
    if head is None:
        return None
    (n,) = struct.unpack(">I", head)
    binary = bool(n & BINARY)
    n &= ~BINARY
    if n > limit:
        raise ControlError("frame too large")
    body = _recv_exact(sock, n)
    if body is None:
        return None
    if binary:
        return body
    obj = json.loads(body)
    if not isinstance(obj, dict):
        raise ControlError("bad frame")
    return obj


def recv(sock: socket.socket, limit: int = MAX_FRAME) -> dict | None:
    """The next frame, which must be a JSON object."""
    frame = recv_frame(sock, limit)
    if isinstance(frame, bytes):
        raise ControlError("unexpected binary frame")
    return frame


def _address(path: str) -> tuple[str, int | None]:
    """An address for `path` short enough for sun_path (108 bytes): a long one is reached
    through /proc/self/fd of its directory."""
    if len(os.fsencode(path)) < 100:
        return path, None
    fd = os.open(os.path.dirname(path), os.O_PATH | os.O_DIRECTORY)
    return f"/proc/self/fd/{fd}/{os.path.basename(path)}", fd


# ---- client -----------------------------------------------------------------------------------
def _imported() -> set[str]:
    return {n for n, e in registry.load().items() if e.get("state") != "exported"}


def pool_of(name: str) -> str:
    return name.split("/")[0].split("@")[0].split("#")[0]


def pools_named(argv: list[str]) -> tuple[list[str], bool] | None:
    """(pools the command names, whether it means every pool when it names none), or None
    for a command that always runs in this process."""
    if not argv:
        return None
    verb, rest = argv[0], argv[1:]
    imported = _imported()
    if verb in LOCAL_VERBS:
        return None
    if verb == "pool":
        if not rest or rest[0] in LOCAL_POOL_VERBS:
            return None
        names = [t for t in rest[1:] if not t.startswith("-") and t in imported]
        return names, rest[0] in ALL_POOL_VERBS
    if verb == "cp":
        from ..cli_cp import split_spec
        names = []
        for t in rest:
            if not t.startswith("-"):
                ds, _path = split_spec(t)
                if ds is not None:
                    names.append(pool_of(ds))
        return names, False
    if verb in ("image", "container"):
        from ..images.cli import store_of
        store = store_of(argv)
        return ([pool_of(store)] if store and pool_of(store) in imported else []), False
    from ..cli import ZFS_VERBS      # (not cli_zfs: a client forwarding a command imports little)
    if verb not in ZFS_VERBS:
        return None
    names = [pool_of(t) for t in rest if not t.startswith("-") and pool_of(t) in imported]
    return names, verb in ("list", "get")


def _absolute_cp_paths(argv: list[str], cwd: str) -> list[str]:
    from ..cli_cp import split_spec
    out = [argv[0]]
    dashdash = False
    for t in argv[1:]:
        if t == "--":
            dashdash = True
        elif (dashdash or not t.startswith("-")) and split_spec(t)[0] is None \
                and not os.path.isabs(t):
            t = os.path.join(cwd, t)
        out.append(t)
    return out


def route(argv: list[str]) -> int | None:
    """Run `argv` in the daemon serving its pool and return the exit code; None: run it here."""
    try:
        found = pools_named(argv)
    except Exception:           # a broken registry: the command itself will say so
        return None
    if found is None:
        return None
    names, everything = found
    if everything and not names:
        names = sorted(_imported())
    served = [p for p in dict.fromkeys(names) if daemon.serving_pid(p) is not None]
    if not served:
        return None
    if argv[0] == "pool" and argv[1] in UNMOUNT_POOL_VERBS:
        from ..cli_mount import cmd_unmount
        from ..cli import Failed
        for p in served:
            try:
                cmd_unmount([p])
            except Failed as e:
                if e.message:       # (else the daemon's message was printed)
                    print(f"cannot {argv[1]} '{p}': {e.message}", file=sys.stderr)
                return 1
        return None
    if len(served) > 1:
        print(f"cannot run this command here: it spans pools served by different fusezfs "
              f"daemons ({', '.join(served)}); name one pool at a time", file=sys.stderr)
        return 1
    return forward(served[0], argv)


def _write(stream, text: str) -> None:
    """Names that are not UTF-8 come back as surrogates: write their bytes as they were."""
    buf = getattr(stream, "buffer", None)
    if buf is None:
        stream.write(text)
    else:
        stream.flush()
        buf.write(text.encode("utf-8", "surrogateescape"))
    stream.flush()


def forward(pool: str, argv: list[str]) -> int | None:
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = "/"
    if argv and argv[0] == "cp":
        argv = _absolute_cp_paths(argv, cwd)
    elif argv and argv[0] in ("image", "container"):
        from ..images.cli import route_argv      # the store and archive paths made explicit
        argv = route_argv(argv, cwd)
    path = socket_path(pool)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        addr, fd = _address(path)
        try:
            sock.connect(addr)
        finally:
            if fd is not None:
                os.close(fd)
    except OSError as e:
        sock.close()
        # the daemon may be exiting (unmounted): once it is gone the pool is ours
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pid = daemon.serving_pid(pool)
            if pid is None:
                return None
            time.sleep(0.05)
        print(f"cannot reach the fusezfs daemon serving '{pool}' (pid {pid}) at {path}: "
              f"{e.strerror}", file=sys.stderr)
        return 1
    with sock:
        from .control_streams import StdinRelay, isatty, write_bytes
        stdin = StdinRelay(sock)
        try:
            send(sock, {"argv": argv, "cwd": cwd,
                        "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ},
                        "tty": [isatty(0), isatty(1)]})
            while True:
                msg = recv_frame(sock)
                if msg is None:
                    print(f"the fusezfs daemon serving '{pool}' closed the connection",
                          file=sys.stderr)
                    return 1
                if isinstance(msg, bytes):
                    write_bytes(msg)
                    continue
                if "out" in msg:
                    _write(sys.stdout, msg["out"])
                if "err" in msg:
                    _write(sys.stderr, msg["err"])
                if "read" in msg:
                    stdin.ask(int(msg["read"]))
                if "exit" in msg:
                    return int(msg["exit"])
        except BrokenPipeError:         # our stdout's reader went away: stop, as zfs would
            return 1
        except (OSError, ValueError, ControlError) as e:
            print(f"lost the fusezfs daemon serving '{pool}': {e}", file=sys.stderr)
            return 1


# ---- server -----------------------------------------------------------------------------------
class _Switch(io.TextIOBase):
    """sys.stdout/sys.stderr of the daemon: a command's thread writes into its capture buffer,
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
    """The control socket of one daemon (see the module comment)."""

    REFUSED = {"mount", "unmount", "umount"}

    def __init__(self, pool_name: str, handle, ops) -> None:
        self.pool_name = pool_name
        self.handle = handle
        self.ops = ops
        self.path = socket_path(pool_name)
        self.sock: socket.socket | None = None
        self.cmd_lock = threading.Lock()
        self.local = threading.local()
        self.thread: threading.Thread | None = None
        self.stopping = False
        self._bound_ino: int | None = None
        self.singles = None     # daemon.SingleMounts: datasets mounted at paths of their own
        self.others = None      # fuse_sessions.Sessions: every FUSE session but the tree's
        self.streams: set = set()                # connections of running streaming commands
        self.streams_cond = threading.Condition()

    def start(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        addr, fd = _address(self.path)
        old = os.umask(0o177)
        try:
            sock.bind(addr)
        finally:
            os.umask(old)
            if fd is not None:
                os.close(fd)
        os.chmod(self.path, 0o600)
        self._bound_ino = os.stat(self.path).st_ino
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
        """No new commands; wait for the one running (it holds the pool)."""
        self.stopping = True
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
        try:
            if os.stat(self.path).st_ino == self._bound_ino:     # not a newer daemon's
                os.unlink(self.path)
        except OSError:
            pass
        with self.cmd_lock:
            pass
        with self.streams_cond:
            for chan in list(self.streams):
                chan.cut()
            deadline = time.monotonic() + 60
            while self.streams and time.monotonic() < deadline:
                self.streams_cond.wait(0.5)

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
                    send(conn, {"err": f"cannot use the fusezfs daemon serving "
                                       f"'{self.pool_name}': permission denied (uid {uid} is "
                                       f"neither its owner, uid {os.getuid()}, nor root)\n"})
                else:
                    send(conn, {"err": f"the fusezfs daemon serving '{self.pool_name}' has "
                                       f"too many connections waiting; try again\n"})
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
                    req = recv(conn, REQUEST_MAX)
                except (ControlError, OSError, ValueError) as e:
                    log.warning("dropped a malformed or slow request: %s", e)
                    return
                conn.settimeout(None)
                if req is None:
                    return
                argv = [str(a) for a in req.get("argv", [])]
                if argv and argv[0] in STREAM_VERBS:
                    tty = req.get("tty") or [False, False]
                    code = self.execute_stream(conn, argv, req.get("env") or {}, (uid, gid),
                                               (bool(tty[0]), bool(tty[1])))
                    try:
                        send(conn, {"exit": code})
                    except OSError:
                        pass            # the client went away (the command saw it too)
                    return
                code, out, err = self.execute(argv, req.get("env") or {}, (uid, gid))
                if out:
                    send(conn, {"out": out})
                if err:
                    send(conn, {"err": err})
                send(conn, {"exit": code})
            except Exception:
                log.exception("control connection")

    def _busy(self, ds_id: int) -> str | None:
        return self.ops.busy_path(ds_id)

    def _provide(self, name: str):
        return self.handle if name == self.pool_name else None

    def execute(self, argv: list[str], env: dict,
                caller: tuple[int, int] | None = None) -> tuple[int, str, str]:
        """Run one command here, for the peer `caller` (uid, gid: the owner of a filesystem
        it creates); (exit code, stdout, stderr)."""
        from .. import cli, sessions
        if argv and argv[0] in self.REFUSED and self.singles is not None:
            with self.cmd_lock:
                if self.stopping:
                    return 1, "", f"the fusezfs daemon serving '{self.pool_name}' is stopping\n"
                return self.singles.command(argv)
        if not argv or argv[0] in self.REFUSED or (argv[0] == "pool" and argv[1:2]
                                                   and argv[1] in ("export", "destroy")):
            return 1, "", f"the fusezfs daemon does not run '{' '.join(argv[:2])}'\n"
        out, err = io.StringIO(), io.StringIO()
        with self.cmd_lock:
            if self.stopping:
                return 1, "", f"the fusezfs daemon serving '{self.pool_name}' is stopping\n"
            self._set_tz(env.get("TZ"))
            changes: list = []
            whole = argv[0] != "cp"
            inval: list = []
            code = 1
            self.local.out, self.local.err = out, err
            ctx = sessions.Context(self._provide, changes, caller, self._busy)
            lock = self.ops.lock
            if argv[0] not in self.ops.READ_ONLY_VERBS:
                self.ops.flush_kernel()     # the kernel's dirty pages first: they need the lock
            if whole:
                lock.acquire()
            try:
                try:
                    self.ops.before_command(argv)
                    with sessions.serving(ctx):
                        code = cli.dispatch(argv)
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else 1
                except Exception as e:
                    log.exception("command %r", argv)
                    err.write(f"internal error: {e!r}\n")
                    code = 1
                finally:
                    try:
                        inval = self.ops.refresh(changes)
                    except Exception:
                        log.exception("refreshing the mount after %r", argv)
            finally:
                if whole:
                    lock.release()
                self.local.out = self.local.err = None
            self.ops.invalidate(inval)
            if self.others is not None:
                self.others.apply()   # mount new children, unmount those taken away
            if self.singles is not None:
                self.singles.settle()   # the state file follows renames and unmounts
        log.info("command %s -> %d", " ".join(argv), code)
        return code, out.getvalue(), err.getvalue()

    def execute_stream(self, conn: socket.socket, argv: list[str], env: dict,
                       caller: tuple[int, int], tty: tuple[bool, bool]) -> int:
        """Run a streaming command (send, receive) for the peer on `conn`, beside the other
        commands (see the module comment); its output reaches the client as it is written.
        Returns the exit code."""
        from .. import cli, sessions
        from .control_streams import Channel, RemoteStdin, RemoteStdout, RemoteText
        chan = Channel(conn, self)
        stdio = sessions.Stdio(RemoteStdin(chan), RemoteStdout(chan), RemoteText(chan, "out"),
                               RemoteText(chan, "err"), tty[0], tty[1])
        with self.cmd_lock:
            if self.stopping:
                stdio.err.write(f"the fusezfs daemon serving '{self.pool_name}' is stopping\n")
                return 1
            self._set_tz(env.get("TZ"))
            with self.streams_cond:
                self.streams.add(chan)
        ctx = sessions.Context(self._provide, [], caller, self._busy, stdio, self._critical,
                               self._leave_unmounted)
        self.local.out, self.local.err = stdio.out, stdio.err
        code = 1
        try:
            with sessions.serving(ctx):
                code = cli.dispatch(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except Exception as e:
            if chan.lost is None:
                log.exception("command %r", argv)
                try:
                    stdio.err.write(f"internal error: {e!r}\n")
                except OSError:
                    pass
        finally:
            self.local.out = self.local.err = None
            with self.streams_cond:
                self.streams.discard(chan)
                self.streams_cond.notify_all()
        log.info("command %s -> %d", " ".join(argv), code)
        return code

    def _critical(self, pool, fn, verb: str):
        """sessions.critical in the daemon: `fn` in turn with the other commands, the mount
        committed before it and brought in line after it (as `execute` does for a command)."""
        from .. import sessions
        with self.cmd_lock:
            if self.stopping:
                raise OSError(f"the fusezfs daemon serving '{self.pool_name}' is stopping")
            self.ops.flush_kernel()
            changes: list = []
            inval: list = []
            with self.ops.lock:
                try:
                    self.ops.before_command([verb])
                    ctx = sessions.Context(self._provide, changes, sessions.credentials(),
                                           self._busy, leave_unmounted=self._leave_unmounted)
                    with sessions.serving(ctx):
                        result = fn()
                finally:
                    try:
                        inval = self.ops.refresh(changes)
                    except Exception:
                        log.exception("refreshing the mount after %s", verb)
            self.ops.invalidate(inval)
            if self.others is not None:
                self.others.apply()
            if self.singles is not None:
                self.singles.settle()
        return result

    def _leave_unmounted(self, ds_id: int) -> None:
        self.ops.unmounted.add(ds_id)

    @staticmethod
    def _set_tz(tz: str | None) -> None:
        if os.environ.get("TZ") == tz:
            return
        if tz is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = tz
        time.tzset()
