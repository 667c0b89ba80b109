"""The two kinds of place `fusezfs cp` copies between, behind one interface, so that the walk in
cli_cp.py is written once for all four directions: `LocalSide` (the host's file system) and
`DatasetSide` (a path in a filesystem or snapshot of an open pool, through the POSIX layer).

Both take bytes paths and raise OSError with the errno the operation gave; the walk turns
those into cp's messages, naming the file. `stat` answers a `Meta`, the same for both, whose
`ident` tells files apart across sides (hard links, "same file", "into itself").

Contents move as extents, never as a stream of zeros: a `Reader` says where a file's data is
(SEEK_DATA/SEEK_HOLE on the host, `Posix.data_extents` in a dataset) and only those ranges are
read and written; the `Writer` sets the size at the end, so the holes between and after them
stay holes. (Copying a sparse 85 GB tree out used to write 73 GB of zeros.) A host file that
does not look sparse is read to its end of file as a stream instead, as cp does: files in /proc
or /sys report a size of 0 or 4096 whatever they hold.
"""
from __future__ import annotations

import errno
import os
import stat
from typing import Iterator, NamedTuple

CHUNK = 1 << 20                 # bytes read and written at a time
WINDOW = 1 << 30                # bytes of a dataset file whose extents are asked at once


class Meta(NamedTuple):
    """What the walk needs of a file, from either side."""

    mode: int
    size: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    rdev: int
    nlink: int
    blocks: int                 # 512-byte units allocated
    ident: tuple                # tells files apart across sides: (kind, device or fs, inode)

    @property
    def sparse(self) -> bool:
        """cp's --sparse=auto test: fewer blocks allocated than the size needs. Then runs of
        zeros inside the data become holes too (on a compressed dataset a compressible file
        passes the test; its zero records would have been holes there anyway)."""
        return stat.S_ISREG(self.mode) and self.blocks * 512 < self.size


class AttrError(Exception):
    """Setting an attribute failed: `what` ("times", "permissions", "ownership") and why."""

    def __init__(self, what: str, error: OSError) -> None:
        super().__init__(what, error)
        self.what = what
        self.error = error


def _pwrite_all(fd: int, data, offset: int) -> None:
    mv = memoryview(data)
    while mv:
        n = os.pwrite(fd, mv, offset)
        mv, offset = mv[n:], offset + n


# ---- the host -----------------------------------------------------------------------------------
class LocalReader:
    """An open host file: its data extents (SEEK_DATA/SEEK_HOLE) if it looks sparse, else all
    of it up to end of file."""

    def __init__(self, path: bytes, sparse: bool) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_NOCTTY)
        st = os.fstat(self.fd)
        self.sparse = sparse and stat.S_ISREG(st.st_mode)
        self.size = st.st_size if self.sparse else 0     # the size the copy gets at least

    def extents(self) -> Iterator[tuple[int, int | None]]:
        """(first, past-last) byte ranges holding data; None: up to end of file."""
        if not self.sparse:
            yield 0, None
            return
        off = 0
        while off < self.size:
            try:
                start = os.lseek(self.fd, off, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:          # only a hole is left
                    return
                if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                    yield off, None                 # the file system cannot tell: read it all
                    return
                raise
            end = os.lseek(self.fd, start, os.SEEK_HOLE)
            if end <= start:
                end = self.size
            yield start, end
            off = end

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def close(self) -> None:
        os.close(self.fd)


class LocalWriter:
    """A host file being written: extents land at their offsets, and `finish` sets the size,
    leaving holes (a pipe or device is written in order, the holes as zeros)."""

    def __init__(self, path: bytes, mode: int) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOCTTY, mode)
        st = os.fstat(self.fd)
        self.regular = stat.S_ISREG(st.st_mode)
        self.block = st.st_blksize or 4096
        self.pos = 0                                # where a non-regular file is written to

    def write(self, offset: int, data) -> None:
        if self.regular:
            _pwrite_all(self.fd, data, offset)
            return
        self._zeros_to(offset)
        mv = memoryview(data)
        while mv:
            mv = mv[os.write(self.fd, mv):]
        self.pos = offset + len(data)

    def _zeros_to(self, offset: int) -> None:
        while self.pos < offset:
            n = min(CHUNK, offset - self.pos)
            self.pos += os.write(self.fd, bytes(n))

    def finish(self, size: int) -> None:
        if self.regular:
            if os.fstat(self.fd).st_size < size:
                os.ftruncate(self.fd, size)
        else:
            self._zeros_to(size)

    def close(self) -> None:
        os.close(self.fd)


class LocalSide:
    """The host's file system."""

    def label(self, path: bytes) -> str:
        return os.fsdecode(path)

    def stat(self, path: bytes, follow: bool = False) -> Meta:
        st = os.stat(path) if follow else os.lstat(path)
        return Meta(st.st_mode, st.st_size, st.st_uid, st.st_gid, st.st_atime_ns,
                    st.st_mtime_ns, st.st_rdev, st.st_nlink, st.st_blocks,
                    ("host", st.st_dev, st.st_ino))

    def chain(self, path: bytes) -> set[tuple]:
        """The identities of `path` (if it exists) and of every directory above it: copying a
        directory that is one of them into `path` would never end."""
        out = set()
        p = os.path.realpath(path)
        while True:
            try:
                st = os.stat(p)
                out.add(("host", st.st_dev, st.st_ino))
            except OSError:
                pass
            if p in (b"/", b""):
                return out
            p = os.path.dirname(p)

    def listdir(self, path: bytes) -> list[bytes]:
        return sorted(os.listdir(path))

    def reader(self, path: bytes, sparse: bool) -> LocalReader:
        return LocalReader(path, sparse)

    def writer(self, path: bytes, mode: int) -> LocalWriter:
        return LocalWriter(path, mode)

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

    def symlink(self, target: bytes, path: bytes) -> None:
        os.symlink(target, path)

    def mknod(self, path: bytes, mode: int, rdev: int) -> None:
        if stat.S_ISFIFO(mode):
            os.mkfifo(path, stat.S_IMODE(mode))
        else:
            os.mknod(path, mode, rdev)

    def link(self, existing: bytes, path: bytes) -> None:
        os.link(existing, path, follow_symlinks=False)

    def unlink(self, path: bytes) -> None:
        os.unlink(path)

    def chmod(self, path: bytes, mode: int) -> None:
        os.chmod(path, stat.S_IMODE(mode))

    def set_attrs(self, path: bytes, st: Meta, owners: bool) -> None:
        """Owners (where allowed), then mode, then times, as cp -p: a chown may clear set-id
        bits, and neither touches atime or mtime. An unprivileged cp -p cannot give files away:
        the chown is skipped quietly, and the set-id bits with it."""
        mode = st.mode
        if owners:
            try:
                os.lchown(path, st.uid, st.gid)
            except PermissionError:
                mode &= ~(stat.S_ISUID | stat.S_ISGID)
            except OSError as e:
                raise AttrError("ownership", e) from None
        if not stat.S_ISLNK(st.mode):
            try:
                os.chmod(path, stat.S_IMODE(mode))
            except OSError as e:
                raise AttrError("permissions", e) from None
        try:
            os.utime(path, ns=(st.atime_ns, st.mtime_ns), follow_symlinks=False)
        except OSError as e:
            raise AttrError("times", e) from None

    def set_xattr(self, path: bytes, name: bytes, value: bytes) -> None:
        os.setxattr(path, name, value, follow_symlinks=False)


# ---- a dataset ----------------------------------------------------------------------------------
class DatasetReader:
    """An open file of a dataset: its data extents, from the POSIX layer's record keys."""

    def __init__(self, fs, path: bytes) -> None:
        self.fs = fs
        self.ino = fs.resolve(path)
        self.fh = fs.open(self.ino)
        self.size = fs.getattr(self.ino).st_size

    def extents(self) -> Iterator[tuple[int, int | None]]:
        off = 0
        while off < self.size:          # a window at a time: the pool lock is held per call
            stop = min(self.size, off + WINDOW)
            yield from self.fs.data_extents(self.ino, off, stop)
            off = stop

    def read(self, offset: int, size: int) -> bytes:
        return self.fs.read(self.fh, offset, size)

    def close(self) -> None:
        self.fs.release(self.fh)


class DatasetWriter:
    """A dataset file being written: extents at their offsets, the size set at the end (a
    record never written is a hole, whatever the compression)."""

    def __init__(self, fs, path: bytes, mode: int, uid: int, gid: int) -> None:
        self.fs = fs
        self.fh = fs.open_path(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode, uid, gid)
        self.ino = fs.resolve(path)
        self.block = fs.getattr(self.ino).st_blksize

    def write(self, offset: int, data) -> None:
        self.fs.write(self.fh, offset, data)

    def finish(self, size: int) -> None:
        if self.fs.getattr(self.ino).st_size < size:
            self.fs.setattr(self.ino, size=size)

    def close(self) -> None:
        self.fs.release(self.fh)


class DatasetSide:
    """A path inside a filesystem or snapshot of an open pool. `caller` (uid, gid) is who the
    command acts for: new files are theirs, and as cp run by them, a caller other than root
    cannot give files to others or make device nodes."""

    def __init__(self, fs, dataset: str, caller: tuple[int, int]) -> None:
        self.fs = fs
        self.dataset = dataset
        self.uid, self.gid = caller

    def label(self, path: bytes) -> str:
        return f"{self.dataset}:{os.fsdecode(path)}"

    def _ident(self, ino: int) -> tuple:
        return ("dataset", id(self.fs), ino)

    def stat(self, path: bytes, follow: bool = False) -> Meta:
        a = self.fs.stat(path, follow=follow)
        return Meta(a.st_mode, a.st_size, a.st_uid, a.st_gid, a.st_atime_ns, a.st_mtime_ns,
                    a.st_rdev, a.st_nlink, a.st_blocks, self._ident(a.st_ino))

    def chain(self, path: bytes) -> set[tuple]:
        """As LocalSide.chain: the root, and each prefix of `path` that resolves."""
        out = {self._ident(self.fs.resolve(b"/"))}
        cur = b""
        for c in [c for c in path.split(b"/") if c]:
            cur += b"/" + c
            try:
                out.add(self._ident(self.fs.resolve(cur)))
            except OSError:
                break
        return out

    def listdir(self, path: bytes) -> list[bytes]:
        return sorted(self.fs.listdir(path))

    def reader(self, path: bytes, sparse: bool) -> DatasetReader:
        return DatasetReader(self.fs, path)

    def writer(self, path: bytes, mode: int) -> DatasetWriter:
        return DatasetWriter(self.fs, path, mode, self.uid, self.gid)

    def readlink(self, path: bytes) -> bytes:
        return self.fs.readlink(self.fs.resolve(path, follow=False))

    def xattrs(self, path: bytes) -> dict[bytes, bytes]:
        ino = self.fs.resolve(path, follow=False)
        return {n: self.fs.getxattr(ino, n) for n in self.fs.listxattr(ino)}

    def mkdir(self, path: bytes, mode: int) -> None:
        parent, name = self.fs.parent_of(path)
        self.fs.forget(self.fs.mkdir(parent, name, mode, self.uid, self.gid).st_ino)

    def symlink(self, target: bytes, path: bytes) -> None:
        parent, name = self.fs.parent_of(path)
        self.fs.forget(self.fs.symlink(parent, name, target, self.uid, self.gid).st_ino)

    def mknod(self, path: bytes, mode: int, rdev: int) -> None:
        if self.uid != 0 and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)):
            raise OSError(errno.EPERM, os.strerror(errno.EPERM))
        parent, name = self.fs.parent_of(path)
        self.fs.forget(self.fs.mknod(parent, name, mode, rdev, self.uid, self.gid).st_ino)

    def link(self, existing: bytes, path: bytes) -> None:
        ino = self.fs.resolve(existing, follow=False)
        parent, name = self.fs.parent_of(path)
        self.fs.forget(self.fs.link(ino, parent, name).st_ino)

    def unlink(self, path: bytes) -> None:
        parent, name = self.fs.parent_of(path)
        self.fs.unlink(parent, name)

    def chmod(self, path: bytes, mode: int) -> None:
        self.fs.setattr(self.fs.resolve(path, follow=False), mode=stat.S_IMODE(mode))

    def set_attrs(self, path: bytes, st: Meta, owners: bool) -> None:
        """Mode, owners and times in one setattr. A caller other than root keeps only owners
        that are its own (and loses set-id bits otherwise), as chown(2) would have it."""
        mode = st.mode
        uid = gid = None
        if owners:
            if self.uid == 0 or (st.uid, st.gid) == (self.uid, self.gid):
                uid, gid = st.uid, st.gid
            else:
                mode &= ~(stat.S_ISUID | stat.S_ISGID)
        try:
            self.fs.setattr(self.fs.resolve(path, follow=False),
                            mode=None if stat.S_ISLNK(st.mode) else stat.S_IMODE(mode),
                            uid=uid, gid=gid, atime=st.atime_ns, mtime=st.mtime_ns)
        except OSError as e:
            raise AttrError("times", e) from None

    def set_xattr(self, path: bytes, name: bytes, value: bytes) -> None:
        self.fs.setxattr(self.fs.resolve(path, follow=False), name, value)
