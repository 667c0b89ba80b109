"""A volume as one side of `fusezfs cp` (`POOL/VOL:`): the bytes of the volume as a regular file
of its size, beside the dataset and local sides of cp_sides.py."""
from __future__ import annotations

import errno
import os
import stat

from fusezfs.cli.cp_sides import Meta
from fusezfs.dsl.datasets import Record
from fusezfs.zpl.volumes import DATA_INO, Volume


class VolumeSide:
    """A volume as one side of `fusezfs cp` (cp_sides.DatasetSide's interface): the operand
    `POOL/VOL:` (path "/") is a regular file of the volume's size, as /dev/zvol/POOL/VOL is a
    device; any other path does not exist. Copying into it writes the bytes from offset 0 and
    leaves the rest of the volume as it was (cp onto a block device); a source longer than the
    volume fails with ENOSPC, nothing past the end written. Each reader and writer opens the
    volume for itself and closes it."""

    def __init__(self, handle, rec: Record, dataset: str) -> None:
        self.handle = handle
        self.rec = rec
        self.dataset = dataset

    def label(self, path: bytes) -> str:
        return f"{self.dataset}:{os.fsdecode(path)}"

    def _open(self, path: bytes) -> Volume:
        if path.strip(b"/"):
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        return Volume(self.handle, self.rec)

    def _ident(self) -> tuple:
        return ("volume", id(self.handle), self.rec.id)

    def stat(self, path: bytes, follow: bool = False):
        vol = self._open(path)
        try:
            a = vol.fs.getattr(DATA_INO)
        finally:
            vol.close()
        return Meta(stat.S_IFREG | 0o600, a.st_size, a.st_uid, a.st_gid, a.st_atime_ns,
                    a.st_mtime_ns, 0, 1, a.st_blocks, self._ident())

    def chain(self, path: bytes) -> set[tuple]:
        return {self._ident()}

    def reader(self, path: bytes, sparse: bool) -> _VolumeReader:
        return _VolumeReader(self._open(path))

    def writer(self, path: bytes, mode: int) -> _VolumeWriter:
        vol = self._open(path)
        if vol.readonly:
            vol.close()
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return _VolumeWriter(vol)

    def xattrs(self, path: bytes) -> dict[bytes, bytes]:
        return {}

    def set_attrs(self, path: bytes, st, owners: bool) -> None:
        """A device keeps its own owner, mode and times: nothing to set."""

    def set_xattr(self, path: bytes, name: bytes, value: bytes) -> None:
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    def _no(self, *args) -> None:
        raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))

    listdir = readlink = mkdir = symlink = mknod = link = unlink = chmod = _no


class _VolumeReader:
    def __init__(self, volume: Volume) -> None:
        self.volume = volume
        self.size = volume.size

    def extents(self):
        return iter(self.volume.extents())

    def read(self, offset: int, size: int) -> bytes:
        return self.volume.read(offset, size)

    def close(self) -> None:
        self.volume.close()


class _VolumeWriter:
    """Writes at offsets; at the end, what the source had as holes is discarded, so the volume
    reads back exactly as the source (cp's sparse copy skips its holes)."""

    def __init__(self, volume: Volume) -> None:
        self.volume = volume
        self.block = volume.blocksize
        self.written: list[tuple[int, int]] = []

    def write(self, offset: int, data) -> None:
        self.volume.write(offset, data)
        self.written.append((offset, offset + len(data)))

    def finish(self, size: int) -> None:
        if size > self.volume.size:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        pos = 0
        for lo, hi in sorted(self.written) + [(size, size)]:
            if lo > pos:
                self.volume.discard(pos, lo - pos)
            pos = max(pos, hi)

    def close(self) -> None:
        try:
            self.volume.fsync()
        finally:
            self.volume.close()
