"""One FUSE session per mounted dataset, all in the daemon's one trio loop.

Theory of operation
-------------------
ZFS mounts every filesystem on its own: each has its own superblock, so its own st_dev, its
own statfs figures and its own line in the mount table, and the kernel stops rename and link
between them (EXDEV) and rmdir of a mountpoint (EBUSY) by itself. The kernel gives a FUSE
mount one superblock, so the daemon serves one FUSE session per mounted dataset: the pool's
root at its mountpoint, and each child with canmount=on on the directory of its mountpoint
inside its parent's mount, as `zfs mount` does (fuse_ops.py decides which; this module
makes and ends the sessions).

pyfuse3 keeps its session in module globals: one module instance serves one session. A
second session needs a second instance of the extension, and the dynamic loader gives one
only for a different file: `instance()` copies pyfuse3's shared object to a temporary file,
loads it under pyfuse3's own name (its pure-Python half, Operations, is shared) and unlinks
the file at once (the mapping stays). Each instance has its own classes, so everything a
session's handlers hand to its instance (EntryAttributes, FileInfo, StatvfsData, FUSEError,
readdir_reply's token) comes from that instance: fuse_ops.View.mod names it. Instances of
ended sessions are reused.

`SessionOps` adapts the one `fuse_ops.Operations` to a child session: FUSE calls the root
of every mount inode 1, so 1 is turned into the child's root, and the FUSEError the shared
code raises into the instance's own. The pool's root session uses Operations directly.

Mounting: the kernel resolves a child's mountpoint through its parent's mount, whose
requests this very process answers, on the trio thread. pyfuse3.init mounts while holding
the GIL (libfuse stats the path, then calls mount(2) or fusermount3), so the trio thread
could never answer and the mount would wait forever. `fuse_mount` therefore mounts from
Python, on a worker thread, with the GIL released around every call that may wait (mount(2)
through ctypes as root, fusermount3 with its fd-passing socket otherwise), and hands the
open /dev/fuse descriptor to pyfuse3.init as "/dev/fd/N", which libfuse takes as mounted
already. Unmounting, too, is done here (fusermount3 or umount2), never by libfuse.

Nothing here touches the pool: a session only routes requests, so mounting or ending one
cannot lose data.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading

import pyfuse3
import trio

from fusezfs.zpl.posix import ROOT_INO

log = logging.getLogger("fusezfs.fuse")

_free: list = []                # instances whose session ended, ready for another
_lock = threading.Lock()
_loaded = 0
# Instances with an open session. A notification through a closed one would reach libfuse
# with no session, so `lock` orders invalidations (fuse_ops) against closing.
live: set = set()
lock = threading.Lock()


def instance():
    """A pyfuse3 module instance with no session: a free one, or a fresh copy."""
    global _loaded
    with _lock:
        if _free:
            return _free.pop()
        _loaded += 1
        serial = _loaded
    src = pyfuse3.__file__
    errors = []
    from fusezfs.host.registry import state_dir
    for d in (state_dir(), "/dev/shm", tempfile.gettempdir()):
        if not d or not os.path.isdir(d):
            continue
        try:
            fd, path = tempfile.mkstemp(prefix=f".pyfuse3-{serial}-", suffix=".so", dir=d)
        except OSError as e:
            errors.append(f"{d}: {e.strerror}")
            continue
        try:
            with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
                shutil.copyfileobj(f, out)
            # a package like pyfuse3 itself: its relative import finds the shared half
            spec = importlib.util.spec_from_file_location(
                "pyfuse3", path, submodule_search_locations=[os.path.dirname(src)])
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            return mod
        except (OSError, ImportError) as e:      # e.g. a noexec file system
            errors.append(f"{d}: {e}")
        finally:
            try:
                os.unlink(path)
            except OSError:
                pass
    raise OSError(f"cannot load another pyfuse3 instance ({'; '.join(errors)})")


MS_RDONLY, MS_NOSUID, MS_NODEV = 1, 2, 4
READAHEAD_KB = 1024     # a sequential reader's FUSE reads come as 1 MiB requests


def fuse_mount(path: str, fsname: str, options: set[str]) -> int:
    """Mount a FUSE file system of type fuse.fusezfs at `path` and return its open /dev/fuse
    descriptor. `options`: default_permissions, allow_other, ro. Root mounts with mount(2);
    anyone else through the setuid fusermount3, which passes the descriptor back over a
    socket (libfuse's protocol: the socket's number in _FUSE_COMMFD, one byte with the fd)."""
    from fusezfs.fuse.fuse_ops import libc_call
    from fusezfs.host.mounts import below_fusezfs
    flags = sorted(o for o in options if o in ("default_permissions", "allow_other"))
    # mount(2) resolves `path` in this thread: never below one of our own mounts (prober.py)
    if os.geteuid() == 0 and not below_fusezfs(path):
        fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        data = ",".join([f"fd={fd}", "rootmode=40000", f"user_id={os.getuid()}",
                         f"group_id={os.getgid()}"] + flags)
        try:
            libc_call("mount", os.fsencode(fsname), os.fsencode(path), b"fuse.fusezfs",
                      MS_NOSUID | MS_NODEV | (MS_RDONLY if "ro" in options else 0),
                      data.encode())
        except OSError:
            os.close(fd)
            raise
        return fd
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        opts = ",".join([f"fsname={fsname}", "subtype=fusezfs"] + flags +
                        (["ro"] if "ro" in options else []))
        proc = subprocess.Popen(["fusermount3", "-o", opts, "--", path],
                                env=dict(os.environ, _FUSE_COMMFD=str(theirs.fileno())),
                                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        theirs.close()
        _msg, fds, _flags, _addr = socket.recv_fds(ours, 1, 1)
        err = proc.communicate()[1].decode(errors="replace").strip()
        if not fds:
            raise OSError(0, err or f"fusermount3 exited with {proc.returncode}")
        return fds[0]
    finally:
        ours.close()
        theirs.close()


def release(mod) -> None:
    """`mod`'s session was closed: keep the instance for the next one."""
    if mod is not pyfuse3:
        with _lock:
            _free.append(mod)


class SessionOps(pyfuse3.Operations):
    """The FUSE operations of a child dataset's session (see the module comment)."""

    supports_dot_lookup = True

    def __init__(self, core, view) -> None:
        super().__init__()
        self.core = core
        self.view = view
        self.mod = view.mod
        self.root = view.g(ROOT_INO)
        self.enable_writeback_cache = core.enable_writeback_cache

    def _in(self, ino: int) -> int:
        return self.root if ino == pyfuse3.ROOT_INODE else ino

    async def _do(self, coro):
        try:
            return await coro
        except pyfuse3.FUSEError as e:
            raise self.mod.FUSEError(e.errno) from None

    async def lookup(self, parent_inode, name, ctx=None):
        return await self._do(self.core.lookup(self._in(parent_inode), name, ctx))

    async def forget(self, inode_list):
        await self.core.forget([(self._in(i), n) for i, n in inode_list])

    async def getattr(self, inode, ctx=None):
        return await self._do(self.core.getattr(self._in(inode), ctx))

    async def setattr(self, inode, attr, fields, fh, ctx):
        return await self._do(self.core.setattr(self._in(inode), attr, fields, fh, ctx))

    async def readlink(self, inode, ctx):
        return await self._do(self.core.readlink(self._in(inode), ctx))

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        return await self._do(self.core.mknod(self._in(parent_inode), name, mode, rdev, ctx))

    async def mkdir(self, parent_inode, name, mode, ctx):
        return await self._do(self.core.mkdir(self._in(parent_inode), name, mode, ctx))

    async def symlink(self, parent_inode, name, target, ctx):
        return await self._do(self.core.symlink(self._in(parent_inode), name, target, ctx))

    async def link(self, inode, new_parent_inode, new_name, ctx):
        return await self._do(self.core.link(self._in(inode), self._in(new_parent_inode),
                                             new_name, ctx))

    async def unlink(self, parent_inode, name, ctx):
        return await self._do(self.core.unlink(self._in(parent_inode), name, ctx))

    async def rmdir(self, parent_inode, name, ctx):
        return await self._do(self.core.rmdir(self._in(parent_inode), name, ctx))

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        return await self._do(self.core.rename(self._in(parent_inode_old), name_old,
                                               self._in(parent_inode_new), name_new, flags,
                                               ctx))

    async def open(self, inode, flags, ctx):
        return await self._do(self.core.open(self._in(inode), flags, ctx))

    async def create(self, parent_inode, name, mode, flags, ctx):
        return await self._do(self.core.create(self._in(parent_inode), name, mode, flags,
                                               ctx))

    async def read(self, fh, off, size):
        return await self._do(self.core.read(fh, off, size))

    async def write(self, fh, off, buf):
        return await self._do(self.core.write(fh, off, buf))

    async def flush(self, fh):
        return await self._do(self.core.flush(fh))

    async def release(self, fh):
        return await self._do(self.core.release(fh))

    async def fsync(self, fh, datasync):
        return await self._do(self.core.fsync(fh, datasync))

    async def opendir(self, inode, ctx):
        return await self._do(self.core.opendir(self._in(inode), ctx))

    async def readdir(self, fh, start_id, token):
        return await self._do(self.core.readdir(fh, start_id, token))

    async def releasedir(self, fh):
        return await self._do(self.core.releasedir(fh))

    async def fsyncdir(self, fh, datasync):
        return await self._do(self.core.fsyncdir(fh, datasync))

    async def setxattr(self, inode, name, value, ctx):
        return await self._do(self.core.setxattr(self._in(inode), name, value, ctx))

    async def getxattr(self, inode, name, ctx):
        return await self._do(self.core.getxattr(self._in(inode), name, ctx))

    async def listxattr(self, inode, ctx):
        return await self._do(self.core.listxattr(self._in(inode), ctx))

    async def removexattr(self, inode, name, ctx):
        return await self._do(self.core.removexattr(self._in(inode), name, ctx))

    async def statfs(self, ctx):
        return await self._do(self.core.statfs_of(self.view))


def unmount(path: str, lazy: bool) -> tuple[bool, str]:
    """Unmount `path` (root: umount2; others, and below one of our own mounts, whose lookups
    this thread must not wait for: fusermount3 -u in a child process): (done, error text)."""
    from fusezfs.host.mounts import below_fusezfs, fusermount_unmount
    if os.geteuid() == 0 and not below_fusezfs(path):
        from fusezfs.fuse.fuse_ops import libc_call
        try:
            libc_call("umount2", os.fsencode(path), 2 if lazy else 0)     # MNT_DETACH
            return True, ""
        except OSError as e:
            return False, e.strerror
    return fusermount_unmount(path, lazy)


def _depth(view) -> int:
    """How deep a view is mounted: its path's depth once mounted (a single mounted inside the
    tree goes before the tree), else its place in the tree."""
    return (view.path or "").rstrip("/").count("/") * 1000 + view.rel.count("/") + bool(view.rel)


def _device(path: str) -> str | None:
    """The device ("MAJOR:MINOR") of the fusezfs mount on top at `path`, or None."""
    from fusezfs.host.mounts import FSTYPE, mount_at
    m = mount_at(path)
    return m.dev if m is not None and m.fstype == FSTYPE else None


class Sessions:
    """Every FUSE session of one daemon but its tree's root: the tree's children, and the
    single datasets mounted at paths of their own (`mount`, for daemon.SingleMounts).
    fuse_ops.Operations decides (under the pool lock) which children are mounted and queues
    them in `to_mount` and `to_end`; `apply` makes it so (see the module comment for why on
    another thread). A child unmounted from outside (umount, fusermount3 -u) stays
    unmounted, as in zfs."""

    def __init__(self, core, fuse_opts: set[str], tasks: int = 99) -> None:
        self.core = core
        self.tasks = tasks              # pyfuse3.main's max_tasks, as the tree's session
        self.fuse_opts = {o for o in fuse_opts if not o.startswith("fsname=")}
        self.nursery = None
        self.token = None
        self.stopping = False           # the service is ending: every session goes
        self.apply_lock = threading.Lock()
        self.prober = None              # prober.Prober: looks at paths for this process

    def start(self, nursery) -> None:
        """Called on the trio thread once the loop runs."""
        self.nursery = nursery
        self.token = trio.lowlevel.current_trio_token()

    def apply(self) -> None:
        with self.apply_lock:
            with self.core.lock:
                ends, self.core.to_end = self.core.to_end, []
                starts, self.core.to_mount = self.core.to_mount, []
            for view in sorted(ends, key=_depth, reverse=True):
                self._unmount(view, lazy=True)
            for view in sorted(starts, key=_depth):
                if not view.dead and not self.stopping:
                    try:
                        self._start(view)
                    except Exception:
                        log.exception("mounting %s", view.name)

    def mount(self, view, path: str) -> str | None:
        """Mount a standalone view (daemon.SingleMounts) at `path`: None, or why it failed."""
        with self.apply_lock:
            return self._start(view, path)

    def _start(self, view, path: str | None = None) -> str | None:
        core = self.core
        path = path or os.path.join(core.mountpoint, view.rel)
        opts = self.fuse_opts | ({"ro"} if view.snapshot else set())
        try:
            mod = instance()
        except OSError as e:
            log.error("%s: not mounted at %s: %s", view.name, path, e)
            return str(e)
        with core.lock:
            view.mod = mod
        try:
            fd = fuse_mount(path, view.name, opts)
        except OSError as e:
            log.error("%s: cannot mount at %s: %s", view.name, path, e.strerror)
            with core.lock:
                view.mod = pyfuse3
            release(mod)
            return e.strerror
        try:
            mod.init(SessionOps(core, view), f"/dev/fd/{fd}", self.fuse_opts)
            from fusezfs.fuse.fuse_extra import install
            install(mod, core)          # fallocate and SEEK_DATA/SEEK_HOLE, for this session
        except Exception:
            with core.lock:
                view.mod = pyfuse3
            os.close(fd)
            unmount(path, lazy=True)
            release(mod)
            raise
        with lock:
            live.add(mod)
        with core.lock:
            view.path = path
            view.dev = _device(path)
            core.mount_entries.add(view.entry)
        trio.from_thread.run_sync(self.nursery.start_soon, self._serve, view, mod,
                                  trio_token=self.token)
        try:        # (the prober: this thread must not look into its own mount)
            self.prober.call("readahead", path, READAHEAD_KB)
        except OSError as e:
            log.info("read-ahead of %s left at the kernel's default: %s", path, e.strerror)
        log.info("%s mounted at %s", view.name, path)
        return None

    async def _serve(self, view, mod) -> None:
        try:
            await mod.main(max_tasks=self.tasks)
        except Exception:
            log.exception("the FUSE session of %s failed", view.name)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._closed, view, mod)

    def _closed(self, view, mod) -> None:
        """Its loop ended: unmounted (from outside, or by `_unmount`), or the daemon ends."""
        core = self.core
        with lock:
            live.discard(mod)
            if view.dev is not None and _device(view.path) == view.dev:
                unmount(view.path, lazy=True)   # its loop was ended: detach it
            try:
                mod.close(unmount=False)
            except Exception:
                log.exception("closing the session of %s", view.name)
        with core.lock:
            core.mount_entries.discard(view.entry)
            if not view.dead and not self.stopping:
                log.info("%s was unmounted from %s", view.name, view.path)
                # the kernel wrote its dirty pages while it unmounted: durable now, as an
                # unmount promises (the service goes on serving the pool's other mounts)
                core.pool.sync()
                if not view.bound:
                    core.unmounted.add(view.rec.id)
                view.dead = True
            for v in core.views:
                if v.mod is mod:
                    v.mod = None
        release(mod)

    def _unmount(self, view, lazy: bool) -> str | None:
        """Unmount a child's session (it then ends by itself); an error message, or None."""
        from fusezfs.host.mounts import BUSY
        if view.dev is None or _device(view.path) != view.dev:
            return None
        ok, msg = unmount(view.path, lazy=lazy)
        if ok or _device(view.path) != view.dev:
            return None
        return f"cannot unmount '{view.path}': " + (BUSY if "busy" in msg.lower() else msg)

    def unmount_child(self, ds_id: int, force: bool) -> str | None:
        """`zfs unmount` of a child of the tree: it stays unmounted (`mount_child` undoes
        that). An error in zfs's words, or None."""
        with self.apply_lock:
            with self.core.lock:
                view = next((v for v in self.core.views if v.own and not v.bound
                             and not v.dead and v.dev and v.rec.id == ds_id), None)
            if view is None:
                return None
            err = self._unmount(view, lazy=force)
            if err is None:
                with self.core.lock:
                    self.core.unmounted.add(ds_id)
                    view.dead = True
            return err

    def end_all(self, force: bool = False) -> list[str]:
        """Unmount every child, deepest first (the daemon's end, `unmount POOL`): at once if
        possible, lazily with `force`; the error messages of those left mounted."""
        self.stopping = True
        with self.apply_lock:
            with self.core.lock:
                views = [v for v in self.core.views if v.own and v.dev is not None
                         and v.mod is not None]
            failed = []
            for view in sorted(views, key=_depth, reverse=True):
                err = self._unmount(view, lazy=force)
                if err:
                    failed.append(err)
            self.stopping = not failed          # still serving: children may come again
            return failed
