"""A volume as a regular file at a path of its own (ZFS's /dev/zvol/POOL/VOL), served by FUSE.

Theory of operation
-------------------
Each volume of a served pool is a FUSE mount whose mountpoint is a regular file (libfuse and
the kernel allow a file as mountpoint when the root's mode is a regular file's), by default at
`<state dir>/zvol/POOL/VOL` (`volume_path`). The mount serves one inode, its root: a regular
file of the volume's size. read, write, fsync and fallocate go to volumes.Volume under the
pool's lock, on a worker thread (trio.to_thread), so the FUSE loop keeps answering; fallocate
PUNCH_HOLE|KEEP_SIZE and ZERO_RANGE (what the loop driver sends for BLKDISCARD and
BLKZEROOUT) discard; writes past the end fail with ENOSPC and truncation to another size with
EPERM: a volume's size changes only by `zfs set volsize`. As root, `losetup -f --show PATH`
attaches it as a block device.

Nothing is kept here: every byte goes to the volume's tree through the same buffers the library
uses, flushed at each txg commit, and fsync commits the txg (volumes.py), so a daemon killed at
any moment loses only what no fsync promised, and the pool imports whole (DESIGN.md).

For the service (fusezfs/host) that owns a pool and its mounts, the calls are, from worker
threads of its trio loop (mounting may block; never on the loop's own thread):

    files = VolumeFiles(handle, default_root(), nursery, trio_token,
                        fuse_sessions.instance, fuse_sessions.release)
    errors = files.refresh()        # when it starts serving the pool, and after every command
                                    # that may have made, destroyed or renamed a volume
    errors = files.close()          # when it stops serving the pool (export, destroy, exit)

`refresh` starts a `VolumeFile` (one FUSE session, on a pyfuse3 instance of its own: pyfuse3
keeps one session per instance) for every volume not yet served and stops those of volumes
gone or renamed; each returns the volumes it could not serve or unmount, one line each. One
volume alone: `VolumeFile(handle, name, path, mod).start(nursery, token)` and `.stop()`. The
file (and its directories) is made if missing and removed once unmounted. The size a served
file shows follows volsize within a second (attr_timeout; a loop device needs `losetup -c`).
`serve_volume` runs one VolumeFile in a process of its own (`python -m
fusezfs.host.volume_serve POOL/VOL PATH`, volume_serve.py, which opens the pool itself: only while no other
process serves it), for tests and tools.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
import threading

import pyfuse3
import trio

from fusezfs.zpl.volumes import DATA_INO, Volume, is_volume

log = logging.getLogger("fusezfs.fuse")

FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE = 1, 2, 16
MS_NOSUID, MS_NODEV, MS_RDONLY = 2, 4, 1
ATTR_TIMEOUT = 1.0


def volume_path(root: str, dataset: str) -> str:
    """Where volume `dataset` is served under `root` (`<state dir>/zvol` by default): ROOT/
    POOL/VOL, as /dev/zvol/POOL/VOL."""
    return os.path.join(root, *dataset.split("/"))


def default_root() -> str:
    from fusezfs.host.registry import state_dir
    return os.path.join(state_dir(), "zvol")


def volumes_of(dsl) -> list[str]:
    """Names of every volume of a pool, to be served."""
    from fusezfs.dsl.datasets import ROOT_ID
    return [dsl.name(r.id) for r in dsl.descendants(ROOT_ID) if r.kind == "volume"]


def mount_file(path: str, fsname: str, readonly: bool) -> int:
    """Mount a FUSE file system whose root is a regular file at the file `path`; its open
    /dev/fuse descriptor. Root mounts with mount(2) (rootmode says a regular file); anyone
    else through fusermount3, which takes the root's mode from the mountpoint."""
    if os.geteuid() != 0:
        from fusezfs.fuse.fuse_sessions import fuse_mount
        return fuse_mount(path, fsname, {"ro"} if readonly else set())
    from fusezfs.fuse.fuse_ops import libc_call
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    data = f"fd={fd},rootmode=100000,user_id={os.getuid()},group_id={os.getgid()}"
    try:
        libc_call("mount", os.fsencode(fsname), os.fsencode(path), b"fuse.fusezfs",
                  MS_NOSUID | MS_NODEV | (MS_RDONLY if readonly else 0), data.encode())
    except OSError:
        os.close(fd)
        raise
    return fd


def mount_device(path: str) -> str | None:
    """The device (major:minor) of the fusezfs mount on `path` in /proc/self/mountinfo, the
    topmost if several, or None. Read from the table, not by stat: a stat would ask the mount,
    whose loop may be this thread's own or gone."""
    found = None
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            left, _sep, right = line.partition(b" - ")
            fields = left.split()
            point = fields[4].replace(b"\\040", b" ").replace(b"\\011", b"\t") \
                .replace(b"\\012", b"\n").replace(b"\\134", b"\\")
            if os.fsdecode(point) == path and right.startswith(b"fuse.fusezfs "):
                found = fields[2].decode()
    return found


class VolumeOps(pyfuse3.Operations):
    """The FUSE operations of one volume's file (the module comment)."""

    def __init__(self, handle, rec, mod) -> None:
        super().__init__()
        self.handle = handle
        self.rec = rec
        self.mod = mod
        self.lock = handle.pool.lock
        self.volume: Volume | None = None       # opened at the first open
        self.opens = 0

    async def _run(self, fn, *args):
        """fn(*args) under the pool lock on a worker thread; OSError -> FUSEError."""
        def call():
            with self.lock:
                return fn(*args)
        try:
            return await trio.to_thread.run_sync(call)
        except OSError as e:
            raise self.mod.FUSEError(e.errno or errno.EIO) from None

    def _volume(self) -> Volume:
        if self.volume is None:
            self.volume = Volume(self.handle, self.rec)
        return self.volume

    def _attr(self):
        vol = self._volume()
        a = vol.fs.getattr(DATA_INO)
        e = self.mod.EntryAttributes()
        e.st_ino = pyfuse3.ROOT_INODE
        e.generation = 0
        e.entry_timeout = e.attr_timeout = ATTR_TIMEOUT
        e.st_mode = stat.S_IFREG | (0o400 if vol.readonly else 0o600)
        e.st_nlink = 1
        e.st_uid, e.st_gid = os.getuid(), os.getgid()
        e.st_rdev = 0
        e.st_size = a.st_size
        e.st_blksize = a.st_blksize
        e.st_blocks = a.st_blocks
        e.st_atime_ns, e.st_mtime_ns, e.st_ctime_ns = a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns
        return e

    def _check(self, inode: int) -> None:
        if inode != pyfuse3.ROOT_INODE:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))

    async def getattr(self, inode, ctx=None):
        return await self._run(lambda: (self._check(inode), self._attr())[1])

    async def setattr(self, inode, attr, fields, fh, ctx):
        def change():
            self._check(inode)
            if fields.update_size and attr.st_size != self._volume().size:
                raise OSError(errno.EPERM, os.strerror(errno.EPERM))
            return self._attr()
        return await self._run(change)

    async def lookup(self, parent_inode, name, ctx=None):
        raise self.mod.FUSEError(errno.ENOENT)

    async def forget(self, inode_list):
        return None

    async def open(self, inode, flags, ctx):
        def do_open():
            self._check(inode)
            vol = self._volume()
            if vol.readonly and flags & os.O_ACCMODE != os.O_RDONLY:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS))
            self.opens += 1
        await self._run(do_open)
        return self.mod.FileInfo(fh=1)

    async def read(self, fh, off, size):
        def do_read():
            vol = self._volume()
            return b"" if off >= vol.size else vol.read(off, size)
        return await self._run(do_read)

    async def write(self, fh, off, buf):
        return await self._run(lambda: self._volume().write(off, buf))

    async def fallocate(self, fh, mode, offset, length):
        """fuse_extra's FALLOCATE handler: discard and zeroing; nothing else (a volume is
        never preallocated, as a zvol answers)."""
        def do():
            vol = self._volume()
            keep = mode & FALLOC_FL_KEEP_SIZE
            if mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE) or \
                    mode & FALLOC_FL_PUNCH_HOLE and (not keep or mode & FALLOC_FL_ZERO_RANGE) or \
                    not mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
                raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
            if offset + length > vol.size and not keep:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            if offset < vol.size:
                vol.discard(offset, min(length, vol.size - offset))
        await self._run(do)         # None: fuse_extra replies 0 (a result is an lseek's)

    async def lseek(self, fh, offset, whence):
        raise self.mod.FUSEError(errno.ENXIO if offset >= 0 else errno.EINVAL)

    async def flush(self, fh):
        return None

    async def fsync(self, fh, datasync):
        await self._run(lambda: self._volume().fsync())

    async def release(self, fh):
        def do_release():
            self.opens -= 1
            if not self.opens and self.volume is not None:
                self.volume.close()
                self.volume = None
        await self._run(do_release)

    async def statfs(self, ctx):
        def do_statfs():
            from fusezfs.dsl import properties
            s = self.mod.StatvfsData()
            bs = self._volume().blocksize
            s.f_bsize = s.f_frsize = bs
            s.f_blocks = self._volume().size // bs
            s.f_bfree = s.f_bavail = properties.available(self.handle.dsl, self.rec) // bs
            s.f_files, s.f_ffree, s.f_favail, s.f_namemax = 1, 0, 0, 255
            return s
        return await self._run(do_statfs)


class VolumeFile:
    """One volume served at `path` through pyfuse3 instance `mod` (module comment)."""

    def __init__(self, handle, dataset: str, path: str, mod=pyfuse3) -> None:
        with handle.pool.lock:
            rec = handle.dsl.get(dataset)
            if not is_volume(handle.dsl, rec):
                raise OSError(errno.EINVAL, f"'{dataset}' is not a volume")
            readonly = rec.kind == "snapshot"
        self.handle = handle
        self.dataset = dataset
        self.path = os.path.abspath(path)
        self.mod = mod
        self.ops = VolumeOps(handle, rec, mod)
        self.readonly = readonly
        self.ended = threading.Event()
        self.dev: int | None = None

    def start(self, nursery, token) -> None:
        """Mount and start serving in `nursery` of the trio loop of `token`. Call from a
        thread other than the loop's: mounting may wait on the kernel."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        if not os.path.lexists(self.path):
            with open(self.path, "xb"):
                pass
        fd = mount_file(self.path, self.dataset, self.readonly)
        try:
            self.mod.init(self.ops, f"/dev/fd/{fd}", set())
        except Exception:
            os.close(fd)
            self._detach(lazy=True)
            raise
        from fusezfs.fuse.fuse_extra import install
        install(self.mod, self.ops)         # fallocate (discard) for this session
        self.dev = mount_device(self.path)
        trio.from_thread.run_sync(nursery.start_soon, self._serve, trio_token=token)
        log.info("%s served at %s", self.dataset, self.path)

    async def _serve(self) -> None:
        try:
            await self.mod.main()
        except Exception:
            log.exception("the FUSE session of %s failed", self.dataset)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._closed)

    def _closed(self) -> None:
        if self.mounted():
            self._detach(lazy=True)
        try:
            self.mod.close(unmount=False)
        except Exception:
            log.exception("closing the session of %s", self.dataset)
        self.ended.set()

    def mounted(self) -> bool:
        """Our mount is still at `path` (never a stat of it: the loop may be ending)."""
        return self.dev is not None and mount_device(self.path) == self.dev

    def _detach(self, lazy: bool) -> str | None:
        """umount2 as root (MNT_DETACH when lazy), else fusermount3 -u [-z]: None or why not.
        Never on the loop's thread: the kernel may ask this very mount first."""
        if os.geteuid() == 0:
            from fusezfs.fuse.fuse_ops import libc_call
            try:
                libc_call("umount2", os.fsencode(self.path), 2 if lazy else 0)
                return None
            except OSError as e:
                return e.strerror
        import subprocess
        done = subprocess.run(["fusermount3", "-u"] + (["-z"] if lazy else []) + [self.path],
                              check=False, capture_output=True, text=True)
        return None if done.returncode == 0 else done.stderr.strip()

    def stop(self, lazy: bool = False) -> str | None:
        """Unmount (its loop then ends and `ended` is set): None, or why it could not (busy,
        e.g. a loop device still attached; `lazy` detaches anyway)."""
        if not self.mounted():
            return None
        return self._detach(lazy)


class VolumeFiles:
    """Every volume of one served pool as a file under `root` (ROOT/POOL/VOL), each its own
    FUSE session in the service's trio loop (`nursery`, `token`). The service calls `refresh`
    from a worker thread after anything that may have made, destroyed or renamed volumes (and
    once when it starts serving the pool), and `close` when it stops serving it. `instance`
    gives a pyfuse3 module instance with no session and `release` takes it back
    (host.fuse_sessions.instance and release: one session per instance). Returns, from both,
    the errors (one line each) of volumes that could not be served or unmounted."""

    def __init__(self, handle, root: str, nursery, token, instance, release) -> None:
        self.handle = handle
        self.root = root
        self.nursery = nursery
        self.token = token
        self.instance = instance
        self.release = release
        self.files: dict[str, VolumeFile] = {}      # served, by volume name
        self.stopping: list[VolumeFile] = []         # unmounted, their loops ending
        self.lock = threading.Lock()

    def _stop(self, name: str, lazy: bool) -> str | None:
        vf = self.files.pop(name)
        self.stopping.append(vf)
        err = vf.stop(lazy=lazy)
        return f"cannot unmount '{vf.path}': {err}" if err else None

    def _reap(self) -> None:
        """Sessions that ended (stopped, or unmounted from outside): instance back, file gone."""
        for name, vf in list(self.files.items()):
            if vf.ended.is_set():
                del self.files[name]
                self.stopping.append(vf)
        for vf in [v for v in self.stopping if v.ended.is_set()]:
            self.stopping.remove(vf)
            self.release(vf.mod)
            _remove_file(vf.path)

    def refresh(self) -> list[str]:
        errors = []
        with self.lock:
            self._reap()
            with self.handle.pool.lock:
                wanted = set(volumes_of(self.handle.dsl))
            for name in sorted(set(self.files) - wanted):
                err = self._stop(name, lazy=True)
                if err:
                    errors.append(err)
            for name in sorted(wanted - set(self.files)):
                mod = self.instance()
                vf = VolumeFile(self.handle, name, volume_path(self.root, name), mod)
                try:
                    vf.start(self.nursery, self.token)
                except OSError as e:
                    self.release(mod)
                    errors.append(f"cannot serve '{name}' at '{vf.path}': {e.strerror or e}")
                    continue
                self.files[name] = vf
        return errors

    def close(self, lazy: bool = True, wait: float = 10.0) -> list[str]:
        """Unmount every volume's file and wait (up to `wait` seconds) for their sessions to
        end, so their instances are back and the files gone."""
        errors = []
        with self.lock:
            for name in sorted(self.files):
                err = self._stop(name, lazy)
                if err:
                    errors.append(err)
            for vf in self.stopping:
                vf.ended.wait(wait)
            self._reap()
        return errors


def _remove_file(path: str) -> None:
    """The empty file a volume was served on, once nothing is mounted there."""
    try:
        if mount_device(path) is None and os.path.isfile(path) and not os.path.getsize(path):
            os.unlink(path)
    except OSError:
        pass


async def serve_volume(handle, dataset: str, path: str, *, ready=None) -> None:
    """Serve one volume at `path` in this process until it is unmounted or the task is
    cancelled; `ready()` is called once it is mounted."""
    vf = VolumeFile(handle, dataset, path)
    async with trio.open_nursery() as nursery:
        token = trio.lowlevel.current_trio_token()
        await trio.to_thread.run_sync(vf.start, nursery, token)
        if ready is not None:
            ready()
        try:
            await trio.to_thread.run_sync(vf.ended.wait, abandon_on_cancel=True)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(vf.stop, True)
