"""Values the POSIX layer hands out (attributes, directory entries, statfs), its flags, and the
helpers its modules share (errors, name validation, the lock decorator)."""
from __future__ import annotations

import errno
import functools
import os
from dataclasses import dataclass
from typing import NamedTuple

from fusezfs.zpl.posix_layout import NAME_MAX, XATTR_NAME_MAX

RENAME_NOREPLACE = 1        # Linux's values (renameat2)
RENAME_EXCHANGE = 2
XATTR_CREATE = 1            # Linux's values (setxattr)
XATTR_REPLACE = 2


class _Now:
    def __repr__(self) -> str:
        return "NOW"


NOW = _Now()        # setattr(atime=NOW, mtime=NOW): the current time (UTIME_NOW)


class Attr(NamedTuple):
    """What getattr returns; field names as os.stat_result's. A named tuple rather than a
    frozen dataclass: one is built for nearly every request (lookup, getattr, create, every
    entry readdirplus lists), and a tuple is built in a quarter of the time."""

    st_ino: int
    st_mode: int
    st_nlink: int
    st_uid: int
    st_gid: int
    st_rdev: int
    st_size: int
    st_blocks: int
    st_blksize: int
    st_atime_ns: int
    st_mtime_ns: int
    st_ctime_ns: int
    st_birthtime_ns: int
    generation: int


class DirEntry(NamedTuple):
    """One entry readdir lists (a named tuple, as Attr, for the same reason)."""

    name: bytes
    ino: int
    type: int           # d_type: S_IFMT(mode) >> 12
    cookie: int         # readdir(dir, cookie) continues after this entry


@dataclass(frozen=True, slots=True)
class StatFS:
    """What statfs returns; field names as os.statvfs_result's (ZFS's zfs_statvfs rules)."""

    f_bsize: int
    f_frsize: int
    f_blocks: int
    f_bfree: int
    f_bavail: int
    f_files: int
    f_ffree: int
    f_favail: int
    f_namemax: int


@dataclass(slots=True)
class Handle:
    ino: int
    flags: int


def err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def locked(fn):
    """Run a Posix operation under the pool's lock. Between top-level operations the inode
    cache is trimmed (a read-only filesystem is never flushed, so this bounds its memory too),
    and at the end of one the inodes it dirtied are reported to the pool's dirty budget and,
    under sync=always or through an O_SYNC handle, its changes are committed to the log."""
    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        with self.lock:
            depth = self._depth
            if not depth:
                self._trim()
            self._depth = depth + 1
            try:
                out = fn(self, *args, **kwargs)
                if not depth and self._unreported:
                    self._report_dirty()
                if not depth and self._sync_now:    # sync=always, O_SYNC (posix_log.py)
                    self._commit_now()
                return out
            finally:
                self._depth = depth
    return wrapper


def as_bytes(name) -> bytes:
    """A name given as str (encoded as the OS does) or any bytes-like object, as bytes."""
    return os.fsencode(name) if isinstance(name, str) else bytes(name)


def check_name(name) -> bytes:
    """Validate one path component."""
    name = as_bytes(name)
    if not name:
        raise err(errno.ENOENT)
    if len(name) > NAME_MAX:
        raise err(errno.ENAMETOOLONG)
    if b"/" in name or b"\0" in name:
        raise err(errno.EINVAL)
    return name


def check_xname(name) -> bytes:
    name = as_bytes(name)
    if not name or len(name) > XATTR_NAME_MAX:
        raise err(errno.ERANGE)
    if b"\0" in name:
        raise err(errno.EINVAL)
    if name.startswith(b"system.posix_acl_"):
        # acltype=off, as ZFS on Linux by default: no POSIX ACLs. Storing them as plain
        # xattrs would be worse than refusing: `cp -a` sets a file's mode by writing
        # system.posix_acl_access and falls back to chmod only when told EOPNOTSUPP.
        raise err(errno.EOPNOTSUPP)
    return name


DOTS = (b".", b"..")
