"""Blocks: the write and read pipelines every byte of a pool goes through.

Write: compress (kept only if it saves 1/8) -> checksum the physical bytes -> allocate one DVA
per copy (on different top-level vdevs where there are several) -> write every copy (every child
of a mirror). The block pointer returned is the only way to read the block back, and it carries
the checksum, so the parent that stores it vouches for the child: a Merkle tree.

Read: read one copy, verify the checksum before anything else happens, then decompress. On a
mismatch (or an I/O error) try the next child of the mirror and the next copy; once a good copy
is found, rewrite the bad ones with it (self-healing: the bytes written are exactly those the
parent's checksum asks for, so this never changes what the tree means). With no good copy the
read raises ChecksumError (EIO) and the error is counted on every device that returned bad
bytes; wrong bytes are never returned.

Free: a block born in the open txg is freed at once; an older one is deferred (allocator.py).

Dedup (dedup.py): a policy with `dedup` set looks each prepared block up in the pool's dedup
table (`ddt`) before allocating; a hit returns the stored block's pointer with the open txg as
birth and the dedup flag, writing nothing; a free of such a pointer drops a reference, and only
the last one frees the space (deferred by the block's physical birth).

CPU-heavy work (compression, hashing of large buffers) of `write_many` runs on a thread pool:
zstandard, zlib, hashlib and xxhash release the GIL, so two cores compress in parallel.
`prepare_ahead` starts that work earlier, while a writer is still filling records, and for
uncompressed data also allocates and writes the block (an early write: safe because the space
is free in the open txg and nothing durable points at it until the txg that takes it commits);
`write_many` then takes the result. Space an early write holds is counted in `ahead_bytes` and
handed back by `cancel_ahead` / `forget_ahead` when nobody takes it. `read_many` reads
neighbouring blocks with one call and decompresses on the pool; every exception to the plain
path (a mismatch, an I/O error) falls back to `read`, the one place that verifies and heals.
"""
from __future__ import annotations

import errno
import mmap
import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from fusezfs.engine import compress as compression
from fusezfs.engine.allocator import Allocator
from fusezfs.engine.devices import FileDevice
from fusezfs.engine.dedup import DEDUP_OFF, DEDUP_VERIFY, table_key
from fusezfs.formats.bp import CKSUM_XXH3_128, COMP_OFF, FLAG_DEDUP, BlockPointer, checksum
from fusezfs.engine.vdevs import TopVdev


class ChecksumError(OSError):
    """No copy of a block matched its checksum: the data is lost, and never returned wrong."""

    def __init__(self, what: str) -> None:
        super().__init__(errno.EIO, f"checksum error: {what}")


@dataclass(frozen=True)
class Policy:
    """How to write a block; taken from dataset properties by the layers above."""

    comp: int = COMP_OFF
    level: int = 0
    cksum: int = CKSUM_XXH3_128
    copies: int = 1
    dedup: int = DEDUP_OFF          # dedup.DEDUP_ON / DEDUP_VERIFY: through the dedup table


def describe(bp: BlockPointer) -> str:
    return ", ".join(f"<{d.vdev}:{d.offset:x}:{d.asize:x}>" for d in bp.dvas) + f" birth={bp.birth}"


class _Runs:
    """Coalesces writes to consecutive offsets of a vdev into vectored writes: one run per
    (vdev, copy), since the copies of a block kept apart on one vdev advance side by side."""

    LIMIT = 8 << 20

    def __init__(self, io: "BlockIO") -> None:
        self.io = io
        self.runs: dict[tuple[int, int], tuple[int, int, list]] = {}  # -> (start, end, buffers)

    def add(self, copy: int, dva, phys) -> None:
        key = (dva.vdev, copy)
        run = self.runs.get(key)
        if run is not None and (run[1] != dva.offset or run[1] - run[0] >= self.LIMIT):
            self._write(key)
            run = None
        if run is None:
            run = (dva.offset, dva.offset, [])
        bufs = run[2]
        bufs.append(phys)
        if len(phys) < dva.asize:          # keep the run contiguous across sector padding
            bufs.append(bytes(dva.asize - len(phys)))
        self.runs[key] = (run[0], dva.offset + dva.asize, bufs)

    def _write(self, key: tuple[int, int]) -> None:
        start, _end, bufs = self.runs.pop(key)
        for leaf in self.io.vdevs[key[0]].live:
            try:
                leaf.device.writev(start, bufs)
            except OSError:
                leaf.write_errors += 1
                raise

    def flush(self) -> None:
        for key in list(self.runs):
            self._write(key)


CACHE_ENTRY = 256               # memory of a cache entry beyond its bytes (key, dict slot, header)
PREPARE_CHUNK = 128 << 10       # bytes of blocks one worker task compresses and hashes at most
                                # (a full record is a task of its own): a task per 4 KiB block
                                # cost more (submit, future, wake-up) than the work


def _map_run(device, start: int, end: int) -> tuple[memoryview, int, object]:
    """The bytes [start, end) of a device for a scrub to check: a pool file's pages mapped in
    place (hashed where the page cache holds them, not copied out first: half the CPU a
    scrub spent reading), else read. Returns (view, offset of its first byte, release)."""
    if type(device) is FileDevice:
        base = start - start % mmap.ALLOCATIONGRANULARITY
        if os.fstat(device.fd).st_size >= end:     # (a mapping past EOF would fault)
            mapped = mmap.mmap(device.fd, end - base, prot=mmap.PROT_READ, offset=base)

            def release(view: memoryview) -> None:
                view.release()
                mapped.close()
            return memoryview(mapped), base, release
    return memoryview(device.read(start, end - start)), start, lambda view: None


def _decode(job: tuple) -> bytes | ValueError:
    """Decompress verified physical bytes (a worker thread's part of read_many); a bad
    stream is returned, not raised, so the caller reports it for the right block."""
    phys, comp, lsize = job
    try:
        return compression.decompress(phys, comp, lsize)
    except ValueError as e:
        return e


class BlockIO:
    def __init__(self, vdevs: dict[int, TopVdev], allocator: Allocator, *,
                 cache_bytes: int = 64 << 20, workers: int | None = None) -> None:
        self.vdevs = vdevs
        self.allocator = allocator
        self.txg = 1                    # the open txg: birth of blocks written now
        self.cache: OrderedDict[tuple, bytes] = OrderedDict()
        self.cache_bytes = cache_bytes
        self.cached = 0
        self.executor = ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 2),
                                           thread_name_prefix="fusezfs-io")
        self.permanent_errors: dict[str, int] = {}   # block description -> times seen
        self.repairs = 0
        self.healing = True     # off while an import weighs older txgs (pool._rewind_target)
        # id(data) -> (data, policy, future of (comp, phys, digest), DVAs written or None):
        # work started by prepare_ahead before write_many
        self._ahead: dict[int, tuple] = {}
        self.ahead_bytes = 0            # space early writes hold that no block pointer has yet
        # blocks the intent log names (zil.IntentLog.pin): freed in their own txg, deferred still
        self.pinned: set = set()
        self.ddt = None                 # the pool's dedup.DedupTable (set by the pool)
        self.dedup_hits = 0

    def close(self) -> None:
        self.executor.shutdown(wait=True)

    # ---- write ----------------------------------------------------------------------------
    @staticmethod
    def _prepare(data: bytes | memoryview, policy: Policy) -> tuple[int, bytes | memoryview, bytes]:
        comp, phys = compression.compress(data, policy.comp, policy.level)
        return comp, phys, checksum(phys, policy.cksum)

    @classmethod
    def _prepare_all(cls, bufs: list, policy: Policy) -> list[tuple]:
        """_prepare of each buffer: one worker task's share (a chunk, see _prepare_chunks)."""
        return [cls._prepare(b, policy) for b in bufs]

    def _prepare_chunks(self, bufs: list, policy: Policy):
        """_prepare of each buffer, in order, on the workers in chunks of about PREPARE_CHUNK
        bytes at most (a txg of small files is thousands of 4 KiB blocks), or here when it is
        all one chunk."""
        chunks: list[list] = [[]]
        size = 0
        for b in bufs:
            if size and size + len(b) > PREPARE_CHUNK:
                chunks.append([])
                size = 0
            chunks[-1].append(b)
            size += len(b)
        if len(chunks) == 1:
            yield from (self._prepare(b, policy) for b in bufs)
            return
        for done in self.executor.map(self._prepare_all, chunks, [policy] * len(chunks)):
            yield from done

    def _allocate(self, size: int, copies: int) -> list:
        """One DVA per copy, each on a different top-level vdev while there are enough."""
        dvas: list = []
        try:
            for _ in range(max(1, min(3, copies))):
                dvas.append(self.allocator.allocate(max(size, 1), dvas))
        except OSError:
            for d in dvas:
                self.allocator.free(d, deferred=False)
            raise
        return dvas

    def _write_copies(self, dvas: list, phys: bytes | memoryview) -> None:
        for dva in dvas:
            for leaf in self.vdevs[dva.vdev].live:
                try:
                    leaf.device.write(dva.offset, phys)
                except OSError:
                    leaf.write_errors += 1
                    raise

    def _store(self, data_len: int, prepared: tuple, policy: Policy, btype: int,
               level: int, dvas: list | None = None) -> BlockPointer:
        comp, phys, digest = prepared
        if dvas is None:
            dvas = self._allocate(len(phys), policy.copies)
        self._write_copies(dvas, phys)
        return BlockPointer(tuple(dvas), data_len, len(phys), self.txg, comp, policy.cksum,
                            btype, digest, level)

    def write_self_describing(self, encode, btype: int, policy: Policy) -> BlockPointer:
        """Write a block whose content depends on its own allocation (the space map).

        `encode()` is called after space is reserved, so the reservation is part of what it
        describes. If the result does not fit, the reservation (born now, never referenced)
        is returned at once and a larger one tried; the second try practically always fits.
        """
        dvas: list = []
        want = 4096
        while True:
            payload = encode()
            prepared = self._prepare(payload, policy)
            if dvas and len(prepared[1]) <= dvas[0].asize:
                return self._store(len(payload), prepared, policy, btype, 0, dvas)
            for d in dvas:
                self.allocator.free(d, deferred=False)
            want = max(want, len(prepared[1]) + len(prepared[1]) // 4 + 1024)
            dvas = self._allocate(want, policy.copies)

    def write(self, data: bytes | memoryview, btype: int, policy: Policy, level: int = 0) -> BlockPointer:
        if policy.dedup:
            return self.write_many([data], btype, policy)[0]
        return self._store(len(data), self._prepare(data, policy), policy, btype, level)

    def prepare_ahead(self, data: bytes, policy: Policy) -> None:
        """Start on `data` now, on the worker threads, while the caller goes on (a writer
        buffering full records): the `write_many` that later writes this very object with
        this policy takes the result instead of starting over. Compressed data is compressed
        and checksummed; uncompressed data, whose size is known, is also given its space and
        written (ZFS's early write: the space was free in the last durable txg and nothing
        durable points at it before the txg that takes it commits, so a crash loses nothing).
        `data` must never change (bytes). Work nobody took is undone by `forget_ahead`."""
        if policy.comp == COMP_OFF and not policy.dedup:   # (dedup: a hit allocates nothing)
            try:
                dvas = self._allocate(len(data), policy.copies)
            except OSError:
                return          # no space: write_many will say so, in its place
            future = self.executor.submit(self._write_ahead, data, policy, dvas)
            self.ahead_bytes += sum(d.asize for d in dvas)
        else:
            dvas = None
            future = self.executor.submit(self._prepare, data, policy)
        self._ahead[id(data)] = (data, policy, future, dvas)

    def _write_ahead(self, data: bytes, policy: Policy, dvas: list) -> tuple:
        digest = checksum(data, policy.cksum)
        self._write_copies(dvas, data)
        return COMP_OFF, data, digest

    def cancel_ahead(self, data: bytes) -> None:
        """`data` will not be written after all (its record changed or went): give back the
        space an early write of it holds, now rather than at the end of the txg, so a
        rewriting writer on a nearly full pool does not hold its space twice."""
        entry = self._ahead.get(id(data))
        if entry is not None and entry[0] is data:
            del self._ahead[id(data)]
            self._undo_ahead(entry)

    def forget_ahead(self) -> None:
        """Undo early work on buffers that were never written (overwritten, truncated or
        unlinked before the txg synced): their space, born in the open txg, is free again.
        The pool calls this once a txg, after every buffer was flushed and before the space
        map is encoded, so the durable map never holds such space."""
        for entry in self._ahead.values():
            self._undo_ahead(entry)
        self._ahead.clear()
        assert self.ahead_bytes == 0, "space held by early writes drifted"

    def _undo_ahead(self, entry: tuple) -> None:
        """Give back the space an early write holds (compression alone holds none)."""
        _data, _policy, future, dvas = entry
        if not dvas:
            return
        try:
            future.result()             # never free space a worker is still writing
        except Exception:
            pass
        for dva in dvas:
            self.allocator.free(dva, deferred=False)
        self.ahead_bytes -= sum(d.asize for d in dvas)

    def _prepared(self, bufs: list, policy: Policy):
        """(comp, phys, digest, DVAs or None) of each buffer, in order: taken from
        prepare_ahead where it ran for the same object and policy (DVAs: already written
        there), else computed now (on the workers if worth it)."""
        ready: list = [None] * len(bufs)
        if self._ahead:
            for i, b in enumerate(bufs):
                a = self._ahead.get(id(b))
                if a is not None and a[0] is b and a[1] == policy:
                    ready[i] = self._ahead.pop(id(b))
        todo = [b for b, r in zip(bufs, ready) if r is None]
        if len(todo) > 1 and (policy.comp != COMP_OFF or sum(map(len, todo)) > (1 << 20)):
            fresh = self._prepare_chunks(todo, policy)
        else:
            fresh = (self._prepare(b, policy) for b in todo)
        for r in ready:
            if r is None:
                yield (*next(fresh), None)
            else:
                if r[3]:
                    self.ahead_bytes -= sum(d.asize for d in r[3])
                yield (*r[2].result(), r[3])

    def write_many(self, bufs: list[bytes | memoryview], btype: int, policy: Policy) -> list[BlockPointer]:
        """Write several blocks: compression and hashing run on the worker threads while this
        thread allocates and writes the blocks already prepared, and blocks that land next to
        each other on disk go out in one vectored write."""
        out = []
        runs = _Runs(self)
        for buf, (comp, phys, digest, dvas) in zip(bufs, self._prepared(bufs, policy)):
            if policy.dedup:
                out.append(self._write_dedup(len(buf), comp, phys, digest, btype, policy, runs))
                continue
            if dvas is None:
                dvas = self._allocate(len(phys), policy.copies)
                for copy, dva in enumerate(dvas):
                    runs.add(copy, dva, phys)
            out.append(BlockPointer(tuple(dvas), len(buf), len(phys), self.txg, comp,
                                    policy.cksum, btype, digest, 0))
        runs.flush()
        return out

    def _write_dedup(self, lsize: int, comp: int, phys, digest: bytes, btype: int,
                     policy: Policy, runs: _Runs) -> BlockPointer:
        """One block through the dedup table (module comment): a reference to the stored
        block when the table has it (and, with verify, its bytes are the same), else a new
        block, entered in the table unless verify found a different one under its key."""
        copies = max(1, min(3, policy.copies))
        key = table_key(digest, lsize, len(phys), comp, copies)
        entry = self.ddt.lookup(key)
        collision = False
        if entry is not None and policy.dedup == DEDUP_VERIFY:
            runs.flush()                # the stored block may be one this batch wrote
            try:
                collision = bytes(self.read(entry.bp, verify_only=True)) != bytes(phys)
            except ChecksumError:
                collision = True        # unreadable: keep this block's bytes apart
        if entry is not None and not collision:
            self.dedup_hits += 1
            return self.ddt.add_reference(key, entry)
        dvas = self._allocate(len(phys), copies)
        for copy, dva in enumerate(dvas):
            runs.add(copy, dva, phys)
        bp = BlockPointer(tuple(dvas), lsize, len(phys), self.txg, comp, policy.cksum, btype,
                          digest, 0, flags=0 if collision else FLAG_DEDUP)
        if not collision:
            self.ddt.insert(key, bp)
        return bp

    # ---- read -----------------------------------------------------------------------------
    def read(self, bp: BlockPointer, *, verify_only: bool = False, cache: bool = True) -> bytes:
        key = (bp.dvas[0], bp.birth)
        hit = self.cache.get(key)
        if hit is not None and not verify_only:
            self.cache.move_to_end(key)
            return hit
        good, bad = self._copies(bp, every=False)
        if good is None:
            raise ChecksumError(self._lost(bp))
        if self.healing:
            self._heal(bad, good)
        if verify_only:
            return good
        try:
            data = compression.decompress(good, bp.comp, bp.lsize)
        except ValueError as e:
            raise ChecksumError(f"{describe(bp)}: {e}") from None
        if cache:
            self._remember(key, data)
        return data

    def scrub(self, bp: BlockPointer) -> tuple[int, int, bool]:
        """Read and verify every copy of `bp` (each DVA, each mirror side), rewrite the bad ones
        from a good one: (bad copies found, copies repaired, lost: no good copy at all)."""
        good, bad = self._copies(bp, every=True)
        if good is None:
            self._lost(bp)
            return len(bad), 0, True
        return len(bad), self._heal(bad, good), False

    SCRUB_RUN = 8 << 20         # bytes of neighbouring copies a scrub reads with one call
    SCRUB_GAP = 64 << 10        # free bytes between two copies a scrub reads through anyway

    def scrub_many(self, bps: list[BlockPointer]) -> list[tuple[int, int, bool]]:
        """`scrub` of each block, for a scrub's walk: every copy (each DVA, each mirror side)
        is read in address order, copies lying near each other on a device with one call of up
        to SCRUB_RUN bytes, and checked on the worker threads while the next run is read. The
        usual case, every copy good, costs no per-block Python beyond a slice and a hash; a
        block with any copy that does not match (or a read error, or a DVA outside its vdev)
        goes through `scrub` alone, the one place that counts errors and repairs."""
        return self.scrub_finish(bps, self.scrub_start(bps))

    def scrub_start(self, bps: list[BlockPointer]) -> tuple[set[int], list]:
        """The first half of scrub_many: the runs' reads and checks handed to the workers, so
        that the caller can gather the next blocks meanwhile (a scrub's walk)."""
        copies: list[tuple[int, int, int]] = []         # (vdev, offset, index), sorted
        suspect: set[int] = set()
        bounds = {v: (top.start, top.end) for v, top in self.vdevs.items()}
        for i, bp in enumerate(bps):
            for d in bp.dvas:
                lo_hi = bounds.get(d.vdev)
                if lo_hi is None or d.offset < lo_hi[0] or d.offset + bp.psize > lo_hi[1]:
                    suspect.add(i)
                else:
                    copies.append((d.vdev, d.offset, i))
        copies.sort()
        runs: list[tuple[int, int, int, list]] = []     # (vdev, start, end, copies)
        for vdev, off, i in copies:
            end = off + bps[i].psize
            run = runs[-1] if runs else None
            if run is not None and run[0] == vdev and off - run[2] <= self.SCRUB_GAP \
                    and end - run[1] <= self.SCRUB_RUN:
                runs[-1] = (vdev, run[1], max(run[2], end), run[3])
                run[3].append((off, i))
            else:
                runs.append((vdev, off, end, [(off, i)]))
        return suspect, [self.executor.submit(self._check_run, run, bps) for run in runs]

    def scrub_finish(self, bps: list[BlockPointer], started: tuple[set[int], list]
                     ) -> list[tuple[int, int, bool]]:
        """The second half of scrub_many: wait for the checks, then `scrub` each block that
        had a bad copy (here, on the caller's thread: it counts errors and repairs)."""
        suspect, futures = started
        for future in futures:
            suspect.update(future.result())
        results: list = [(0, 0, False)] * len(bps)
        for i in sorted(suspect):
            results[i] = self.scrub(bps[i])
        return results

    def _check_run(self, run: tuple[int, int, int, list], bps: list) -> list[int]:
        """(a worker's part of scrub_many) Read one run from every live side of its vdev;
        the indexes of the blocks with a copy there that does not match."""
        vdev, start, end, members = run
        bad = []
        for leaf in self.vdevs[vdev].live:
            try:
                raw, base, done = _map_run(leaf.device, start, end)
            except OSError:
                return [i for _off, i in members]
            try:
                for off, i in members:
                    bp = bps[i]
                    phys = raw[off - base:off - base + bp.psize]
                    if len(phys) != bp.psize or checksum(phys, bp.cksum) != bp.checksum:
                        bad.append(i)
            finally:
                phys = None
                done(raw)
        return bad

    def _copies(self, bp: BlockPointer, every: bool) -> tuple[bytes | None, list]:
        """The first copy whose checksum matches, and the (leaf, dva) of every copy read that
        did not (an I/O error or a mismatch, counted on its device). Stops at the first good
        copy unless `every`."""
        good: bytes | None = None
        bad = []
        for dva in bp.dvas:
            vdev = self.vdevs.get(dva.vdev)
            if vdev is None or dva.offset < vdev.start or dva.offset + bp.psize > vdev.end:
                continue
            for leaf in vdev.live:
                try:
                    raw = leaf.device.read(dva.offset, bp.psize)
                except OSError:
                    leaf.read_errors += 1
                    bad.append((leaf, dva))
                    continue
                if checksum(raw, bp.cksum) == bp.checksum:
                    if good is None:
                        good = raw
                    if not every:
                        return good, bad
                else:
                    if not leaf.resilvering:    # a side being resilvered lacks it: no error
                        leaf.cksum_errors += 1
                    bad.append((leaf, dva))
        return good, bad

    def _heal(self, bad: list, good: bytes) -> int:
        """Rewrite bad copies with the good bytes: exactly what the parent's checksum names, so
        a repair never changes what the tree means (a torn one leaves a copy still bad)."""
        repaired = 0
        for leaf, dva in bad:
            try:
                leaf.device.write(dva.offset, good)
                self.repairs += 1
                repaired += 1
            except OSError:
                leaf.write_errors += 1
        return repaired

    def _lost(self, bp: BlockPointer) -> str:
        what = describe(bp)
        self.permanent_errors[what] = self.permanent_errors.get(what, 0) + 1
        return what

    READ_RUN = 4 << 20          # bytes of neighbouring blocks read with one system call
    READ_AHEAD = 8 << 20        # bytes after a streaming run asked of the disk early
    STREAMING = 512 << 10       # a run of this many logical bytes is a streaming reader's

    def read_many(self, bps: list[BlockPointer]) -> list[bytes | memoryview]:
        """`read` of several blocks, for a sequential reader: blocks whose first copies lie
        next to each other on disk are read with one system call, and compressed ones are
        decompressed on the worker threads. Uncompressed blocks of such a run come back as
        read-only views of the run's one buffer, in disk order, and are not cached (a
        streaming reader would only wash the cache out; the caller copies what it keeps).
        Anything unusual (a mismatch, an I/O error, a block outside its vdev) goes through
        `read` alone, so verification, self-healing and error counting stay in one place."""
        if len(bps) == 1:                           # no run to find: read's own cache check
            return [self.read(bps[0])]
        out: list = [None] * len(bps)
        runs: list[list] = []                       # [vdev, start, end, [indexes]]
        for i, bp in enumerate(bps):
            key = (bp.dvas[0], bp.birth)
            hit = self.cache.get(key)
            if hit is not None:
                self.cache.move_to_end(key)
                out[i] = hit
                continue
            d = bp.dvas[0]
            vdev = self.vdevs.get(d.vdev)
            if vdev is None or d.offset < vdev.start or d.offset + bp.psize > vdev.end:
                out[i] = self.read(bp)
                continue
            run = runs[-1] if runs else None
            if run is not None and run[0] == d.vdev and run[2] == d.offset \
                    and run[2] - run[1] < self.READ_RUN:
                run[2] = d.offset + d.asize
                run[3].append(i)
            else:
                runs.append([d.vdev, d.offset, d.offset + d.asize, [i]])
        decode: list[int] = []
        for vdev_id, start, end, idxs in runs:
            live = self.vdevs[vdev_id].live
            if len(idxs) == 1 or not live:
                for i in idxs:
                    out[i] = self.read(bps[i])
                continue
            leaf = live[0]
            prefetch = getattr(leaf.device, "prefetch", None)
            if prefetch is not None and sum(bps[i].lsize for i in idxs) >= self.STREAMING:
                # a streaming reader: what lies next on disk is most likely what it reads
                # next (files are written sequentially), so the disk reads it while we
                # answer this request
                prefetch(end, self.READ_AHEAD)
            try:
                raw = memoryview(leaf.device.read(start, end - start))
            except OSError:
                raw = None                          # read() counts it, per block
            for i in idxs:
                bp = bps[i]
                off = bp.dvas[0].offset - start
                phys = raw[off:off + bp.psize] if raw is not None else None
                if phys is None or checksum(phys, bp.cksum) != bp.checksum:
                    out[i] = self.read(bp)
                    continue
                out[i] = phys           # uncompressed: a view of the run's buffer, not cached
                if bp.comp != COMP_OFF or bp.psize != bp.lsize:
                    decode.append(i)
        if not decode:
            return out
        many = len(decode) > 1
        jobs = [(out[i], bps[i].comp, bps[i].lsize) for i in decode]
        results = self.executor.map(_decode, jobs) if many else map(_decode, jobs)
        for i, data in zip(decode, results):
            bp = bps[i]
            if isinstance(data, ValueError):
                raise ChecksumError(f"{describe(bp)}: {data}")
            out[i] = data
            self._remember((bp.dvas[0], bp.birth), data)
        return out

    def _remember(self, key: tuple, data: bytes) -> None:
        if not self.cache_bytes:
            return
        self.cache[key] = data
        self.cached += len(data) + CACHE_ENTRY
        while self.cached > self.cache_bytes:
            _k, old = self.cache.popitem(last=False)
            self.cached -= len(old) + CACHE_ENTRY

    # ---- free -----------------------------------------------------------------------------
    def free(self, bp: BlockPointer) -> None:
        old = self.cache.pop((bp.dvas[0], bp.birth), None)
        if old is not None:
            self.cached -= len(old) + CACHE_ENTRY
        if bp.flags & FLAG_DEDUP:
            stored = self.ddt.release(bp)
            if stored is None:          # other references remain
                return
            bp = stored                 # its birth is the physical one
        deferred = bp.birth < self.txg or bp.dvas[0] in self.pinned
        for dva in bp.dvas:
            self.allocator.free(dva, deferred=deferred)

    def drop_cache(self) -> None:
        self.cache.clear()
        self.cached = 0
