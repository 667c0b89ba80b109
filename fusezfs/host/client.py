"""The thin client: what the `fusezfs`, `zfs` and `zpool` programs run.

A command is answered by the service (service.py), which owns every imported pool of the state
directory: the client only sends argv, the working directory, TZ and whether stdin/stdout are
terminals over the service's control socket (STATE/service.sock), relays stdin and stdout for
the streaming commands (send, receive), prints what comes back and exits with the service's
exit code. It imports nothing but the standard library's basics and wire.py, so a command costs
little more than Python's own start-up; only `version`, the usage texts and the refusal to stand
in for a loaded ZFS kernel module are answered here (they need no pool), by cli.py.

No service listening (the first command, or the last one died, even by kill -9): the client
starts one (`python -m fusezfs.host.service`, detached, logging to STATE/service.log) and
waits until it listens. Two clients starting one at once are safe: the service takes the lock
STATE/service.lock first, and a second service that finds it taken says so and exits, while
its client connects to the first.

FUSEZFS_NO_SERVICE=1 runs commands in this process instead (cli.main, on the pool files under
their device locks): for unit tests and tools that want no lasting background process. Mounting
still needs a service: `mount`/`unmount` then start an *ephemeral* one (it mounts only what it is
asked to, and closes its pools and exits as soon as nothing is mounted, before it answers the
command that unmounted the last mount), and while one runs every command goes to it, as the
pools are its.
"""
from __future__ import annotations

import os
import sys
import time

from fusezfs.host import wire

# the caller's settings a command depends on (the service sets them per command):
# POSIXLY_CORRECT makes getopt stop at the first operand, as glibc's does for zfs and zpool
ENV_KEYS = ("TZ", "FUSEZFS_IMAGE_STORE", "POSIXLY_CORRECT")
START_TIMEOUT = 60.0        # seconds for a new service to listen


def state_dir() -> str:
    """The state directory (only named here: registry.state_dir makes and checks it when a
    service has to be started)."""
    from fusezfs.host.paths import state_dir_path
    return state_dir_path()


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def _write(stream, text: str) -> None:
    """Names that are not UTF-8 come back as surrogates: write their bytes as they were."""
    buf = getattr(stream, "buffer", None)
    if buf is None:
        stream.write(text)
    else:
        stream.flush()
        buf.write(text.encode("utf-8", "surrogateescape"))
    stream.flush()


def _start_service(state: str, ephemeral: bool = False) -> str | None:
    """Start a service for `state`, detached; None once one listens (this one or a rival's),
    else why not."""
    import subprocess
    r, w = os.pipe()
    env = dict(os.environ, FUSEZFS_STATE_DIR=state)
    env.pop("FUSEZFS_NO_SERVICE", None)
    if ephemeral:
        env["FUSEZFS_SERVICE_EPHEMERAL"] = "1"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    logpath = os.path.join(state, "service.log")
    try:
        with open(logpath, "ab") as logf, open(os.devnull, "rb") as devnull:
            proc = subprocess.Popen([sys.executable, "-m", "fusezfs.host.service",
                                     "--ready-fd", str(w)], stdin=devnull, stdout=logf,
                                    stderr=logf, pass_fds=(w,), start_new_session=True,
                                    env=env, cwd="/")
    except OSError as e:
        os.close(r)
        os.close(w)
        return f"cannot start the fusezfs service: {e.strerror}"
    os.close(w)
    with os.fdopen(r, "rb") as f:
        line = f.read().decode(errors="replace").strip()
    if line == "ok" or line == "busy":       # busy: a rival started first; it will listen
        return None
    if proc.poll() is None:
        proc.wait()
    return line[6:] if line.startswith("error ") else \
        f"the fusezfs service exited (code {proc.returncode}); see {logpath}"


def _connect(state: str, ephemeral: bool = False):
    """A connection to the service, started first if none listens; (socket, None) or
    (None, why not)."""
    path = os.path.join(state, wire.SOCKET_NAME)
    try:
        return wire.connect(path), None
    except OSError:
        pass
    try:
        from fusezfs.host.registry import state_dir as usable
        usable()            # made now if need be; one line if it cannot be used
    except Exception as e:
        return None, str(e)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        # (again while a service that is ending still holds the lock: it says "busy")
        why = _start_service(state, ephemeral)
        if why is not None:
            return None, why
        retry = time.monotonic() + 1.0
        while time.monotonic() < retry:
            try:
                return wire.connect(path), None
            except OSError as e:
                if time.monotonic() > deadline:
                    return None, f"cannot reach the fusezfs service at {path}: {e.strerror}"
                time.sleep(0.02)


def listening() -> bool:
    """A service of this state directory is running (and takes commands)."""
    try:
        wire.connect(os.path.join(state_dir(), wire.SOCKET_NAME)).close()
        return True
    except Exception:
        return False


def forward(argv: list[str], ephemeral: bool = False) -> int:
    """Run `argv` (fusezfs's form: zpool verbs under `pool`) in the service; its exit code.
    `ephemeral`: a service started for it is an ephemeral one (see the module comment)."""
    try:
        state = state_dir()
    except Exception as e:          # registry.RegistryError: one line, never a traceback
        print(str(e), file=sys.stderr)
        return 1
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = "/"
    for attempt in range(2):
        sock, why = _connect(state, ephemeral)
        if sock is None:
            print(why, file=sys.stderr)
            return 1
        try:
            code = _exchange(sock, argv, cwd)
        finally:
            sock.close()
        if code is not None:
            return code
        # the service went away before it took the command (it was ending): once more
    print("lost the fusezfs service before it answered", file=sys.stderr)
    return 1


def _exchange(sock, argv: list[str], cwd: str) -> int | None:
    """Send one command and relay until its exit code; None if the service closed the
    connection before reading it."""
    stdin = None            # the relay of our stdin, made when the service first asks for it
    answered = False
    try:
        wire.send(sock, {"argv": argv, "cwd": cwd,
                         "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ},
                         "tty": [_isatty(0), _isatty(1)]}, compact=True)
        while True:
            msg = wire.recv_frame(sock)
            if msg is None:
                if not answered:
                    return None
                print("the fusezfs service closed the connection", file=sys.stderr)
                return 1
            answered = True
            if isinstance(msg, bytes):
                from fusezfs.host.control_streams import write_bytes
                write_bytes(msg)
                continue
            if "out" in msg:
                _write(sys.stdout, msg["out"])
            if "err" in msg:
                _write(sys.stderr, msg["err"])
            if "read" in msg:
                if stdin is None:
                    from fusezfs.host.control_streams import StdinRelay
                    stdin = StdinRelay(sock)
                stdin.ask(int(msg["read"]))
            if "exit" in msg:
                return int(msg["exit"])
    except BrokenPipeError:         # our stdout's reader went away: stop, as zfs would
        return 1
    except KeyboardInterrupt:
        return 1
    except (OSError, ValueError, wire.ControlError) as e:
        if isinstance(e, OSError) and not answered:
            return None             # reset before any answer: the service never took it
        print(f"lost the fusezfs service: {e}", file=sys.stderr)
        return 1


def run(name: str, argv: list[str], in_process) -> int:
    """The program `name` (fusezfs, zfs or zpool) with its arguments, as cli.main/zfs_main/
    zpool_main start it (after the backends' choice, which may have exec'ed a real ZFS).
    `in_process(argv)` runs it here when it is not the service's (the entry point that called:
    the client sits below the command line and does not import it)."""
    prefix = ["pool"] if name == "zpool" else []
    local = not argv or argv[0] in ("-?", "-h", "--help", "version", "-V", "--version") or (
        name == "fusezfs" and argv[0] == "pool" and argv[1:2] in (
            [], ["version"], ["-V"], ["--version"], ["-?"], ["-h"], ["--help"]))
    if name != "fusezfs" and os.path.isdir(os.environ.get("FUSEZFS_SYS_MODULE_ZFS",
                                                          "/sys/module/zfs")):
        local = True                # the refusal (cli._program) names the real command
    if not local and os.environ.get("FUSEZFS_NO_SERVICE"):
        if (prefix + argv)[0] in ("mount", "unmount", "umount") or listening():
            return forward(prefix + argv, ephemeral=True)
        local = True
    if local:
        return in_process(argv)
    return forward(prefix + argv)


