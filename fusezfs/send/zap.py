"""ZAP objects (ZFS's name-value objects) as ZFS lays them out: microzap and fatzap.

Theory of operation
-------------------
A ZPL directory, the master node and the unlinked set are ZAP objects; a send stream carries
their blocks as they are on disk, so fusezfs writes them, and reads those of other senders,
in ZFS's own layout (include/sys/zap_impl.h, zap_leaf.h; docs/FORMAT.md section 8.4).

A *microzap* is one block: a 64-byte header (ZBT_MICRO, the salt, normalization flags) and
64-byte entries of one uint64 value, a collision differentiator (cd) and a NUL-terminated name
of at most 49 bytes. It is used while every name is that short, every value a single uint64 and
the entries fit in a block of at most 128 KiB; its size is the smallest power of two (>= 512)
that holds them, as a ZAP grown by ZFS would have. Otherwise the object is a *fatzap*: blocks of
16 KiB, block 0 a header with the pointer table (embedded in its second half while it has 1024
entries; in blocks of its own beyond), then leaves. A leaf covers the names whose hash starts
with its prefix; it holds a hash table of chunk chains and 24-byte chunks: entries (hash, cd,
where the name and value arrays start) and arrays (21 bytes each, integers big-endian).

Names are found by hash: CRC-64 (ECMA polynomial, reflected) of the name's bytes seeded with the
object's salt, of which the top 28 bits are kept. Entries with equal hashes are told apart by
their cd, lowest free first. The encoders here are deterministic functions of (entries, salt):
fusezfs derives the salt from the object number, so a directory with the same entries encodes
to the same bytes in every stream, which keeps incremental streams consistent with what a
receiver got before. Decoders accept any valid layout (any salt, leaf split, chunk order).
"""
from __future__ import annotations

import struct

ZBT_LEAF = (1 << 63) + 0
ZBT_HEADER = (1 << 63) + 1
ZBT_MICRO = (1 << 63) + 3
ZAP_MAGIC = 0x2F52AB2AB
ZAP_LEAF_MAGIC = 0x2AB1EAF
MZAP_ENT_LEN = 64
MZAP_NAME_LEN = MZAP_ENT_LEN - 8 - 4 - 2          # 50, the NUL included
MZAP_MAX_BLKSZ = 128 << 10
FZAP_BLOCK_SHIFT = 14                             # fzap_default_block_shift
ZAP_HASHBITS = 28
CHUNK = 24
ARRAY_BYTES = CHUNK - 3
CHAIN_END = 0xFFFF
CHUNK_FREE, CHUNK_ENTRY, CHUNK_ARRAY = 253, 252, 251
CRC64_POLY = 0xC96C5795D7870F42

_CRC = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ (CRC64_POLY if _c & 1 else 0)
    _CRC.append(_c)


class ZapError(ValueError):
    """A block that is not a valid ZAP (a corrupt or foreign stream)."""


def zap_hash(salt: int, name: bytes) -> int:
    """The hash ZFS files `name` under: the top 28 bits of CRC-64(salt; name), low bits zero."""
    h = salt
    crc = _CRC
    for ch in name:
        h = (h >> 8) ^ crc[(h ^ ch) & 0xFF]
    return h & ~((1 << (64 - ZAP_HASHBITS)) - 1)


def salt_for(obj: int) -> int:
    """The salt fusezfs gives object `obj`'s ZAP: fixed per object (deterministic encoding),
    odd (never zero, as ZFS requires)."""
    return ((obj * 0x9E3779B97F4A7C15) & ((1 << 64) - 1)) | 1


Value = tuple[int, list[int]]        # (integer size 1, 2, 4 or 8, the integers)


def _assign_cds(items: list[tuple[bytes, Value]], salt: int) -> list[tuple[int, int, bytes, Value]]:
    """(hash, cd, name, value), sorted by (hash, cd); equal hashes get cds 0, 1, ... by name."""
    hashed = sorted((zap_hash(salt, name), name, value) for name, value in items)
    out = []
    prev, cd = None, 0
    for h, name, value in hashed:
        cd = cd + 1 if h == prev else 0
        prev = h
        out.append((h, cd, name, value))
    return out


# ---- microzap ------------------------------------------------------------------------------
def microzap_fits(items: list[tuple[bytes, Value]]) -> bool:
    return (len(items) + 1) * MZAP_ENT_LEN <= MZAP_MAX_BLKSZ and all(
        len(name) < MZAP_NAME_LEN and b"\0" not in name and v[0] == 8 and len(v[1]) == 1
        for name, v in items)


def microzap_blksz(count: int) -> int:
    size = 512
    while size < (count + 1) * MZAP_ENT_LEN:
        size *= 2
    return size


def encode_microzap(items: list[tuple[bytes, Value]], salt: int) -> bytes:
    entries = _assign_cds(items, salt)
    out = bytearray(microzap_blksz(len(entries)))
    struct.pack_into("<QQQ", out, 0, ZBT_MICRO, salt, 0)
    # entries in name order: a stable place for every name (ZFS takes the first free chunk)
    for i, (_h, cd, name, value) in enumerate(sorted(entries, key=lambda e: e[2])):
        struct.pack_into("<QIH", out, MZAP_ENT_LEN * (i + 1), value[1][0], cd, 0)
        out[MZAP_ENT_LEN * (i + 1) + 14:MZAP_ENT_LEN * (i + 1) + 14 + len(name)] = name
    return bytes(out)


def _decode_microzap(data: bytes) -> dict[bytes, Value]:
    out: dict[bytes, Value] = {}
    for off in range(MZAP_ENT_LEN, len(data) - MZAP_ENT_LEN + 1, MZAP_ENT_LEN):
        if data[off + 14] == 0:
            continue
        value = struct.unpack_from("<Q", data, off)[0]
        raw = data[off + 14:off + MZAP_ENT_LEN]
        end = raw.find(b"\0")
        if end < 0:
            raise ZapError("microzap name without NUL")
        out[bytes(raw[:end])] = (8, [value])
    return out


# ---- fatzap --------------------------------------------------------------------------------
def _nchunks(nbytes: int) -> int:
    return -(-nbytes // ARRAY_BYTES)


def _entry_chunks(name: bytes, value: Value) -> int:
    return 1 + _nchunks(len(name) + 1) + _nchunks(value[0] * len(value[1]))


def leaf_numchunks(bs: int) -> int:
    return ((1 << bs) - 2 * (1 << (bs - 5))) // CHUNK - 2


def _split(entries: list, prefix: int, plen: int, capacity: int, out: list) -> None:
    if sum(_entry_chunks(e[2], e[3]) for e in entries) <= capacity:
        out.append((prefix, plen, entries))
        return
    if plen >= ZAP_HASHBITS:
        raise ZapError("too many names with one hash for a ZAP leaf")
    bit = 63 - plen
    _split([e for e in entries if not e[0] >> bit & 1], prefix << 1, plen + 1, capacity, out)
    _split([e for e in entries if e[0] >> bit & 1], (prefix << 1) | 1, plen + 1, capacity, out)


def _encode_array(ints: list[int], intlen: int) -> bytes:
    return b"".join(v.to_bytes(intlen, "big") for v in ints)


def _encode_leaf(bs: int, prefix: int, plen: int, entries: list) -> bytes:
    size = 1 << bs
    nhash = 1 << (bs - 5)
    numchunks = leaf_numchunks(bs)
    out = bytearray(size)
    base = 48 + 2 * nhash
    hashtab = [CHAIN_END] * nhash
    chunk_cd: dict[int, int] = {}
    nxt: dict[int, int] = {}
    used = 0

    def alloc() -> int:
        nonlocal used
        used += 1
        return used - 1

    def array(raw: bytes) -> int:
        head = CHAIN_END
        prev = None
        for off in range(0, len(raw), ARRAY_BYTES):
            c = alloc()
            o = base + CHUNK * c
            out[o] = CHUNK_ARRAY
            piece = raw[off:off + ARRAY_BYTES]
            out[o + 1:o + 1 + len(piece)] = piece
            struct.pack_into("<H", out, o + 22, CHAIN_END)
            if prev is None:
                head = c
            else:
                struct.pack_into("<H", out, base + CHUNK * prev + 22, c)
            prev = c
        return head

    for h, cd, name, (intlen, ints) in entries:
        c = alloc()
        name_chunk = array(name + b"\0")
        value_chunk = array(_encode_array(ints, intlen))
        struct.pack_into("<BBHHHHHIQ", out, base + CHUNK * c, CHUNK_ENTRY, intlen, CHAIN_END,
                         name_chunk, len(name) + 1, value_chunk, len(ints), cd, h)
        # link into its bucket, the chain kept in cd order (zap_leaf_rehash_entry)
        bucket = (nhash - 1) & (h >> (64 - (bs - 5) - plen))
        prev, cur = None, hashtab[bucket]
        while cur != CHAIN_END and chunk_cd[cur] <= cd:
            prev, cur = cur, nxt[cur]
        nxt[c] = cur
        chunk_cd[c] = cd
        if prev is None:
            hashtab[bucket] = c
        else:
            nxt[prev] = c
    for c, n in nxt.items():
        struct.pack_into("<H", out, base + CHUNK * c + 2, n)
    if used > numchunks:
        raise ZapError("leaf overflow")
    for c in range(used, numchunks):
        o = base + CHUNK * c
        out[o] = CHUNK_FREE
        struct.pack_into("<H", out, o + 22, c + 1 if c + 1 < numchunks else CHAIN_END)
    struct.pack_into("<QQQIHHHHB", out, 0, ZBT_LEAF, 0, prefix, ZAP_LEAF_MAGIC, numchunks - used, len(entries), plen,
                     used if used < numchunks else CHAIN_END, 0)
    struct.pack_into("<%dH" % nhash, out, 48, *hashtab)
    return bytes(out)


def encode_fatzap(items: list[tuple[bytes, Value]], salt: int, bs: int = FZAP_BLOCK_SHIFT,
                  flags: int = 0) -> bytes:
    """The blocks of a fatzap holding `items` (header, leaves, external pointer table)."""
    entries = _assign_cds(items, salt)
    leaves: list = []
    _split(entries, 0, 0, leaf_numchunks(bs), leaves)
    embedded_shift = bs - 3 - 1
    maxplen = max(plen for _p, plen, _e in leaves)
    shift = max(embedded_shift, maxplen)
    size = 1 << bs
    blocks = [bytearray(size)]
    for prefix, plen, ents in leaves:
        blocks.append(bytearray(_encode_leaf(bs, prefix, plen, ents)))
    table = [0] * (1 << shift)
    for i, (prefix, plen, _e) in enumerate(leaves):
        lo = prefix << (shift - plen)
        table[lo:lo + (1 << (shift - plen))] = [i + 1] * (1 << (shift - plen))
    header = blocks[0]
    if shift == embedded_shift:
        zt_blk = zt_numblks = 0
        struct.pack_into("<%dQ" % len(table), header, size // 2, *table)
    else:
        zt_blk = len(blocks)
        zt_numblks = (len(table) * 8) >> bs
        for off in range(0, len(table), size // 8):
            blocks.append(bytearray(struct.pack("<%dQ" % (size // 8), *table[off:off + size // 8])))
    struct.pack_into("<QQQQQQQQQQQQQ", header, 0, ZBT_HEADER, ZAP_MAGIC, zt_blk, zt_numblks,
                     shift, 0, 0, len(blocks), len(leaves), len(entries), salt, 0, flags)
    return b"".join(bytes(b) for b in blocks)


def _read_array(data: bytes, base: int, chunk: int, nbytes: int, numchunks: int) -> bytes:
    out = bytearray()
    seen = 0
    while len(out) < nbytes:
        if chunk >= numchunks or seen > numchunks:
            raise ZapError("bad array chunk chain")
        o = base + CHUNK * chunk
        if data[o] != CHUNK_ARRAY:
            raise ZapError("array chunk expected")
        out += data[o + 1:o + 1 + ARRAY_BYTES]
        chunk = struct.unpack_from("<H", data, o + 22)[0]
        seen += 1
    return bytes(out[:nbytes])


def _decode_fatzap(data: bytes, blksz: int) -> dict[bytes, Value]:
    (_btype, magic, zt_blk, zt_numblks, shift, _nb, _cp, _freeblk, _nleafs, nentries, _salt,
     _norm, _flags) = struct.unpack_from("<13Q", data, 0)
    if magic != ZAP_MAGIC:
        raise ZapError("bad fatzap magic")
    bs = blksz.bit_length() - 1
    size = 1 << bs
    if size != blksz or bs < 10 or shift > 40 or \
            (zt_numblks == 0 and shift != bs - 4) or (zt_numblks and (8 << shift) > zt_numblks * size):
        raise ZapError("bad fatzap pointer table")
    if zt_numblks == 0:
        table = struct.unpack_from("<%dQ" % (1 << shift), data, size // 2)
    else:
        raw = data[zt_blk * size:(zt_blk + zt_numblks) * size]
        table = struct.unpack_from("<%dQ" % (1 << shift), raw)
    numchunks = leaf_numchunks(bs)
    nhash = 1 << (bs - 5)
    base = 48 + 2 * nhash
    out: dict[bytes, Value] = {}
    for blk in sorted(set(table)):
        leaf = data[blk * size:(blk + 1) * size]
        if len(leaf) < size or not _is_leaf_at(data, blk * size):
            raise ZapError("pointer table names a block that is not a leaf")
        for c in range(numchunks):
            o = base + CHUNK * c
            if leaf[o] != CHUNK_ENTRY:
                continue
            (_t, intlen, _next, name_chunk, name_n, value_chunk, value_n, _cd,
             _h) = struct.unpack_from("<BBHHHHHIQ", leaf, o)
            if intlen not in (1, 2, 4, 8):
                raise ZapError("bad integer size")
            name = _read_array(leaf, base, name_chunk, name_n, numchunks)
            raw = _read_array(leaf, base, value_chunk, value_n * intlen, numchunks)
            ints = [int.from_bytes(raw[i:i + intlen], "big") for i in range(0, len(raw), intlen)]
            out[name.rstrip(b"\0")] = (intlen, ints)
    if len(out) != nentries:
        raise ZapError(f"fatzap has {len(out)} entries, its header says {nentries}")
    return out


def _is_leaf_at(data: bytes, off: int) -> bool:
    if off + 28 > len(data):
        return False
    btype, = struct.unpack_from("<Q", data, off)
    magic, = struct.unpack_from("<I", data, off + 24)
    return btype == ZBT_LEAF and magic == ZAP_LEAF_MAGIC


# ---- either --------------------------------------------------------------------------------
def encode_zap(items: list[tuple[bytes, Value]], salt: int) -> tuple[int, bytes]:
    """(data block size, the object's bytes): a microzap when the entries allow, else a fatzap."""
    if microzap_fits(items):
        data = encode_microzap(items, salt)
        return len(data), data
    return 1 << FZAP_BLOCK_SHIFT, encode_fatzap(items, salt)


def decode_zap(data: bytes, blksz: int = 1 << FZAP_BLOCK_SHIFT) -> dict[bytes, Value]:
    """name -> (integer size, integers) of a ZAP object's bytes (its blocks of `blksz`, holes
    as zeros)."""
    if len(data) < 64:
        raise ZapError("ZAP object too short")
    btype, = struct.unpack_from("<Q", data, 0)
    if btype == ZBT_MICRO:
        return _decode_microzap(data)
    if btype == ZBT_HEADER:
        return _decode_fatzap(data, blksz)
    raise ZapError("not a ZAP object")


def uint64_items(mapping: dict[bytes, int]) -> list[tuple[bytes, Value]]:
    return [(k, (8, [v])) for k, v in mapping.items()]
