"""The tar side of an image layer: entry paths, whiteouts, exact times, xattrs, and the readers
that hash and decompress a layer blob as it is applied.

Theory of operation
-------------------
A layer is a tar (the OCI image spec's "changeset"), possibly gzip- or zstd-compressed. Two
digests name it: the blob's (the bytes as stored, what a manifest lists) and the diff id (the
uncompressed tar's, what the image config lists in rootfs.diff_ids). Both are checked while
the layer is applied, not in a pass before it: the blob is read once, through a hashing reader,
a decompressor and a second hashing reader, and the digests are compared after the tar's end
(the readers are drained to the end of their streams first, since a tar ends with padding the
tar reader never asks for). A mismatch fails the import, and the importer destroys the layer
it was building: nothing built from unverified bytes outlives the command.

Compression is recognised by its magic bytes rather than by the media type, because `docker
save` archives hold uncompressed layers under any name and registries' media types are not
always right.

Paths inside a layer are relative to the layer's root: a leading "/" or "./" is dropped and
"." components vanish; a ".." component is refused (it could reach outside the root; Docker
refuses "breakout" paths too). They are bytes throughout, as file names are on Linux.

Times: a ustar header holds whole seconds; PAX "mtime"/"atime" records hold decimal fractions,
which Python's tarfile turns into floats (and a float cannot hold nanoseconds since 1970), so the
PAX record's text is parsed here, exactly. Exports write them the same way, which is what makes
import -> export -> import keep times to the nanosecond. Xattrs come from PAX
`SCHILY.xattr.NAME` records (GNU tar, Go's archive/tar, Docker) and libarchive's
`LIBARCHIVE.xattr.NAME` (base64 values, %-encoded names).
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import io
import os
import tarfile
import urllib.parse
from decimal import Decimal
from typing import BinaryIO

WH_PREFIX = b".wh."
WH_OPAQUE = b".wh..wh..opq"
WH_META = b".wh..wh."          # aufs bookkeeping (.wh..wh.plnk, .wh..wh.aufs): never content
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
NS = 10**9


class LayerError(Exception):
    """A layer or archive that cannot be applied as it is (message for the user)."""


def normalize(name: str | bytes) -> bytes:
    """A tar entry's name as a path relative to the layer root, b"" for the root itself."""
    raw = os.fsencode(name) if isinstance(name, str) else bytes(name)
    parts = [p for p in raw.split(b"/") if p and p != b"."]
    if b".." in parts:
        raise LayerError(f"layer entry {raw!r} reaches outside the root ('..')")
    return b"/".join(parts)


def split(path: bytes) -> tuple[bytes, bytes]:
    """(directory, last component) of a normalized path."""
    head, _, tail = path.rpartition(b"/")
    return head, tail


def _pax_ns(value: str) -> int:
    return int(Decimal(value).scaleb(9).to_integral_value(rounding="ROUND_FLOOR"))


def mtime_ns(ti: tarfile.TarInfo) -> int:
    raw = ti.pax_headers.get("mtime")
    return _pax_ns(raw) if raw is not None else int(ti.mtime) * NS


def atime_ns(ti: tarfile.TarInfo) -> int:
    """Docker's rule: the access time, or the modification time if it is absent or older."""
    raw = ti.pax_headers.get("atime")
    m = mtime_ns(ti)
    return max(_pax_ns(raw), m) if raw is not None else m


def format_ns(ns: int) -> str:
    """A time as the exact decimal a PAX record holds."""
    sign = "-" if ns < 0 else ""
    a = abs(ns)
    return f"{sign}{a // NS}.{a % NS:09d}"


def xattrs(ti: tarfile.TarInfo) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for key, value in ti.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            out[key[len("SCHILY.xattr."):].encode("utf-8", "surrogateescape")] = \
                value.encode("utf-8", "surrogateescape")
        elif key.startswith("LIBARCHIVE.xattr."):
            name = urllib.parse.unquote_to_bytes(key[len("LIBARCHIVE.xattr."):])
            out[name] = base64.b64decode(value + "=" * (-len(value) % 4))
    return out


def set_xattrs(ti: tarfile.TarInfo, attrs: dict[bytes, bytes]) -> None:
    for name in sorted(attrs):
        ti.pax_headers["SCHILY.xattr." + name.decode("utf-8", "surrogateescape")] = \
            attrs[name].decode("utf-8", "surrogateescape")


class HashingReader(io.RawIOBase):
    """A read-only stream that hashes (sha256) and counts every byte read through it."""

    def __init__(self, inner: BinaryIO) -> None:
        super().__init__()
        self.inner = inner
        self.sha = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        data = self.inner.read(len(buf))
        if not data:
            return 0
        n = len(data)
        buf[:n] = data
        self.sha.update(data)
        self.count += n
        return n

    def drain(self) -> None:
        while self.read(1 << 20):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


class LayerStream:
    """A layer blob opened for applying: `tar` iterates its entries; `finish()` reads both
    streams to their ends and returns (blob digest, blob size, diff id, tar size)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.blob = HashingReader(raw)
        self._buffered = io.BufferedReader(self.blob, 1 << 20)
        magic = self._buffered.peek(4)[:4]
        if magic.startswith(GZIP_MAGIC):
            self.compression = "gzip"
            inner: BinaryIO = gzip.GzipFile(fileobj=self._buffered, mode="rb")
        elif magic == ZSTD_MAGIC:
            import zstandard
            self.compression = "zstd"
            inner = zstandard.ZstdDecompressor().stream_reader(self._buffered,
                                                               read_across_frames=True)
        else:
            self.compression = None
            inner = self._buffered
        self.plain = HashingReader(inner)
        self.tar = tarfile.open(fileobj=self.plain, mode="r|", errors="surrogateescape")

    def finish(self) -> tuple[str, int, str, int]:
        self.plain.drain()
        while self._buffered.read(1 << 20):
            pass
        return self.blob.digest, self.blob.count, self.plain.digest, self.plain.count
