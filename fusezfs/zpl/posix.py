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

Memory stays bounded whatever the size of the tree: the inode cache is an LRU of at most
INODE_CACHE clean records beyond the pinned ones (the root, dirty inodes until the next flush,
open inodes, inodes with buffered data), trimmed between operations; a kernel lookup count pins
only the count (the record is read again from the tree), and forget() drops it. Dirty state is
charged to the pool's dirty budget (`note_written`): file data byte for byte (posix_data.py),
and DIRTY_INODE_COST for every inode an operation dirties, so metadata-only work (creates,
chmod, atime updates) forces txg syncs too. Tree nodes and blocks have their own bounded caches
(tree.py, blocks.py).

Files unlinked while still open (or still known to the kernel through a FUSE lookup count)
stay until their last reference goes, and are recorded in the tree's unlinked set meanwhile;
opening the filesystem read-write destroys whatever that set holds, so a process that dies
holding such files leaks nothing (ZFS's unlinked set / delete queue). The set's items are
written by flush, like inode records: `rm -rf` through FUSE unlinks files the kernel still
knows and forgets them a moment later, and those never reach the tree.

Modules: posix.py (this: the object, inodes, open files, xattrs, flush), posix_names.py
(directories and names), posix_data.py (file contents: records, holes, the dirty-record buffer),
posix_paths.py (path helpers), posix_types.py (values returned, flags), posix_layout.py (the
on-disk items, bit-exact).

Inode numbers: the root directory is inode 1; numbers are handed out from a counter kept in the
tree and are never reused in a dataset or its clones; the generation is the creating txg.

What the dataset layer provides is the `ObjsetIO` protocol below. Use:

    fs = Posix(io)                          # formats an empty tree (root directory = inode 1)
    pool.sync_hooks.append(lambda pool: fs.flush())
    fs.write_file("/etc/motd", b"hello\\n")
    fh = fs.open(fs.resolve("/etc/motd")); fs.read(fh, 0, 100); fs.release(fh)
"""
from __future__ import annotations

import errno
import os
import stat
import threading
from collections import OrderedDict
from typing import Protocol

from fusezfs.formats.bp import BlockPointer, decode_bp, encode_bp
from fusezfs.zpl.posix_alloc import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
    Allocation,
)
from fusezfs.zpl.posix_data import FileData
from fusezfs.zpl.posix_log import A, T, W, X, IntentLogging
from fusezfs.zpl.posix_layout import (
    MAX_FILE_SIZE,
    NAME_MAX,
    ROOT_INO,
    SUPER_KEY,
    UNLINKED_HI,
    UNLINKED_LO,
    XATTR_INLINE_MAX,
    XATTR_SIZE_MAX,
    Inode,
    Superblock,
    ino_prefix,
    inode_key,
    K_XATTR,
    kind_hi,
    kind_lo,
    unlinked_key,
    xattr_key,
)
from fusezfs.zpl.posix_names import INODE_COST, Names
from fusezfs.zpl.posix_paths import PathHelpers
from fusezfs.zpl.posix_types import (
    NOW,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    XATTR_CREATE,
    XATTR_REPLACE,
    Attr,
    DirEntry,
    Handle,
    StatFS,
    check_xname,
    err,
    locked,
)
from fusezfs.engine.tree import REF_BLOCK, Tree

__all__ = ["ObjsetIO", "Posix", "Attr", "DirEntry", "StatFS", "NOW", "ROOT_INO",
           "RENAME_NOREPLACE", "RENAME_EXCHANGE", "XATTR_CREATE", "XATTR_REPLACE",
           "MAX_FILE_SIZE", "FALLOC_FL_KEEP_SIZE", "FALLOC_FL_PUNCH_HOLE", "FALLOC_FL_ZERO_RANGE"]

INODE_CACHE = 8192          # clean, unpinned inode records kept (least recently used dropped)
DIRTY_INODE_COST = 4096     # dirty-budget bytes charged per inode dirtied in the open txg (about
                            # its memory with its share of dirty tree nodes, rounded up)
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

    def prepare_ahead(self, data: bytes) -> None:
        """A full record (never changed after this call) that write_blocks will probably be
        given at the next flush: compression and checksum may start now, in parallel."""

    def cancel_ahead(self, data: bytes) -> None:
        """A record given to prepare_ahead that will not be written after all."""

    def read_blocks(self, bps: list[BlockPointer]) -> list[bytes]:
        """The blocks' logical bytes, verified (OSError EIO on a checksum error); several at
        once, so neighbouring blocks are read together (BlockIO.read_many)."""

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


class Posix(Names, Allocation, FileData, IntentLogging, PathHelpers):
    """A POSIX filesystem over one dataset's object tree (see the module comment)."""

    def __init__(self, io: ObjsetIO, *, track_lookups: bool = False, root_mode: int = 0o755,
                 root_uid: int = 0, root_gid: int = 0) -> None:
        """`track_lookups`: count lookups as FUSE's kernel does (forget() drops them), so an
        unlinked inode the kernel still knows stays readable; off for library use."""
        self.io = io
        self.tree = io.tree
        self.lock = getattr(io, "lock", None) or threading.RLock()
        self.track_lookups = track_lookups
        self._inodes: OrderedDict[int, Inode] = OrderedDict()      # LRU order, see _trim
        self._dirty: set[int] = set()
        self._unreported = 0            # dirty-budget bytes of inodes dirtied, not yet reported
        self._records: dict[int, dict[int, bytearray]] = {}
        self._dirty_data = 0
        self._handles: dict[int, Handle] = {}
        self._opens: dict[int, int] = {}
        self._lookups: dict[int, int] = {}
        # unlinked inodes still referenced whose unlinked-set item is not in the tree yet:
        # flush writes them (most are forgotten first, and then nothing is written at all)
        self._unlinked_new: set[int] = set()
        self._next_fh = 1
        self._sb_dirty = False
        self._depth = 0                 # nesting of locked operations (see posix_types.locked)
        self._log_init()                # the intent log's itxs (posix_log.py)
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
        for ino in sorted(self._unlinked_new):
            self._destroy(ino)
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
                raise err(errno.ENOENT)
            raw = self.tree.get(inode_key(ino))
            if raw is None:
                raise err(errno.ENOENT)
            node = self._inodes[ino] = Inode.decode(ino, raw)
        else:
            self._inodes.move_to_end(ino)
        return node

    def _dir(self, ino: int) -> Inode:
        node = self._inode(ino)
        if not node.is_dir:
            raise err(errno.ENOTDIR)
        return node

    def _mark(self, node: Inode) -> None:
        if node.ino not in self._dirty:
            self._dirty.add(node.ino)
            self._unreported += DIRTY_INODE_COST

    def _writable(self) -> None:
        if self.io.readonly:
            raise err(errno.EROFS)

    def _referenced(self, ino: int) -> bool:
        return self._opens.get(ino, 0) > 0 or self._lookups.get(ino, 0) > 0

    def _ref(self, ino: int) -> None:
        if self.track_lookups:
            self._lookups[ino] = self._lookups.get(ino, 0) + 1

    def _attr(self, node: Inode) -> Attr:
        used = node.used
        if node.ino in self._records:       # buffered data (regular files only) counts too
            used += self._pending_bytes(node.ino)
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

    def _destroy(self, ino: int, listed: bool = True) -> None:
        """Free an inode and everything it owns. `listed`: it may be in the unlinked set (false
        when its last name went just now, unreferenced: then it never was)."""
        self._drop_data(ino)
        self._inodes.pop(ino, None)
        self._dirty.discard(ino)
        self._opens.pop(ino, None)
        self._lookups.pop(ino, None)
        self._files.pop(ino, None)      # its intent-log notes: no record of it would apply
        self.tree.delete_range(ino_prefix(ino), ino_prefix(ino + 1))
        if ino in self._unlinked_new:
            self._unlinked_new.discard(ino)
        elif listed:
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
                self._unlinked_new.add(node.ino)        # into the unlinked set at flush
            else:
                self._destroy(node.ino, listed=False)

    def _relatime(self, node: Inode) -> None:
        if not getattr(self.io, "atime", False) or self.io.readonly:
            return
        a = node.atime
        now = self.io.now_ns()
        if a <= node.mtime or a <= node.ctime or now - a >= DAY_NS:
            node.atime = now
            self._mark(node)

    # ---- attributes ----------------------------------------------------------------------
    @locked
    def getattr(self, ino: int) -> Attr:
        return self._attr(self._inode(ino))

    @locked
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
                raise err(errno.EISDIR)
            if not node.is_reg or size < 0:
                raise err(errno.EINVAL)
            if size > MAX_FILE_SIZE:
                raise err(errno.EFBIG)
            grown = self._truncate(node, size)
            node.mtime = now
            self._note(T, ino, size)
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
        self._note(A, ino)
        attr = self._attr(node)
        if grown:
            self.io.note_written(grown)
        return attr

    @locked
    def readlink(self, ino: int) -> bytes:
        node = self._inode(ino)
        if not node.is_lnk:
            raise err(errno.EINVAL)
        return node.target

    # ---- open files ----------------------------------------------------------------------
    @locked
    def open(self, ino: int, flags: int = os.O_RDONLY) -> int:
        """A handle on a file or directory; O_TRUNC truncates, O_APPEND appends."""
        node = self._inode(ino)
        acc = flags & os.O_ACCMODE
        writing = acc != os.O_RDONLY or flags & os.O_TRUNC
        if node.is_lnk:
            raise err(errno.ELOOP)
        if node.is_dir and writing:
            raise err(errno.EISDIR)
        if writing:
            self._writable()
        if flags & os.O_DIRECTORY and not node.is_dir:
            raise err(errno.ENOTDIR)
        grown = 0
        if flags & os.O_TRUNC and node.is_reg and node.size:
            grown = self._truncate(node, 0)
            node.mtime = node.ctime = self.io.now_ns()
            self._mark(node)
            self._note(T, ino, 0)
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = Handle(ino, flags)
        self._opens[ino] = self._opens.get(ino, 0) + 1
        if grown:
            self.io.note_written(grown)
        return fh

    def opendir(self, ino: int) -> int:
        return self.open(ino, os.O_RDONLY | os.O_DIRECTORY)

    @locked
    def create(self, parent: int, name, mode: int = 0o644, flags: int = os.O_RDWR,
               uid: int = 0, gid: int = 0) -> tuple[int, Attr]:
        """Make a regular file and open it: (handle, attributes). EEXIST if the name exists."""
        attr = self.mknod(parent, name, stat.S_IFREG | (mode & 0o7777), 0, uid, gid)
        return self.open(attr.st_ino, flags & ~os.O_TRUNC), attr

    def _handle(self, fh: int) -> Handle:
        h = self._handles.get(fh)
        if h is None:
            raise err(errno.EBADF)
        return h

    @locked
    def read(self, fh: int, offset: int, size: int) -> bytes:
        h = self._handle(fh)
        if h.flags & os.O_ACCMODE == os.O_WRONLY:
            raise err(errno.EBADF)
        node = self._inode(h.ino)
        if node.is_dir:
            raise err(errno.EISDIR)
        data = self._read(node, offset, size)
        self._relatime(node)
        return data

    @locked
    def write(self, fh: int, offset: int, data) -> int:
        """pwrite(2) (at end of file for an O_APPEND handle); returns len(data)."""
        h = self._handle(fh)
        if h.flags & os.O_ACCMODE == os.O_RDONLY:
            raise err(errno.EBADF)
        self._writable()
        node = self._inode(h.ino)
        if not node.is_reg:
            raise err(errno.EINVAL)
        if h.flags & os.O_APPEND:
            offset = node.size
        grown = self._write(node, offset, data)
        if len(data):
            node.mtime = node.ctime = self.io.now_ns()
            self._mark(node)
            self._note(W, node.ino, offset, offset + len(data))
            if h.flags & os.O_DSYNC:        # O_SYNC and O_DSYNC: durable when write returns
                self._sync_now.add(node.ino)
        if grown:
            self.io.note_written(grown)
        return len(data)

    @locked
    def lseek(self, fh: int, offset: int, whence: int) -> int:
        """SEEK_DATA / SEEK_HOLE (record granularity); other whences are the caller's."""
        h = self._handle(fh)
        if whence not in (os.SEEK_DATA, os.SEEK_HOLE):
            raise err(errno.EINVAL)
        node = self._inode(h.ino)
        if not node.is_reg:
            raise err(errno.ENXIO)
        return self._seek(node, offset, whence)

    @locked
    def release(self, fh: int) -> None:
        h = self._handles.pop(fh, None)
        if h is None:
            raise err(errno.EBADF)
        left = self._opens.get(h.ino, 0) - 1
        if left > 0:
            self._opens[h.ino] = left
        else:
            self._opens.pop(h.ino, None)
            self._maybe_reclaim(h.ino)

    releasedir = release

    def fsync(self, fh: int | None = None) -> None:
        """fsync(2) of an open file (`fh`): its changes, and the names that find it, made
        durable through the intent log (posix_log.py; sync=disabled: at once, durable only at
        the next txg commit, as ZFS). Without `fh`, the library's checkpoint: everything
        flushed into the tree and the txg committed."""
        with self.lock:
            if fh is not None:
                ino = self._handle(fh).ino
                if not self.io.readonly:
                    self._log_commit({ino})
                return
            self.flush()
            sync = getattr(self.io, "sync", None)
            if sync is not None and not self.io.readonly:
                sync()

    # ---- lookup counts (FUSE) ------------------------------------------------------------
    def add_lookup(self, ino: int, n: int = 1) -> None:
        """The kernel learned `ino` through readdirplus (counts like lookup). Only the lock, not
        `locked`: it touches no inode record and dirties nothing, so there is nothing to trim
        or report, and readdirplus calls it for every entry it lists."""
        if self.track_lookups:
            with self.lock:
                self._lookups[ino] = self._lookups.get(ino, 0) + n

    @locked
    def forget(self, ino: int, nlookup: int = 1) -> None:
        left = self._lookups.get(ino, 0) - nlookup
        if left > 0:
            self._lookups[ino] = left
            return
        self._lookups.pop(ino, None)
        self._maybe_reclaim(ino)

    # ---- xattrs --------------------------------------------------------------------------
    @locked
    def getxattr(self, ino: int, name) -> bytes:
        self._inode(ino)
        item = self.tree.get_item(xattr_key(ino, check_xname(name)))
        if item is None:
            raise err(errno.ENODATA)
        value, ref = item
        if ref == REF_BLOCK:
            bp = decode_bp(value)
            return b"" if bp is None else self.io.read_blocks([bp])[0]
        return value

    @locked
    def listxattr(self, ino: int) -> list[bytes]:
        self._inode(ino)
        return [k[9:] for k, _v in self.tree.scan(kind_lo(ino, K_XATTR), kind_hi(ino, K_XATTR))]

    @locked
    def setxattr(self, ino: int, name, value, flags: int = 0) -> None:
        self._writable()
        node = self._inode(ino)
        key = xattr_key(ino, check_xname(name))
        value = bytes(value)
        if len(value) > XATTR_SIZE_MAX:
            raise err(errno.E2BIG)
        old = self.tree.get_item(key)
        if flags & XATTR_CREATE and old is not None:
            raise err(errno.EEXIST)
        if flags & XATTR_REPLACE and old is None:
            raise err(errno.ENODATA)
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
        self._note(X, ino, key[9:])

    def _drop_xattr_block(self, node: Inode, item) -> None:
        if item is not None and item[1] == REF_BLOCK:
            bp = decode_bp(item[0])
            if bp is not None:
                node.used -= bp.asize

    @locked
    def removexattr(self, ino: int, name) -> None:
        self._writable()
        node = self._inode(ino)
        key = xattr_key(ino, check_xname(name))
        item = self.tree.get_item(key)
        if item is None:
            raise err(errno.ENODATA)
        self._drop_xattr_block(node, item)
        self.tree.delete(key)
        node.ctime = self.io.now_ns()
        self._mark(node)
        self._note(X, ino, key[9:])

    # ---- the filesystem ------------------------------------------------------------------
    @locked
    def statfs(self) -> StatFS:
        used, avail = self.io.space()
        avail = max(0, avail)
        availobjs = avail >> 9
        return StatFS(self.io.recordsize, 512, (used + avail) // 512, avail // 512,
                      avail // 512, self.sb.objects + availobjs, availobjs, availobjs, NAME_MAX)

    @property
    def objects(self) -> int:
        return self.sb.objects

    @locked
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
        for ino in sorted(self._unlinked_new):
            tree.put(unlinked_key(ino), b"")
        self._unlinked_new.clear()
        self._unreported = 0            # all of it is in the tree, which the pool accounts
        if self._sb_dirty:
            tree.put(SUPER_KEY, self.sb.encode())
            self._sb_dirty = False
        self._log_flushed()
        if self._depth == 1:            # not inside an operation
            self._trim()

    def _trim(self) -> None:
        """Drop the least recently used inode records beyond INODE_CACHE clean, unpinned ones
        (they are in the tree). Pinned, and not counted: the root, dirty inodes (until flushed),
        open ones and those with buffered data. A kernel lookup count pins only the count, not
        the record. Only between operations: one in progress may hold Inode objects it has not
        marked yet."""
        inodes = self._inodes
        if len(inodes) <= INODE_CACHE:     # the common case, checked first: it is every call
            return
        pinned = 1 + len(self._dirty) + len(self._opens) + len(self._records)   # upper bound
        excess = len(inodes) - pinned - INODE_CACHE
        if excess <= 0:
            return
        drop, busy = [], []             # at least `excess` unpinned records exist
        for ino in inodes:
            if ino == ROOT_INO or ino in self._dirty or ino in self._opens or ino in self._records:
                busy.append(ino)
            else:
                drop.append(ino)
                if len(drop) >= excess:
                    break
        for ino in drop:
            del inodes[ino]
        for ino in busy:                # not scanned again by the next trims
            inodes.move_to_end(ino)

    def _report_dirty(self) -> None:
        """Charge the inodes dirtied by the operation just done to the pool's dirty budget:
        metadata-only work (creates, chmod, atime) then forces a txg sync too, so the dirty
        inodes and tree nodes held in memory stay bounded (may sync, which flushes us)."""
        n, self._unreported = self._unreported, 0
        self.io.note_written(n)

    @locked
    def reload(self, tree: Tree | None = None) -> None:
        """Forget everything cached or buffered and read the tree again: after a rollback
        replaced the dataset's tree (pass the new one). Buffered changes are discarded, not
        flushed. Handles and lookup counts stay; those whose inode is gone now get ENOENT."""
        self.tree = tree if tree is not None else self.io.tree
        self._inodes.clear()
        self._dirty.clear()
        self._unlinked_new.clear()
        self._unreported = 0
        self._records.clear()
        self._dirty_data = 0
        self._sb_dirty = False
        self._after_reload()
        raw = self.tree.get(SUPER_KEY)
        if raw is None:
            self._format(0o755, 0, 0)
        else:
            self.sb = Superblock.decode(raw)

    @property
    def dirty_bytes(self) -> int:
        """Bytes of file data buffered in memory, not yet in blocks."""
        return self._dirty_data

    @locked
    def close(self) -> None:
        """Drop every handle and lookup (unmount): unlinked files go, the rest is flushed."""
        self._handles.clear()
        self._opens.clear()
        self._lookups.clear()
        if not self.io.readonly:
            self._reclaim_unlinked()
            self.flush()
