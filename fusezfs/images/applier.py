"""Applying one layer's tar to a filesystem, through the POSIX layer (no FUSE, no root).

Theory of operation
-------------------
A layer tar is a changeset over the layer below (the OCI image spec, "Applying changesets";
Docker's pkg/archive UnpackLayer is the reference implementation). The entries are applied in
tar order, onto a clone of the layer below:

- An entry `DIR/.wh.NAME` (a whiteout) deletes DIR/NAME and everything below it. Whiteouts
  apply to lower layers only, as the OCI spec says: a path this layer itself wrote stays.
- An entry `DIR/.wh..wh..opq` (opaque directory) deletes everything below DIR that this layer
  did not write, whatever the order of the entries: this layer's entries below DIR, before or
  after the marker, stay, and so do the directories that lead to them; lower content inside
  any of them goes. (Docker's applier also deletes a lower directory that leads to an entry
  of the layer when the layer has no entry for the directory itself, taking the entry with
  it; its own tars always list the directory.)
- Other `.wh..wh.*` names are aufs bookkeeping and are skipped.
- Any other entry replaces what is at its path (all of it, a directory tree too), except that a
  directory entry meeting an existing directory merges into it: its owner, mode, xattrs and
  times become the entry's and its contents stay. The entry describes the directory wholly, so
  xattrs the directory had and the entry lacks are removed (Docker leaves them; a layer made
  by `image export` must give back exactly the tree it was made from).
- Missing parent directories are made (mode 0755, root's), as Docker makes them.
- Hard links (`LNKTYPE`) link to the path named, which may be in this layer or below; the
  target is not followed if it is a symlink (link(2) without AT_SYMLINK_FOLLOW).
- Parent components that are symlinks are followed, inside the layer's root only: an
  absolute target starts at the root (the POSIX layer resolves paths that way), so no entry
  can write outside the filesystem it is applied to.

Times: files, links and devices get the entry's times when they are made. Directories get
theirs at the end of the layer (adding entries below changes them). A directory whose contents
changed but which has no entry in this layer keeps the times it had (Docker's applier leaves
the time of the change there): so applying a layer is a function of the layer's bytes and the
tree below, never of the moment it ran, and the same layer gives the same tree every time; a
directory made only as a missing parent gets the time of the entry that needed it.

Change times are the filesystem's own (the time of the import), as on any filesystem; atimes
are set (Docker's rule: the entry's atime, or its mtime if older or absent) but mean little.
Sockets cannot be in a tar; anything else a tar can hold that a filesystem cannot be
(volume labels, multi-volume continuations) fails the layer.
"""
from __future__ import annotations

import errno
import os
import stat
import tarfile
from dataclasses import dataclass

from fusezfs.zpl.posix import ROOT_INO, Posix
from fusezfs.images.layertar import (
    WH_META,
    WH_OPAQUE,
    WH_PREFIX,
    LayerError,
    atime_ns,
    mtime_ns,
    normalize,
    split,
    xattrs,
)

CHUNK = 1 << 20


@dataclass
class ApplyStats:
    """What one layer did (for progress and tests)."""
    entries: int = 0
    whiteouts: int = 0
    data_bytes: int = 0


class Applier:
    """Applies one layer tar to `fs` (a writable Posix view); `apply` then `fs` is flushed by
    the caller (a snapshot does it)."""

    def __init__(self, fs: Posix, progress=None) -> None:
        self.fs = fs
        self.progress = progress            # called with the bytes of file data written so far
        self.unpacked: set[bytes] = set()   # paths this layer wrote
        self.dir_times: dict[int, tuple[int, int]] = {}     # directory entries' times
        self.kept_times: dict[int, tuple[int, int]] = {}    # dirs changed without an entry
        self.opaque: list[bytes] = []
        self._holding: set[bytes] | None = None
        self.stats = ApplyStats()

    # ---- the walk over entries ----------------------------------------------------------------
    def apply(self, tar: tarfile.TarFile) -> ApplyStats:
        for ti in tar:
            path = normalize(ti.name)
            self.stats.entries += 1
            top = path.split(b"/", 1)[0]
            if top.startswith(WH_META) and top != WH_OPAQUE:
                continue                    # aufs's own directories (.wh..wh.plnk ...)
            parent_path, base = split(path)
            if base.startswith(WH_PREFIX):
                self.stats.whiteouts += 1
                if base == WH_OPAQUE:
                    self._dir_at(parent_path, mtime_ns(ti))
                    self.opaque.append(parent_path)
                elif not base.startswith(WH_META):
                    self._whiteout(parent_path, base[len(WH_PREFIX):])
                continue
            try:
                self._entry(tar, ti, path)
            except OSError as e:
                raise LayerError(f"layer entry {ti.name!r}: {e.strerror or e}") from None
        for d in self.opaque:
            self._clear_opaque(d)
        self._set_dir_times()
        return self.stats

    def _entry(self, tar: tarfile.TarFile, ti: tarfile.TarInfo, path: bytes) -> None:
        fs = self.fs
        self.unpacked.add(path)
        if path == b"":                     # the root itself: always a merge
            if not ti.isdir():
                raise LayerError("layer entry for the root is not a directory")
            self._merge_dir(ROOT_INO, ti)
            return
        parent_path, name = split(path)
        parent = self._dir_at(parent_path, mtime_ns(ti))
        old = self._lookup(parent, name)
        if old is not None:
            if ti.isdir() and stat.S_ISDIR(old.st_mode):
                self._merge_dir(old.st_ino, ti)
                return
            self._touch(parent)
            self._remove(parent, name, old)
        self._touch(parent)
        uid, gid, mode = ti.uid, ti.gid, ti.mode & 0o7777
        if ti.isdir():
            ino = fs.mkdir(parent, name, mode, uid, gid).st_ino
            self._meta(ino, ti, times=False)
            self.dir_times[ino] = (atime_ns(ti), mtime_ns(ti))
            return
        if ti.islnk():
            target = normalize(ti.linkname)
            try:
                tino = fs.resolve(b"/" + target, follow=False)
            except OSError:
                raise LayerError(f"hard link {path!r} -> {target!r}: no such file") from None
            fs.link(tino, parent, name)
            return
        if ti.issym():
            ino = fs.symlink(parent, name, os.fsencode(ti.linkname), uid, gid).st_ino
        elif ti.isreg():
            ino = self._write_file(tar, ti, parent, name)
        elif ti.ischr() or ti.isblk() or ti.isfifo():
            fmt = stat.S_IFCHR if ti.ischr() else stat.S_IFBLK if ti.isblk() else stat.S_IFIFO
            rdev = os.makedev(ti.devmajor, ti.devminor) if fmt != stat.S_IFIFO else 0
            ino = fs.mknod(parent, name, fmt | mode, rdev, uid, gid).st_ino
        else:
            raise LayerError(f"layer entry {path!r} has a type a filesystem cannot hold "
                             f"({ti.type!r})")
        self._meta(ino, ti, times=True)

    def _write_file(self, tar: tarfile.TarFile, ti: tarfile.TarInfo, parent: int,
                    name: bytes) -> int:
        fs = self.fs
        fh, attr = fs.create(parent, name, ti.mode & 0o7777, os.O_WRONLY, ti.uid, ti.gid)
        try:
            src = tar.extractfile(ti)
            off = 0
            if src is not None:
                while True:
                    chunk = src.read(CHUNK)
                    if not chunk:
                        break
                    fs.write(fh, off, chunk)
                    off += len(chunk)
                    self.stats.data_bytes += len(chunk)
                    if self.progress is not None:
                        self.progress(len(chunk))
            if off != ti.size:
                raise LayerError(f"layer entry {ti.name!r} is truncated")
        finally:
            fs.release(fh)
        return attr.st_ino

    def _meta(self, ino: int, ti: tarfile.TarInfo, *, times: bool) -> None:
        """Owner, xattrs, mode, then times (Docker's order)."""
        fs = self.fs
        want = xattrs(ti)
        for name in fs.listxattr(ino):
            if name not in want:
                fs.removexattr(ino, name)
        for name, value in want.items():
            fs.setxattr(ino, name, value)
        mode = None if ti.issym() else ti.mode & 0o7777
        if times:
            fs.setattr(ino, uid=ti.uid, gid=ti.gid, mode=mode, atime=atime_ns(ti),
                       mtime=mtime_ns(ti))
        else:
            fs.setattr(ino, uid=ti.uid, gid=ti.gid, mode=mode)

    def _merge_dir(self, ino: int, ti: tarfile.TarInfo) -> None:
        self._meta(ino, ti, times=False)
        self.dir_times[ino] = (atime_ns(ti), mtime_ns(ti))

    # ---- whiteouts ------------------------------------------------------------------------
    def _whiteout(self, parent_path: bytes, name: bytes) -> None:
        path = parent_path + b"/" + name if parent_path else name
        if path in self.unpacked:
            return                          # this layer's own: whiteouts hide lower layers only
        try:
            parent = self.fs.resolve(b"/" + parent_path)
        except OSError:
            return                          # nothing there to hide
        old = self._lookup(parent, name)
        if old is not None:
            self._touch(parent)
            self._remove(parent, name, old)

    def _clear_opaque(self, dir_path: bytes) -> None:
        try:
            ino = self.fs.resolve(b"/" + dir_path)
        except OSError:
            return
        self._clear_below(ino, dir_path)

    def _clear_below(self, ino: int, dir_path: bytes) -> None:
        fs = self.fs
        if self._holding is None:           # directories holding a path this layer wrote
            self._holding = {p[:i] for p in self.unpacked
                             for i in range(len(p)) if p[i:i + 1] == b"/"}
        for e in fs.readdir(ino, 2):
            path = dir_path + b"/" + e.name if dir_path else e.name
            if path in self.unpacked or path in self._holding:
                if e.type == stat.S_IFDIR >> 12:
                    self._clear_below(e.ino, path)
                continue
            self._touch(ino)
            self._remove(ino, e.name, fs.getattr(e.ino))

    # ---- helpers ------------------------------------------------------------------------------
    def _lookup(self, parent: int, name: bytes):
        try:
            return self.fs.lookup(parent, name)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return None
            raise

    def _dir_at(self, path: bytes, mtime: int) -> int:
        """The directory at `path` (symlinks followed inside the root), made if missing."""
        fs = self.fs
        try:
            return fs.resolve(b"/" + path + b"/") if path else ROOT_INO
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise LayerError(f"layer path {path!r}: {e.strerror}") from None
        parent_path, name = split(path)
        parent = self._dir_at(parent_path, mtime)
        self._touch(parent)
        ino = fs.mkdir(parent, name, 0o755, 0, 0).st_ino
        self.kept_times[ino] = (mtime, mtime)
        return ino

    def _touch(self, dir_ino: int) -> None:
        """`dir_ino`'s contents are about to change: remember its times, to give them back
        at the end if no entry of this layer sets them."""
        if dir_ino not in self.kept_times:
            a = self.fs.getattr(dir_ino)
            self.kept_times[dir_ino] = (a.st_atime_ns, a.st_mtime_ns)

    def _remove(self, parent: int, name: bytes, attr) -> None:
        """rm -rf parent/name."""
        fs = self.fs
        if stat.S_ISDIR(attr.st_mode):
            for e in fs.readdir(attr.st_ino, 2):
                self._remove(attr.st_ino, e.name, fs.getattr(e.ino))
            fs.rmdir(parent, name)
        else:
            fs.unlink(parent, name)

    def _set_dir_times(self) -> None:
        fs = self.fs
        for ino, (a, m) in {**self.kept_times, **self.dir_times}.items():
            try:
                fs.setattr(ino, atime=a, mtime=m)
            except OSError as e:
                if e.errno != errno.ENOENT:     # removed later in the same layer
                    raise
