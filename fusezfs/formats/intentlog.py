"""The intent log's on-disk structures (docs/FORMAT.md section 9), pure encoders and decoders:
the header the MOS holds, log blocks (a header with the chain's guid, the block's sequence
number, its txg, the next block's address and a checksum, then records), and the records.
fusezfs/engine/zil.py writes and reads them; fusezfs/zpl/posix_log.py makes and applies records.
A block is accepted only whole: magic, guid, sequence number, checksum and record lengths all
right; anything else (a torn write, a stale block, another chain's) is the end of the log.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

import xxhash

from fusezfs.formats.bp import BP_SIZE, DVA, BlockPointer, decode_bp, encode_bp

HEADER_MAGIC = b"FZZILHDR"
BLOCK_MAGIC = b"FZZILBLK"
_HEADER = struct.Struct("<8sQQIIQQ")        # magic, guid, seq, vdev, asize, offset, claim_txg
_BLOCK = struct.Struct("<8sQQQIIQIIII16s")  # magic guid seq txg | next vdev asize offset |
BLOCK_HDR = _BLOCK.size                      # used nrec flags reserved | checksum
assert _HEADER.size == 48 and BLOCK_HDR == 80

FLAG_COMMIT = 1             # the last block of one commit (an fsync's records end here)
SECTOR = 512
PAGE = 4096                 # log blocks are written in whole pages (sizes are multiples of it)

# record types (FORMAT.md section 9.3)
TX_WRITE, TX_INDIRECT, TX_TRUNCATE, TX_ATTR, TX_CREATE, TX_LINK, TX_REMOVE, TX_RENAME, \
    TX_SETXATTR, TX_RMXATTR = range(1, 11)
TX_NAMES = {TX_WRITE: "write", TX_INDIRECT: "indirect", TX_TRUNCATE: "truncate",
            TX_ATTR: "attr", TX_CREATE: "create", TX_LINK: "link", TX_REMOVE: "remove",
            TX_RENAME: "rename", TX_SETXATTR: "setxattr", TX_RMXATTR: "rmxattr"}
_COMMON = struct.Struct("<HHIQ")            # type, flags, length (of the whole record), dataset
_WRITE = struct.Struct("<QQ")               # ino, offset; then the bytes
_INDIRECT = struct.Struct("<QQQ")           # ino, offset, length; then a block pointer
_TRUNCATE = struct.Struct("<QQQ")           # ino, offset, length (0: the size becomes offset)
_ATTR = struct.Struct("<QIIIIQqqq")         # ino, mode, uid, gid, 0, size, atime, mtime, ctime
_CREATE = struct.Struct("<QQIIIIHHIQQqqqq")  # parent, ino, mode, uid, gid, blksz, namelen, 0,
#                                              0, rdev, gen, atime, mtime, ctime, crtime
_LINK = struct.Struct("<QQ")                # parent, ino; then the name
_REMOVE = struct.Struct("<QQ")              # parent, ino; then the name
_RENAME = struct.Struct("<QQHHI")           # old parent, new parent, old len, new len, 0
_XATTR = struct.Struct("<QHHI")             # ino, name length, 0, 0; then name (and value)
WRITE_HDR = _COMMON.size + _WRITE.size


# ---- records: pure encoders and decoders ---------------------------------------------------
@dataclass
class Record:
    """One log record, decoded (fields a type does not use keep their defaults)."""

    type: int
    ds: int
    flags: int = 0
    ino: int = 0
    parent: int = 0
    new_parent: int = 0
    offset: int = 0
    size: int = 0
    data: bytes = b""
    name: bytes = b""
    new_name: bytes = b""
    target: bytes = b""
    mode: int = 0
    uid: int = 0
    gid: int = 0
    blksz: int = 0
    rdev: int = 0
    gen: int = 0
    times: tuple[int, ...] = ()
    bp: BlockPointer | None = None
    txg: int = 0                 # the txg of the block it came in (not stored per record)


def _rec(rtype: int, ds: int, flags: int, body: bytes) -> bytes:
    return _COMMON.pack(rtype, flags, _COMMON.size + len(body), ds) + body


def write_record(ds: int, ino: int, offset: int, data: bytes) -> bytes:
    return _rec(TX_WRITE, ds, 0, _WRITE.pack(ino, offset) + bytes(data))


def indirect_record(ds: int, ino: int, offset: int, length: int, bp: BlockPointer) -> bytes:
    return _rec(TX_INDIRECT, ds, 0, _INDIRECT.pack(ino, offset, length) + encode_bp(bp))


def truncate_record(ds: int, ino: int, size: int) -> bytes:
    return _rec(TX_TRUNCATE, ds, 0, _TRUNCATE.pack(ino, size, 0))


def free_record(ds: int, ino: int, offset: int, length: int) -> bytes:
    """[offset, offset + length) freed, the size kept (fallocate's punch and zero range; as
    ZFS's TX_TRUNCATE with a length)."""
    return _rec(TX_TRUNCATE, ds, 0, _TRUNCATE.pack(ino, offset, length))


def attr_record(ds: int, ino: int, mode: int, uid: int, gid: int, size: int, atime: int,
                mtime: int, ctime: int) -> bytes:
    return _rec(TX_ATTR, ds, 0, _ATTR.pack(ino, mode, uid, gid, 0, size, atime, mtime, ctime))


def create_record(ds: int, parent: int, name: bytes, ino: int, mode: int, uid: int, gid: int,
                  blksz: int, rdev: int, gen: int, times: tuple[int, int, int, int],
                  target: bytes = b"") -> bytes:
    return _rec(TX_CREATE, ds, 0, _CREATE.pack(parent, ino, mode, uid, gid, blksz, len(name),
                                               0, 0, rdev, gen, *times) + name + target)


def link_record(ds: int, parent: int, name: bytes, ino: int) -> bytes:
    return _rec(TX_LINK, ds, 0, _LINK.pack(parent, ino) + name)


def remove_record(ds: int, parent: int, name: bytes, ino: int, is_dir: bool) -> bytes:
    return _rec(TX_REMOVE, ds, int(is_dir), _REMOVE.pack(parent, ino) + name)


def rename_record(ds: int, parent: int, name: bytes, new_parent: int, new_name: bytes,
                  flags: int) -> bytes:
    return _rec(TX_RENAME, ds, flags, _RENAME.pack(parent, new_parent, len(name),
                                                   len(new_name), 0) + name + new_name)


def setxattr_record(ds: int, ino: int, name: bytes, value: bytes) -> bytes:
    return _rec(TX_SETXATTR, ds, 0, _XATTR.pack(ino, len(name), 0, 0) + name + bytes(value))


def rmxattr_record(ds: int, ino: int, name: bytes) -> bytes:
    return _rec(TX_RMXATTR, ds, 0, _XATTR.pack(ino, len(name), 0, 0) + name)


def decode_record(raw: bytes | memoryview) -> Record:
    """A record from its bytes (exactly one record); ValueError if malformed."""
    raw = bytes(raw)
    rtype, flags, length, ds = _COMMON.unpack_from(raw)
    if length != len(raw):
        raise ValueError("record length mismatch")
    body = raw[_COMMON.size:]
    r = Record(rtype, ds, flags)
    if rtype == TX_WRITE:
        r.ino, r.offset = _WRITE.unpack_from(body)
        r.data = body[_WRITE.size:]
    elif rtype == TX_INDIRECT:
        r.ino, r.offset, r.size = _INDIRECT.unpack_from(body)
        r.bp = decode_bp(body, _INDIRECT.size)
        if r.bp is None or len(body) != _INDIRECT.size + BP_SIZE:
            raise ValueError("indirect record without a block")
    elif rtype == TX_TRUNCATE:
        r.ino, r.offset, r.size = _TRUNCATE.unpack_from(body)
    elif rtype == TX_ATTR:
        r.ino, r.mode, r.uid, r.gid, _z, r.size, *t = _ATTR.unpack_from(body)
        r.times = tuple(t)
    elif rtype == TX_CREATE:
        (r.parent, r.ino, r.mode, r.uid, r.gid, r.blksz, n, _z, _z2, r.rdev, r.gen,
         *t) = _CREATE.unpack_from(body)
        r.times = tuple(t)
        rest = body[_CREATE.size:]
        r.name, r.target = rest[:n], rest[n:]
    elif rtype in (TX_LINK, TX_REMOVE):
        r.parent, r.ino = _LINK.unpack_from(body)
        r.name = body[_LINK.size:]
    elif rtype == TX_RENAME:
        r.parent, r.new_parent, n1, n2, _z = _RENAME.unpack_from(body)
        rest = body[_RENAME.size:]
        r.name, r.new_name = rest[:n1], rest[n1:n1 + n2]
    elif rtype in (TX_SETXATTR, TX_RMXATTR):
        r.ino, n, _z, _z2 = _XATTR.unpack_from(body)
        rest = body[_XATTR.size:]
        r.name, r.data = rest[:n], rest[n:]
    else:
        raise ValueError(f"unknown record type {rtype}")
    return r


def split_write(raw: bytes, room: int) -> tuple[bytes, bytes] | None:
    """A write record cut in two so that the first part takes at most `room` bytes (records
    never span blocks); None if it is no write or too little would fit."""
    rtype, _f, _n, ds = _COMMON.unpack_from(raw)
    if rtype != TX_WRITE or room < WRITE_HDR + SECTOR:
        return None
    ino, offset = _WRITE.unpack_from(raw, _COMMON.size)
    data = memoryview(raw)[WRITE_HDR:]
    k = room - WRITE_HDR
    return write_record(ds, ino, offset, data[:k]), write_record(ds, ino, offset + k, data[k:])


# ---- blocks and the header -----------------------------------------------------------------
@dataclass(frozen=True)
class Header:
    guid: int
    seq: int            # the sequence number of `first`
    first: DVA          # the first block to read: replay starts here
    claim_txg: int = 0  # nonzero once an import claimed records: replay those of txgs >= it

    def encode(self) -> bytes:
        d = self.first
        return _HEADER.pack(HEADER_MAGIC, self.guid, self.seq, d.vdev, d.asize, d.offset,
                            self.claim_txg)

    @classmethod
    def decode(cls, raw: bytes) -> "Header":
        magic, guid, seq, vdev, asize, offset, claim = _HEADER.unpack_from(raw)
        if magic != HEADER_MAGIC:
            raise ValueError("not an intent log header")
        return cls(guid, seq, DVA(vdev, offset, asize), claim)


@dataclass
class Block:
    dva: DVA
    seq: int
    txg: int
    flags: int
    next: DVA
    records: list[bytes] = field(default_factory=list)


def encode_block(guid: int, seq: int, txg: int, nxt: DVA, flags: int,
                 records: list[bytes]) -> bytes:
    """The bytes to write: the header, the records, zeros to a whole page (a partial page
    would make the kernel read the rest of it first)."""
    body = b"".join(records)
    used = BLOCK_HDR + len(body)
    head = _BLOCK.pack(BLOCK_MAGIC, guid, seq, txg, nxt.vdev, nxt.asize, nxt.offset, used,
                       len(records), flags, 0, bytes(16))
    digest = xxhash.xxh3_128_digest(head[:64] + body)
    pad = -used % PAGE
    return head[:64] + digest + body + bytes(pad)


def decode_block(raw: bytes, dva: DVA, guid: int, seq: int) -> Block | None:
    """The block at `dva` if it is the chain's block number `seq` and whole, else None."""
    if len(raw) < BLOCK_HDR:
        return None
    (magic, g, s, txg, nv, na, no, used, nrec, flags, _r,
     digest) = _BLOCK.unpack_from(raw)
    if magic != BLOCK_MAGIC or g != guid or s != seq or not BLOCK_HDR <= used <= len(raw):
        return None
    body = raw[BLOCK_HDR:used]
    if xxhash.xxh3_128_digest(raw[:64] + body) != digest:
        return None
    records, pos = [], 0
    for _ in range(nrec):
        if pos + _COMMON.size > len(body):
            return None
        length = _COMMON.unpack_from(body, pos)[2]
        if length < _COMMON.size or pos + length > len(body):
            return None
        records.append(body[pos:pos + length])
        pos += length
    if pos != len(body):
        return None
    return Block(dva, s, txg, flags, DVA(nv, no, na), records)
