"""Compression of block payloads: zstd (any level), gzip-N (a zlib stream) or off.

A compressed form is kept only when it saves at least 1/8 of the logical size, as in ZFS: a
block that barely compresses costs a decompression on every read for nothing. The BP records
which algorithm was used; the level is only a choice at write time, never needed to read.
zstandard and zlib release the GIL, so callers run these on worker threads for large buffers.
"""
from __future__ import annotations

import threading
import zlib

import zstandard

from fusezfs.formats.bp import COMP_GZIP, COMP_OFF, COMP_ZSTD

_local = threading.local()


def _zstd_compressor(level: int) -> zstandard.ZstdCompressor:
    # A ZstdCompressor must not be shared between threads; keep one per thread and level.
    cache = getattr(_local, "zc", None)
    if cache is None:
        cache = _local.zc = {}
    comp = cache.get(level)
    if comp is None:
        comp = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=False)
    return comp


def _zstd_decompressor() -> zstandard.ZstdDecompressor:
    dec = getattr(_local, "zd", None)
    if dec is None:
        dec = _local.zd = zstandard.ZstdDecompressor()
    return dec


def parse(name: str) -> tuple[int, int]:
    """A `compression` property value -> (algorithm, level). Raises ValueError if invalid."""
    if name in ("off",):
        return COMP_OFF, 0
    if name == "on":           # OpenZFS: lz4, "fast"; here the fastest zstd level
        return COMP_ZSTD, 1
    if name == "zstd":
        return COMP_ZSTD, 3
    if name == "gzip":
        return COMP_GZIP, 6
    if name.startswith("zstd-") and name[5:].isdigit() and 1 <= int(name[5:]) <= 19:
        return COMP_ZSTD, int(name[5:])
    if name.startswith("gzip-") and name[5:].isdigit() and 1 <= int(name[5:]) <= 9:
        return COMP_GZIP, int(name[5:])
    raise ValueError(f"invalid compression '{name}'")


def compress(data: bytes | memoryview, algorithm: int, level: int) -> tuple[int, bytes | memoryview]:
    """Return (algorithm actually used, physical bytes)."""
    if algorithm == COMP_OFF or len(data) < 64:
        return COMP_OFF, data
    if algorithm == COMP_ZSTD:
        out = _zstd_compressor(level).compress(data)
    elif algorithm == COMP_GZIP:
        out = zlib.compress(data, level)
    else:
        raise ValueError(f"unknown compression algorithm {algorithm}")
    if len(out) > len(data) - len(data) // 8:
        return COMP_OFF, data
    return algorithm, out


def decompress(data: bytes, algorithm: int, lsize: int) -> bytes:
    """Inverse of compress; raises ValueError if the stream does not yield exactly lsize bytes."""
    if algorithm == COMP_OFF:
        out = data
    elif algorithm == COMP_ZSTD:
        try:
            out = _zstd_decompressor().decompress(data, max_output_size=lsize)
        except zstandard.ZstdError as e:
            raise ValueError(f"zstd: {e}") from None
    elif algorithm == COMP_GZIP:
        try:
            out = zlib.decompress(data, bufsize=lsize)
        except zlib.error as e:
            raise ValueError(f"gzip: {e}") from None
    else:
        raise ValueError(f"unknown compression algorithm {algorithm}")
    if len(out) != lsize:
        raise ValueError("decompressed size differs from the block pointer")
    return out
