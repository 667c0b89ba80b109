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
daemon's own or root. Commands run one at a time on the connection's thread through
`cli.dispatch` with `sessions.provider` answering the served pool's Handle, so they change the
very datasets the mount shows. The pool lock is held for the whole command (except cp, whose
local side may be inside this very mount: its POSIX calls take the lock one by one). Before a
command the mount's buffers are committed; after it `Operations.refresh` brings the views in
line (new datasets mounted, destroyed ones gone, rollbacks reloaded) and the kernel's caches
are invalidated after the lock is released, before the exit code is sent: when the command
returns, the mount shows its effect (mounts of datasets it destroyed are gone too).

Wire format: frames of a 4-byte big-endian length and a JSON object. Request {"argv": [...],
"cwd": str, "env": {...}}; replies {"out": text}, {"err": text}, then {"exit": code}.
"""
from __future__ import annotations

import io
import json
import logging
import os
import socket
import struct
import sys
import threading
import time

from . import daemon, registry

log = logging.getLogger("fusezfs.control")

ENV_KEYS = ("TZ",)
MAX_FRAME = 64 << 20
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
    chunks = []
    while n:
        b = sock.recv(min(n, 1 << 20))
        if not b:
            return None
        chunks.append(b)
        n -= len(b)
    return b"".join(chunks)


def recv(sock: socket.socket) -> dict | None:
    head = _recv_exact(sock, 4)
    if head is None:
        return None
    (n,) = struct.unpack(">I", head)
    if n > MAX_FRAME:
        raise ControlError("frame too large")
    body = _recv_exact(sock, n)
    if body is None:
        return None
    obj = json.loads(body)
    if not isinstance(obj, dict):
        raise ControlError("bad frame")
    return obj


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
        from .cli_cp import split_spec
        names = []
        for t in rest:
            if not t.startswith("-"):
                ds, _path = split_spec(t)
                if ds is not None:
                    names.append(pool_of(ds))
        return names, False
    from .cli import ZFS_VERBS      # (not cli_zfs: a client forwarding a command imports little)
    if verb not in ZFS_VERBS:
        return None
    names = [pool_of(t) for t in rest if not t.startswith("-") and pool_of(t) in imported]
    return names, verb in ("list", "get")


def _absolute_cp_paths(argv: list[str], cwd: str) -> list[str]:
    from .cli_cp import split_spec
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
        from .cli_mount import cmd_unmount
        from .cli import Failed
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
        try:
            send(sock, {"argv": argv, "cwd": cwd,
                        "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ}})
            while True:
                msg = recv(sock)
                if msg is None:
                    print(f"the fusezfs daemon serving '{pool}' closed the connection",
                          file=sys.stderr)
                    return 1
                if "out" in msg:
                    _write(sys.stdout, msg["out"])
                if "err" in msg:
                    _write(sys.stderr, msg["err"])
                if "exit" in msg:
                    return int(msg["exit"])
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

    def _accept_loop(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                if self.stopping:
                    return
                time.sleep(0.05)
                continue
            threading.Thread(target=self._serve_conn, args=(conn,), name="fusezfs-command",
                             daemon=True).start()

    def _allowed(self, conn: socket.socket) -> tuple[bool, int, int]:
        raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, gid = struct.unpack("3i", raw)
        return uid in (os.getuid(), 0), uid, gid

    def _serve_conn(self, conn: socket.socket) -> None:
        with conn:
            try:
                ok, uid, gid = self._allowed(conn)
                req = recv(conn)    # read before answering: unread data would reset the reply
                if not ok:
                    log.warning("refused a command from uid %d", uid)
                    send(conn, {"err": f"cannot use the fusezfs daemon serving "
                                       f"'{self.pool_name}': permission denied (uid {uid} is "
                                       f"neither its owner, uid {os.getuid()}, nor root)\n"})
                    send(conn, {"exit": 1})
                    return
                if req is None:
                    return
                argv = [str(a) for a in req.get("argv", [])]
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
        from . import cli, sessions
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
            sessions.provider, sessions.changes = self._provide, changes
            sessions.caller = caller
            sessions.busy = self._busy
            lock = self.ops.lock
            if argv[0] not in self.ops.READ_ONLY_VERBS:
                self.ops.flush_kernel()     # the kernel's dirty pages first: they need the lock
            if whole:
                lock.acquire()
            try:
                try:
                    self.ops.before_command(argv)
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
                sessions.provider, sessions.changes = None, None
                sessions.caller = None
                sessions.busy = None
                self.local.out = self.local.err = None
            self.ops.invalidate(inval)
            if self.others is not None:
                self.others.apply()   # mount new children, unmount those taken away
            if self.singles is not None:
                self.singles.settle()   # the state file follows renames and unmounts
        log.info("command %s -> %d", " ".join(argv), code)
        return code, out.getvalue(), err.getvalue()

    @staticmethod
    def _set_tz(tz: str | None) -> None:
        if os.environ.get("TZ") == tz:
            return
        if tz is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = tz
        time.tzset()
