"""Volumes (ZFS's zvols): datasets that are the bytes of one block device.

Theory of operation
-------------------
A volume is a head of kind "volume" in the dataset directory (datasets.py): it is snapshotted,
cloned, rolled back, renamed, destroyed and accounted exactly like a filesystem, because all of
that works on the head's object tree and its record, whatever the tree holds. What differs is
the tree's content and the properties:

* The tree is laid out as a POSIX tree (posix_layout.py) holding one regular file: the root
  directory (inode 1) has the single entry `data`, inode 2, the volume's data object (OpenZFS's
  ZVOL_OBJ). Its record size (`blksz`) is the volblocksize and its size is the volsize, so both
  are read from the tree, and a snapshot's geometry is whatever its tree had (as OpenZFS keeps
  volsize in the zvol's ZAP and the block size in the object). Reusing the POSIX data path means
  volume writes get the same dirty-record buffer, early writes, holes for zero records,
  fallocate punch (discard) by birth time and crash safety as file data: every change is a tree
  change committed with its txg.
* A volume's durability point is the txg: `Volume.fsync` commits one (sync=disabled: nothing,
  as ZFS). The intent log is not used for volumes, so a crash loses nothing fsync promised.
* volsize is checked and sized as libzfs does (multiple of volblocksize, never zero), and a
  non-sparse volume carries a refreservation of `volsize_to_reservation` (volsize plus the
  indirect blocks' worst case, libzfs's zvol_volsize_to_reservation); changing volsize moves the
  refreservation with it when it still had that value (zfs_add_synthetic_resv);
  refreservation=auto sets it to that value.

The data object is never given to the FUSE tree or `cp` as a file: host/volume_mount.py serves
it as a regular file at a path of its own (`<state dir>/zvol/POOL/VOL`, like
/dev/zvol/POOL/VOL), and `fusezfs cp POOL/VOL: FILE` / `cp FILE POOL/VOL:` copy its bytes
(VolumeSide below).
"""
from __future__ import annotations

import errno
import os

from fusezfs.dsl import dsprops, properties
from fusezfs import sessions
from fusezfs.dsl.datasets import DatasetError, Datasets, Record
from fusezfs.dsl.objset import DatasetIO
from fusezfs.zpl.posix import ROOT_INO, Posix
from fusezfs.zpl.posix_layout import Inode, inode_key

DATA_NAME = b"data"
DATA_INO = ROOT_INO + 1         # the data object: the first inode after the root
DNODES_PER_LEVEL = 1024         # block pointers in a 128 KiB indirect block (OpenZFS)
INDIRECT_BLOCK = 1 << 17        # DN_MAX_INDBLKSHIFT
MAX_DVAS = 3


def volsize_to_reservation(volsize: int, volblocksize: int, copies: int = 1) -> int:
    """The refreservation a non-sparse volume gets: its data, times copies, plus every
    indirect block (and the meta-dnode's seven levels) a fully written volume needs, each at
    most 128 KiB with one more copy than data has (libzfs's zvol_volsize_to_reservation, for
    vdevs that are not raidz/draid: fusezfs has none)."""
    nblocks = volsize // volblocksize
    data = nblocks * volblocksize
    numdb = 7
    while nblocks > 1:
        nblocks = (nblocks + DNODES_PER_LEVEL - 1) // DNODES_PER_LEVEL
        numdb += nblocks
    numdb *= min(MAX_DVAS, copies + 1)
    return data * copies + numdb * INDIRECT_BLOCK


def is_volume(dsl: Datasets, rec: Record) -> bool:
    """A volume, or a snapshot of one."""
    if rec.kind == "snapshot":
        rec = dsl.record(rec.parent)
    return rec.kind == "volume"


def geometry(dsl: Datasets, rec: Record) -> dict[str, int]:
    """{"volsize", "volblocksize"} of a volume or a volume's snapshot, read from its tree
    (Datasets.geometry_hook: properties.computed shows them)."""
    raw = dsl.tree(rec).get(inode_key(DATA_INO))
    if raw is None:
        return {}
    node = Inode.decode(DATA_INO, raw)
    return {"volsize": node.size, "volblocksize": node.blksz}


class VolumeIO(DatasetIO):
    """DatasetIO of a volume: records of volblocksize, and no intent log (module comment)."""

    def __init__(self, dsl: Datasets, rec: Record, blocksize: int | None = None) -> None:
        super().__init__(dsl, rec)
        self.generation = dsl.records_changed   # the properties it was made with
        self.sync_property = self.sync_mode
        self.sync_mode = "disabled"
        self.atime = False              # reading a volume changes nothing (a zvol has no atime)
        if blocksize is not None:
            self.recordsize = blocksize


def check_geometry(volsize: int, volblocksize: int) -> None:
    """zfs_create's checks of a new volume's size, in its words."""
    if volsize == 0:
        raise DatasetError("volume size cannot be zero")
    if volsize % volblocksize:
        raise DatasetError("volume size must be a multiple of volume block size")


def create_volume(handle, name: str, volsize: int, props: dict | None = None, *,
                  sparse: bool = False) -> Record:
    """`zfs create [-s] -V volsize NAME` with validated raw `props` (volblocksize among them,
    or the default); the caller holds the pool lock and has checked name and parent. The
    refreservation is `volsize_to_reservation` unless sparse or given; one that does not fit
    fails with ENOSPC ("out of space") before anything is made."""
    dsl: Datasets = handle.dsl
    props = dict(props or {})
    blocksize = int(props.pop("volblocksize", dsprops.DEFAULT_VOLBLOCKSIZE))
    check_geometry(volsize, blocksize)
    if not sparse and "refreservation" not in props or \
            props.get("refreservation") == dsprops.REFRESERVATION_AUTO:
        props["refreservation"] = volsize_to_reservation(volsize, blocksize,
                                                         int(props.get("copies", 1)))
    parent = dsl.check_new_name(name)
    if properties.as_int(props.get("refreservation")) > properties.available(dsl, parent):
        raise DatasetError("out of space", errno.ENOSPC)
    rec = dsl.create(name, props, kind="volume")
    format_volume(dsl, rec, blocksize, volsize)
    return rec


def format_volume(dsl: Datasets, rec: Record, blocksize: int, volsize: int) -> None:
    """Lay out a new volume's empty tree (FORMAT.md 7.1): the root directory and its one
    entry, the data object, with this block size and size (a hole)."""
    fs = Posix(VolumeIO(dsl, rec, blocksize))
    uid, gid = sessions.credentials()
    fh, attr = fs.create(ROOT_INO, DATA_NAME, 0o600, os.O_RDWR, uid, gid)
    assert attr.st_ino == DATA_INO, attr
    fs.release(fh)
    if volsize:
        fs.setattr(DATA_INO, size=volsize)
    fs.flush()


def _open_posix(handle, rec: Record) -> Posix:
    """The volume's Posix object, kept in the handle (its sync hook flushes it, rollbacks
    reload it, destroys drop it), made with a VolumeIO. One made before properties changed
    (readonly, compression, sync, ...) gets a VolumeIO that says what they are now, in place:
    whoever holds the object (a served file) goes on with the same buffers and tree."""
    fs = handle._open.get(rec.id)
    if fs is not None and isinstance(fs.io, VolumeIO):
        if fs.io.generation != handle.dsl.records_changed:
            io = VolumeIO(handle.dsl, rec)
            io.tree = fs.tree
            fs.io = io
        return fs
    if fs is not None:
        handle.forget(rec.id)
    fs = handle._open[rec.id] = Posix(VolumeIO(handle.dsl, rec))
    return fs


class Volume:
    """The bytes of a volume (or, read-only, of a volume's snapshot) through the library.
    Callers hold the pool lock around each call, as for Posix."""

    def __init__(self, handle, rec: Record) -> None:
        if not is_volume(handle.dsl, rec):
            raise DatasetError("not a volume", errno.EINVAL)
        self.handle = handle
        self.rec = rec
        self.fs = _open_posix(handle, rec)
        self.fh = self.fs.open(DATA_INO, os.O_RDONLY if self.readonly else os.O_RDWR)

    @property
    def readonly(self) -> bool:
        """A snapshot's, or readonly=on now (properties read again when they changed)."""
        return _open_posix(self.handle, self.rec).io.readonly

    @property
    def size(self) -> int:
        return self.fs.getattr(DATA_INO).st_size

    @property
    def blocksize(self) -> int:
        return self.fs.getattr(DATA_INO).st_blksize

    def _range(self, offset: int, length: int) -> int:
        """How much of [offset, offset+length) lies inside the volume; EINVAL if it starts
        past the end."""
        size = self.size
        if offset < 0 or length < 0 or offset > size:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return min(length, size - offset)

    def read(self, offset: int, length: int) -> bytes:
        """Bytes from `offset`, short at the end of the volume (a block device's read)."""
        return self.fs.read(self.fh, offset, self._range(offset, length))

    def write(self, offset: int, data) -> int:
        """Write inside the volume; ENOSPC for any byte past its end (nothing written), as a
        block device answers, so a volume never grows by writing."""
        if self.readonly:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        if offset < 0:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        if offset + len(data) > self.size:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.fs.write(self.fh, offset, data)

    def discard(self, offset: int, length: int) -> None:
        """BLKDISCARD / fallocate PUNCH_HOLE: the range reads as zeros and its whole blocks
        are freed (kept by any snapshot that has them)."""
        from fusezfs.zpl.posix import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE
        n = self._range(offset, length)
        if n:
            self.fs.fallocate(self.fh, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, n)

    def extents(self, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
        """Where the volume holds data (the rest reads as zeros)."""
        return self.fs.data_extents(DATA_INO, start, end)

    def fsync(self) -> None:
        """Everything written so far durable: one txg commit (module comment)."""
        if self.readonly or self.fs.io.sync_property == "disabled":
            return
        self.fs.fsync()

    def close(self) -> None:
        self.fs.release(self.fh)


def open_volume(handle, name: str) -> Volume:
    """A Volume of `name` (volume or snapshot of one); DatasetError in zfs's words."""
    rec = handle.dsl.get(name)
    if not is_volume(handle.dsl, rec):
        raise DatasetError("not a volume", errno.EINVAL)
    return Volume(handle, rec)


# ---- properties ------------------------------------------------------------------------------
def set_properties(handle, rec: Record, props: dict[str, str]) -> None:
    """`zfs set` on a volume: volsize (and the refreservation that follows it) and
    refreservation=auto here, the rest through properties.set_props, all checked before any
    is applied."""
    dsl: Datasets = handle.dsl
    if rec.kind != "volume" or not ({"volsize", "refreservation"} & set(props)):
        properties.set_props(dsl, rec, props)
        return
    try:
        raw = dsprops.validate_props(props, "volume")
    except dsprops.PropError as e:
        raise DatasetError(e.message) from None
    geo = geometry(dsl, rec)
    blocksize, old_size = geo["volblocksize"], geo["volsize"]
    new_size = raw.get("volsize", old_size)
    if "volsize" in raw:
        if new_size % blocksize:
            raise DatasetError(f"'volsize' must be a multiple of volume block size "
                               f"({dsprops.nicebytes(blocksize)})")
        if new_size == 0:
            raise DatasetError("'volsize' cannot be zero")
    auto = raw.get("refreservation") == dsprops.REFRESERVATION_AUTO
    rest = {k: v for k, v in props.items() if dsprops.canonical(k) != "volsize" and
            not (auto and dsprops.canonical(k) == "refreservation")}
    old_resv = properties.as_int(rec.props.get("refreservation"))
    if auto or "volsize" in raw and "refreservation" not in raw and \
            old_resv == volsize_to_reservation(old_size, blocksize):
        rest["refreservation"] = str(volsize_to_reservation(new_size, blocksize))
    if rest:
        # checks everything left (refreservation against available space among them)
        # before changing anything; volsize is then applied, which cannot fail
        properties.set_props(dsl, rec, rest)
    if new_size != old_size:
        resize(handle, rec, new_size)


def resize(handle, rec: Record, volsize: int) -> None:
    """Set a volume's size: growing adds a hole, shrinking frees the blocks past the end
    (readonly=on or not: it is a property change, not a write)."""
    fs = _open_posix(handle, rec)
    readonly, fs.io.readonly = fs.io.readonly, False
    try:
        fs.setattr(DATA_INO, size=volsize)
        fs.flush()
    finally:
        fs.io.readonly = readonly
    dsl: Datasets = handle.dsl
    dsl.records_changed += 1            # files served for it (volume_mount) change size


def rollback_refreservation(handle, head: Record, old_volsize: int, old_resv: int) -> None:
    """zfs_rollback's last step: a volume whose refreservation equalled its volsize before the
    rollback gets the rolled-back volsize as refreservation."""
    if head.kind != "volume" or old_volsize != old_resv:
        return
    new = geometry(handle.dsl, head).get("volsize", old_volsize)
    if new != old_volsize:
        properties.set_props(handle.dsl, head, {"refreservation": str(new)})
