"""Labels and uberblocks: how a pool file says what it is and where the newest state lives.

Every device (pool file) carries two labels of LABEL_SIZE bytes, one at the start and one at the
end of its usable size (the file size rounded down to LABEL_SIZE). A label is:

    off        size      field
      0        16 KiB    config area (below)
    16 KiB    112 KiB    reserved (zero)
    128 KiB   128 KiB    uberblock ring: UB_SLOTS slots of UB_SIZE bytes; txg T goes to slot T % UB_SLOTS

Config area (the pool's identity and layout, rewritten only on create, export, import, destroy):

    off  size  field
      0     8  magic  b"FZFSLABL"
      8     4  format version (u32)
     12     4  length L of the JSON text (u32)
     16     8  config generation (u64): the higher valid generation wins between the two labels
     24    16  xxh3-128 of bytes 0..24 followed by the JSON text
     40     L  JSON config, UTF-8 (keys in docs/FORMAT.md)

Uberblock (one ring slot), the root of the Merkle tree, self-checksummed:

    off  size  field
      0     8  magic  b"FZFSUBER"
      8     4  format version (u32)
     12     4  reserved
     16     8  txg (u64)
     24     8  pool guid (u64)
     32     8  timestamp, seconds since the epoch (u64)
     40   128  BP of the MOS (meta object set) tree root
    168   128  BP of the space map
    296   712  reserved (zero)
   1008    16  xxh3-128 of bytes 0..1008

Crash safety: a slot is written only after everything its BPs reach is flushed, and the ring keeps
the previous UB_SLOTS-1 uberblocks, so a torn slot write loses only the newest txg. Import takes
the valid uberblock with the highest txg across every label of every device.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import xxhash

from fusezfs.formats.bp import BP_SIZE, BlockPointer, decode_bp, encode_bp

FORMAT_VERSION = 1
LABEL_SIZE = 256 * 1024
CONFIG_SIZE = 16 * 1024
RING_OFFSET = 128 * 1024
UB_SIZE = 1024
UB_SLOTS = (LABEL_SIZE - RING_OFFSET) // UB_SIZE

LABEL_MAGIC = b"FZFSLABL"
UB_MAGIC = b"FZFSUBER"

_CFG = struct.Struct("<8sIIQ")
_UB = struct.Struct("<8sIIQQQ")


def usable_size(device_size: int) -> int:
    return device_size - device_size % LABEL_SIZE


def label_offsets(device_size: int) -> tuple[int, int]:
    end = usable_size(device_size)
    return 0, end - LABEL_SIZE


def encode_config(config: dict, generation: int) -> bytes:
    text = json.dumps(config, sort_keys=True).encode()
    if 40 + len(text) > CONFIG_SIZE:
        raise ValueError("pool configuration too large for a label")
    head = _CFG.pack(LABEL_MAGIC, FORMAT_VERSION, len(text), generation)
    digest = xxhash.xxh3_128_digest(head + text)
    return (head + digest + text).ljust(CONFIG_SIZE, b"\0")


def decode_config(raw: bytes) -> tuple[dict, int] | None:
    """(config, generation) or None if the area holds no valid config."""
    if len(raw) < 40:
        return None
    magic, version, length, generation = _CFG.unpack_from(raw)
    if magic != LABEL_MAGIC or version != FORMAT_VERSION or 40 + length > len(raw):
        return None
    text = raw[40:40 + length]
    if xxhash.xxh3_128_digest(raw[:24] + text) != raw[24:40]:
        return None
    try:
        config = json.loads(text)
    except ValueError:
        return None
    return (config, generation) if isinstance(config, dict) else None


@dataclass(frozen=True, slots=True)
class Uberblock:
    txg: int
    pool_guid: int
    timestamp: int
    mos: BlockPointer | None
    spacemap: BlockPointer | None

    def encode(self) -> bytes:
        head = _UB.pack(UB_MAGIC, FORMAT_VERSION, 0, self.txg, self.pool_guid, self.timestamp)
        body = (head + encode_bp(self.mos) + encode_bp(self.spacemap)).ljust(UB_SIZE - 16, b"\0")
        return body + xxhash.xxh3_128_digest(body)


def decode_uberblock(raw: bytes) -> Uberblock | None:
    """The uberblock in a ring slot, or None if the slot is empty, torn or foreign."""
    if len(raw) != UB_SIZE or raw[:8] != UB_MAGIC:
        return None
    if xxhash.xxh3_128_digest(raw[:UB_SIZE - 16]) != raw[UB_SIZE - 16:]:
        return None
    magic, version, _r, txg, guid, ts = _UB.unpack_from(raw)
    if version != FORMAT_VERSION:
        return None
    try:
        mos = decode_bp(raw, _UB.size)
        sm = decode_bp(raw, _UB.size + BP_SIZE)
    except ValueError:
        return None
    return Uberblock(txg, guid, ts, mos, sm)
