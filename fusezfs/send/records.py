"""The records of a send stream: OpenZFS's dmu_replay_record_t, encoded and decoded.

Theory of operation
-------------------
A stream is a sequence of records. Each record is a 312-byte header (`drr_type` u32,
`drr_payloadlen` u32, then a 304-byte union whose layout depends on the type), followed by a
payload whose length the header gives: BEGIN's nvlist (`drr_payloadlen`), OBJECT's bonus buffer
(rounded up to 8), WRITE's block, SPILL's block, WRITE_EMBEDDED's compressed bytes (rounded up
to 8). Integers are in the sender's byte order; the reader finds it from BEGIN's magic
(DMU_BACKUP_MAGIC read natively, or byte-swapped), and byte-swaps everything it decodes.
Every layout below is bit-exact with include/sys/zfs_ioctl.h of OpenZFS 2.1 (docs/FORMAT.md
section 8 has the tables).

Checksums. The whole stream is covered by one running fletcher-4 over 32-bit words in the
sender's byte order. Since OpenZFS 0.7 every record but BEGIN also carries, in its last 32
bytes (`drr_checksum`), the running checksum of everything before that field; a reader checks
it only when it is not zero. END carries in `drr_end.drr_checksum` the running checksum of
everything before the END record. Streams of ZFS before 0.7 (zfs-fuse's) leave the per-record
field zero, and their receivers do not know it: `StreamWriter` writes that older kind by default
(`record_checksums=False`), which every receiver accepts, and the newer one on request.

The reader raises `StreamError` with OpenZFS's wording ("invalid backup stream", "checksum
mismatch", ...); a short read is a truncated stream. Nothing here knows about datasets.
"""
from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from fusezfs.send.fletcher import Fletcher4

DMU_BACKUP_MAGIC = 0x2F5BACBAC
RECORD_SIZE = 312
CHECKSUM_OFFSET = RECORD_SIZE - 32
MAXNAMELEN = 256
MAX_PAYLOAD = 16 << 20               # SPA_MAXBLOCKSIZE
SMALL_PAYLOAD = 8 << 10              # checksummed in one call with its header

# drr_type
DRR_BEGIN, DRR_OBJECT, DRR_FREEOBJECTS, DRR_WRITE, DRR_FREE, DRR_END, DRR_WRITE_BYREF, \
    DRR_SPILL, DRR_WRITE_EMBEDDED, DRR_OBJECT_RANGE, DRR_REDACT = range(11)
TYPE_NAMES = ["BEGIN", "OBJECT", "FREEOBJECTS", "WRITE", "FREE", "END", "WRITE_BYREF",
              "SPILL", "WRITE_EMBEDDED", "OBJECT_RANGE", "REDACT"]

# drr_versioninfo: header type in bits 0-1, feature flags in bits 2-31
DMU_SUBSTREAM = 1
DMU_COMPOUNDSTREAM = 2
FEATURE_DEDUP = 1 << 0
FEATURE_DEDUPPROPS = 1 << 1
FEATURE_SA_SPILL = 1 << 2
FEATURE_EMBED_DATA = 1 << 16
FEATURE_LZ4 = 1 << 17
FEATURE_LARGE_BLOCKS = 1 << 19
FEATURE_RESUMING = 1 << 20
FEATURE_REDACTED = 1 << 21
FEATURE_COMPRESSED = 1 << 22
FEATURE_LARGE_DNODE = 1 << 23
FEATURE_RAW = 1 << 24
FEATURE_ZSTD = 1 << 25
FEATURE_HOLDS = 1 << 26
FEATURE_SWITCH_TO_LARGE_BLOCKS = 1 << 27

# drr_begin.drr_flags
DRR_FLAG_CLONE = 1 << 0
DRR_FLAG_CI_DATA = 1 << 1
DRR_FLAG_FREERECORDS = 1 << 2
DRR_FLAG_SPILL_BLOCK = 1 << 3

DMU_OST_ZFS = 2
ZIO_CHECKSUM_OFF = 2
FREE_TO_END = (1 << 64) - 1          # drr_free.drr_length: "to the end of the object"

_HDR = "Ii"                          # drr_type, drr_payloadlen (the reader checks >= 0)
_BEGIN = "QQQIIQQ256s"
_END = "4QQ"
_OBJECT = "QIIIIBBBBIQBBB5xQ"
_FREEOBJECTS = "QQQ"
_WRITE = "QIIQQQBBB5x32sQQ8s12s16s"
_FREE = "QQQQ"
_WRITE_BYREF = "QQQQQQQBB6x32sQ"
_SPILL = "QQQBB6xQ8s12s16sI"
_WRITE_EMBEDDED = "QQQQBB6xII"
_OBJECT_RANGE = "QQQ8s12s16sB3x"
_REDACT = "QQQQ"
_BODIES = {DRR_BEGIN: _BEGIN, DRR_END: _END, DRR_OBJECT: _OBJECT,
           DRR_FREEOBJECTS: _FREEOBJECTS, DRR_WRITE: _WRITE, DRR_FREE: _FREE,
           DRR_WRITE_BYREF: _WRITE_BYREF, DRR_SPILL: _SPILL,
           DRR_WRITE_EMBEDDED: _WRITE_EMBEDDED, DRR_OBJECT_RANGE: _OBJECT_RANGE,
           DRR_REDACT: _REDACT}
for _fmt in _BODIES.values():
    assert struct.calcsize("<" + _HDR + _fmt) <= CHECKSUM_OFFSET or _fmt == _BEGIN, _fmt
assert struct.calcsize("<" + _HDR + _BEGIN) == RECORD_SIZE


class StreamError(Exception):
    """A stream that cannot be received. `message` is OpenZFS's words (libzfs_sendrecv.c):
    `invalid` ones are reported as "invalid backup stream" with `message` as the reason."""

    def __init__(self, message: str, *, checksum: bool = False, truncated: bool = False,
                 header: bool = False):
        super().__init__(message)
        self.message = message
        self.checksum = checksum
        self.truncated = truncated
        self.header = header            # found reading a BEGIN (libzfs's part, not the kernel's)


@dataclass
class Begin:
    toname: str
    toguid: int
    fromguid: int = 0
    creation_time: int = 0
    type: int = DMU_OST_ZFS
    flags: int = 0
    hdrtype: int = DMU_SUBSTREAM
    features: int = 0
    magic: int = DMU_BACKUP_MAGIC
    payload: bytes = b""             # a compound stream's packed nvlist

    @property
    def versioninfo(self) -> int:
        return self.hdrtype | (self.features << 2)


@dataclass
class Object:
    object: int
    type: int
    bonustype: int
    blksz: int
    bonus: bytes = b""
    bonuslen: int = -1               # -1: len(bonus)
    checksumtype: int = 0
    compress: int = 0
    dn_slots: int = 0
    flags: int = 0
    raw_bonuslen: int = 0
    indblkshift: int = 0
    nlevels: int = 0
    nblkptr: int = 0
    maxblkid: int = 0
    toguid: int = 0

    def __post_init__(self) -> None:
        if self.bonuslen < 0:
            self.bonuslen = len(self.bonus)


@dataclass
class FreeObjects:
    firstobj: int
    numobjs: int
    toguid: int = 0


@dataclass
class Write:
    object: int
    type: int
    offset: int
    data: bytes | memoryview
    logical_size: int = -1           # -1: len(data)
    checksumtype: int = ZIO_CHECKSUM_OFF
    flags: int = 0
    compressiontype: int = 0
    key: bytes = bytes(32)
    key_prop: int = 0
    compressed_size: int = 0
    salt: bytes = bytes(8)
    iv: bytes = bytes(12)
    mac: bytes = bytes(16)
    toguid: int = 0

    def __post_init__(self) -> None:
        if self.logical_size < 0:
            self.logical_size = len(self.data)


@dataclass
class Free:
    object: int
    offset: int
    length: int = FREE_TO_END
    toguid: int = 0


@dataclass
class End:
    checksum: tuple[int, int, int, int]
    toguid: int = 0


@dataclass
class Other:
    """A record fusezfs does not act on (WRITE_BYREF, SPILL, WRITE_EMBEDDED, OBJECT_RANGE,
    REDACT): kept as its decoded fields and payload, so tools can show it."""
    type: int
    fields: tuple = ()
    payload: bytes = b""


Record = Begin | Object | FreeObjects | Write | Free | End | Other


def _name_bytes(name: str) -> bytes:
    raw = name.encode()
    if len(raw) >= MAXNAMELEN:
        raise ValueError(f"name too long for a stream: {name!r}")
    return raw


def _pad8(n: int) -> int:
    return (n + 7) & ~7


def encode_header(rec: Record) -> tuple[bytearray, bytes | memoryview]:
    """The 312-byte header (checksum field zero) and the payload of a record."""
    out = bytearray(RECORD_SIZE)
    pack = struct.pack_into
    if isinstance(rec, Begin):
        pack("<" + _HDR + _BEGIN, out, 0, DRR_BEGIN, len(rec.payload), rec.magic,
             rec.versioninfo, rec.creation_time, rec.type, rec.flags, rec.toguid,
             rec.fromguid, _name_bytes(rec.toname))
        return out, rec.payload
    if isinstance(rec, Object):
        bonus = bytes(rec.bonus)
        payload = bonus + bytes(_pad8(rec.bonuslen) - len(bonus))
        pack("<" + _HDR + _OBJECT, out, 0, DRR_OBJECT, 0, rec.object, rec.type, rec.bonustype,
             rec.blksz, rec.bonuslen, rec.checksumtype, rec.compress, rec.dn_slots, rec.flags,
             rec.raw_bonuslen, rec.toguid, rec.indblkshift, rec.nlevels, rec.nblkptr,
             rec.maxblkid)
        return out, payload
    if isinstance(rec, FreeObjects):
        pack("<" + _HDR + _FREEOBJECTS, out, 0, DRR_FREEOBJECTS, 0, rec.firstobj, rec.numobjs,
             rec.toguid)
        return out, b""
    if isinstance(rec, Write):
        pack("<" + _HDR + _WRITE, out, 0, DRR_WRITE, 0, rec.object, rec.type, 0, rec.offset,
             rec.logical_size, rec.toguid, rec.checksumtype, rec.flags, rec.compressiontype,
             rec.key, rec.key_prop, rec.compressed_size, rec.salt, rec.iv, rec.mac)
        return out, rec.data
    if isinstance(rec, Free):
        pack("<" + _HDR + _FREE, out, 0, DRR_FREE, 0, rec.object, rec.offset, rec.length,
             rec.toguid)
        return out, b""
    if isinstance(rec, End):
        pack("<" + _HDR + _END, out, 0, DRR_END, 0, *rec.checksum, rec.toguid)
        return out, b""
    if isinstance(rec, Other):
        pack("<" + _HDR + _BODIES[rec.type], out, 0, rec.type, 0, *rec.fields)
        return out, rec.payload
    raise TypeError(rec)


class StreamWriter:
    """Writes records to a binary file, keeping the running checksum; `end()` writes END.
    `size` counts the bytes written (what `send -nvP` estimates)."""

    def __init__(self, out: BinaryIO | None, *, record_checksums: bool = False,
                 dry: bool = False) -> None:
        self.out = out                  # None: only count and checksum
        self.dry = dry                  # count sizes only: WRITE records come without data
        self.record_checksums = record_checksums
        self.cksum = Fletcher4()
        self.size = 0
        self.counts = [0] * len(TYPE_NAMES)
        self.toguid = 0

    def write(self, rec: Record) -> None:
        if isinstance(rec, Begin):
            self.toguid = rec.toguid
        elif hasattr(rec, "toguid") and not isinstance(rec, End):
            rec.toguid = self.toguid
        if self.dry:
            self._count(rec)
            return
        hdr, payload = encode_header(rec)
        rtype = struct.unpack_from("<I", hdr)[0]
        if rtype == DRR_END:
            struct.pack_into("<4Q", hdr, 8, *self.cksum.state)
        if len(payload) % 4:
            raise ValueError("payload length must be a multiple of 4")
        if self.record_checksums and rtype != DRR_BEGIN:
            self.cksum.update(memoryview(hdr)[:CHECKSUM_OFFSET])
            struct.pack_into("<4Q", hdr, CHECKSUM_OFFSET, *self.cksum.state)
            self.cksum.update(memoryview(hdr)[CHECKSUM_OFFSET:])
            if len(payload):
                self.cksum.update(payload)
        elif len(payload) <= SMALL_PAYLOAD:         # one pass over header and payload
            self.cksum.update(hdr + payload if len(payload) else hdr)
        else:
            self.cksum.update(hdr)
            self.cksum.update(payload)
        if self.out is not None:
            self.out.write(hdr)
            if len(payload):
                self.out.write(payload)
        self.size += RECORD_SIZE + len(payload)
        self.counts[rtype] += 1

    def _count(self, rec: Record) -> None:
        if isinstance(rec, Write):
            n, rtype = rec.compressed_size or rec.logical_size, DRR_WRITE
        elif isinstance(rec, Object):
            n, rtype = rec.raw_bonuslen or _pad8(rec.bonuslen), DRR_OBJECT
        elif isinstance(rec, Begin):
            n, rtype = len(rec.payload), DRR_BEGIN
        else:
            n, rtype = 0, {FreeObjects: DRR_FREEOBJECTS, Free: DRR_FREE, End: DRR_END}.get(
                type(rec), getattr(rec, "type", 0))
        self.size += RECORD_SIZE + n
        self.counts[rtype] += 1

    def end(self) -> None:
        self.write(End((0, 0, 0, 0), self.toguid))


def package_header(toname: str, payload: bytes = b"", features: int = 0) -> bytes:
    """The head of a compound stream (send -I, -p, -R), as libzfs's send_prelim_records writes
    it: a BEGIN of header type 2 naming the last snapshot, the packed nvlist (none for -I),
    and an END carrying the checksum of those two. Substreams follow, then PACKAGE_END."""
    hdr, body = encode_header(Begin(toname, 0, type=0, hdrtype=DMU_COMPOUNDSTREAM,
                                    features=features, payload=payload))
    ck = Fletcher4()
    ck.update(hdr)
    if len(body):
        ck.update(body)
    end = bytearray(RECORD_SIZE)
    struct.pack_into("<I", end, 0, DRR_END)
    struct.pack_into("<4Q", end, 8, *ck.state)
    return bytes(hdr) + bytes(body) + bytes(end)


# the last record of a compound stream (send_conclusion_record with no checksum)
PACKAGE_END = struct.pack("<I", DRR_END) + bytes(RECORD_SIZE - 4)


def _swap32(data) -> bytes:
    a = array("I", bytes(data))
    a.byteswap()
    return a.tobytes()


class StreamReader:
    """Reads records from a binary file, checking the running checksum. Iterating yields
    records up to and including END (END's checksum already checked); a stream may hold
    several substreams one after the other (a compound stream): call `records()` again."""

    def __init__(self, src: BinaryIO) -> None:
        self.src = src
        self.cksum = Fletcher4()
        self.swap = False
        self.offset = 0

    def _read(self, n: int) -> bytes:
        data = self.src.read(n)
        while data is not None and len(data) < n:
            more = self.src.read(n - len(data))
            if not more:
                break
            data += more
        if data is None or len(data) < n:
            raise StreamError("invalid backup stream", truncated=True)
        self.offset += n
        return data

    def _sum(self, data) -> None:
        self.cksum.update(_swap32(data) if self.swap else data)

    def begin(self, *, package: bool = False) -> Begin | None:
        """The next BEGIN record, or None at a clean end of input (no byte left). Inside a
        compound stream (`package`), None is its final END record instead, and the input
        must not end before it."""
        first = self.src.read(RECORD_SIZE)
        if not first:
            if package:
                raise StreamError("invalid backup stream", truncated=True, header=True)
            return None
        raw = first
        try:
            if len(first) < RECORD_SIZE:
                raw = first + self._read(RECORD_SIZE - len(first))
            else:
                self.offset += RECORD_SIZE
        except StreamError as e:
            e.header = True
            raise
        if package and struct.unpack_from("<I", raw)[0] in (DRR_END, DRR_END << 24):
            return None
        magic_le = struct.unpack_from("<Q", raw, 8)[0]
        if magic_le == DMU_BACKUP_MAGIC:
            self.swap = False
        elif struct.unpack_from(">Q", raw, 8)[0] == DMU_BACKUP_MAGIC:
            self.swap = True
        else:
            raise StreamError("invalid stream (bad magic number)", header=True)
        bo = ">" if self.swap else "<"
        rtype, plen = struct.unpack_from(bo + _HDR, raw)
        if rtype != DRR_BEGIN or plen < 0:
            raise StreamError("invalid stream (bad magic number)", header=True)
        self.cksum = Fletcher4()
        self._sum(raw)
        (magic, vinfo, ctime, otype, flags, toguid, fromguid,
         name) = struct.unpack_from(bo + _BEGIN, raw, 8)
        payload = self._read(plen) if plen else b""
        if plen:
            self._sum(payload)
        return Begin(name.split(b"\0", 1)[0].decode(errors="replace"), toguid, fromguid, ctime,
                     otype, flags, vinfo & 3, (vinfo >> 2) & ((1 << 30) - 1), magic, payload)

    def package_end(self) -> None:
        """A compound stream's END, right after its BEGIN: its checksum is that of the BEGIN
        and its payload (libzfs's send_prelim_records; zfs_receive_package checks it)."""
        raw = self._read(RECORD_SIZE)
        bo = ">" if self.swap else "<"
        if struct.unpack_from(bo + "I", raw)[0] != DRR_END:
            raise StreamError("invalid backup stream", header=True)
        if struct.unpack_from(bo + "4Q", raw, 8) != self.cksum.state:
            raise StreamError("incorrect header checksum", header=True)

    def records(self) -> Iterator[Record]:
        """The records after BEGIN, up to and including END."""
        bo = ">" if self.swap else "<"
        while True:
            raw = self._read(RECORD_SIZE)
            before = self.cksum.copy()
            self._sum(memoryview(raw)[:CHECKSUM_OFFSET])
            stored = struct.unpack_from(bo + "4Q", raw, CHECKSUM_OFFSET)
            if any(stored) and stored != self.cksum.state:
                raise StreamError("invalid stream (checksum mismatch)", checksum=True)
            self._sum(memoryview(raw)[CHECKSUM_OFFSET:])
            rtype, plen = struct.unpack_from(bo + _HDR, raw)
            body = _BODIES.get(rtype)
            if body is None or rtype == DRR_BEGIN:
                raise StreamError("invalid backup stream")
            f = struct.unpack_from(bo + body, raw, 8)
            if rtype == DRR_END:
                if tuple(f[:4]) != before.state:
                    raise StreamError("invalid stream (checksum mismatch)", checksum=True)
                yield End(tuple(f[:4]), f[4])
                return
            n = self._payload_len(rtype, f)
            if n > MAX_PAYLOAD:           # receive_read_record: nothing above SPA_MAXBLOCKSIZE
                raise StreamError("invalid backup stream")
            payload = self._read(n) if n else b""
            if n:
                self._sum(payload)
            yield self._decode(rtype, f, payload)

    @staticmethod
    def _payload_len(rtype: int, f: tuple) -> int:
        if rtype == DRR_OBJECT:
            return f[8] if f[8] else _pad8(f[4])           # raw_bonuslen or bonuslen
        if rtype == DRR_WRITE:
            return f[11] if f[8] else f[4]                 # compressed_size or logical size
        if rtype == DRR_SPILL:
            return f[5] if f[5] else f[1]
        if rtype == DRR_WRITE_EMBEDDED:
            return _pad8(f[7])
        return 0

    def _decode(self, rtype: int, f: tuple, payload: bytes) -> Record:
        if rtype == DRR_OBJECT:
            (obj, otype, btype, blksz, blen, ck, comp, slots, flags, rawlen, toguid, ibs,
             nlev, nbp, maxblkid) = f
            return Object(obj, otype, btype, blksz, payload[:blen] if not rawlen else payload,
                          blen, ck, comp, slots, flags, rawlen, ibs, nlev, nbp, maxblkid, toguid)
        if rtype == DRR_FREEOBJECTS:
            return FreeObjects(f[0], f[1], f[2])
        if rtype == DRR_WRITE:
            (obj, otype, _pad, off, lsize, toguid, ck, flags, comp, key, prop, csize, salt,
             iv, mac) = f
            return Write(obj, otype, off, payload, lsize, ck, flags, comp, key, prop, csize,
                         salt, iv, mac, toguid)
        if rtype == DRR_FREE:
            return Free(f[0], f[1], f[2], f[3])
        return Other(rtype, f, payload)


def read_stream(src: BinaryIO) -> Iterator[tuple[Begin, list[Record]]]:
    """Every substream of `src` as (BEGIN, the records after it): for tests and tools; a
    receiver iterates `StreamReader.records()` instead, without holding a stream in memory."""
    reader = StreamReader(src)
    while True:
        begin = reader.begin()
        if begin is None:
            return
        if begin.hdrtype == DMU_COMPOUNDSTREAM and not begin.payload:
            raise StreamError("invalid backup stream")
        yield begin, list(reader.records())
