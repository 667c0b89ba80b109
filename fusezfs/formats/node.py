"""Tree node: the logical content of one BT_NODE block of a copy-on-write B+-tree (fusezfs/engine/tree.py).

The block layer compresses and checksums the payload; the block pointer that names a node
carries its level (bp.level) as well, and a reader should check that the two agree. Payload
layout, version 1, little-endian, no padding anywhere:

    off  size  field
      0     4  magic b"FZND"
      4     2  format version (u16) = 1
      6     1  level (u8): 0 for a leaf; n >= 1 for an internal node whose children are at level n-1
      7     1  reserved, zero
      8     4  entry count N (u32), N >= 1
     12        N entries, back to back; the payload ends exactly after the last one

    leaf entry (level 0):
      0     2  key length K (u16), K <= 512
      2     1  ref flag: 0 plain value;
                         1 block: the value's first 128 bytes are the BP of a block this tree owns;
                         2 tree:  the value's first 128 bytes are the root BP of another tree
                         (for flags 1 and 2 the BP may be a hole, 128 zero bytes: no block)
      3     1  reserved, zero
      4     4  value length V (u32), V <= 8192, and V >= 128 when the ref flag is not 0
      8     K  key
    8+K     V  value

    internal entry (level >= 1):
      0     2  key length K (u16), K <= 512
      2     K  separator key
    2+K   128  child block pointer (formats/bp.py): never a hole, type BT_NODE (2), level = this
               node's level - 1

Keys are compared as unsigned bytes, lexicographically (a proper prefix sorts first), and are
strictly increasing within a node. In an internal node the first entry's key is always empty and
stands for "no lower bound"; for i >= 1, every key under child i-1 is < key i <= every key under
child i. To look up key k in an internal node, follow the last entry whose key is <= k. All leaves
of a tree are at the same depth, so the root's level is the tree's height minus one. An empty tree
has no root node (its root BP is a hole); a written node is never empty.

How full a node is allowed to get is the writer's policy, not part of the format (fusezfs splits
nodes whose payload exceeds 32 KiB and merges nodes under 8 KiB, see tree.py). The decoder
rejects anything malformed with ValueError and nothing else.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

from fusezfs.formats.bp import BP_SIZE, BT_NODE, BlockPointer, decode_bp

MAGIC = b"FZND"
VERSION = 1
MAX_KEY = 512
MAX_VALUE = 8192

REF_NONE = 0
REF_BLOCK = 1
REF_TREE = 2

_HEAD = struct.Struct("<4sHBBI")
_LEAF = struct.Struct("<HBBI")
_KLEN = struct.Struct("<H")
HEADER_SIZE = _HEAD.size                   # 12
LEAF_ENTRY_OVERHEAD = _LEAF.size           # 8: plus key and value
INNER_ENTRY_OVERHEAD = _KLEN.size + BP_SIZE  # 130: plus key


class NodeData(NamedTuple):
    """A decoded node. For a leaf, `values` are the item values and `refs` their ref flags; for an
    internal node, `values` are the child block pointers and `refs` is None."""

    level: int
    keys: list[bytes]
    values: list
    refs: list[int] | None


def encode_leaf(keys: list[bytes], values: list[bytes], refs: list[int]) -> bytes:
    """Encode a leaf. The caller guarantees sorted unique keys and the size limits (tree.py
    checks them on every put); only what would produce an unreadable node is checked here."""
    if not keys or not len(keys) == len(values) == len(refs):
        raise ValueError("a leaf needs at least one entry and as many values and refs as keys")
    pack = _LEAF.pack
    parts = [_HEAD.pack(MAGIC, VERSION, 0, 0, len(keys))]
    for k, v, r in zip(keys, values, refs):
        parts.append(pack(len(k), r, 0, len(v)))
        parts.append(k)
        parts.append(v)
    return b"".join(parts)


def encode_leaf_from(keys: list[bytes], values: list[bytes], refs: list[int],
                     base: tuple[bytes, list[bytes], list[bytes], list[int]]) -> bytes:
    """encode_leaf(keys, values, refs), byte for byte, reusing `base`: the encoding of another
    leaf (raw bytes, its keys, values, refs), typically the one these lists were copied from
    before a few entries changed. The entries both share at the start and at the end are
    found by comparing list slices (C, with identity first: unchanged entries are the same
    objects) and copied from the base's bytes; only the entries between are packed again. So
    rewriting a full leaf after one change costs about one entry's encoding, not all of them."""
    raw, bkeys, bvals, brefs = base
    n, m = len(keys), len(bkeys)
    if not n:
        return encode_leaf(keys, values, refs)

    def same(a0: int, a1: int, b0: int, b1: int) -> bool:
        return keys[a0:a1] == bkeys[b0:b1] and values[a0:a1] == bvals[b0:b1] and \
            refs[a0:a1] == brefs[b0:b1]

    lo, hi = 0, min(n, m)                   # longest common prefix, by bisection
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if same(0, mid, 0, mid):
            lo = mid
        else:
            hi = mid - 1
    p = lo
    lo, hi = 0, min(n, m) - p               # longest common suffix after it
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if same(n - mid, n, m - mid, m):
            lo = mid
        else:
            hi = mid - 1
    s = lo
    head_end = _HEAD.size + _LEAF.size * p + sum(map(len, bkeys[:p])) + sum(map(len, bvals[:p]))
    tail_len = _LEAF.size * s + sum(map(len, bkeys[m - s:])) + sum(map(len, bvals[m - s:]))
    pack = _LEAF.pack
    parts = [_HEAD.pack(MAGIC, VERSION, 0, 0, n), raw[_HEAD.size:head_end]]
    for k, v, r in zip(keys[p:n - s], values[p:n - s], refs[p:n - s]):
        parts.append(pack(len(k), r, 0, len(v)))
        parts.append(k)
        parts.append(v)
    if s:
        parts.append(raw[len(raw) - tail_len:])
    return b"".join(parts)


def encode_internal(level: int, keys: list[bytes], children: list[BlockPointer]) -> bytes:
    """Encode an internal node; keys[0] must be empty (see the module docstring)."""
    if not 1 <= level <= 255:
        raise ValueError(f"internal node level {level} out of range")
    if not keys or len(keys) != len(children) or keys[0] != b"":
        raise ValueError("an internal node needs >= 1 entry, one child per key, empty first key")
    pack = _KLEN.pack
    parts = [_HEAD.pack(MAGIC, VERSION, level, 0, len(keys))]
    for k, child in zip(keys, children):
        parts.append(pack(len(k)))
        parts.append(k)
        parts.append(child.encode())
    return b"".join(parts)


def decode(data: bytes | bytearray | memoryview) -> NodeData:
    """Decode and validate a node payload; raises ValueError (only) if it is malformed."""
    try:
        return _decode(bytes(data))
    except (struct.error, IndexError, TypeError, OverflowError) as e:  # belt and braces
        raise ValueError(f"malformed tree node: {e}") from None


def _decode(data: bytes) -> NodeData:
    size = len(data)
    if size < HEADER_SIZE:
        raise ValueError("tree node shorter than its header")
    magic, version, level, reserved, count = _HEAD.unpack_from(data, 0)
    if magic != MAGIC:
        raise ValueError(f"bad tree node magic {magic!r}")
    if version != VERSION:
        raise ValueError(f"unsupported tree node version {version}")
    if reserved:
        raise ValueError("tree node reserved byte is not zero")
    if count == 0:
        raise ValueError("empty tree node")
    # every entry takes at least 8 bytes; refuse absurd counts before allocating anything
    if count > (size - HEADER_SIZE) // LEAF_ENTRY_OVERHEAD:
        raise ValueError("tree node entry count exceeds its size")
    keys: list[bytes] = []
    off = HEADER_SIZE
    prev: bytes | None = None
    if level == 0:
        values: list = []
        refs: list[int] = []
        unpack = _LEAF.unpack_from
        for _ in range(count):
            if off + LEAF_ENTRY_OVERHEAD > size:
                raise ValueError("tree node truncated in an entry header")
            klen, ref, rsv, vlen = unpack(data, off)
            off += LEAF_ENTRY_OVERHEAD
            if klen > MAX_KEY or vlen > MAX_VALUE:
                raise ValueError("tree node entry exceeds the key or value size limit")
            if rsv or ref > REF_TREE:
                raise ValueError(f"tree node entry has bad ref flag {ref} or reserved byte")
            if ref and vlen < BP_SIZE:
                raise ValueError("tree node reference value shorter than a block pointer")
            kend = off + klen
            vend = kend + vlen
            if vend > size:
                raise ValueError("tree node truncated in an entry")
            key = data[off:kend]
            if prev is not None and key <= prev:
                raise ValueError("tree node keys are not strictly increasing")
            keys.append(key)
            values.append(data[kend:vend])
            refs.append(ref)
            prev = key
            off = vend
    else:
        values = []
        refs = None
        unpack = _KLEN.unpack_from
        for i in range(count):
            if off + 2 > size:
                raise ValueError("tree node truncated in an entry header")
            (klen,) = unpack(data, off)
            off += 2
            if klen > MAX_KEY:
                raise ValueError("tree node separator exceeds the key size limit")
            kend = off + klen
            end = kend + BP_SIZE
            if end > size:
                raise ValueError("tree node truncated in an entry")
            key = data[off:kend]
            if i == 0:
                if key:
                    raise ValueError("first separator of an internal tree node is not empty")
            elif key <= prev:   # type: ignore[operator]
                raise ValueError("tree node keys are not strictly increasing")
            child = decode_bp(data, kend)
            if child is None:
                raise ValueError("internal tree node has a hole for a child")
            if child.type != BT_NODE or child.level != level - 1:
                raise ValueError("tree node child has the wrong block type or level")
            keys.append(key)
            values.append(child)
            prev = key
            off = end
    if off != size:
        raise ValueError(f"tree node has {size - off} trailing bytes")
    return NodeData(level, keys, values, refs)
