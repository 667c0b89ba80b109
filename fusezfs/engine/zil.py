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

from fusezfs.engine.allocator import NoSpace
from fusezfs.formats.bp import DVA, BlockPointer
from fusezfs.formats.intentlog import (
    BLOCK_HDR,
    FLAG_COMMIT,
    PAGE,
    SECTOR,
    TX_ATTR,
    TX_CREATE,
    TX_INDIRECT,
    TX_LINK,
    TX_NAMES,
    TX_REMOVE,
    TX_RENAME,
    TX_RMXATTR,
    TX_SETXATTR,
    TX_TRUNCATE,
    TX_WRITE,
    WRITE_HDR,
    Block,
    Header,
    Record,
    attr_record,
    create_record,
    decode_block,
    decode_record,
    encode_block,
    free_record,
    indirect_record,
    link_record,
    remove_record,
    rename_record,
    rmxattr_record,
    setxattr_record,
    split_write,
    truncate_record,
    write_record,
)
from fusezfs.engine.pool import OnePerPool, Pool

HEADER_KEY = b"zil"
MIN_BLOCK = 4 << 10         # a record larger than the block at hand goes to the next, sized for it
MAX_BLOCK = 1 << 20
GUESS_MAX = 128 << 10       # the next commit's first block: the last commit's size, up to this
RESERVE_SHIFT = 5           # the log leaves 1/32 of the pool free (ZFS's slop): txgs need it
MAX_CHAIN = 1 << 20         # blocks a walk follows at most (a guard, never reached in practice)


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
