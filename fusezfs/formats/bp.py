"""Block pointers: the edges of the pool's Merkle tree.

A block pointer (BP) is what a parent stores about a child block: where the child lives (up to
three DVAs, "data virtual addresses"), how big it is before and after compression, how it was
compressed, when it was born (txg) and its checksum. Every read of the child is verified against
the checksum held here, so a block can only be trusted through the pointer that names it. The
checksum covers the *physical* (stored, possibly compressed) bytes, so a damaged block is
detected before it is decompressed.

The encoding is fixed at 128 bytes, little-endian (docs/FORMAT.md, "Block pointer"):

    off  size  field
      0    16  dva[0]   vdev u32, asize u32, offset u64
     16    16  dva[1]
     32    16  dva[2]
     48     4  lsize    logical (uncompressed) size in bytes
     52     4  psize    physical (stored) size in bytes, before rounding to sectors
     56     8  birth    txg in which the block was written
     64     8  fill     reserved for the dedup reference count (0 = not deduplicated)
     72     1  comp     0 off, 1 zstd, 2 gzip (zlib stream)
     73     1  cksum    1 xxh3-128, 2 sha256
     74     1  type     block type (BT_*)
     75     1  level    tree level of a tree node, 0 otherwise
     76     1  ndvas    number of valid DVAs (1..3)
     77     1  flags    bit 0: dedup
     78     2  reserved (zero)
     80    32  checksum (xxh3-128 uses the first 16 bytes; the rest is zero)
    112    16  reserved (zero)

A hole (no block) is 128 zero bytes.
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import xxhash

BP_SIZE = 128

# compression algorithms as stored in a BP
COMP_OFF = 0
COMP_ZSTD = 1
COMP_GZIP = 2
COMP_NAMES = {COMP_OFF: "off", COMP_ZSTD: "zstd", COMP_GZIP: "gzip"}

# checksum algorithms
CKSUM_XXH3_128 = 1
CKSUM_SHA256 = 2
CKSUM_NAMES = {CKSUM_XXH3_128: "xxh128", CKSUM_SHA256: "sha256"}

# block types
BT_DATA = 1       # file record or opaque payload
BT_NODE = 2       # B+-tree node (fusezfs/engine/tree.py)
BT_SPACEMAP = 3   # allocator map (fusezfs/engine/allocator.py)
BT_NAMES = {BT_DATA: "data", BT_NODE: "node", BT_SPACEMAP: "spacemap"}

FLAG_DEDUP = 1

_HOLE = bytes(BP_SIZE)
_DVA = struct.Struct("<IIQ")
_BODY = struct.Struct("<IIQQBBBBBBH32s16x")
assert _DVA.size * 3 + _BODY.size == BP_SIZE


@dataclass(frozen=True, slots=True)
class DVA:
    """One copy of a block: `asize` allocated bytes at byte `offset` of top-level vdev `vdev`."""

    vdev: int
    offset: int
    asize: int


@dataclass(frozen=True, slots=True)
class BlockPointer:
    dvas: tuple[DVA, ...]
    lsize: int
    psize: int
    birth: int
    comp: int
    cksum: int
    type: int
    checksum: bytes
    level: int = 0
    fill: int = 0
    flags: int = 0

    def encode(self) -> bytes:
        if not 1 <= len(self.dvas) <= 3:
            raise ValueError("a block pointer holds 1 to 3 DVAs")
        parts = [_DVA.pack(d.vdev, d.asize, d.offset) for d in self.dvas]
        parts += [bytes(_DVA.size)] * (3 - len(self.dvas))
        parts.append(_BODY.pack(self.lsize, self.psize, self.birth, self.fill, self.comp,
                                self.cksum, self.type, self.level, len(self.dvas), self.flags,
                                0, self.checksum.ljust(32, b"\0")))
        return b"".join(parts)

    @property
    def asize(self) -> int:
        """Bytes this block occupies on disk, all copies together."""
        return sum(d.asize for d in self.dvas)

    def identity(self) -> tuple:
        """What makes two pointers name the same stored block (used by tree diff)."""
        return (self.dvas, self.birth, self.checksum)


# decode_bp builds pointers by filling the slots directly: the generated __init__ of a frozen
# dataclass goes through object.__setattr__ once per field, which was half the cost of decoding
# one, and decode_bp runs for every child of every internal node read and every block an unlink
# frees. Only decode_bp uses these, with values it has checked (the classes have no
# __post_init__; every field is given).
_new = object.__new__
_dva_vdev, _dva_offset, _dva_asize = (DVA.__dict__[f].__set__ for f in DVA.__slots__)
(_bp_dvas, _bp_lsize, _bp_psize, _bp_birth, _bp_comp, _bp_cksum, _bp_type, _bp_checksum,
 _bp_level, _bp_fill, _bp_flags) = (BlockPointer.__dict__[f].__set__ for f in BlockPointer.__slots__)


def _build_dva(vdev: int, offset: int, asize: int) -> DVA:
    d = _new(DVA)
    _dva_vdev(d, vdev)
    _dva_offset(d, offset)
    _dva_asize(d, asize)
    return d


def _build_bp(dvas: tuple, lsize: int, psize: int, birth: int, comp: int, cksum: int,
              btype: int, digest: bytes, level: int, fill: int, flags: int) -> BlockPointer:
    bp = _new(BlockPointer)
    _bp_dvas(bp, dvas)
    _bp_lsize(bp, lsize)
    _bp_psize(bp, psize)
    _bp_birth(bp, birth)
    _bp_comp(bp, comp)
    _bp_cksum(bp, cksum)
    _bp_type(bp, btype)
    _bp_checksum(bp, digest)
    _bp_level(bp, level)
    _bp_fill(bp, fill)
    _bp_flags(bp, flags)
    return bp


def decode_bp(buf: bytes | memoryview, offset: int = 0) -> BlockPointer | None:
    """Decode a BP; None for a hole. Raises ValueError for a malformed pointer."""
    if offset == 0 and type(buf) is bytes and len(buf) == BP_SIZE:
        raw = buf                       # the common case: an item's value is just the BP
    else:
        raw = bytes(buf[offset:offset + BP_SIZE])
        if len(raw) != BP_SIZE:
            raise ValueError("short block pointer")
    if raw == _HOLE:
        return None
    (lsize, psize, birth, fill, comp, cksum, btype, level, ndvas, flags, _r,
     checksum) = _BODY.unpack_from(raw, 3 * _DVA.size)
    if not 1 <= ndvas <= 3 or comp not in COMP_NAMES or cksum not in CKSUM_NAMES:
        raise ValueError("malformed block pointer")
    dvas = []
    for i in range(ndvas):
        vdev, asize, off = _DVA.unpack_from(raw, i * _DVA.size)
        dvas.append(_build_dva(vdev, off, asize))
    digest_len = 16 if cksum == CKSUM_XXH3_128 else 32
    return _build_bp(tuple(dvas), lsize, psize, birth, comp, cksum, btype,
                     checksum[:digest_len], level, fill, flags)


def encode_bp(bp: BlockPointer | None) -> bytes:
    return bytes(BP_SIZE) if bp is None else bp.encode()


def checksum(data: bytes | memoryview, algorithm: int) -> bytes:
    """The checksum stored in a BP for the physical bytes `data`."""
    if algorithm == CKSUM_XXH3_128:
        return xxhash.xxh3_128_digest(data)
    if algorithm == CKSUM_SHA256:
        return hashlib.sha256(data).digest()
    raise ValueError(f"unknown checksum algorithm {algorithm}")
