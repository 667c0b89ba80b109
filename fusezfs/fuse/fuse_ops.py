"""The pyfuse3 adapter: the FUSE operations over the filesystems of one open pool.

Theory of operation
-------------------
The daemon mounts the pool's root filesystem; every other filesystem with canmount=on and a
mountpoint inside the root's tree appears at that mountpoint (ZFS mounts it there). Each
dataset shown is a *view*: a Posix object (the POSIX layer, with FUSE lookup counting) and an
index. Inode numbers are `view index << 48 | the dataset's own inode number`, so a session
never sees two alike; the root of each FUSE session is 1, as FUSE requires (View.ino).

Mountpoints: a child's mountpoint directory is made in the dataset that contains that path
(as `zfs mount` makes it). Then, as root (or with allow_other), the child is mounted there
as a FUSE session of its own (fuse_sessions.py): its own st_dev, statfs figures and mount
table line, and the kernel itself refuses rename and link between datasets (EXDEV) and
rmdir of a mountpoint (EBUSY). A daemon of an ordinary user cannot do that (fusermount3,
running setuid, may not look into a FUSE mount made without allow_other), so there the child
*covers* the directory inside its parent's session: lookup and readdir of that name answer
the child's root instead, rmdir or rename of it is EBUSY, and rename and link between views
are EXDEV (all datasets then share the one st_dev). Writes to snapshot views and readonly=on
datasets are EROFS (the POSIX layer raises it).

`.zfs` in the root of each filesystem view is a virtual directory holding `snapshot`, whose
entries are the dataset's snapshots, each a read-only view made on first use, in the session
of its filesystem. `.zfs` is found by lookup always and listed by readdir only with
snapdir=visible. Virtual inodes use the top local numbers of their view (never handed out by
the POSIX layer).

Single datasets (`fusezfs mount DATASET PATH`, daemon.SingleMounts): a dataset shown elsewhere than
in the pool's tree (a legacy mountpoint, or a snapshot, read-only) is a *standalone* view,
mounted at that path as a session of its own, like a child (one view per mount).

Every handler is a thin async wrapper around a synchronous function run under the pool's
lock. If the lock is free the function runs at once on the trio thread (the common case: no
thread hop); if a sync holds it on a worker thread, the function runs on a worker thread too,
so the event loop keeps serving other requests meanwhile. fsync and the timer's syncs (CPU
and I/O heavy: compression, checksums, device flushes) always run on worker threads.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import stat
import threading

import pyfuse3
import trio

from fusezfs.dsl import dsprops, properties
from fusezfs.dsl.datasets import ROOT_ID, Record
from fusezfs.fuse.fuse_loop import run_sync_in_thread
from fusezfs.zpl.posix import Posix, ROOT_INO

log = logging.getLogger("fusezfs.fuse")

SHIFT = 48
LOCAL_MASK = (1 << SHIFT) - 1
CTL_INO = LOCAL_MASK            # .zfs
SNAPDIR_INO = LOCAL_MASK - 1    # .zfs/snapshot
VIRTUAL = (CTL_INO, SNAPDIR_INO)
COOKIE_ZFS = 3                  # readdir cookie of .zfs in a root (real cookies are >= 1 << 15)
READDIR_CHUNK = 256
# Posix.setattr keyword, pyfuse3's SetattrFields flag, the EntryAttributes field it comes from
SETATTR_FIELDS = (("mode", "update_mode", "st_mode"), ("uid", "update_uid", "st_uid"),
                  ("gid", "update_gid", "st_gid"), ("size", "update_size", "st_size"),
                  ("atime", "update_atime", "st_atime_ns"),
                  ("mtime", "update_mtime", "st_mtime_ns"),
                  ("ctime", "update_ctime", "st_ctime_ns"))


class View:
    """One dataset as the mount shows it."""

    def __init__(self, index: int, rec: Record, fs: Posix, name: str) -> None:
        self.index = index
        self.rec = rec
        self.fs = fs
        self.name = name
        self.snapshot = rec.kind == "snapshot"
        self.head: View | None = None           # snapshot view: its filesystem's view
        self.parent: tuple[int, int] | None = None   # (view, dir ino) the root is mounted in
        self.rel = ""                           # mounted child: its path below the root view
        self.entry: tuple[int, int, bytes] | None = None  # (host view, dir ino, name) it covers
        self.dead = False                       # unmounted or destroyed (see refresh)
        self.snapnames: set[str] = set()        # head: snapshot names the kernel may know
        self.bound = False                      # mounted alone at a path (daemon.SingleMounts)
        self.mod = pyfuse3                      # the pyfuse3 instance of its FUSE session
        self.own = False                        # mounted child: the root of its own session
        self.path: str | None = None            # own: where its session is mounted
        self.dev: str | None = None             # own: that mount's device, once mounted

    def g(self, local: int) -> int:
        return self.index << SHIFT | local

    def ino(self, local: int) -> int:
        """The inode number its session knows `local` by: the root of a session is 1."""
        return pyfuse3.ROOT_INODE if local == ROOT_INO and self.own else self.index << SHIFT | local


def mountpoint_of(dsl, rec: Record) -> str:
    """The mountpoint property as `zfs get` shows it (inherited paths extended)."""
    value = dsprops.get_property("mountpoint", "filesystem", properties.chain(dsl, rec))
    return value[0] if value else "none"


def mounted_children(dsl) -> list[tuple[str, Record]]:
    """(path relative to the root dataset's mountpoint, record) of every filesystem below the
    root that mounts inside its tree, shallowest first. Others are left out, with a log line."""
    root = dsl.record(ROOT_ID)
    base = mountpoint_of(dsl, root)
    if not base.startswith("/"):
        base = "/" + dsl.pool.name
    base = base.rstrip("/")
    out = []
    for rec in dsl.descendants(ROOT_ID):
        name = dsl.name(rec.id)
        if rec.kind != "filesystem":            # a volume is a file (host/volume_mount.py)
            continue
        if str(properties.value(dsl, rec, "canmount")) != "on":
            continue
        mp = mountpoint_of(dsl, rec)
        if not mp.startswith("/"):
            continue
        if not mp.startswith(base + "/"):
            log.debug("%s: mountpoint %s is outside the pool's tree %s (the service mounts "
                      "it alone there)", name, mp, base or "/")
            continue
        rel = os.path.normpath(mp[len(base) + 1:])
        if rel in (".", "") or rel.startswith(".."):
            log.warning("%s: mountpoint %s is the pool root's; not mounted", name, mp)
            continue
        out.append((rel, rec))
    out.sort(key=lambda x: (x[0].count("/"), x[0]))
    return out


def fuse_error(e: OSError) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(e.errno or errno.EIO)


_libc = None


def libc_call(name: str, *args) -> None:
    """Call the C library's `name`; a nonzero return raises OSError with its errno."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if getattr(_libc, name)(*args) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def syncfs(path: str) -> None:
    """syncfs(2) of the file system mounted at `path`: with the writeback cache, the kernel
    writes its dirty pages of that mount (as FUSE writes) and waits for them. Never call it on
    the trio thread or with the pool lock held: the writes need both."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        libc_call("syncfs", fd)
    finally:
        os.close(fd)


class Operations(pyfuse3.Operations):
    """The FUSE operations over a `Handle` (see the module comment)."""

    supports_dot_lookup = True

    def __init__(self, handle, *, entry_timeout: float = 1.0, attr_timeout: float = 1.0,
                 negative_timeout: float = 1.0, writeback_cache: bool = True,
                 separate_mounts: bool = False) -> None:
        super().__init__()
        # The kernel's writeback cache (read by pyfuse3.init): writes gather in the page cache
        # and come in large chunks; the kernel keeps the size and mtime of files open for
        # writing itself and handles O_APPEND (see _open_flags), and kills setuid/setgid on
        # write and truncate through setattr (its own capability check).
        self.enable_writeback_cache = writeback_cache
        self.mountpoint: str | None = None      # set by the daemon once mounted
        self.handle = handle
        self.dsl = handle.dsl
        self.pool = handle.pool
        self.lock: threading.RLock = self.pool.lock
        self.entry_timeout = entry_timeout
        self.attr_timeout = attr_timeout
        self.negative_timeout = negative_timeout
        self.views: list[View] = []
        # separate_mounts: each child its own FUSE session (fuse_sessions.py); otherwise
        # (an ordinary user's daemon: fusermount3 cannot reach into a mount that lacks
        # allow_other) a child covers its mountpoint directory inside its parent's session
        self.separate = separate_mounts
        self.covers: dict[tuple[int, int], int] = {}
        # mounted children (fuse_sessions.py makes and ends their sessions, after the lock)
        self.to_mount: list[View] = []
        self.to_end: list[View] = []
        self.mount_entries: set[tuple[int, int, bytes]] = set()   # (host, dir, name) of each
        self.unmounted: set[int] = set()        # datasets unmounted from outside: left so
        self.snap_views: dict[int, int] = {}
        self.files: dict[int, tuple[View, int]] = {}
        self.dirs: dict[int, tuple[View, int]] = {}
        self._next_fh = 1
        self.syncing: set[int] = set()          # threads (FUSE's ctx.pid) in flush_kernel
        self.internal: set[int] = set()         # directory handles they opened
        self._old_names: dict[tuple[int, int], set[bytes]] = {}
        self._trees: dict[int, object] = {}
        with self.lock:
            self._build()

    # ---- views --------------------------------------------------------------------------
    def _open_view(self, rec: Record) -> View:
        fs = self.handle.filesystem_of(rec, track_lookups=True)
        fs.track_lookups = True         # a command may have opened it first (cp)
        view = View(len(self.views), rec, fs, self.dsl.name(rec.id))
        if rec.kind != "snapshot":
            view.snapnames = {s.component for s in self.dsl.snapshots(rec.id)}
        self.views.append(view)
        return view

    def _build(self) -> None:
        self._layout(self._open_view(self.dsl.record(ROOT_ID)), [])

    def _layout(self, root: View, inval: list) -> None:
        """Mount every filesystem that mounts inside the root's tree where it belongs. Mounted
        children already in their place (same host view, same directory) stay; the others
        are unmounted and mounted anew. Kernel cache invalidations go to `inval`."""
        mounted: list[tuple[str, View]] = [("", root)]
        placed: set[int] = {root.index}
        current = {v.rec.id: v for v in self.views if v.parent is not None and not v.dead}
        for rel, rec in mounted_children(self.dsl):
            if rec.id in self.unmounted:
                continue
            if any(r == rel for r, _v in mounted):
                log.warning("%s: mountpoint already used; not mounted", self.dsl.name(rec.id))
                continue
            host_rel, host = max(((r, v) for r, v in mounted
                                  if r == "" or rel.startswith(r + "/")), key=lambda x: len(x[0]))
            sub = rel[len(host_rel):].lstrip("/")
            cur = current.get(rec.id)
            if cur is not None and cur.rel == rel and cur.parent[0] == host.index:
                try:
                    same = host.fs.resolve(sub) == cur.parent[1]
                except OSError:
                    same = False
                if same:
                    mounted.append((rel, cur))
                    placed.add(cur.index)
                    continue
            if cur is not None:
                self._unmount(cur, inval)
            try:
                if host.fs.io.readonly:
                    ino = host.fs.resolve(sub)
                else:
                    ino = host.fs.makedirs(sub)
                if not stat.S_ISDIR(host.fs.getattr(ino).st_mode):
                    raise OSError(errno.ENOTDIR, "not a directory")
                pdir, name = host.fs.parent_of(sub)
            except OSError as e:
                log.warning("%s: cannot make mountpoint %s in %s: %s; not mounted",
                            self.dsl.name(rec.id), sub, host.name, e.strerror)
                continue
            view = self._open_view(rec)
            view.parent = (host.index, ino)
            view.rel = rel
            view.entry = (host.index, pdir, name)
            if self.separate:
                view.own = True
                self.to_mount.append(view)
            else:
                self.covers[(host.index, ino)] = view.index
            mounted.append((rel, view))
            placed.add(view.index)
            inval += [("entry", host.g(pdir), name), ("inode", host.g(pdir))]
        for v in current.values():
            if v.index not in placed and not v.dead:
                self._unmount(v, inval)

    def _unmount(self, view: View, inval: list) -> None:
        """Take a mounted child out of the tree (its dataset was destroyed, renamed, or its
        mountpoint or canmount changed). Its inodes the kernel holds get ENOENT; the
        mountpoint directory is removed if empty, as zfs does."""
        self.covers.pop(view.parent, None)
        view.dead = True
        if view.own:
            self.to_end.append(view)
            if view in self.to_mount:
                self.to_mount.remove(view)
        for sv in self.views:           # its snapshots are made anew under its next view
            if sv.head is view and not sv.dead:
                sv.dead = True
                self.snap_views.pop(sv.rec.id, None)
        if view.entry is None:
            return
        self.mount_entries.discard(view.entry)
        hidx, pdir, name = view.entry
        host = self.views[hidx]
        inval += [("entry", host.g(pdir), name), ("inode", host.g(pdir))]
        if not host.dead and host.fs is not None and not host.fs.io.readonly:
            try:
                host.fs.rmdir(pdir, name)
            except OSError:
                pass

    def _shown_path(self, view: View) -> str | None:
        if view.index == 0:
            return self.mountpoint
        return view.path if view.own else os.path.join(self.mountpoint, view.rel)

    def busy_path(self, ds_id: int) -> str | None:
        """Where dataset `ds_id` is mounted, if it is in use there, as the kernel would refuse
        its unmount: a file or directory open through the mount, or a process whose working
        directory or root lies in it. Working directories are read as paths from /proc (never
        stat'ed: that would ask this very mount, whose lock the caller holds); each belongs to
        the dataset shown at the longest prefix of it."""
        if not self.mountpoint:
            return None
        views = [v for v, _fh in list(self.files.values())] + \
            [v for gfh, (v, _fh) in list(self.dirs.items()) if gfh not in self.internal]
        for v in views:
            if v.rec.id == ds_id and not v.dead and not v.snapshot:
                return self._shown_path(v)
        shown = {self._shown_path(v): v.rec.id for v in self.views
                 if not v.dead and not v.snapshot and (v.index == 0 or v.own or v.parent)}
        mine = [p for p, i in shown.items() if i == ds_id and p]
        if not mine:
            return None
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            for link in ("cwd", "root"):
                try:
                    where = os.readlink(f"/proc/{pid}/{link}")
                except OSError:
                    continue
                owner = max((p for p in shown if p and (where == p or
                             where.startswith(p.rstrip("/") + "/"))), key=len, default=None)
                if owner in mine:
                    return owner
        return None

    # ---- single datasets (daemon.SingleMounts) -----------------------------------------------------
    def standalone(self, rec: Record) -> View:
        """A view of `rec` to mount alone at a path, as its own session (each mount one)."""
        view = self._open_view(rec)
        view.bound = view.own = True
        return view

    def standalones(self) -> list[View]:
        return [v for v in self.views if v.bound and not v.dead]

    def shown_at(self, ds_id: int) -> str | None:
        """Where the pool's tree shows the dataset: its path below the tree's root ("" for
        the root dataset), or None."""
        if ds_id == ROOT_ID:
            return ""
        for view in self.views:
            if view.parent is not None and not view.dead and view.rec.id == ds_id:
                return view.rel
        return None

    # ---- commands run by the daemon (control.py) ------------------------------------------
    READ_ONLY_VERBS = {"list", "get", "holds"}

    def flush_kernel(self) -> None:
        """Have the kernel write its dirty pages of every session now (syncfs): those of the
        writeback cache, and of shared writable mmaps with or without it, so that they reach
        the pool before a command looks at it, and are not written later over a rollback or
        into a destroyed dataset. Called on a thread other than trio's and without the pool
        lock: those writes need it."""
        assert not self.lock._is_owned(), "flush_kernel would wait for its own lock"
        paths = [self.mountpoint] + \
            [v.path for v in list(self.views) if v.own and v.dev and v.mod and not v.dead]
        tid = threading.get_native_id()
        self.syncing.add(tid)
        try:
            for p in paths:
                if p:
                    try:
                        syncfs(p)
                    except OSError as e:
                        log.warning("syncfs %s: %s", p, e.strerror)
        finally:
            self.syncing.discard(tid)

    def before_command(self, argv: list[str]) -> None:
        """Commit what the mount buffered (the POSIX layer's buffers; the kernel's dirty
        pages were written by flush_kernel just before), so the command sees every tree as the
        mount does (and no buffer of a dataset the command destroys or rolls back is flushed
        later). Before a rollback, remember the names in directories the kernel knows."""
        verb = argv[0] if argv else ""
        with self.lock:
            if verb not in self.READ_ONLY_VERBS and not (
                    verb == "pool" and argv[1:2] and argv[1] in ("list", "get", "status")):
                self.pool.sync()
            self._old_names = {}
            # rollback replaces trees (the POSIX objects may be reloaded by the Handle's hook
            # already): what each one looked at before tells which were replaced
            self._trees = {ds_id: fs.tree for ds_id, fs in self.handle._open.items()}
            if verb in ("rollback", "receive"):    # (receive: a head's contents replaced)
                for view in self.views:
                    if view.dead or view.snapshot or view.fs is None:
                        continue
                    for ino in set(view.fs._lookups) | {ROOT_INO}:
                        names = self._dir_names(view.fs, ino)
                        if names:
                            self._old_names[(view.index, ino)] = names

    @staticmethod
    def _dir_names(fs: Posix, ino: int) -> set[bytes]:
        out: set[bytes] = set()
        try:
            if not stat.S_ISDIR(fs.getattr(ino).st_mode):
                return out
            cookie = 0
            while True:
                batch = fs.readdir(ino, cookie, READDIR_CHUNK, touch=False)
                if not batch:
                    return out
                for e in batch:
                    if e.name not in (b".", b".."):
                        out.add(e.name)
                    cookie = e.cookie
        except OSError:
            return out

    def _exists(self, ds_id: int) -> bool:
        if ds_id in self.dsl.deleted:
            return False
        try:
            self.dsl.record(ds_id)
        except KeyError:
            return False
        return True

    def refresh(self, changes: list[tuple[str, bytes]] = ()) -> list:
        """After a command: bring every view in line with the datasets (destroyed ones go,
        rolled back ones read their new tree, property changes reach the POSIX layer, mounts
        follow create/destroy/rename/mountpoint/canmount) and return the kernel cache
        invalidations to make, by `invalidate`, once the pool lock is released."""
        from fusezfs.dsl.objset import DatasetIO
        inval: list = []
        with self.lock:
            rolled: set[int] = set()
            for ds_id, fs in list(self.handle._open.items()):
                if not self._exists(ds_id):
                    self.handle.drop(ds_id)       # its tree is gone: never flush it
                    continue
                rec = self.dsl.record(ds_id)
                if rec.kind == "snapshot":
                    continue
                io = DatasetIO(self.dsl, rec)
                fs.io = io
                if fs.tree is not io.tree:
                    fs.reload(io.tree)
                if self._trees.get(ds_id, io.tree) is not io.tree:
                    rolled.add(ds_id)
            for view in self.views:
                if view.dead:
                    continue
                if not self._exists(view.rec.id):
                    if view.parent is not None or view.bound:
                        self._unmount(view, inval)
                    view.dead = True
                    if view.snapshot:
                        self.snap_views.pop(view.rec.id, None)
                    continue
                view.rec = self.dsl.record(view.rec.id)
                view.name = self.dsl.name(view.rec.id)
            for view in self.views:
                if view.dead and view.fs is not None and not self._exists(view.rec.id):
                    view.fs = None                  # forgets of its inodes are dropped
            self._layout(self.views[0], inval)
            for view in self.views:
                if view.dead or view.snapshot:
                    continue
                names = {s.component for s in self.dsl.snapshots(view.rec.id)}
                if names != view.snapnames:
                    inval += [("entry", view.g(SNAPDIR_INO), os.fsencode(n))
                              for n in names ^ view.snapnames]
                    inval.append(("inode", view.g(SNAPDIR_INO)))
                    view.snapnames = names
                if view.rec.id in rolled:
                    fs = view.fs
                    for ino in set(fs._lookups) | {ROOT_INO}:
                        inval.append(("inode", view.g(ino)))
                        names = self._old_names.get((view.index, ino), set()) \
                            | self._dir_names(fs, ino)
                        inval += [("entry", view.g(ino), n) for n in names]
            for dataset, path in changes:
                rec = self.dsl.lookup(dataset)
                for view in self.views:
                    if view.dead or rec is None or view.rec.id != rec.id:
                        continue
                    try:
                        pdir, name = view.fs.parent_of(path)
                    except OSError:
                        continue
                    inval += [("entry", view.g(pdir), name), ("inode", view.g(pdir))]
                    try:
                        ino = view.fs.resolve(path, follow=False)
                    except OSError:
                        continue
                    inval.append(("inode", view.g(ino)))
            self._old_names = {}
            self._trees = {}
        return list(dict.fromkeys(inval))

    def invalidate(self, inval: list) -> None:
        """Make the kernel forget what `refresh` found stale, each item through the session
        that shows it. Never with the pool lock held: the kernel may wait for a request in
        progress, and that request for the lock. Never the name a child is mounted on: the
        kernel would detach the mount (d_invalidate)."""
        from fusezfs.fuse import fuse_sessions
        covered = set(self.mount_entries)
        for item in inval:
            idx, local = item[1] >> SHIFT, item[1] & LOCAL_MASK
            if idx >= len(self.views):
                continue
            view = self.views[idx]
            if item[0] == "entry" and (idx, local, item[2]) in covered:
                continue
            try:
                with fuse_sessions.lock:
                    mod = view.mod
                    if mod not in fuse_sessions.live:
                        continue        # its session ended
                    if item[0] == "entry":
                        mod.invalidate_entry(view.ino(local), item[2])
                    else:
                        mod.invalidate_inode(view.ino(local), attr_only=False)
            except OSError:
                pass            # the kernel did not know it
            except Exception:
                log.exception("invalidating %r", item)

    def _snap_view(self, head: View, rec: Record) -> View:
        """The view of snapshot `rec` under `head`'s .zfs/snapshot. A view belongs to the head
        it was found under (its inodes are that head's session's): once a promote has moved
        the snapshot to another head, the old view ends and the new head gets its own."""
        idx = self.snap_views.get(rec.id)
        if idx is not None:
            old = self.views[idx]
            if old.head is head and not old.dead:
                return old
            old.dead = True
        view = self._open_view(rec)
        view.head = head
        view.mod = head.mod
        self.snap_views[rec.id] = view.index
        return view

    def _split(self, g: int) -> tuple[View, int]:
        idx = g >> SHIFT
        if idx >= len(self.views) or self.views[idx].dead:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.views[idx], g & LOCAL_MASK

    def _snapdir_visible(self, view: View) -> bool:
        return str(properties.value(self.dsl, view.rec, "snapdir")) == "visible"

    def _snapshot_rec(self, view: View, name: bytes) -> Record | None:
        try:
            short = os.fsdecode(name)
        except UnicodeDecodeError:
            return None
        if not short or "/" in short or "@" in short:
            return None
        rec = self.dsl.lookup(f"{self.dsl.name(view.rec.id)}@{short}")
        return rec if rec is not None and rec.kind == "snapshot" else None

    # ---- attributes ---------------------------------------------------------------------
    def _entry(self, view: View, a) -> pyfuse3.EntryAttributes:
        e = view.mod.EntryAttributes()
        e.st_ino = view.ino(a.st_ino)
        e.generation = a.generation
        e.entry_timeout = self.entry_timeout
        e.attr_timeout = self.attr_timeout
        e.st_mode = a.st_mode
        e.st_nlink = a.st_nlink
        e.st_uid = a.st_uid
        e.st_gid = a.st_gid
        e.st_rdev = a.st_rdev
        e.st_size = a.st_size
        e.st_blksize = a.st_blksize
        e.st_blocks = a.st_blocks
        e.st_atime_ns = a.st_atime_ns
        e.st_mtime_ns = a.st_mtime_ns
        e.st_ctime_ns = a.st_ctime_ns
        return e

    def _virtual(self, view: View, local: int) -> pyfuse3.EntryAttributes:
        root = view.fs.getattr(ROOT_INO)
        e = view.mod.EntryAttributes()
        e.st_ino = view.g(local)
        e.generation = 0
        e.entry_timeout = self.entry_timeout
        e.attr_timeout = self.attr_timeout
        e.st_mode = stat.S_IFDIR | 0o555
        e.st_nlink = 2 + len(self.dsl.snapshots(view.rec.id)) if local == SNAPDIR_INO else 2
        e.st_uid = e.st_gid = 0
        e.st_size = 0
        e.st_blksize = 512
        e.st_blocks = 0
        t = self.rec_time(view.rec)
        e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = t or root.st_ctime_ns
        return e

    @staticmethod
    def rec_time(rec: Record) -> int:
        return int(rec.creation) * 10**9

    def _root_entry(self, view: View) -> pyfuse3.EntryAttributes:
        """The root of `view`, counted as a lookup."""
        return self._entry(view, view.fs.lookup(ROOT_INO, b"."))

    def _cover(self, view: View, a) -> pyfuse3.EntryAttributes:
        """Entry for an attribute found in `view`, replaced by a covering child's root (the
        lookup count moves from the covered directory to the child's root)."""
        child = self.covers.get((view.index, a.st_ino))
        if child is None:
            return self._entry(view, a)
        view.fs.forget(a.st_ino, 1)
        return self._root_entry(self.views[child])

    def _is_covered(self, view: View, parent: int, name: bytes) -> bool:
        """The name is the root's .zfs, or a directory a child covers: EBUSY to remove."""
        if parent == ROOT_INO and name == b".zfs" and not view.snapshot:
            return True
        if not any(idx == view.index for idx, _ino in self.covers):
            return False                # nothing is mounted in this view: skip the lookup
        try:
            ino = view.fs.lookup(parent, name).st_ino
        except OSError:
            return False
        view.fs.forget(ino, 1)
        return (view.index, ino) in self.covers

    # ---- running synchronous code --------------------------------------------------------
    @staticmethod
    def _guarded(fn, args):
        """Run fn, turning OSError into FUSE's errno and any other failure into EIO."""
        try:
            return fn(*args)
        except pyfuse3.FUSEError:
            raise
        except OSError as e:
            raise fuse_error(e) from None
        except Exception:
            log.exception("internal error in %s", getattr(fn, "__name__", fn))
            raise pyfuse3.FUSEError(errno.EIO) from None

    def _call(self, fn, *args):
        with self.lock:
            return self._guarded(fn, args)

    async def _run(self, fn, *args):
        # the common case inline: the lock is free, run on the trio thread (no thread hop)
        lock = self.lock
        if lock.acquire(False):
            try:
                return self._guarded(fn, args)
            finally:
                lock.release()
        return await run_sync_in_thread(self._call, fn, *args)

    async def _run_thread(self, fn, *args):
        return await run_sync_in_thread(self._call, fn, *args)

    # ---- lookups ------------------------------------------------------------------------
    async def lookup(self, parent_inode, name, ctx=None):
        return await self._run(self._lookup, parent_inode, bytes(name))

    def _lookup(self, parent: int, name: bytes) -> pyfuse3.EntryAttributes:
        view, local = self._split(parent)
        if local == CTL_INO:
            if name == b"snapshot":
                return self._virtual(view, SNAPDIR_INO)
            if name == b".":
                return self._virtual(view, CTL_INO)
            if name == b"..":
                return self._root_entry(view)
            return self._negative(view)
        if local == SNAPDIR_INO:
            if name == b".":
                return self._virtual(view, SNAPDIR_INO)
            if name == b"..":
                return self._virtual(view, CTL_INO)
            rec = self._snapshot_rec(view, name)
            if rec is None:
                return self._negative(view)
            return self._root_entry(self._snap_view(view, rec))
        if local == ROOT_INO and name == b"..":
            if view.head is not None:
                return self._virtual(view.head, SNAPDIR_INO)
            if view.own:         # the root of a mount is its own parent
                return self._root_entry(view)
            if view.parent is not None:
                host_idx, dir_ino = view.parent
                host = self.views[host_idx]
                return self._cover(host, host.fs.lookup(dir_ino, b".."))
        if local == ROOT_INO and name == b".zfs" and not view.snapshot:
            return self._virtual(view, CTL_INO)
        try:
            a = view.fs.lookup(local, name)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return self._negative(view)
            raise
        return self._cover(view, a)

    def _negative(self, view: View) -> pyfuse3.EntryAttributes:
        if self.negative_timeout <= 0:
            raise pyfuse3.FUSEError(errno.ENOENT)
        e = view.mod.EntryAttributes()
        e.st_ino = 0
        e.entry_timeout = self.negative_timeout
        return e

    async def forget(self, inode_list):
        try:
            await self._run(self._forget, list(inode_list))
        except Exception:       # must not raise
            log.exception("forget")

    def _forget(self, inode_list) -> None:
        for g, n in inode_list:
            idx, local = g >> SHIFT, g & LOCAL_MASK
            if idx < len(self.views) and local not in VIRTUAL \
                    and self.views[idx].fs is not None:
                self.views[idx].fs.forget(local, n)

    async def getattr(self, inode, ctx=None):
        return await self._run(self._getattr, inode)

    def _getattr(self, g: int) -> pyfuse3.EntryAttributes:
        view, local = self._split(g)
        if local in VIRTUAL:
            return self._virtual(view, local)
        return self._entry(view, view.fs.getattr(local))

    async def setattr(self, inode, attr, fields, fh, ctx):
        return await self._run(self._setattr, inode, attr, fields)

    def _setattr(self, g: int, attr, fields) -> pyfuse3.EntryAttributes:
        view, local = self._split(g)
        if local in VIRTUAL:
            raise pyfuse3.FUSEError(errno.EROFS)
        kw = {name: getattr(attr, source) for name, flag, source in SETATTR_FIELDS
              if getattr(fields, flag)}
        if not kw or (len(kw) == 1 and "ctime" in kw):
            # The writeback cache's ctime-only setattr, one after every unlink, link, rename
            # and xattr change: the kernel bumped the inode's ctime in its cache for an
            # operation this layer has applied already, with its own ctime. Nothing to
            # change (a ctime cannot be set from user space): the current attributes.
            return self._entry(view, view.fs.getattr(local))
        return self._entry(view, view.fs.setattr(local, **kw))

    async def readlink(self, inode, ctx):
        return await self._run(self._readlink, inode)

    def _readlink(self, g: int) -> bytes:
        view, local = self._split(g)
        if local in VIRTUAL:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return view.fs.readlink(local)

    # ---- making and removing names -------------------------------------------------------
    def _real_dir(self, g: int) -> tuple[View, int]:
        view, local = self._split(g)
        if local in VIRTUAL:
            raise pyfuse3.FUSEError(errno.EROFS)
        return view, local

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        return await self._run(self._mknod, parent_inode, bytes(name), mode, rdev, ctx.uid,
                               ctx.gid)

    def _mknod(self, parent, name, mode, rdev, uid, gid):
        view, local = self._real_dir(parent)
        self._check_new(view, local, name)
        return self._entry(view, view.fs.mknod(local, name, mode, rdev, uid, gid))

    def _check_new(self, view: View, local: int, name: bytes) -> None:
        if local == ROOT_INO and name == b".zfs" and not view.snapshot:
            raise pyfuse3.FUSEError(errno.EEXIST)

    async def mkdir(self, parent_inode, name, mode, ctx):
        return await self._run(self._mkdir, parent_inode, bytes(name), mode, ctx.uid, ctx.gid)

    def _mkdir(self, parent, name, mode, uid, gid):
        view, local = self._real_dir(parent)
        self._check_new(view, local, name)
        return self._entry(view, view.fs.mkdir(local, name, mode, uid, gid))

    async def symlink(self, parent_inode, name, target, ctx):
        return await self._run(self._symlink, parent_inode, bytes(name), bytes(target),
                               ctx.uid, ctx.gid)

    def _symlink(self, parent, name, target, uid, gid):
        view, local = self._real_dir(parent)
        self._check_new(view, local, name)
        return self._entry(view, view.fs.symlink(local, name, target, uid, gid))

    async def link(self, inode, new_parent_inode, new_name, ctx):
        return await self._run(self._link, inode, new_parent_inode, bytes(new_name))

    def _link(self, g, new_parent, new_name):
        view, local = self._split(g)
        pview, plocal = self._real_dir(new_parent)
        if local in VIRTUAL:
            raise pyfuse3.FUSEError(errno.EPERM)
        if view is not pview:
            raise pyfuse3.FUSEError(errno.EXDEV)
        self._check_new(view, plocal, new_name)
        return self._entry(view, view.fs.link(local, plocal, new_name))

    async def unlink(self, parent_inode, name, ctx):
        return await self._run(self._unlink, parent_inode, bytes(name))

    def _unlink(self, parent, name):
        view, local = self._real_dir(parent)
        if self._is_covered(view, local, name):
            raise pyfuse3.FUSEError(errno.EBUSY)
        view.fs.unlink(local, name)

    async def rmdir(self, parent_inode, name, ctx):
        return await self._run(self._rmdir, parent_inode, bytes(name))

    def _rmdir(self, parent, name):
        view, local = self._real_dir(parent)
        if self._is_covered(view, local, name):
            raise pyfuse3.FUSEError(errno.EBUSY)
        view.fs.rmdir(local, name)

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        return await self._run(self._rename, parent_inode_old, bytes(name_old),
                               parent_inode_new, bytes(name_new), flags)

    def _rename(self, old_parent, old_name, new_parent, new_name, flags):
        oview, olocal = self._real_dir(old_parent)
        nview, nlocal = self._real_dir(new_parent)
        if oview is not nview:
            raise pyfuse3.FUSEError(errno.EXDEV)
        if self._is_covered(oview, olocal, old_name) or self._is_covered(nview, nlocal, new_name):
            raise pyfuse3.FUSEError(errno.EBUSY)
        oview.fs.rename(olocal, old_name, nlocal, new_name, flags)

    # ---- files --------------------------------------------------------------------------
    def _new_fh(self, table: dict, view: View, fh: int) -> int:
        gfh = self._next_fh
        self._next_fh += 1
        table[gfh] = (view, fh)
        return gfh

    def _file(self, gfh: int) -> tuple[View, int]:
        try:
            view, fh = self.files[gfh]
        except KeyError:
            raise pyfuse3.FUSEError(errno.EBADF) from None
        if view.fs is None:                 # its dataset was destroyed
            raise pyfuse3.FUSEError(errno.EIO)
        return view, fh

    async def open(self, inode, flags, ctx):
        return await self._run(self._open, inode, flags)

    def _open_flags(self, flags: int) -> int:
        """With the writeback cache the kernel may read a page through any handle (to fill
        a partial page before writing it back) and writes pages at their own offsets: a
        write-only handle reads too, and O_APPEND is the kernel's (it writes at its i_size)."""
        if self.enable_writeback_cache:
            if flags & os.O_ACCMODE == os.O_WRONLY:
                flags = flags & ~os.O_ACCMODE | os.O_RDWR
            flags &= ~os.O_APPEND
        return flags

    def _open(self, g, flags):
        view, local = self._split(g)
        if local in VIRTUAL:
            raise pyfuse3.FUSEError(errno.EISDIR)
        fh = view.fs.open(local, self._open_flags(flags))
        fi = view.mod.FileInfo(fh=self._new_fh(self.files, view, fh))
        fi.keep_cache = view.snapshot     # a snapshot never changes: keep its page cache
        return fi

    async def create(self, parent_inode, name, mode, flags, ctx):
        return await self._run(self._create, parent_inode, bytes(name), mode, flags, ctx.uid,
                               ctx.gid)

    def _create(self, parent, name, mode, flags, uid, gid):
        view, local = self._real_dir(parent)
        self._check_new(view, local, name)
        fh, a = view.fs.create(local, name, mode, self._open_flags(flags), uid, gid)
        return view.mod.FileInfo(fh=self._new_fh(self.files, view, fh)), self._entry(view, a)

    async def read(self, fh, off, size):
        return await self._run(self._read, fh, off, size)

    def _read(self, gfh, off, size):
        view, fh = self._file(gfh)
        return view.fs.read(fh, off, size)

    async def write(self, fh, off, buf):
        return await self._run(self._write, fh, off, buf)

    def _write(self, gfh, off, buf):
        view, fh = self._file(gfh)
        return view.fs.write(fh, off, buf)

    async def flush(self, fh):
        # Nothing to do at close (written data is in the POSIX layer's buffers, and the
        # kernel writes its dirty pages before it would ask): ENOSYS tells it to stop sending
        # FLUSH at all, one request less per close.
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def release(self, fh):
        return await self._run(self._release, fh)

    def _release(self, gfh):
        view, fh = self.files.pop(gfh, (None, None))
        if view is not None and view.fs is not None:
            view.fs.release(fh)

    async def fsync(self, fh, datasync):
        if not self._inline_if_light(self._fsync, fh):
            await self._run_thread(self._fsync, fh)

    def _inline_if_light(self, fn, gfh=None) -> bool:
        """Run an fsync here, on the loop's thread, when it is a small append to the intent
        log with the pool lock free (a database's fsync: the hop to a worker would cost more
        than the append); anything that may commit or wait for a txg goes to a worker."""
        lock = self.lock
        if not lock.acquire(False):
            return False
        try:
            if gfh is None:
                light = all(fs.fsync_is_light(None) for fs in self.handle._open.values())
            else:
                view, fh = self.files.get(gfh, (None, None))
                light = view is not None and view.fs is not None and view.fs.fsync_is_light(fh)
            if not light:
                return False
            self._guarded(fn, (gfh,) if gfh is not None else ())
            return True
        finally:
            lock.release()

    def _fsync(self, gfh):
        # the file's changes and the names that find it, through the intent log (msync and
        # O_SYNC writes come here too: the kernel fsyncs for them)
        view, fh = self._file(gfh)
        view.fs.fsync(fh)

    async def fallocate(self, fh, mode, offset, length):
        """FALLOCATE (fuse_extra.py installs it; pyfuse3 has no handler of its own)."""
        return await self._run(self._fallocate, fh, mode, offset, length)

    def _fallocate(self, gfh, mode, offset, length):
        view, fh = self._file(gfh)
        view.fs.fallocate(fh, mode, offset, length)

    async def lseek(self, fh, offset, whence):
        """LSEEK, for SEEK_DATA and SEEK_HOLE (the kernel does the other whences itself).
        The kernel asks without writing its dirty pages first: with the writeback cache,
        data it still holds would look like a hole, so it is written to us first (syncfs of
        the file's mount, on a worker thread: those writes are requests we answer)."""
        if self.enable_writeback_cache:
            await run_sync_in_thread(self._flush_file_mount, fh)
        return await self._run(self._lseek, fh, offset, whence)

    def _flush_file_mount(self, gfh) -> None:
        view, _fh = self.files.get(gfh, (None, None))
        if view is None:
            return
        path = view.path if view.own and view.path else self.mountpoint
        if view.snapshot or not path:
            return                          # (a snapshot has no dirty pages)
        tid = threading.get_native_id()
        self.syncing.add(tid)
        try:
            syncfs(path)
        except OSError as e:
            log.warning("syncfs %s: %s", path, e.strerror)
        finally:
            self.syncing.discard(tid)

    def _lseek(self, gfh, offset, whence):
        view, fh = self._file(gfh)
        return view.fs.lseek(fh, offset, whence)

    # ---- directories --------------------------------------------------------------------
    async def opendir(self, inode, ctx):
        gfh = await self._run(self._opendir, inode)
        if ctx is not None and ctx.pid in self.syncing:
            self.internal.add(gfh)      # flush_kernel's syncfs: not a user keeping it busy
        return gfh

    def _opendir(self, g):
        view, local = self._split(g)
        if local in VIRTUAL:
            return self._new_fh(self.dirs, view, (None, local))
        return self._new_fh(self.dirs, view, (view.fs.opendir(local), local))

    async def readdir(self, fh, start_id, token):
        cookie = start_id
        try:
            reply = self.dirs[fh][0].mod.readdir_reply
        except KeyError:
            raise pyfuse3.FUSEError(errno.EBADF) from None
        while True:
            batch = await self._run(self._readdir, fh, cookie)
            if not batch:
                return
            accepted = []
            for name, attr, next_id, view, local in batch:
                if not reply(token, name, attr, next_id):
                    break
                accepted.append((view, local))
                cookie = next_id
            if accepted:
                await self._run(self._add_lookups, accepted)
            if len(accepted) < len(batch):
                return

    def _add_lookups(self, accepted) -> None:
        for view, local in accepted:
            if local not in VIRTUAL:
                view.fs.add_lookup(local)

    def _readdir(self, gfh, cookie):
        try:
            view, (fh, local) = self.dirs[gfh]
        except KeyError:
            raise pyfuse3.FUSEError(errno.EBADF) from None
        if view.fs is None:                 # its dataset was destroyed
            raise pyfuse3.FUSEError(errno.EIO)
        out = []
        if local == CTL_INO:
            if cookie < 1:
                out.append((b"snapshot", self._virtual(view, SNAPDIR_INO), 1, view, SNAPDIR_INO))
            return out
        if local == SNAPDIR_INO:
            for rec in sorted(self.dsl.snapshots(view.rec.id), key=lambda r: r.id):
                if rec.id > cookie:
                    sv = self._snap_view(view, rec)
                    a = sv.fs.getattr(ROOT_INO)
                    out.append((os.fsencode(rec.component), self._entry(sv, a), rec.id, sv,
                                ROOT_INO))
                    if len(out) >= READDIR_CHUNK:
                        break
            return out
        if local == ROOT_INO and not view.snapshot and cookie < COOKIE_ZFS \
                and self._snapdir_visible(view):
            out.append((b".zfs", self._virtual(view, CTL_INO), COOKIE_ZFS, view, CTL_INO))
        for e in view.fs.readdir(local, max(cookie, COOKIE_ZFS), READDIR_CHUNK):
            child = self.covers.get((view.index, e.ino))
            if child is not None:
                cv = self.views[child]
                out.append((e.name, self._entry(cv, cv.fs.getattr(ROOT_INO)), e.cookie, cv,
                            ROOT_INO))
            else:
                out.append((e.name, self._entry(view, view.fs.getattr(e.ino)), e.cookie, view,
                            e.ino))
        return out

    async def releasedir(self, fh):
        return await self._run(self._releasedir, fh)

    def _releasedir(self, gfh):
        self.internal.discard(gfh)
        view, (fh, _local) = self.dirs.pop(gfh, (None, (None, None)))
        if view is not None and fh is not None and view.fs is not None:
            view.fs.releasedir(fh)

    async def fsyncdir(self, fh, datasync):
        if not self._inline_if_light(self._fsyncdir):
            await self._run_thread(self._fsyncdir)

    def _fsyncdir(self):
        """fsync of a directory is the whole-pool checkpoint (syncfs(2) and sync(1) never
        reach a FUSE daemon): every filesystem's pending changes through the intent log."""
        for fs in list(self.handle._open.values()):
            fs.fsync_all()

    # ---- xattrs -------------------------------------------------------------------------
    async def setxattr(self, inode, name, value, ctx):
        return await self._run(self._setxattr, inode, bytes(name), bytes(value))

    def _setxattr(self, g, name, value):
        view, local = self._real_dir(g)
        view.fs.setxattr(local, name, value)

    async def getxattr(self, inode, name, ctx):
        return await self._run(self._getxattr, inode, bytes(name))

    def _getxattr(self, g, name):
        view, local = self._split(g)
        if local in VIRTUAL:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return view.fs.getxattr(local, name)

    async def listxattr(self, inode, ctx):
        return await self._run(self._listxattr, inode)

    def _listxattr(self, g):
        view, local = self._split(g)
        if local in VIRTUAL:
            return []
        return view.fs.listxattr(local)

    async def removexattr(self, inode, name, ctx):
        return await self._run(self._removexattr, inode, bytes(name))

    def _removexattr(self, g, name):
        view, local = self._real_dir(g)
        view.fs.removexattr(local, name)

    # ---- the filesystem -----------------------------------------------------------------
    async def statfs(self, ctx):
        return await self.statfs_of(self.views[0])

    async def statfs_of(self, view: View):
        """statfs(2) of the mount of `view`: each mounted dataset has its own session, so its
        own figures (its quota, its share of the pool). """
        return await self._run(self._statfs, view)

    def _statfs(self, view: View):
        s = view.fs.statfs()
        out = view.mod.StatvfsData()
        out.f_bsize = s.f_bsize
        out.f_frsize = s.f_frsize
        out.f_blocks = s.f_blocks
        out.f_bfree = s.f_bfree
        out.f_bavail = s.f_bavail
        out.f_files = s.f_files
        out.f_ffree = s.f_ffree
        out.f_favail = s.f_favail
        out.f_namemax = 255
        return out

    def sync(self) -> int:
        """Commit the open txg (the timer's sync, on a worker thread): pipelined, so requests
        wait for the lock only while the txg is written, not while the disk flushes it."""
        with self.lock:
            return self.pool.sync(wait=False)

    def close(self) -> None:
        """After the session ended: drop every lookup and handle (unlinked files go)."""
        with self.lock:
            closed: set[int] = set()
            for view in self.views:
                if view.fs is None:
                    continue
                if id(view.fs) not in closed:   # views of one dataset share its Posix
                    closed.add(id(view.fs))
                    try:
                        view.fs.close()
                    except Exception:
                        log.exception("closing %s", view.name)
                self.handle.drop(view.rec.id)
            self.files.clear()
            self.dirs.clear()
