"""`fusezfs cp [-a] [-r] SRC... DST`: copy files and trees in and out of datasets, no FUSE needed.

Either side may be `DATASET[@SNAP]:/path` (a snapshot is read-only) or a local path, as with
`docker cp`. Semantics are cp -r's: a directory needs -r (or -a); copying onto an existing
directory puts the source inside it. -a keeps modes, owners, times, symlinks, device nodes and
xattrs. Data is streamed in 1 MiB pieces, so a file larger than memory copies fine.
"""
from __future__ import annotations

import errno
import os
import stat
import sys
from typing import Iterator

from . import registry, sessions
from .cli import Failed, Usage, error, parse
from .names import dataset_name_error

CHUNK = 1 << 20


class LocalSide:
    """The host's filesystem."""

    def label(self, path: bytes) -> str:
        return os.fsdecode(path)

    def lstat(self, path: bytes):
        st = os.lstat(path)
        return (st.st_mode, st.st_size, st.st_uid, st.st_gid, st.st_atime_ns, st.st_mtime_ns,
                st.st_rdev)

    def listdir(self, path: bytes) -> list[bytes]:
        return sorted(os.listdir(path))

    def read(self, path: bytes) -> Iterator[bytes]:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk

    def readlink(self, path: bytes) -> bytes:
        return os.readlink(path)

    def xattrs(self, path: bytes) -> dict[bytes, bytes]:
        try:
            names = os.listxattr(path, follow_symlinks=False)
        except OSError:
            return {}
        out = {}
        for n in names:
            try:
                out[os.fsencode(n)] = os.getxattr(path, n, follow_symlinks=False)
            except OSError:
                pass
        return out

    def mkdir(self, path: bytes, mode: int) -> None:
        os.mkdir(path, mode)

    def write(self, path: bytes, chunks: Iterator[bytes], mode: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            for chunk in chunks:
                os.write(fd, chunk)
        finally:
            os.close(fd)

    def symlink(self, target: bytes, path: bytes) -> None:
        os.symlink(target, path)

    def mknod(self, path: bytes, mode: int, rdev: int) -> None:
        os.mknod(path, mode, rdev)

    def set_attrs(self, path: bytes, st, owners: bool) -> None:
        mode, _size, uid, gid, atime, mtime, _rdev = st
        if owners:
            try:
                os.lchown(path, uid, gid)
            except PermissionError:
                pass
        if not stat.S_ISLNK(mode):
            os.chmod(path, stat.S_IMODE(mode))
        os.utime(path, ns=(atime, mtime), follow_symlinks=False)

    def set_xattr(self, path: bytes, name: bytes, value: bytes) -> None:
        try:
            os.setxattr(path, name, value, follow_symlinks=False)
        except OSError:
            pass

    def isdir(self, path: bytes) -> bool:
        return os.path.isdir(path)

    def exists(self, path: bytes) -> bool:
        return os.path.lexists(path)


class DatasetSide:
    """A path inside a filesystem or snapshot of an open pool."""

    def __init__(self, fs, dataset: str) -> None:
        self.fs = fs
        self.dataset = dataset

    def label(self, path: bytes) -> str:
        return f"{self.dataset}:{os.fsdecode(path)}"

    def lstat(self, path: bytes):
        a = self.fs.stat(path, follow=False)
        return (a.st_mode, a.st_size, a.st_uid, a.st_gid, a.st_atime_ns, a.st_mtime_ns, a.st_rdev)

    def listdir(self, path: bytes) -> list[bytes]:
        return sorted(self.fs.listdir(path))

    def read(self, path: bytes) -> Iterator[bytes]:
        fh = self.fs.open_path(path)
        try:
            off = 0
            while chunk := self.fs.read(fh, off, CHUNK):
                yield chunk
                off += len(chunk)
        finally:
            self.fs.release(fh)

    def readlink(self, path: bytes) -> bytes:
        return self.fs.readlink(self.fs.resolve(path, follow=False))

    def xattrs(self, path: bytes) -> dict[bytes, bytes]:
        ino = self.fs.resolve(path, follow=False)
        return {n: self.fs.getxattr(ino, n) for n in self.fs.listxattr(ino)}

    def _parent(self, path: bytes) -> tuple[int, bytes]:
        return self.fs.parent_of(path)

    def mkdir(self, path: bytes, mode: int) -> None:
        parent, name = self._parent(path)
        self.fs.mkdir(parent, name, mode)

    def write(self, path: bytes, chunks: Iterator[bytes], mode: int) -> None:
        fh = self.fs.open_path(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            off = 0
            for chunk in chunks:
                self.fs.write(fh, off, chunk)
                off += len(chunk)
        finally:
            self.fs.release(fh)

    def symlink(self, target: bytes, path: bytes) -> None:
        parent, name = self._parent(path)
        self.fs.symlink(parent, name, target)

    def mknod(self, path: bytes, mode: int, rdev: int) -> None:
        parent, name = self._parent(path)
        self.fs.mknod(parent, name, mode, rdev)

    def set_attrs(self, path: bytes, st, owners: bool) -> None:
        mode, _size, uid, gid, atime, mtime, _rdev = st
        ino = self.fs.resolve(path, follow=False)
        self.fs.setattr(ino, mode=None if stat.S_ISLNK(mode) else stat.S_IMODE(mode),
                        uid=uid if owners else None, gid=gid if owners else None,
                        atime=atime, mtime=mtime)

    def set_xattr(self, path: bytes, name: bytes, value: bytes) -> None:
        self.fs.setxattr(self.fs.resolve(path, follow=False), name, value)

    def isdir(self, path: bytes) -> bool:
        try:
            return stat.S_ISDIR(self.fs.stat(path).st_mode)
        except OSError:
            return False

    def exists(self, path: bytes) -> bool:
        try:
            self.fs.stat(path, follow=False)
            return True
        except OSError:
            return False


def split_spec(spec: str) -> tuple[str | None, str]:
    """'tank/fs@s:/a/b' -> ('tank/fs@s', '/a/b'); a local path -> (None, path)."""
    head, colon, path = spec.partition(":")
    if colon and head and dataset_name_error(head, snapshot=None) is None:
        pool = head.split("/")[0].split("@")[0]
        entry = registry.load().get(pool)
        if entry is not None and entry.get("state") != "exported":
            return head, path or "/"
    return None, spec


def copy(src, spath: bytes, dst, dpath: bytes, archive: bool, recursive: bool) -> None:
    st = src.lstat(spath)
    mode = st[0]
    if stat.S_ISDIR(mode):
        if not recursive:
            raise Failed(f"cp: -r not specified; omitting directory '{src.label(spath)}'")
        if not dst.exists(dpath):
            dst.mkdir(dpath, stat.S_IMODE(mode) | 0o700)
        for name in src.listdir(spath):
            copy(src, os.path.join(spath, name), dst, os.path.join(dpath, name), archive,
                 recursive)
    elif stat.S_ISLNK(mode) and archive:
        dst.symlink(src.readlink(spath), dpath)
    elif (stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode)
          or stat.S_ISSOCK(mode)) and archive:
        dst.mknod(dpath, mode, st[6])
    else:
        dst.write(dpath, src.read(spath), stat.S_IMODE(src.lstat(spath)[0] if not stat.S_ISLNK(mode)
                                                       else 0o644))
    if archive:
        for name, value in src.xattrs(spath).items():
            dst.set_xattr(dpath, name, value)
        dst.set_attrs(dpath, st, owners=True)


def main(args: list[str]) -> int:
    try:
        return _main(args)
    except Usage as e:
        if e.message:
            error(f"cp: {e.message}")
        error("usage: fusezfs cp [-a] [-r] SOURCE... DEST\n"
              "  SOURCE and DEST: a local path or DATASET[@SNAPSHOT]:PATH")
        return 2
    except Failed as e:
        error(e.message)
        return e.code


def _main(args: list[str]) -> int:
    opts, rest = parse(args, "arRpL")
    flags = {o for o, _ in opts}
    archive = "-a" in flags
    recursive = archive or "-r" in flags or "-R" in flags
    if len(rest) < 2:
        raise Usage("missing destination file operand" if rest else "missing file operand")
    *sources, dest = rest
    specs = [split_spec(s) for s in sources + [dest]]
    pools = {ds.split("/")[0].split("@")[0] for ds, _ in specs if ds}
    handles = {}
    borrowed = set()
    from .api import Handle
    from .cli_pool import open_pool
    try:
        for pool in pools:
            provided = sessions.handle(pool)    # inside the daemon serving it (sessions.py)
            if provided is not None:
                borrowed.add(pool)
            handles[pool] = provided or Handle(open_pool(pool))

        def side(ds: str | None):
            if ds is None:
                return LocalSide()
            h = handles[ds.split("/")[0].split("@")[0]]
            try:
                with h.pool.lock:
                    return DatasetSide(h.filesystem(ds), ds)
            except Exception:
                raise Failed(f"cannot open '{ds}': dataset does not exist") from None

        dds, dpath_s = specs[-1]
        dst = side(dds)
        dpath = os.fsencode(dpath_s)
        into = dst.isdir(dpath)
        if len(sources) > 1 and not into:
            raise Failed(f"cp: target '{dst.label(dpath)}' is not a directory")
        status = 0
        for (sds, spath_s) in specs[:-1]:
            src = side(sds)
            spath = os.fsencode(spath_s)
            target = os.path.join(dpath, os.path.basename(spath.rstrip(b"/")) or b".") \
                if into else dpath
            if dds is not None:
                sessions.note_changed(dds, target)
            try:
                src.lstat(spath)
            except OSError as e:
                error(f"cp: cannot stat '{src.label(spath)}': {e.strerror}")
                status = 1
                continue
            try:
                copy(src, spath, dst, target, archive, recursive)
            except Failed as e:
                error(e.message)
                status = 1
            except OSError as e:
                what = "cannot create regular file" if e.errno in (errno.EROFS, errno.EACCES,
                                                                     errno.ENOENT) else "error copying"
                error(f"cp: {what} '{dst.label(target)}': {e.strerror or os.strerror(e.errno)}")
                status = 1
        return status
    finally:
        for pool, h in handles.items():
            if pool in borrowed:        # the daemon's: commit, leave it open
                with h.pool.lock:
                    h.pool.sync()
            else:
                h.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
