"""The POSIX layer (ZFS's ZPL): files and directories on one dataset's object tree.

Theory of operation
-------------------
`Posix` is a library filesystem shaped like a low-level FUSE filesystem: operations take inode
numbers (lookup, getattr, setattr, mknod, mkdir, symlink, link, unlink, rmdir, rename, open,
read, write, release, readdir, xattrs, statfs, forget), and a few path helpers serve tools
(`resolve`, `read_file`, `write_file`, `makedirs`, ...). The FUSE mount is a thin adapter over
it; the command line (`fusezfs cp`) uses the path helpers. Errors are OSError with the errno a
Linux filesystem would give. Permissions are not checked here: a FUSE mount uses the kernel's
`default_permissions`, and library callers are trusted tools.

Everything a filesystem is lives in the dataset's object tree as items (layout, bit-exact, in
posix_layout.py) and in data blocks those items own. Nothing else is persistent: the in-memory
state of a Posix object is a cache of inode records, the dirty file records of posix_data.py,
and the open handles. `flush()` pushes the cached changes into the tree (inode records, then
file records written as blocks); the dataset layer calls it from the pool's sync hook, so every
txg commits a state in which the tree alone describes the filesystem. The pool commits the
tree and the blocks atomically (a txg is all or nothing, DESIGN.md), so after a crash the
filesystem is exactly what it was at the last committed txg: each POSIX operation is a set of
tree changes made under one lock, and a txg never contains half of one, because the sync hook
runs under the same lock (the pool's) as every operation here.

Files unlinked while still open (or still known to the kernel through a FUSE lookup count)
stay until their last reference goes, and are recorded in the tree's unlinked set meanwhile;
opening the filesystem read-write destroys whatever that set holds, so a process that dies
holding such files leaks nothing (ZFS's unlinked set / delete queue).

What the dataset layer provides is the `ObjsetIO` protocol below. Use:

    fs = Posix(io)                          # formats an empty tree (root directory = inode 1)
    pool.sync_hooks.append(lambda pool: fs.flush())
    fs.write_file("/etc/motd", b"hello\\n")
    fh = fs.open(fs.resolve("/etc/motd")); fs.read(fh, 0, 100); fs.release(fh)
"""
from __future__ import annotations

import errno
import functools
import os
import stat
import threading
from dataclasses import dataclass
from typing import Protocol

from .formats.bp import BlockPointer, decode_bp, encode_bp
from .posix_data import FileData
from .posix_layout import (CD_BITS, CD_MAX, COOKIE_DOT, COOKIE_DOTDOT, K_DIRENT, K_XATTR,
                           LINK_MAX, MAX_FILE_SIZE, NAME_MAX, PATH_MAX, ROOT_INO, SUPER_KEY,
                           UNLINKED_HI, UNLINKED_LO, XATTR_INLINE_MAX, XATTR_NAME_MAX,
                           XATTR_SIZE_MAX, Inode, Superblock, cookie_of, decode_dirent,
                           dirent_key, dtype, encode_dirent, ino_prefix, inode_key, kind_hi,
                           kind_lo, name_hash, unlinked_key, xattr_key)
from .posix_paths import PathHelpers
from .tree import REF_BLOCK, Tree

__all__ = ["ObjsetIO", "Posix", "Attr", "DirEntry", "StatFS", "NOW", "ROOT_INO",
           "RENAME_NOREPLACE", "RENAME_EXCHANGE", "XATTR_CREATE", "XATTR_REPLACE",
           "MAX_FILE_SIZE"]

RENAME_NOREPLACE = 1        # Linux's values (renameat2)
RENAME_EXCHANGE = 2
XATTR_CREATE = 1
XATTR_REPLACE = 2
INODE_COST = 512            # space asked of check_space for a new inode
INODE_CACHE = 8192          # clean, unreferenced inode records kept after a flush
DAY_NS = 86400 * 10**9


class ObjsetIO(Protocol):
    """What the POSIX layer needs from the dataset layer (one dataset, head or snapshot)."""

    tree: Tree              # the dataset's object tree
    readonly: bool          # every change raises EROFS (snapshots, readonly=on)
    recordsize: int         # record size given to files created from now on
    compress: bool          # compression is not off: all-zero records are stored as holes
    atime: bool             # update atime on read and readdir (with Linux's relatime rules)
    lock: threading.RLock   # the pool's lock: sync hooks run under it, so do all operations
    txg: int                # the open txg (a new inode's generation number)

    def write_blocks(self, datas: list) -> list[BlockPointer]:
        """Write data blocks (compression, checksum, copies, dedup per the dataset's properties)
        and account their space to the dataset. Called from flush() with records whose space
        check_space already admitted: it should not fail for quota reasons then."""

    def read_block(self, bp: BlockPointer) -> bytes:
        """A block's logical bytes, verified (OSError EIO on a checksum error)."""

    def check_space(self, nbytes: int) -> None:
        """Raise OSError(EDQUOT) or OSError(ENOSPC) if `nbytes` more cannot be stored."""

    def note_written(self, nbytes: int) -> None:
        """Report dirty data buffered in the open txg (may sync the pool, which flushes us)."""

    def now_ns(self) -> int:
        """The time for timestamps, nanoseconds since the epoch."""

    def space(self) -> tuple[int, int]:
        """(bytes referenced by the dataset, bytes still available to it) for statfs."""

    def sync(self) -> None:
        """Commit the open txg durably (fsync)."""


class _Now:
    def __repr__(self) -> str:
        return "NOW"


NOW = _Now()        # setattr(atime=NOW, mtime=NOW): the current time (UTIME_NOW)


@dataclass(frozen=True, slots=True)
class Attr:
    """What getattr returns; field names as os.stat_result's."""

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


@dataclass(frozen=True, slots=True)
class DirEntry:
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
class _Handle:
    ino: int
    flags: int


def _err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def _locked(fn):
    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        with self.lock:
            return fn(self, *args, **kwargs)
    return wrapper


def _name(name) -> bytes:
    """Validate one path component."""
    if isinstance(name, str):
        name = os.fsencode(name)
    else:
        name = bytes(name)
    if not name:
        raise _err(errno.ENOENT)
    if len(name) > NAME_MAX:
        raise _err(errno.ENAMETOOLONG)
    if b"/" in name or b"\0" in name:
        raise _err(errno.EINVAL)
    return name


def _xname(name) -> bytes:
    if isinstance(name, str):
        name = os.fsencode(name)
    else:
        name = bytes(name)
    if not name or len(name) > XATTR_NAME_MAX:
        raise _err(errno.ERANGE)
    if b"\0" in name:
        raise _err(errno.EINVAL)
    return name


_DOTS = (b".", b"..")


class Posix(FileData, PathHelpers):
    """A POSIX filesystem over one dataset's object tree (see the module comment)."""

    def __init__(self, io: ObjsetIO, *, track_lookups: bool = False, root_mode: int = 0o755,
                 root_uid: int = 0, root_gid: int = 0) -> None:
        """`track_lookups`: count lookups as FUSE's kernel does (forget() drops them), so an
        unlinked inode the kernel still knows stays readable; off for library use."""
        self.io = io
        self.tree = io.tree
        self.lock = getattr(io, "lock", None) or threading.RLock()
        self.track_lookups = track_lookups
        self._inodes: dict[int, Inode] = {}
        self._dirty: set[int] = set()
        self._records: dict[int, dict[int, bytearray]] = {}
        self._dirty_data = 0
        self._handles: dict[int, _Handle] = {}
        self._opens: dict[int, int] = {}
        self._lookups: dict[int, int] = {}
        self._next_fh = 1
        self._sb_dirty = False
        with self.lock:
            raw = self.tree.get(SUPER_KEY)
            if raw is None:
                self._format(root_mode, root_uid, root_gid)
            else:
                self.sb = Superblock.decode(raw)
            if not io.readonly:
                self._reclaim_unlinked()

    # ---- internals: inodes ---------------------------------------------------------------
    def _format(self, mode: int, uid: int, gid: int) -> None:
        now = self.io.now_ns()
        self.sb = Superblock(ROOT_INO, ROOT_INO + 1, 1)
        root = Inode(ROOT_INO, stat.S_IFDIR | (mode & 0o7777), uid, gid, 2, self.io.recordsize,
                     2, 0, self.io.txg, ROOT_INO, 0, now, now, now, now)
        self._inodes[ROOT_INO] = root
        if not self.io.readonly:        # an empty snapshot shows an empty root, writes nothing
            self.tree.put(inode_key(ROOT_INO), root.encode())
            self.tree.put(SUPER_KEY, self.sb.encode())

    def _reclaim_unlinked(self) -> None:
        for key, _v in list(self.tree.scan(UNLINKED_LO, UNLINKED_HI)):
            ino = int.from_bytes(key[9:17], "big")
            if ino in self._inodes or self.tree.get(inode_key(ino)) is not None:
                self._destroy(ino)
            else:
                self.tree.delete(key)

    def _inode(self, ino: int) -> Inode:
        node = self._inodes.get(ino)
        if node is None:
            if ino <= 0:
                raise _err(errno.ENOENT)
            raw = self.tree.get(inode_key(ino))
            if raw is None:
                raise _err(errno.ENOENT)
            node = self._inodes[ino] = Inode.decode(ino, raw)
        return node

    def _dir(self, ino: int) -> Inode:
        node = self._inode(ino)
        if not node.is_dir:
            raise _err(errno.ENOTDIR)
        return node

    def _mark(self, node: Inode) -> None:
        self._dirty.add(node.ino)

    def _writable(self) -> None:
        if self.io.readonly:
            raise _err(errno.EROFS)

    def _referenced(self, ino: int) -> bool:
        return self._opens.get(ino, 0) > 0 or self._lookups.get(ino, 0) > 0

    def _ref(self, ino: int) -> None:
        if self.track_lookups:
            self._lookups[ino] = self._lookups.get(ino, 0) + 1

    def _attr(self, node: Inode) -> Attr:
        used = node.used + self._pending_bytes(node.ino) if node.is_reg else node.used
        return Attr(node.ino, node.mode, node.nlink, node.uid, node.gid, node.rdev, node.size,
                    -(-used // 512), node.blksz, node.atime, node.mtime, node.ctime,
                    node.crtime, node.gen)

    def _new_inode(self, parent: Inode, mode: int, uid: int, gid: int, rdev: int = 0,
                   target: bytes = b"") -> Inode:
        self.io.check_space(self._dirty_data + INODE_COST)
        if parent.mode & stat.S_ISGID:
            gid = parent.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        ino = self.sb.next_ino
        self.sb.next_ino += 1
        self.sb.objects += 1
        self._sb_dirty = True
        now = self.io.now_ns()
        is_dir = stat.S_ISDIR(mode)
        node = Inode(ino, mode, uid, gid, 2 if is_dir else 1, self.io.recordsize,
                     2 if is_dir else len(target), rdev, self.io.txg, parent.ino, 0,
                     now, now, now, now, target)
        self._inodes[ino] = node
        self._mark(node)
        return node

    def _destroy(self, ino: int) -> None:
        self._drop_data(ino)
        self._inodes.pop(ino, None)
        self._dirty.discard(ino)
        self._opens.pop(ino, None)
        self._lookups.pop(ino, None)
        self.tree.delete_range(ino_prefix(ino), ino_prefix(ino + 1))
        self.tree.delete(unlinked_key(ino))
        self.sb.objects -= 1
        self._sb_dirty = True

    def _maybe_reclaim(self, ino: int) -> None:
        if self._referenced(ino) or self.io.readonly:
            return
        node = self._inodes.get(ino)
        if node is None:
            raw = self.tree.get(inode_key(ino))
            if raw is None:
                return
            node = Inode.decode(ino, raw)
        if node.nlink == 0:
            self._destroy(ino)

    def _drop_link(self, node: Inode, now: int) -> None:
        """One name of `node` is gone (a directory loses its only one, and its ".")."""
        node.nlink = 0 if node.is_dir else node.nlink - 1
        node.ctime = now
        self._mark(node)
        if node.nlink == 0:
            if self._referenced(node.ino):
                self.tree.put(unlinked_key(node.ino), b"")
            else:
                self._destroy(node.ino)

    def _relatime(self, node: Inode) -> None:
        if not getattr(self.io, "atime", False) or self.io.readonly:
            return
        a = node.atime
        now = self.io.now_ns()
        if a <= node.mtime or a <= node.ctime or now - a >= DAY_NS:
            node.atime = now
            self._mark(node)

    # ---- internals: directories ----------------------------------------------------------
    def _dir_find(self, dir_ino: int, name: bytes) -> tuple[int, int, int] | None:
        """(cookie, ino, d_type) of `name` in a directory, or None."""
        h = name_hash(name) << CD_BITS
        for k, v in self.tree.scan(dirent_key(dir_ino, h), dirent_key(dir_ino, h + CD_MAX + 1)):
            ino, dt, n = decode_dirent(v)
            if n == name:
                return cookie_of(k), ino, dt
        return None

    def _child(self, dir_ino: int, name: bytes) -> int | None:
        """Inode of `name` in a directory ("." and ".." included), or None."""
        node = self._dir(dir_ino)
        if name == b".":
            return dir_ino
        if name == b"..":
            return node.parent
        e = self._dir_find(dir_ino, _name(name))
        return None if e is None else e[1]

    def _dir_add(self, d: Inode, name: bytes, child: Inode, now: int) -> None:
        h = name_hash(name) << CD_BITS
        used = {cookie_of(k) for k, _v in
                self.tree.scan(dirent_key(d.ino, h), dirent_key(d.ino, h + CD_MAX + 1))}
        cookie = h
        while cookie in used:
            cookie += 1
        if cookie > h + CD_MAX:
            raise _err(errno.ENOSPC)
        self.tree.put(dirent_key(d.ino, cookie), encode_dirent(child.ino, dtype(child.mode), name))
        d.size += 1
        if child.is_dir:
            d.nlink += 1
        d.mtime = d.ctime = now
        self._mark(d)

    def _dir_remove(self, d: Inode, cookie: int, is_dir: bool, now: int) -> None:
        self.tree.delete(dirent_key(d.ino, cookie))
        d.size -= 1
        if is_dir:
            d.nlink -= 1
        d.mtime = d.ctime = now
        self._mark(d)

    def _create_dir(self, parent: int) -> Inode:
        """A directory where a new name may go (not itself removed)."""
        d = self._dir(parent)
        if d.nlink == 0:
            raise _err(errno.ENOENT)
        return d

    def _new_name(self, d: Inode, name) -> bytes:
        name = _name(name)
        if name in _DOTS or self._dir_find(d.ino, name) is not None:
            raise _err(errno.EEXIST)
        return name

    def _check_not_ancestor(self, anc: int, ino: int) -> None:
        """EINVAL if directory `anc` is `ino` or one of its ancestors (a rename into itself)."""
        cur = ino
        for _ in range(1 << 20):
            if cur == anc:
                raise _err(errno.EINVAL)
            if cur == ROOT_INO:
                return
            cur = self._inode(cur).parent

    # ---- attributes ----------------------------------------------------------------------
    @_locked
    def getattr(self, ino: int) -> Attr:
        return self._attr(self._inode(ino))

    @_locked
    def setattr(self, ino: int, *, mode: int | None = None, uid: int | None = None,
                gid: int | None = None, size: int | None = None, atime=None, mtime=None,
                ctime=None) -> Attr:
        """Change attributes; times are ns since the epoch or NOW. Truncates when `size`."""
        self._writable()
        node = self._inode(ino)
        now = self.io.now_ns()
        grown = 0
        if size is not None:
            if node.is_dir:
                raise _err(errno.EISDIR)
            if not node.is_reg or size < 0:
                raise _err(errno.EINVAL)
            if size > MAX_FILE_SIZE:
                raise _err(errno.EFBIG)
            grown = self._truncate(node, size)
            node.mtime = now
        if mode is not None:
            node.mode = stat.S_IFMT(node.mode) | (mode & 0o7777)
        if uid is not None:
            node.uid = uid
        if gid is not None:
            node.gid = gid
        if atime is not None:
            node.atime = now if atime is NOW else int(atime)
        if mtime is not None:
            node.mtime = now if mtime is NOW else int(mtime)
        node.ctime = int(ctime) if ctime is not None and ctime is not NOW else now
        self._mark(node)
        attr = self._attr(node)
        if grown:
            self.io.note_written(grown)
        return attr

    @_locked
    def readlink(self, ino: int) -> bytes:
        node = self._inode(ino)
        if not node.is_lnk:
            raise _err(errno.EINVAL)
        return node.target

    # ---- names ---------------------------------------------------------------------------
    @_locked
    def lookup(self, parent: int, name) -> Attr:
        """The inode `name` names in directory `parent` (counts a lookup, see forget)."""
        name = os.fsencode(name) if isinstance(name, str) else bytes(name)
        ino = self._child(parent, name)
        if ino is None:
            raise _err(errno.ENOENT)
        node = self._inode(ino)
        self._ref(ino)
        return self._attr(node)

    @_locked
    def mknod(self, parent: int, name, mode: int, rdev: int = 0, uid: int = 0,
              gid: int = 0) -> Attr:
        """A regular file, device node, fifo or socket (S_IFMT of mode; 0 = regular)."""
        self._writable()
        d = self._create_dir(parent)
        name = self._new_name(d, name)
        fmt = stat.S_IFMT(mode) or stat.S_IFREG
        if fmt not in (stat.S_IFREG, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
            raise _err(errno.EINVAL)
        node = self._new_inode(d, fmt | (mode & 0o7777), uid, gid,
                               rdev if fmt in (stat.S_IFCHR, stat.S_IFBLK) else 0)
        self._dir_add(d, name, node, node.ctime)
        self._ref(node.ino)
        return self._attr(node)

    @_locked
    def mkdir(self, parent: int, name, mode: int = 0o755, uid: int = 0, gid: int = 0) -> Attr:
        self._writable()
        d = self._create_dir(parent)
        name = self._new_name(d, name)
        node = self._new_inode(d, stat.S_IFDIR | (mode & 0o7777), uid, gid)
        self._dir_add(d, name, node, node.ctime)
        self._ref(node.ino)
        return self._attr(node)

    @_locked
    def symlink(self, parent: int, name, target, uid: int = 0, gid: int = 0) -> Attr:
        self._writable()
        target = os.fsencode(target) if isinstance(target, str) else bytes(target)
        if not target:
            raise _err(errno.ENOENT)
        if len(target) >= PATH_MAX or b"\0" in target:
            raise _err(errno.ENAMETOOLONG if len(target) >= PATH_MAX else errno.EINVAL)
        d = self._create_dir(parent)
        name = self._new_name(d, name)
        node = self._new_inode(d, stat.S_IFLNK | 0o777, uid, gid, 0, target)
        self._dir_add(d, name, node, node.ctime)
        self._ref(node.ino)
        return self._attr(node)

    @_locked
    def link(self, ino: int, new_parent: int, new_name) -> Attr:
        self._writable()
        node = self._inode(ino)
        d = self._create_dir(new_parent)
        name = self._new_name(d, new_name)
        if node.is_dir:
            raise _err(errno.EPERM)
        if node.nlink == 0:
            raise _err(errno.ENOENT)
        if node.nlink >= LINK_MAX:
            raise _err(errno.EMLINK)
        self.io.check_space(self._dirty_data + INODE_COST)
        now = self.io.now_ns()
        node.nlink += 1
        node.ctime = now
        self._mark(node)
        self._dir_add(d, name, node, now)
        self._ref(ino)
        return self._attr(node)

    @_locked
    def unlink(self, parent: int, name) -> None:
        self._writable()
        d = self._dir(parent)
        name = _name(name)
        if name in _DOTS:
            raise _err(errno.EISDIR)
        e = self._dir_find(d.ino, name)
        if e is None:
            raise _err(errno.ENOENT)
        node = self._inode(e[1])
        if node.is_dir:
            raise _err(errno.EISDIR)
        now = self.io.now_ns()
        self._dir_remove(d, e[0], False, now)
        self._drop_link(node, now)

    @_locked
    def rmdir(self, parent: int, name) -> None:
        self._writable()
        d = self._dir(parent)
        name = _name(name)
        if name == b".":
            raise _err(errno.EINVAL)
        if name == b"..":
            raise _err(errno.ENOTEMPTY)
        e = self._dir_find(d.ino, name)
        if e is None:
            raise _err(errno.ENOENT)
        node = self._inode(e[1])
        if not node.is_dir:
            raise _err(errno.ENOTDIR)
        if node.size > 2:
            raise _err(errno.ENOTEMPTY)
        now = self.io.now_ns()
        self._dir_remove(d, e[0], True, now)
        self._drop_link(node, now)

    @_locked
    def rename(self, old_parent: int, old_name, new_parent: int, new_name,
               flags: int = 0) -> None:
        """rename(2), with renameat2's RENAME_NOREPLACE and RENAME_EXCHANGE flags."""
        self._writable()
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or \
                flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
            raise _err(errno.EINVAL)
        od = self._dir(old_parent)
        nd = self._dir(new_parent)
        old_name = _name(old_name)
        new_name = _name(new_name)
        if old_name in _DOTS or new_name in _DOTS:
            raise _err(errno.EBUSY)
        src = self._dir_find(od.ino, old_name)
        if src is None:
            raise _err(errno.ENOENT)
        snode = self._inode(src[1])
        exchange = bool(flags & RENAME_EXCHANGE)
        # the checks in the order Linux makes them (do_renameat2, then vfs_rename)
        if snode.is_dir and od.ino != nd.ino:
            self._check_not_ancestor(snode.ino, nd.ino)     # source contains the target dir
        dst = self._dir_find(nd.ino, new_name)
        if dst is None:
            if exchange:
                raise _err(errno.ENOENT)
        elif flags & RENAME_NOREPLACE:
            raise _err(errno.EEXIST)
        dnode = None if dst is None else self._inode(dst[1])
        if dnode is not None and dnode.is_dir and od.ino != nd.ino:
            try:
                self._check_not_ancestor(dnode.ino, od.ino)  # target contains the source
            except OSError:
                raise _err(errno.EINVAL if exchange else errno.ENOTEMPTY) from None
        now = self.io.now_ns()
        if exchange:
            self._exchange(od, old_name, src, snode, nd, new_name, dst, dnode, now)
            return
        if dnode is not None:
            if dst[1] == src[1]:
                return                  # two names of one file: POSIX says do nothing
            if snode.is_dir:
                if not dnode.is_dir:
                    raise _err(errno.ENOTDIR)
                if dnode.size > 2:
                    raise _err(errno.ENOTEMPTY)
            elif dnode.is_dir:
                raise _err(errno.EISDIR)
        if nd.nlink == 0:
            raise _err(errno.ENOENT)
        if dnode is not None:
            self._dir_remove(nd, dst[0], dnode.is_dir, now)
            self._drop_link(dnode, now)
        self._dir_remove(od, src[0], snode.is_dir, now)
        self._dir_add(nd, new_name, snode, now)
        snode.parent = nd.ino
        snode.ctime = now
        self._mark(snode)

    def _exchange(self, od: Inode, old_name: bytes, src: tuple, snode: Inode, nd: Inode,
                  new_name: bytes, dst: tuple, dnode: Inode, now: int) -> None:
        if src[1] == dst[1]:
            return
        self.tree.put(dirent_key(od.ino, src[0]), encode_dirent(dnode.ino, dst[2], old_name))
        self.tree.put(dirent_key(nd.ino, dst[0]), encode_dirent(snode.ino, src[2], new_name))
        if od.ino != nd.ino:
            moved = int(snode.is_dir) - int(dnode.is_dir)
            od.nlink -= moved
            nd.nlink += moved
            snode.parent, dnode.parent = nd.ino, od.ino
        for n in (od, nd):
            n.mtime = n.ctime = now
            self._mark(n)
        for n in (snode, dnode):
            n.ctime = now
            self._mark(n)

    # ---- directories ---------------------------------------------------------------------
    @_locked
    def readdir(self, ino: int, cookie: int = 0, limit: int | None = None) -> list[DirEntry]:
        """Entries after `cookie` (0: from the start; else the cookie of the last entry the
        caller got), "." and ".." first. Cookies stay valid while entries come and go: an
        entry present throughout a listing is returned exactly once."""
        node = self._dir(ino)
        if node.nlink == 0:
            return []
        out: list[DirEntry] = []
        if cookie < COOKIE_DOT:
            out.append(DirEntry(b".", ino, stat.S_IFDIR >> 12, COOKIE_DOT))
        if cookie < COOKIE_DOTDOT:
            out.append(DirEntry(b"..", node.parent, stat.S_IFDIR >> 12, COOKIE_DOTDOT))
        start = max(cookie + 1, 1 << CD_BITS)
        if limit is None or len(out) < limit:
            for k, v in self.tree.scan(dirent_key(ino, start), kind_hi(ino, K_DIRENT)):
                child, dt, name = decode_dirent(v)
                out.append(DirEntry(name, child, dt, cookie_of(k)))
                if limit is not None and len(out) >= limit:
                    break
        self._relatime(node)
        return out[:limit] if limit is not None else out

    # ---- open files ----------------------------------------------------------------------
    @_locked
    def open(self, ino: int, flags: int = os.O_RDONLY) -> int:
        """A handle on a file or directory; O_TRUNC truncates, O_APPEND appends."""
        node = self._inode(ino)
        acc = flags & os.O_ACCMODE
        writing = acc != os.O_RDONLY or flags & os.O_TRUNC
        if node.is_lnk:
            raise _err(errno.ELOOP)
        if node.is_dir and writing:
            raise _err(errno.EISDIR)
        if writing:
            self._writable()
        if flags & os.O_DIRECTORY and not node.is_dir:
            raise _err(errno.ENOTDIR)
        grown = 0
        if flags & os.O_TRUNC and node.is_reg and node.size:
            grown = self._truncate(node, 0)
            node.mtime = node.ctime = self.io.now_ns()
            self._mark(node)
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = _Handle(ino, flags)
        self._opens[ino] = self._opens.get(ino, 0) + 1
        if grown:
            self.io.note_written(grown)
        return fh

    def opendir(self, ino: int) -> int:
        return self.open(ino, os.O_RDONLY | os.O_DIRECTORY)

    @_locked
    def create(self, parent: int, name, mode: int = 0o644, flags: int = os.O_RDWR,
               uid: int = 0, gid: int = 0) -> tuple[int, Attr]:
        """Make a regular file and open it: (handle, attributes). EEXIST if the name exists."""
        attr = self.mknod(parent, name, stat.S_IFREG | (mode & 0o7777), 0, uid, gid)
        return self.open(attr.st_ino, flags & ~os.O_TRUNC), attr

    def _handle(self, fh: int) -> _Handle:
        h = self._handles.get(fh)
        if h is None:
            raise _err(errno.EBADF)
        return h

    @_locked
    def read(self, fh: int, offset: int, size: int) -> bytes:
        h = self._handle(fh)
        if h.flags & os.O_ACCMODE == os.O_WRONLY:
            raise _err(errno.EBADF)
        node = self._inode(h.ino)
        if node.is_dir:
            raise _err(errno.EISDIR)
        data = self._read(node, offset, size)
        self._relatime(node)
        return data

    @_locked
    def write(self, fh: int, offset: int, data) -> int:
        """pwrite(2) (at end of file for an O_APPEND handle); returns len(data)."""
        h = self._handle(fh)
        if h.flags & os.O_ACCMODE == os.O_RDONLY:
            raise _err(errno.EBADF)
        self._writable()
        node = self._inode(h.ino)
        if not node.is_reg:
            raise _err(errno.EINVAL)
        if h.flags & os.O_APPEND:
            offset = node.size
        grown = self._write(node, offset, data)
        if len(data):
            node.mtime = node.ctime = self.io.now_ns()
            self._mark(node)
        if grown:
            self.io.note_written(grown)
        return len(data)

    @_locked
    def lseek(self, fh: int, offset: int, whence: int) -> int:
        """SEEK_DATA / SEEK_HOLE (record granularity); other whences are the caller's."""
        h = self._handle(fh)
        if whence not in (os.SEEK_DATA, os.SEEK_HOLE):
            raise _err(errno.EINVAL)
        node = self._inode(h.ino)
        if not node.is_reg:
            raise _err(errno.ENXIO)
        return self._seek(node, offset, whence)

    @_locked
    def release(self, fh: int) -> None:
        h = self._handles.pop(fh, None)
        if h is None:
            raise _err(errno.EBADF)
        left = self._opens.get(h.ino, 0) - 1
        if left > 0:
            self._opens[h.ino] = left
        else:
            self._opens.pop(h.ino, None)
            self._maybe_reclaim(h.ino)

    releasedir = release

    def fsync(self, fh: int | None = None) -> None:
        """Make everything durable: flush into the tree and commit the txg."""
        with self.lock:
            if fh is not None:
                self._handle(fh)
            self.flush()
            sync = getattr(self.io, "sync", None)
            if sync is not None and not self.io.readonly:
                sync()

    # ---- lookup counts (FUSE) ------------------------------------------------------------
    @_locked
    def add_lookup(self, ino: int, n: int = 1) -> None:
        """The kernel learned `ino` through readdirplus (counts like lookup)."""
        if self.track_lookups:
            self._lookups[ino] = self._lookups.get(ino, 0) + n

    @_locked
    def forget(self, ino: int, nlookup: int = 1) -> None:
        left = self._lookups.get(ino, 0) - nlookup
        if left > 0:
            self._lookups[ino] = left
            return
        self._lookups.pop(ino, None)
        self._maybe_reclaim(ino)

    # ---- xattrs --------------------------------------------------------------------------
    @_locked
    def getxattr(self, ino: int, name) -> bytes:
        self._inode(ino)
        item = self.tree.get_item(xattr_key(ino, _xname(name)))
        if item is None:
            raise _err(errno.ENODATA)
        value, ref = item
        if ref == REF_BLOCK:
            bp = decode_bp(value)
            return b"" if bp is None else self.io.read_block(bp)
        return value

    @_locked
    def listxattr(self, ino: int) -> list[bytes]:
        self._inode(ino)
        return [k[9:] for k, _v in self.tree.scan(kind_lo(ino, K_XATTR), kind_hi(ino, K_XATTR))]

    @_locked
    def setxattr(self, ino: int, name, value, flags: int = 0) -> None:
        self._writable()
        node = self._inode(ino)
        key = xattr_key(ino, _xname(name))
        value = bytes(value)
        if len(value) > XATTR_SIZE_MAX:
            raise _err(errno.E2BIG)
        old = self.tree.get_item(key)
        if flags & XATTR_CREATE and old is not None:
            raise _err(errno.EEXIST)
        if flags & XATTR_REPLACE and old is None:
            raise _err(errno.ENODATA)
        self.io.check_space(self._dirty_data + len(value) + INODE_COST)
        if len(value) > XATTR_INLINE_MAX:
            bp = self.io.write_blocks([value])[0]
            self._drop_xattr_block(node, old)
            self.tree.put(key, encode_bp(bp), REF_BLOCK)
            node.used += bp.asize
        else:
            self._drop_xattr_block(node, old)
            self.tree.put(key, value)
        node.ctime = self.io.now_ns()
        self._mark(node)

    def _drop_xattr_block(self, node: Inode, item) -> None:
        if item is not None and item[1] == REF_BLOCK:
            bp = decode_bp(item[0])
            if bp is not None:
                node.used -= bp.asize

    @_locked
    def removexattr(self, ino: int, name) -> None:
        self._writable()
        node = self._inode(ino)
        key = xattr_key(ino, _xname(name))
        item = self.tree.get_item(key)
        if item is None:
            raise _err(errno.ENODATA)
        self._drop_xattr_block(node, item)
        self.tree.delete(key)
        node.ctime = self.io.now_ns()
        self._mark(node)

    # ---- the filesystem ------------------------------------------------------------------
    @_locked
    def statfs(self) -> StatFS:
        used, avail = self.io.space()
        avail = max(0, avail)
        availobjs = avail >> 9
        return StatFS(self.io.recordsize, 512, (used + avail) // 512, avail // 512,
                      avail // 512, self.sb.objects + availobjs, availobjs, availobjs, NAME_MAX)

    @property
    def objects(self) -> int:
        return self.sb.objects

    @_locked
    def flush(self) -> None:
        """Push every cached change into the tree (file records as blocks). The dataset layer
        calls this from the pool's sync hook, and before anything reads the tree directly."""
        self._flush_data()
        tree = self.tree
        for ino in sorted(self._dirty):
            node = self._inodes.get(ino)
            if node is not None:
                tree.put(inode_key(ino), node.encode())
        self._dirty.clear()
        if self._sb_dirty:
            tree.put(SUPER_KEY, self.sb.encode())
            self._sb_dirty = False
        if len(self._inodes) > INODE_CACHE:
            keep = {ROOT_INO} | self._opens.keys() | self._lookups.keys() | self._records.keys()
            self._inodes = {i: n for i, n in self._inodes.items() if i in keep}

    @property
    def dirty_bytes(self) -> int:
        """Bytes of file data buffered in memory, not yet in blocks."""
        return self._dirty_data

    @_locked
    def close(self) -> None:
        """Drop every handle and lookup (unmount): unlinked files go, the rest is flushed."""
        self._handles.clear()
        self._opens.clear()
        self._lookups.clear()
        if not self.io.readonly:
            self._reclaim_unlinked()
            self.flush()
