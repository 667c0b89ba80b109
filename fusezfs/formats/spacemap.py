"""Space map: the set of allocated extents of every top-level vdev, as of one txg.

Stored as the payload of one BT_SPACEMAP block (normally zstd-compressed by the block layer;
the BP says). Payload layout, little-endian:

    off  size  field
      0     4  magic b"FZSM"
      4     4  format version (u32)
      8     4  number of vdev sections N (u32)
     12        N sections, each:
                 u32 vdev id, u32 extent count K,
                 then K pairs of LEB128 varints (gap, length), in sectors of 512 bytes:
                 gap is the distance from the end of the previous extent (from 0 for the first),
                 length is the extent's length. Extents are sorted and never touch or overlap.

The block that holds the space map is itself allocated in the map it describes.
"""
from __future__ import annotations

import struct

SECTOR = 512
MAGIC = b"FZSM"
VERSION = 1
_HEAD = struct.Struct("<4sII")
_SEC = struct.Struct("<II")

Extents = list[tuple[int, int]]


def _varint(n: int, out: bytearray) -> None:
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return


def encode(maps: dict[int, Extents]) -> bytes:
    out = bytearray(_HEAD.pack(MAGIC, VERSION, len(maps)))
    for vdev in sorted(maps):
        extents = maps[vdev]
        out += _SEC.pack(vdev, len(extents))
        prev_end = 0
        for off, length in extents:
            assert off % SECTOR == 0 and length % SECTOR == 0 and off >= prev_end and length > 0
            _varint((off - prev_end) // SECTOR, out)
            _varint(length // SECTOR, out)
            prev_end = off + length
    return bytes(out)


def decode(raw: bytes) -> dict[int, Extents]:
    """Inverse of encode; raises ValueError on malformed input."""
    try:
        magic, version, nsec = _HEAD.unpack_from(raw)
        if magic != MAGIC or version != VERSION:
            raise ValueError("not a space map")
        pos = _HEAD.size
        maps: dict[int, Extents] = {}
        for _ in range(nsec):
            vdev, count = _SEC.unpack_from(raw, pos)
            pos += _SEC.size
            extents: Extents = []
            prev_end = 0
            for _ in range(count):
                vals = []
                for _k in range(2):
                    n = shift = 0
                    while True:
                        b = raw[pos]
                        pos += 1
                        n |= (b & 0x7F) << shift
                        shift += 7
                        if not b & 0x80:
                            break
                    vals.append(n * SECTOR)
                gap, length = vals
                if length == 0 or (extents and gap == 0):
                    raise ValueError("space map extents touch or are empty")
                off = prev_end + gap
                extents.append((off, length))
                prev_end = off + length
            maps[vdev] = extents
        return maps
    except (struct.error, IndexError):
        raise ValueError("truncated space map") from None
