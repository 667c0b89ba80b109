"""Who opens a pool for a command: the command itself, or the daemon that serves the pool.

Command functions (cli_pool.open_pool, cli_zfs.session, cli_cp, cli_send) ask `handle(name)`
first. In a plain `fusezfs` process nothing is provided and they open the pool files themselves.
In the daemon (control.py runs commands sent over its socket in-process) the provider answers
the served pool's one `Handle`: the command then works on the same datasets and POSIX objects
the FUSE mount shows, and must not close it (`Borrowed.close` commits the txg instead, which is
what closing means to a command: its changes are durable when it returns).

The daemon runs most commands one at a time, but `send` and `receive` run beside the others
(they wait on the client's pipes for as long as the other end of the pipe likes, and `fusezfs
send tank@s | fusezfs receive tank/copy` has both ends in the same daemon). So what the daemon
gives a command is kept per thread (`serving`), with the module-level values as the fallback
of a plain process (and of tests that set `provider` themselves).

`note_changed(dataset, path)`: a command wrote `path` inside `dataset` without going through
the mount (cp); the daemon invalidates the kernel's cache of that name. A no-op elsewhere.

`stdio()`: the command's standard streams. Binary stdin and stdout carry send streams; in the
daemon they are the client's, relayed over the control socket, and `stdin_tty`/`stdout_tty`
say whether the *client's* are terminals (send and receive refuse a terminal).

`critical(pool, fn, verb)`: run `fn` as the one step of a streaming command that the mount can
see (a received filesystem appearing, a head's contents replaced): under the pool lock, and in
the daemon also in turn with the other commands, with the mount's buffers committed before and
its views and the kernel's caches brought in line after, as for any command.
"""
from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterator, TextIO

provider: Callable[[str], object] | None = None     # pool name -> api.Handle or None
changes: list[tuple[str, bytes]] | None = None      # (dataset, path) noted while a command runs
caller: tuple[int, int] | None = None               # (uid, gid) a daemon runs a command for
busy: Callable[..., str | None] | None = None       # (dataset id, pool) -> its mountpoint if in use
release: Callable[[Any, bool, bool], None] | None = None    # (pool, export, destroy): service
workdir: str | None = None                          # the client's working directory
opened: Callable[[str], bool] | None = None         # pool name -> the service holds it open


@dataclass
class Stdio:
    """A command's standard streams (see the module comment)."""
    stdin: BinaryIO
    stdout: BinaryIO
    out: TextIO
    err: TextIO
    stdin_tty: bool
    stdout_tty: bool


@dataclass
class Context:
    """What the daemon gives one command, on the thread that runs it."""
    provider: Callable[[str], object] | None = None
    changes: list[tuple[str, bytes]] | None = field(default_factory=list)
    caller: tuple[int, int] | None = None
    busy: Callable[..., str | None] | None = None
    stdio: Stdio | None = None
    critical: Callable[[Any, Callable[[], Any], str], Any] | None = None
    leave_unmounted: Callable[[int], None] | None = None
    release: Callable[[Any, bool, bool], None] | None = None
    workdir: str | None = None
    opened: Callable[[str], bool] | None = None


_tls = threading.local()


@contextmanager
def serving(ctx: Context) -> Iterator[Context]:
    """Give the commands run on this thread `ctx` until the block ends."""
    saved = getattr(_tls, "ctx", None)
    _tls.ctx = ctx
    try:
        yield ctx
    finally:
        _tls.ctx = saved


def _get(name: str):
    ctx = getattr(_tls, "ctx", None)
    return getattr(ctx, name) if ctx is not None else globals()[name]


def busy_path(ds_id: int, pool: str | None = None) -> str | None:
    """Where a dataset (of `pool`) is mounted, if files or directories are open in it through
    the mount (only the service knows): zfs refuses to unmount it, so to destroy it, unless -f."""
    fn = _get("busy")
    return fn(ds_id, pool) if fn is not None else None


def credentials() -> tuple[int, int]:
    """Who the running command acts for: the control socket's peer in the daemon, else this
    process. A new filesystem's root directory is theirs, as `zfs create` gives it to its
    creator (so an ordinary user can write into the pool they created and mounted)."""
    who = _get("caller")
    return who if who is not None else (os.geteuid(), os.getegid())


def handle(pool_name: str):
    """The Handle of `pool_name` provided by the serving process, or None."""
    fn = _get("provider")
    return fn(pool_name) if fn is not None else None


def cwd() -> str:
    """The working directory of the command's caller (the client's, in the service; the
    service's own is /, and must never be under one of its mounts)."""
    where = _get("workdir")
    return where if where is not None else os.getcwd()


def in_service() -> bool:
    """The command runs in the service (which must never look into its own mounts)."""
    return _get("workdir") is not None


def handle_open(pool_name: str) -> bool:
    """The service holds `pool_name` open (it cannot be rewound in place then)."""
    fn = _get("opened")
    return bool(fn and fn(pool_name))


def note_changed(dataset: str, path: bytes) -> None:
    noted = _get("changes")
    if noted is not None:
        noted.append((dataset, path))


def stdio() -> Stdio:
    """The running command's standard streams (see the module comment)."""
    ctx = getattr(_tls, "ctx", None)
    if ctx is not None and ctx.stdio is not None:
        return ctx.stdio

    def tty(f) -> bool:
        try:
            return os.isatty(f.fileno())
        except (AttributeError, OSError, ValueError):
            return False
    return Stdio(getattr(sys.stdin, "buffer", sys.stdin), getattr(sys.stdout, "buffer", sys.stdout),
                 sys.stdout, sys.stderr, tty(sys.stdin), tty(sys.stdout))


def critical(pool, fn: Callable[[], Any], verb: str) -> Any:
    """Run `fn` as the visible step of a streaming command (see the module comment)."""
    ctx = getattr(_tls, "ctx", None)
    if ctx is not None and ctx.critical is not None:
        return ctx.critical(pool, fn, verb)
    with pool.lock:
        return fn()


def leave_unmounted(ds_id: int) -> None:
    """`receive -u`: the daemon must not mount this new filesystem (until the pool is mounted
    again, or `zfs mount` asks). Nothing is mounted elsewhere, so a no-op there."""
    ctx = getattr(_tls, "ctx", None)
    if ctx is not None and ctx.leave_unmounted is not None:
        ctx.leave_unmounted(ds_id)


class Borrowed:
    """The served pool as `open_pool` returns it inside the daemon: every attribute is the
    pool's, but closing commits the txg and leaves the pool open; export and destroy are
    refused here (the client unmounts the pool before it asks for them)."""

    def __init__(self, pool) -> None:
        self.__dict__["_pool"] = pool

    def __getattr__(self, name):
        return getattr(self._pool, name)

    def __setattr__(self, name, value) -> None:
        setattr(self._pool, name, value)

    @property
    def sync_hooks(self) -> list:
        # a throwaway Datasets made over the borrowed pool (pool verify's space check) must
        # not add its hook to the served pool: it would live as long as the daemon
        return list(self._pool.sync_hooks)

    def close(self, export: bool = False, destroy: bool = False) -> None:
        from fusezfs.errors import Failed
        if export or destroy:
            fn = _get("release")
            if fn is None:
                raise Failed(f"cannot {'export' if export else 'destroy'} "
                             f"'{self._pool.name}': pool is in use")
            fn(self._pool, export, destroy)     # the service unmounts it, then closes it
            return
        with self._pool.lock:
            self._pool.sync()
