"""Mounts as ZFS makes them, owned by the service: one `PoolMounts` per imported pool.

Theory of operation
-------------------
Each filesystem with canmount=on (or noauto, once `zfs mount` names it) and a mountpoint is
mounted at that mountpoint, as the kernel module mounts it at import. Two kinds of mount serve
them, both FUSE sessions in the service's one trio loop (fuse_sessions.Sessions):

* the pool's *tree*: the root dataset at its mountpoint, and every descendant whose mountpoint
  lies below it placed inside it (fuse_ops.Operations lays them out: a session of its own
  each as root, a covered directory for an ordinary user, who cannot stack FUSE mounts);
* *singles*: every other filesystem (a mountpoint outside the root's, or any when the root is
  not mounted) mounted alone at its mountpoint, and datasets `fusezfs mount DATASET PATH`
  mounts at a path of its own (legacy mountpoints, snapshots: read-only).

`reconcile` (after every command, and when the service starts) makes the mounts follow the
properties: it computes what should be mounted where, rebuilds the tree when the root's
mount changes, and mounts, moves or unmounts singles. A dataset unmounted by `zfs unmount`,
umount(8) or fusermount3 -u stays unmounted (the `unmounted` set) until `zfs mount` or the next
import, as in ZFS.

The service never touches a path under its own mounts: directories for mountpoints are made,
mounts are stat'ed and synced by the prober process (prober.py); mounting and unmounting below
one of our mounts goes through fusermount3/umount child processes (fuse_sessions.py); the mount
table is read from /proc/self/mountinfo.

Crash safety: a mount only routes requests; every change reaches the pool through the POSIX
layer and its txgs, so a mount made or ended at any moment loses nothing committed. The mounts
are named in STATE/mount-POOL.json; a service killed with kill -9 leaves dead FUSE mounts, which
the next service detaches (`clean_dead`) before it mounts anew.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import subprocess
import time
from typing import NamedTuple

from fusezfs.host import registry

log = logging.getLogger("fusezfs.mounts")

FSTYPE = "fuse.fusezfs"
BUSY = "pool or dataset is busy"        # zfs's words for EBUSY
SESSION_END_TIMEOUT = 5.0               # seconds for a session's loop to end after its unmount


class MountError(Exception):
    pass


# ---- the mount table ----------------------------------------------------------------------------
class Mount(NamedTuple):
    dev: str            # "MAJOR:MINOR" of its file system
    mountpoint: str
    fstype: str


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts() -> list[Mount]:
    """Every mount this process sees, in /proc/self/mountinfo's order (the later of two at
    one path is on top)."""
    out = []
    with open("/proc/self/mountinfo", errors="surrogateescape") as f:
        for line in f:
            left, sep, right = line.partition(" - ")
            head, tail = left.split(), right.split()
            if sep and len(head) >= 5 and len(tail) >= 2:
                out.append(Mount(head[2], _unescape(head[4]), tail[0]))
    return out


def mount_at(path: str) -> Mount | None:
    """The mount on top at `path`, or None."""
    path = os.path.abspath(path)
    found = None
    for m in mounts():
        if m.mountpoint == path:
            found = m
    return found


def is_mounted(path: str) -> str | None:
    """fstype of the mount at `path`, or None."""
    m = mount_at(path)
    return m.fstype if m else None


def fusezfs_mount_of(path: str) -> str | None:
    """The fusezfs mount `path` lies in (or is), or None: read from the mount table, never by
    looking at the path."""
    path = os.path.abspath(path)
    best = None
    for m in mounts():
        mp = m.mountpoint
        if path == mp or path.startswith(mp.rstrip("/") + "/"):
            if best is None or len(mp) >= len(best[0]):
                best = (mp, m.fstype)
    return best[0] if best and best[1] == FSTYPE else None


def below_fusezfs(path: str) -> bool:
    """`path`'s parent lies in a fusezfs mount: resolving it would ask that mount."""
    return fusezfs_mount_of(os.path.dirname(os.path.abspath(path)) or "/") is not None


def live_fusezfs() -> set[tuple[str, str]]:
    return {(m.mountpoint, m.dev) for m in mounts() if m.fstype == FSTYPE}


def fusermount_unmount(path: str, lazy: bool = False) -> tuple[bool, str]:
    """Unmount in a child process (fusermount3 -u, else umount): (done, error text)."""
    args = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [path]
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        args = ["umount"] + (["-l"] if lazy else []) + [path]
        r = subprocess.run(args, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return False, "the unmount did not finish"
    return r.returncode == 0, (r.stderr or r.stdout).strip()


def busy_text(msg: str) -> str:
    return BUSY if "busy" in msg.lower() else msg


# ---- mount options ------------------------------------------------------------------------------
OPTION_KEYS = {"allow_other", "entry_timeout", "attr_timeout", "negative_timeout",
               "sync_interval", "mountpoint", "writeback_cache", "fuse_tasks"}
FUSE_TASKS = 99         # pyfuse3's default


def parse_options(text_list: list[str]) -> dict[str, str]:
    """`-o a,b=c` options of `fusezfs mount POOL`: allow_other, entry_timeout=S,
    attr_timeout=S, negative_timeout=S, sync_interval=S, mountpoint=PATH (an override of the
    root's mountpoint), writeback_cache=0|1 (on by default), fuse_tasks=N (the most trio tasks
    reading each session's requests; pyfuse3's 99 by default)."""
    out: dict[str, str] = {}
    for text in text_list:
        for item in text.split(","):
            if not item:
                continue
            key, eq, value = item.partition("=")
            if key not in OPTION_KEYS:
                raise MountError(f"unknown mount option '{key}'")
            if key in ("entry_timeout", "attr_timeout", "negative_timeout", "sync_interval"):
                try:
                    if float(value) < 0:
                        raise ValueError
                except ValueError:
                    raise MountError(f"bad value for mount option '{key}': '{value}'") from None
            if key == "writeback_cache" and value not in ("0", "1", ""):
                raise MountError(f"bad value for mount option '{key}': '{value}'")
            if key == "fuse_tasks" and not (value.isdigit() and int(value) >= 1):
                raise MountError(f"bad value for mount option '{key}': '{value}'")
            out[key] = value if eq else ""
    return out


# ---- state files --------------------------------------------------------------------------------
def state_file(pool: str) -> str:
    return os.path.join(registry.state_dir(), f"mount-{pool}.json")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:        # a zombie (our own child not reaped yet) is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def clean_dead() -> None:
    """Detach the FUSE mounts a service that died (kill -9) left behind, as its state files
    name them (each by path and device: another mount made at the path since stays)."""
    d = registry.state_dir()
    live = live_fusezfs()
    for name in sorted(os.listdir(d)):
        if not (name.startswith("mount-") and name.endswith(".json")):
            continue
        path = os.path.join(d, name)
        try:
            with open(path) as f:
                data = json.load(f)
            pid = int(data.get("pid", 0))
        except (OSError, ValueError, AttributeError):
            data, pid = {}, 0
        if pid > 0 and pid != os.getpid() and pid_alive(pid):
            continue
        for m in sorted(data.get("mounts", []), key=lambda m: -len(m.get("path", ""))):
            if (m.get("path"), m.get("dev")) in live:
                log.warning("detaching the dead mount %s left by pid %d", m["path"], pid)
                fusermount_unmount(m["path"], lazy=True)
        try:
            os.unlink(path)
        except OSError:
            pass


# ---- the FUSE side of the service ---------------------------------------------------------------
def fuse_unusable() -> str | None:
    """Why this process cannot mount with FUSE, in the kernel's words; None if it can.
    FUSEZFS_NO_FUSE=1 makes a service that never mounts (as where FUSE is missing)."""
    if os.environ.get("FUSEZFS_NO_FUSE") == "1":
        return "FUSEZFS_NO_FUSE is set"
    try:
        import pyfuse3  # noqa: F401
    except Exception as e:
        return f"pyfuse3 cannot be loaded: {e}"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as e:
        return f"/dev/fuse: {e.strerror}"
    if os.geteuid() != 0 and not any(os.access(os.path.join(d, "fusermount3"), os.X_OK)
                                     for d in os.environ.get("PATH", "/usr/bin").split(":")):
        return "fusermount3 is not installed"
    return None


def prepare_mountpoint(prober, dataset: str, path: str) -> None:
    """The directory a mountpoint needs (made, as zfs mount makes it), which nothing may be
    mounted on already."""
    if is_mounted(path):
        raise MountError(f"cannot mount '{dataset}': mountpoint '{path}' is already a mount "
                         f"point")
    try:
        prober.call("prepare", path)
    except OSError as e:
        raise MountError(f"cannot mount '{path}': failed to create mountpoint: "
                         f"{e.strerror}") from None
