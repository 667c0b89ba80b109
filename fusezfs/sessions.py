"""Who opens a pool for a command: the command itself, or the daemon that serves the pool.

Command functions (cli_pool.open_pool, cli_zfs.session, cli_cp) ask `handle(name)` first. In a
plain `fusezfs` process nothing is provided and they open the pool files themselves. In the
daemon (control.py runs commands sent over its socket in-process) the provider answers the
served pool's one `Handle`: the command then works on the same datasets and POSIX objects the
FUSE mount shows, and must not close it (`Borrowed.close` commits the txg instead, which is
what closing means to a command: its changes are durable when it returns).

`note_changed(dataset, path)`: a command wrote `path` inside `dataset` without going through
the mount (cp); the daemon invalidates the kernel's cache of that name. A no-op elsewhere.
"""
from __future__ import annotations

from typing import Callable

provider: Callable[[str], object] | None = None     # pool name -> api.Handle or None
changes: list[tuple[str, bytes]] | None = None      # (dataset, path) noted while a command runs
caller: tuple[int, int] | None = None               # (uid, gid) a daemon runs a command for
busy: Callable[[int], str | None] | None = None     # dataset id -> its mountpoint, if in use


def busy_path(ds_id: int) -> str | None:
    """Where a dataset is mounted, if files or directories are open in it through the mount
    (only the serving daemon knows): zfs refuses to unmount it, so to destroy it, unless -f."""
    return busy(ds_id) if busy is not None else None


def credentials() -> tuple[int, int]:
    """Who the running command acts for: the control socket's peer in the daemon, else this
    process. A new filesystem's root directory is theirs, as `zfs create` gives it to its
    creator (so an ordinary user can write into the pool they created and mounted)."""
    import os
    return caller if caller is not None else (os.geteuid(), os.getegid())


def handle(pool_name: str):
    """The Handle of `pool_name` provided by the serving process, or None."""
    return provider(pool_name) if provider is not None else None


def note_changed(dataset: str, path: bytes) -> None:
    if changes is not None:
        changes.append((dataset, path))


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
        from .cli import Failed
        if export or destroy:
            raise Failed(f"cannot {'export' if export else 'destroy'} '{self._pool.name}': "
                         "pool is served by this fusezfs daemon; unmount it first")
        with self._pool.lock:
            self._pool.sync()
