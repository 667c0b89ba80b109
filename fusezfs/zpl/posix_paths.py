"""Path helpers of the POSIX layer, for tools (`fusezfs cp`, tests): paths are resolved from the
dataset's root, symlinks are followed as the kernel would (an absolute target is taken from the
dataset's root, at most 40 of them per resolution, then ELOOP). None of these count lookups.
"""
from __future__ import annotations

import errno
import os
import stat

from fusezfs.zpl.posix_layout import ROOT_INO
from fusezfs.zpl.posix_types import as_bytes, err

MAX_SYMLINKS = 40
IO_CHUNK = 1 << 20


class PathHelpers:
    """Mixin of Posix."""

    def _walk(self, path, follow: bool = True, start: int = ROOT_INO,
              budget: list | None = None) -> tuple[int, bytes, int | None]:
        """(directory, last component, its inode or None if it does not exist). Every
        component but the last must exist; the last is followed if it is a symlink and
        `follow` (a dangling one yields its target's directory and name)."""
        if budget is None:
            budget = [MAX_SYMLINKS]
        path = as_bytes(path)
        cur = ROOT_INO if path.startswith(b"/") else start
        comps = [c for c in path.split(b"/") if c]
        if not comps:
            self._dir(cur)
            return cur, b".", cur
        for i, c in enumerate(comps):
            last = i == len(comps) - 1
            ino = self._child(cur, c)
            if ino is None:
                if last:
                    return cur, c, None
                raise err(errno.ENOENT)
            node = self._inode(ino)
            if node.is_lnk and (follow or not last):
                budget[0] -= 1
                if budget[0] < 0:
                    raise err(errno.ELOOP)
                parent, name, ino = self._walk(node.target, True, cur, budget)
                if last:
                    return parent, name, ino
                if ino is None:
                    raise err(errno.ENOENT)
            if last:
                return cur, c, ino
            cur = ino
        raise AssertionError("unreachable")

    def resolve(self, path, follow: bool = True) -> int:
        """The inode a path names (ENOENT, ENOTDIR, ELOOP, ENAMETOOLONG as the kernel would)."""
        with self.lock:
            path = as_bytes(path)
            _parent, _name, ino = self._walk(path, follow)
            if ino is None:
                raise err(errno.ENOENT)
            if path.endswith(b"/") and not self._inode(ino).is_dir:
                raise err(errno.ENOTDIR)
            return ino

    def parent_of(self, path) -> tuple[int, bytes]:
        """(directory inode, last component) of a path, for creating or removing it."""
        with self.lock:
            parent, name, _ino = self._walk(path, follow=False)
            return parent, name

    def stat(self, path, follow: bool = True):
        with self.lock:
            return self._attr(self._inode(self.resolve(path, follow)))

    def open_path(self, path, flags: int = os.O_RDONLY, mode: int = 0o644, uid: int = 0,
                  gid: int = 0) -> int:
        """open(2) by path: a handle (release it). O_CREAT creates, through a dangling
        symlink too; O_EXCL, O_NOFOLLOW, O_DIRECTORY and O_TRUNC as open(2)."""
        with self.lock:
            excl = flags & os.O_CREAT and flags & os.O_EXCL
            parent, name, ino = self._walk(path, not (excl or flags & os.O_NOFOLLOW))
            if ino is None:
                if not flags & os.O_CREAT:
                    raise err(errno.ENOENT)
                fh, _attr = self.create(parent, name, mode, flags, uid, gid)
                self.forget(_attr.st_ino)
                return fh
            if excl:
                raise err(errno.EEXIST)
            return self.open(ino, flags)

    def write_file(self, path, data, mode: int = 0o644, uid: int = 0, gid: int = 0) -> int:
        """Create or truncate a file and write `data` (bytes-like); returns its inode."""
        with self.lock:
            fh = self.open_path(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode, uid, gid)
            try:
                mv = memoryview(data)
                for off in range(0, len(mv), IO_CHUNK):
                    self.write(fh, off, mv[off:off + IO_CHUNK])
                return self._handles[fh].ino
            finally:
                self.release(fh)

    def read_file(self, path) -> bytes:
        with self.lock:
            fh = self.open_path(path)
            try:
                size = self._inode(self._handles[fh].ino).size
                return self.read(fh, 0, size)
            finally:
                self.release(fh)

    def makedirs(self, path, mode: int = 0o755, uid: int = 0, gid: int = 0,
                 exist_ok: bool = True) -> int:
        """mkdir -p; returns the directory's inode."""
        with self.lock:
            path = as_bytes(path)
            cur = ROOT_INO
            comps = [c for c in path.split(b"/") if c]
            for i, c in enumerate(comps):
                parent, name, ino = self._walk(c, True, cur)
                if ino is None:
                    ino = self.mkdir(parent, name, mode, uid, gid).st_ino
                    self.forget(ino)
                elif i == len(comps) - 1 and not exist_ok:
                    raise err(errno.EEXIST)
                if not stat.S_ISDIR(self._inode(ino).mode):
                    raise err(errno.ENOTDIR if i < len(comps) - 1 else errno.EEXIST)
                cur = ino
            return cur

    def listdir(self, path="/") -> list[bytes]:
        """Names in a directory (not "." and ".."), in readdir (cookie) order."""
        with self.lock:
            ino = self.resolve(path)
            return [e.name for e in self.readdir(ino, 2)]
