"""Compressed WRITE records (`zfs send -c`): blocks as stored, in ZFS's compressed layouts.

Theory of operation
-------------------
A -c stream (BEGIN feature COMPRESSED, and ZSTD when zstd blocks may come) carries a block in
the form the pool stores it: `drr_compressiontype` says the algorithm (zio_compress: 16 zstd,
5..13 gzip-1..9, 15 lz4), `drr_compressed_size` the payload's length and `drr_logical_size` the
block's size once decompressed. ZFS's zstd block is an 8-byte header (zfs_zstdhdr_t, both
words big-endian: the frame's length, then the zstd version in the low 24 bits and the level in
the top 8) followed by the zstd frame; its gzip block is a zlib stream. fusezfs stores a zstd
block as a bare frame (no header) and a gzip block as a zlib stream, so a stored block goes
into a stream with the header put in front (zstd) or as it is (gzip), never recompressed, padded
to 512 bytes as ZFS's physical sizes are. Only blocks that are exactly one ZFS block of the
file's block size are sent so (`send_as_stored`); the others (a file's last, shorter record, a
record larger than 128 KiB sent as several ZFS blocks) go uncompressed, which every receiver
takes in a -c stream too.

Receiving: a compressed WRITE of zstd, with the dataset compressing with zstd (and no dedup),
is stored as received, its frame written as the block's physical bytes (`stored_frame`); any
other is decompressed and written as a plain WRITE would be. An lz4 block is refused: there is
no lz4 decoder in fusezfs's dependencies.
"""
from __future__ import annotations

import struct
import zlib

import zstandard

from fusezfs.engine.compress import decompress as fz_decompress
from fusezfs.formats.bp import COMP_GZIP, COMP_ZSTD, BlockPointer
from fusezfs.send import records as R

ZIO_COMPRESS_OFF = 2
ZIO_COMPRESS_GZIP_6 = 10
ZIO_COMPRESS_LZ4 = 15
ZIO_COMPRESS_ZSTD = 16
GZIP_TYPES = range(5, 14)
ZSTD_DEFAULT_LEVEL = 3
_VERSION = zstandard.ZSTD_VERSION[0] * 10000 + zstandard.ZSTD_VERSION[1] * 100 + \
    zstandard.ZSTD_VERSION[2]


def _pad512(n: int) -> int:
    return -(-n // 512) * 512


def send_as_stored(bp: BlockPointer, zblk: int, blksz: int) -> bool:
    """Whether record `bp` of a file with record size `blksz` goes as one compressed block."""
    return bp.comp in (COMP_ZSTD, COMP_GZIP) and zblk == blksz and bp.lsize == zblk


def stored_size(bp: BlockPointer) -> int:
    """The payload length of `bp` sent as stored (what send -n counts)."""
    return _pad512((8 if bp.comp == COMP_ZSTD else 0) + bp.psize)


def write_record(obj: int, otype: int, offset: int, bp: BlockPointer, raw: bytes | None
                 ) -> R.Write:
    """The WRITE of block `bp` as stored; `raw` is its physical bytes (None: a dry run)."""
    size = stored_size(bp)
    if raw is None:
        payload = b""
    elif bp.comp == COMP_ZSTD:
        head = struct.pack(">II", len(raw), (ZSTD_DEFAULT_LEVEL << 24) | _VERSION)
        payload = head + bytes(raw) + bytes(size - 8 - len(raw))
    else:
        payload = bytes(raw) + bytes(size - len(raw))
    comp = ZIO_COMPRESS_ZSTD if bp.comp == COMP_ZSTD else ZIO_COMPRESS_GZIP_6
    return R.Write(obj, otype, offset, payload, bp.lsize, compressiontype=comp,
                   compressed_size=size)


def zstd_frame(w: R.Write) -> bytes:
    """The zstd frame of a zstd WRITE (its header checked)."""
    data = bytes(w.data)
    if len(data) < 8:
        raise R.StreamError("invalid backup stream")
    c_len = struct.unpack_from(">I", data)[0]
    if c_len > len(data) - 8:
        raise R.StreamError("invalid backup stream")
    return data[8:8 + c_len]


def decompressed(w: R.Write) -> bytes:
    """The logical bytes of a compressed WRITE."""
    try:
        if w.compressiontype == ZIO_COMPRESS_ZSTD:
            out = fz_decompress(zstd_frame(w), COMP_ZSTD, w.logical_size)
        elif w.compressiontype in GZIP_TYPES:
            out = zlib.decompressobj().decompress(bytes(w.data), w.logical_size)
        elif w.compressiontype == ZIO_COMPRESS_LZ4:
            raise R.StreamError("stream has unsupported feature (lz4-compressed blocks)")
        else:
            raise R.StreamError("invalid backup stream")
    except (ValueError, zlib.error):
        raise R.StreamError("invalid backup stream") from None
    if len(out) != w.logical_size:
        raise R.StreamError("invalid backup stream")
    return out
