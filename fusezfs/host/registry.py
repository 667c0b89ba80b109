"""The registry of imported pools: name -> devices, like zpool.cache.

Kept as `pools.json` in the state directory: $FUSEZFS_STATE_DIR, else /var/lib/fusezfs for root,
else $XDG_STATE_HOME/fusezfs (~/.local/state/fusezfs). Rewritten atomically (write a temporary
file, fsync, rename) under an exclusive lock, so concurrent commands never see half a registry.
A pool absent from the registry is exported (or was never created here): `pool import` finds it
by reading the labels of files.
"""
from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from typing import Iterator

from fusezfs.host.paths import state_dir_path


class RegistryError(Exception):
    """The state directory or the registry cannot be used; the message says what to do."""


def state_dir() -> str:
    """The state directory, made if need be; RegistryError (one line) if it cannot be used."""
    path = state_dir_path()
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as e:
        raise RegistryError(f"cannot use the state directory '{path}': {e.strerror} (set "
                            f"FUSEZFS_STATE_DIR to a directory of your own)") from None
    return path


def _file() -> str:
    return os.path.join(state_dir(), "pools.json")


def load() -> dict[str, dict]:
    """The registry; an unreadable or corrupt one is an error, never read as empty (a command
    would then write an empty one over it and forget every pool)."""
    path = _file()
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        why = e.strerror if isinstance(e, OSError) else "not a valid registry"
        raise RegistryError(
            f"cannot read the pool registry '{path}': {why}; move it aside and run "
            f"'zpool import -d DIR -f POOL' for each pool to rebuild it") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise RegistryError(
            f"cannot read the pool registry '{path}': not a valid registry; move it aside "
            f"and run 'zpool import -d DIR -f POOL' for each pool to rebuild it")
    return data


@contextmanager
def editing() -> Iterator[dict[str, dict]]:
    """Yield the registry for changes; they are saved atomically when the block ends."""
    lock_path = os.path.join(state_dir(), "pools.lock")
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = load()
        yield data
        tmp = _file() + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, _file())


def add(name: str, guid: int, devices: list[str]) -> None:
    with editing() as reg:
        reg[name] = {"guid": guid, "devices": [os.path.abspath(d) for d in devices]}


def remove(name: str) -> None:
    with editing() as reg:
        reg.pop(name, None)
