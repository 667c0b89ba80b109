"""The intent log (ZFS's ZIL): fsync made durable by appending records, not by committing a txg.

Theory of operation
-------------------
A txg commit writes every dirty tree of the pool and flushes the devices twice; an fsync that
waited for one would pay for all the pool's pending work. Instead the POSIX layer keeps, per
filesystem, an in-memory list of what changed since the last durable txg (posix_log.py) and an
fsync turns the part its file needs into *log records* (a write with its bytes, a truncate, the
file's attributes, the names made, linked, removed and renamed), appends them to the pool's log
chain and flushes each device it wrote once. Import replays the records of txgs newer than the
one it loaded, in order (api.Handle, posix_log.replay), and commits the result.

The chain. The MOS item `zil` (the header, FORMAT.md section 9) names the chain's guid and its
first block: an address and a sequence number. Every log block carries the guid, its sequence
number, the txg its records belong to, the address of the next block (allocated when this one
is written, before anything is written there) and a checksum of itself. A block is valid when
its magic, guid, sequence number and checksum are right; reading follows the links from the
header until the first block that is not valid. That is the end of the log: a torn or missing
block ends it, as a torn tail is the normal end of a log. A stale block cannot pass for a live
one: each (guid, sequence) pair is written exactly once, and each chain has a new random guid.

Why every crash point is safe:

* Log blocks are allocated from free space, like every write of the open txg, so writing one
  never touches anything a committed uberblock reaches.
* Nothing but the header reaches a log block, and the header is only written with its txg,
  naming a block allocated before that txg's space map was encoded (the pre-allocated next
  block, not yet written): the map of every committed txg counts it allocated, and `verify`
  counts it reachable (`chain_extents`).
* Blocks are written only while the txg whose header leads to them is durable: a commit first
  waits for a txg in flight (`Pool.settle`), and the very first commit of a pool, with no
  durable header yet, commits a txg instead (which writes the header). After its blocks an
  fsync flushes every device it wrote, once, and only then returns: what it promised is on
  disk and reachable from the durable header.
* The records of one fsync are replayed only if the last of its blocks (flagged COMMIT) is
  valid, so a crash in the middle of an fsync replays nothing of it and recovery lands on the
  boundary of a returned (or at least completed) fsync, never inside one.
* Records belong to the open txg (every commit settles the txg in flight first, and the POSIX
  layer forgets what a durable txg holds), so once that txg is durable they are obsolete. Its
  sync frees the blocks holding them, deferred as every free of a block another txg may reach:
  the txg's map counts them free (it is used only once that txg is durable), and until then the
  previous header still leads to them, whole. The new header names the pre-allocated next block.
* Import claims what it finds: the blocks the chain reaches were allocated after the loaded
  txg's map was written, so the map says they are free; `_claim` allocates them before anything
  else can, and records in the header the first txg to replay (`claim_txg`, as ZFS does), so a
  process that imports and commits without replaying (a pool command) cannot make the records
  look older than its own txgs. After replay the claimed blocks are freed (deferred) and a new
  chain starts with a new guid.

ZFS keeps a log per dataset; fusezfs keeps one per pool, and records name their dataset.
fusezfs writes one copy of each log block (as ZFS does) on one top-level vdev (every side of a
mirror). `logbias` and `sync` are the POSIX layer's business (posix_log.py).
"""
from __future__ import annotations

import random
import struct
from collections import deque
from dataclasses import dataclass, field

import xxhash

from .allocator import NoSpace
from .formats.bp import BP_SIZE, DVA, BlockPointer, decode_bp, encode_bp
from .pool import OnePerPool, Pool

HEADER_KEY = b"zil"
HEADER_MAGIC = b"FZZILHDR"
BLOCK_MAGIC = b"FZZILBLK"
_HEADER = struct.Struct("<8sQQIIQQ")        # magic, guid, seq, vdev, asize, offset, claim_txg
_BLOCK = struct.Struct("<8sQQQIIQIIII16s")  # magic guid seq txg | next vdev asize offset |
BLOCK_HDR = _BLOCK.size                      # used nrec flags reserved | checksum
assert _HEADER.size == 48 and BLOCK_HDR == 80

FLAG_COMMIT = 1             # the last block of one commit (an fsync's records end here)
SECTOR = 512
PAGE = 4096                 # log blocks are written in whole pages (sizes are multiples of it)
MIN_BLOCK = 4 << 10         # a record larger than the block at hand goes to the next, sized for it
MAX_BLOCK = 1 << 20
GUESS_MAX = 128 << 10       # the next commit's first block: the last commit's size, up to this
RESERVE_SHIFT = 5           # the log leaves 1/32 of the pool free (ZFS's slop): txgs need it
MAX_CHAIN = 1 << 20         # blocks a walk follows at most (a guard, never reached in practice)

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


def _round(n: int, to: int) -> int:
    return -(-n // to) * to


def _size_for(nbytes: int, cap: int = MAX_BLOCK) -> int:
    """A block size that holds `nbytes` of records (within the limits), in 4 KiB steps."""
    return max(MIN_BLOCK, min(cap, _round(nbytes + BLOCK_HDR, 4096)))


# ---- the chain of one pool -----------------------------------------------------------------
class IntentLog(OnePerPool):
    """The pool's log chain: claim at import, append at fsync, free at txg sync (module
    comment). All methods run under the pool's lock."""

    def _setup(self, pool: Pool) -> None:
        self.pool = pool
        self.header: Header | None = None
        self.head_txg = 0                   # the txg whose MOS holds `header`
        self.next: tuple[DVA, int] | None = None   # where the next block goes, its seq
        self.live: list[DVA] = []           # blocks written in the open txg, in chain order
        self.wanted = False                 # a commit asked for a chain: the next sync makes one
        self.claimed: list[DVA] = []        # what import found (freed once replayed)
        self.replay: list[Record] | None = None    # records import found, not yet replayed
        self.pins: set[DVA] = set()         # blocks indirect records name (blocks.free defers)
        self.pins_txg = 0
        self._data_vdevs: set[int] = set()  # vdevs holding blocks indirect records name
        self.commits = self.blocks_written = self.bytes_written = 0     # for tests and tools
        self._guess = MIN_BLOCK
        raw = pool.mos.get(HEADER_KEY)
        if raw is not None:
            self.header = Header.decode(raw)
            self.head_txg = pool.synced_txg
            self._claim()
        pool.sync_hooks.append(self._sync)

    # ---- import ----------------------------------------------------------------------------
    def _read(self, dva: DVA, seq: int) -> Block | None:
        top = self.pool.tops.get(dva.vdev)
        if top is None or dva.asize <= 0 or dva.offset < top.start or \
                dva.offset + dva.asize > top.end:
            return None
        for leaf in top.leaves:             # a mirror side may hold it whole, another torn
            try:
                raw = leaf.device.read(dva.offset, dva.asize)
            except OSError:
                continue
            blk = decode_block(raw, dva, self.header.guid, seq)
            if blk is not None:
                return blk
        return None

    def walk(self) -> tuple[list[Block], DVA | None]:
        """The valid blocks the header leads to, in order, and the address named after the
        last of them (where the log ends: not written, or not whole)."""
        if self.header is None:
            return [], None
        out: list[Block] = []
        dva, seq = self.header.first, self.header.seq
        for _ in range(MAX_CHAIN):
            blk = self._read(dva, seq)
            if blk is None:
                break
            out.append(blk)
            dva, seq = blk.next, seq + 1
        return out, dva

    def _claim(self) -> None:
        """Import: allocate the blocks the chain reaches and keep the records of whole
        commits of txgs not yet committed, for replay (module comment)."""
        blocks, end = self.walk()
        if not blocks:                      # the header's block was never written: go on there
            self.next = (self.header.first, self.header.seq)
            return
        alloc = self.pool.allocator
        for dva in [b.dva for b in blocks] + [end]:
            # free in the loaded map (written after it), or claimed by an import before
            # (a valid block there was written by this chain and nothing wrote over it since)
            alloc.claim(dva)
        self.claimed = [b.dva for b in blocks] + [end]
        first_txg = self.header.claim_txg or self.pool.synced_txg + 1
        self.replay = []
        commit: list[Record] = []
        for b in blocks:
            if b.txg >= first_txg:
                for raw in b.records:
                    try:
                        rec = decode_record(raw)
                    except (ValueError, struct.error):
                        continue
                    rec.txg = b.txg
                    commit.append(rec)
            if b.flags & FLAG_COMMIT:
                if not self._readable(commit):
                    break       # its fsync never returned: the log ends before it (ZFS too)
                self.replay += commit
                commit = []
        for rec in self.replay:             # indirect records' blocks: allocated after the map
            if rec.bp is not None:
                for d in rec.bp.dvas:
                    alloc.claim(d)          # (or claimed by an import before)
                    self.claimed.append(d)
        if not self.header.claim_txg:
            self.header = Header(self.header.guid, self.header.seq, self.header.first, first_txg)
            self.pool.mos.put(HEADER_KEY, self.header.encode())

    def _readable(self, commit: list[Record]) -> bool:
        """Whether every block the commit's indirect records name reads back right. A commit
        whose log blocks landed while such a block did not was never flushed: its fsync did
        not return, so nothing was promised and the log ends before it."""
        for rec in commit:
            if rec.bp is not None:
                try:
                    self.pool.blocks.read(rec.bp, verify_only=True)
                except (OSError, ValueError):
                    return False
        return True

    def replayed(self) -> None:
        """The records were applied (their changes are in the open txg): free what import
        claimed and start a new chain, with a new guid, from the next sync on."""
        for dva in self.claimed:
            self.pool.allocator.free(dva, deferred=True)
        self.claimed = []
        self.replay = None
        self.header = None
        self.next = None
        self.pool.mos.delete(HEADER_KEY)
        self.wanted = True                  # a new chain at this very sync

    # ---- commit (fsync) --------------------------------------------------------------------
    def ready(self) -> bool:
        """Whether records can be appended now: a durable header leads to `next`. If not, the
        caller commits a txg instead (which makes a chain, `wanted`)."""
        self.pool.settle()
        if self.replay is not None:
            raise AssertionError("intent log records not replayed yet")
        if self.next is None or self.head_txg > self.pool.synced_txg:
            self.wanted = True
            return False
        return True

    def appendable(self) -> bool:
        """Whether a commit could append at once: no txg to wait for, none to commit."""
        pool = self.pool
        return (self.replay is None and self.next is not None and pool._commit is None
                and self.head_txg <= pool.synced_txg)

    def pin(self, bp: BlockPointer) -> None:
        """An indirect record names `bp`, written in the open txg: should the txg free it, the
        free is deferred (never reused before the txg is durable), or replay would read
        another block's bytes there."""
        if self.pins_txg != self.pool.txg:
            self.pins.clear()
            self.pins_txg = self.pool.txg
        self.pins.update(bp.dvas)
        self.pool.blocks.pinned = self.pins
        self._data_vdevs.update(d.vdev for d in bp.dvas)     # flushed with the commit

    def commit(self, records: list[bytes]) -> bool:
        """Append one commit's records and flush every device written: once this returns True
        they are durable. False: no chain to append to (or no space for one), so the caller
        must commit a txg instead. Call `ready` first."""
        if not records:
            return True
        assert self.next is not None
        pool, txg = self.pool, self.pool.txg
        queue = deque(records)
        total = sum(map(len, records))
        touched: set[int] = set()
        dva, seq = self.next
        batch: list[bytes] = []
        room = dva.asize - BLOCK_HDR
        while queue:
            rec = queue[0]
            if len(rec) <= room:
                batch.append(queue.popleft())
                room -= len(rec)
                total -= len(rec)
                if queue:
                    continue
            elif (parts := split_write(rec, room)) is not None:
                queue.popleft()
                batch.append(parts[0])
                queue.appendleft(parts[1])
                total -= len(parts[0])
            last = not queue
            want = self._guess if last else _size_for(max(total, len(queue[0])))
            nxt = self._allocate(want)
            if nxt is None:
                return False                # the blocks written so far go with the txg
            raw = encode_block(self.header.guid, seq, txg, nxt,
                               FLAG_COMMIT if last else 0, batch)
            try:
                for leaf in pool.tops[dva.vdev].leaves:
                    leaf.device.write(dva.offset, raw)
            except OSError:
                pool.allocator.free(nxt, deferred=False)
                raise
            touched.add(dva.vdev)
            self.live.append(dva)
            self.blocks_written += 1
            self.bytes_written += len(raw)
            dva, seq = nxt, seq + 1
            self.next = (dva, seq)
            batch, room = [], dva.asize - BLOCK_HDR
        # one flush per device, after every block (and the blocks indirect records name:
        # written, as log blocks are, with no flush of their own)
        for v in sorted(touched | self._data_vdevs):
            for leaf in pool.tops[v].leaves:
                leaf.device.flush()
        self._data_vdevs = set()
        self._guess = _size_for(sum(map(len, records)), GUESS_MAX)
        self.commits += 1
        return True

    def _allocate(self, size: int) -> DVA | None:
        """Space for a log block, never from the last 1/32 of the pool: a txg commit needs
        room for its metadata, and the log must not be what makes it fail. Lowest addresses
        first (Allocator.allocate_low): freed log blocks are reused, and rewriting a place a
        pool file already holds makes the flush after it cheaper than allocating new file
        blocks (0.2 ms instead of 0.3 ms per fsync on ext4 here)."""
        pool = self.pool
        if pool.allocator.free_bytes - size < pool.size >> RESERVE_SHIFT:
            return None
        try:        # low addresses first: the same few places, rewritten (allocate_low)
            return pool.allocator.allocate_low(size) or pool.allocator.allocate(size)
        except NoSpace:
            return None

    # ---- txg sync --------------------------------------------------------------------------
    def _sync(self, pool: Pool) -> None:
        """A sync hook: the blocks written in this txg hold only its records, obsolete once it
        is durable; free them (deferred) and name the next block in this txg's header."""
        if self.pins_txg and self.pins_txg < pool.txg:
            self.pins.clear()
            self.pins_txg = 0
        if self.replay is not None:
            return                          # claimed, not replayed: keep everything as found
        if self.live:
            for dva in self.live:
                pool.allocator.free(dva, deferred=True)
            self.live = []
            dva, seq = self.next
            self._set_header(Header(self.header.guid, seq, dva))
        elif self.wanted and self.next is None:
            dva = self._allocate(MIN_BLOCK)
            if dva is None:
                return                      # no log until there is room: fsync commits txgs
            self.next = (dva, 1)
            self._set_header(Header(random.SystemRandom().getrandbits(64) or 1, 1, dva))
        self.wanted = False

    def _set_header(self, header: Header) -> None:
        self.header = header
        self.head_txg = self.pool.txg
        self.pool.mos.put(HEADER_KEY, header.encode())


def chain_extents(pool: Pool) -> list[DVA]:
    """What the committed header reaches (for `verify`): every valid block, the address the
    last one names (written or not, it is allocated for the chain) and the blocks that
    indirect records of claimed commits name."""
    log = pool.attached.get(IntentLog)
    if log is not None and log.replay is not None:
        return list(log.claimed)
    raw = pool.mos.get(HEADER_KEY)
    if raw is None:
        return []
    probe = object.__new__(IntentLog)             # a reader only: no claim, no hook
    probe.pool, probe.header = pool, Header.decode(raw)
    blocks, end = probe.walk()
    return [b.dva for b in blocks] + ([end] if end is not None else [])
