"""Scrub: read and verify every copy of every block the pool reaches; rewrite bad copies.

Theory of operation. A scrub walks what the pool reaches: the MOS tree, then every object tree
it names (datasets, snapshots, deadlists, ...) one at a time in MOS key order, with every node,
every block the trees own and the space map. For each block pointer it reads every copy (each
DVA, each mirror side: `BlockIO.scrub`), checks it against the checksum the parent holds, counts
a bad copy on the device that returned it, and rewrites it from a good copy. A block with no
good copy goes on the pool's permanent error list. Subtrees that snapshots and clones share are
walked once (Tree.walk's `seen`). A deduplicated block is scrubbed once, from its dedup table
entry when the table's tree has its turn (`objset\0ddt` sorts before every dataset's tree), not
at each of the block pointers that name it.

Guarantees. Repairs are the only writes in place a pool makes, and they write exactly the bytes
the parent's checksum names, to a copy whose bytes are wrong: a torn repair leaves a copy that
is still bad (found again by the next scrub), never a good one damaged. Each object tree is
scanned with the pool lock held, so no block of it can be freed and reused while it is read and
repaired; between trees the pool goes on (the next tree's root is taken from the MOS as it is
then), so writers wait at most for one tree.

Progress is one MOS item (`scan`, JSON): function, state (scanning, finished, canceled), times,
bytes examined, repaired and to examine, errors, the last object tree done (the cursor) and
whether it is paused. It is committed with the txgs, so a scrub interrupted by export, a kill
or a power cut resumes after the last tree it had committed; `zpool status` reads it. Where a
long-lived process owns the pool (the mount daemon) a scrub runs on a thread of its own; a
command owning the pool for its own lifetime runs it to the end before it exits (`-w`).
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field

from fusezfs.engine.dedup import DDT_OBJSET
from fusezfs.formats.bp import FLAG_DEDUP, decode_bp
from fusezfs.formats.node import REF_TREE
from fusezfs.engine.pool import OBJSET_PREFIX, OnePerPool, Pool
from fusezfs.engine.tree import Tree

SCAN_KEY = b"scan"
BATCH = 16 << 20        # bytes of blocks gathered from a tree's walk before they are read


@dataclass
class ScanState:
    func: str = "scrub"                 # scrub | resilver
    state: str = "scanning"             # scanning | finished | canceled
    start: int = 0
    end: int = 0
    paused: int = 0                     # time it was paused, 0 when running
    examined: int = 0                   # bytes of the copies read
    to_examine: int = 0                 # what the pool had allocated when it started
    repaired: int = 0                   # bytes rewritten
    errors: int = 0                     # blocks with no good copy
    cursor: str | None = None           # hex MOS key of the last object tree done; "" : the MOS
    pass_start: float = 0.0             # this process's share: for the rates in status
    pass_examined: int = field(default=0)

    def save(self, pool: Pool) -> None:
        pool.mos.put(SCAN_KEY, json.dumps(asdict(self), sort_keys=True).encode())


def load(pool: Pool) -> ScanState | None:
    raw = pool.mos.get(SCAN_KEY)
    if raw is None:
        return None
    known = ScanState.__dataclass_fields__
    return ScanState(**{k: v for k, v in json.loads(raw).items() if k in known})


def _trees(pool: Pool, after: str | None) -> list[bytes]:
    """MOS keys of the object trees still to scan, in key order, after the cursor."""
    keys = [k for k, _v, ref in pool.mos.scan_items() if ref == REF_TREE]
    return [k for k in keys if after is None or k.hex() > after]


class Scrubber(OnePerPool):
    """The pool's scrub: one per open pool, so a second `zpool scrub` finds the running one."""

    def _setup(self, pool: Pool) -> None:
        self.pool = pool
        self.thread: threading.Thread | None = None
        self.stop = threading.Event()       # a new one for each thread: an old thread that
        self.seen: set = set()              # has not woken yet keeps its own, set

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    # ---- the commands ------------------------------------------------------------------------
    def start(self, func: str = "scrub") -> ScanState:
        """Begin a new scrub, or resume a paused or interrupted one (the caller checked that
        none is running here). A resilver (func "resilver": a side was attached or came back)
        starts over whatever scan was going on, as ZFS's does."""
        pool = self.pool
        with pool.lock:
            st = load(pool)
            if st is None or st.state != "scanning" or (func == "resilver" and st.func != func):
                st = ScanState(func=func, start=int(time.time()), to_examine=pool.allocated)
                self.seen = set()
            st.paused = 0
            st.pass_start, st.pass_examined = time.time(), 0
            st.save(pool)
        return st

    def pause(self) -> None:
        self._halt()
        with self.pool.lock:
            st = load(self.pool)
            st.paused = int(time.time())
            st.save(self.pool)

    def cancel(self) -> None:
        self._halt()
        with self.pool.lock:
            st = load(self.pool)
            st.state, st.end, st.paused = "canceled", int(time.time()), 0
            st.save(self.pool)

    def _halt(self) -> None:
        """Stop the thread without waiting for it: the caller may hold the pool lock the
        thread waits for; once it has the lock it finds the state paused or canceled."""
        self.stop.set()
        self.thread = None

    def in_background(self) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, args=(False, self.stop),
                                       name=f"scrub-{self.pool.name}", daemon=True)
        self.thread.start()

    # ---- the work ----------------------------------------------------------------------------
    def run(self, commit_each: bool = False, stop: threading.Event | None = None) -> ScanState:
        """Scan tree after tree until done, paused or stopped; `commit_each` syncs after each
        tree (a command's own process: a kill loses at most one tree's progress)."""
        stop = stop or threading.Event()
        while not stop.is_set():
            with self.pool.lock:
                if self.pool.closed or stop.is_set() or self.step(commit_each):
                    break
        with self.pool.lock:
            return load(self.pool)

    def step(self, commit: bool = False) -> bool:
        """Scan the next object tree (the first step: the MOS and the space map); True when
        there is no more to do (the scan is over, paused or canceled, or there is none). The
        caller holds the lock."""
        pool = self.pool
        st = load(pool)
        if st is None or st.state != "scanning" or st.paused:
            return True
        if st.cursor is None:           # the MOS tree and the space map come first
            self._scan(Tree(pool.mos.store, pool.mos.root), st, nested=False)
            self._scan_block(pool.spacemap_bp, st)
            st.cursor = ""
        else:
            todo = _trees(pool, st.cursor)
            if not todo:
                st.state, st.end = "finished", int(time.time())
                st.save(pool)
                if st.func == "resilver":     # every copy rewritten: the sides are trusted now
                    for leaf in pool.leaves():
                        leaf.resilvering = False
                    pool.write_labels()
                if commit:
                    pool.sync()
                return True
            key = todo[0]
            raw = pool.mos.get(key)
            if raw is not None:
                root = decode_bp(raw)
                if root is not None:
                    self._scan(Tree(pool.mos.store, root), st)
                    if key == OBJSET_PREFIX + DDT_OBJSET:
                        self._scan_dedup(root, st)
            st.cursor = key.hex()
        st.save(pool)
        if commit:
            pool.sync()
        return False

    def _scan(self, tree: Tree, st: ScanState, nested: bool = True) -> None:
        """Scrub what `tree` reaches (the trees it names too, if `nested`)."""
        self._scan_all(self._reached(tree, st, nested), st)

    def _reached(self, tree: Tree, st: ScanState, nested: bool):
        """The block pointers to scrub of `tree`'s walk, each block once."""
        seen = self.seen
        for kind, bp in tree.walk(seen):
            if kind == "tree":
                if nested:
                    self._scan(Tree(tree.store, bp), st)
                continue
            if kind == "block":
                if bp.flags & FLAG_DEDUP:
                    continue            # scrubbed with its dedup table entry
                d = bp.dvas[0]          # (a tuple of ints: cheaper to keep than identity())
                ident = (d.vdev, d.offset, bp.birth)
                if ident in seen:
                    continue
                seen.add(ident)
            yield bp

    def _scan_dedup(self, root, st: ScanState) -> None:
        """Every block the dedup table holds, once."""
        self._scan_all((entry.bp for _key, entry in self.pool.blocks.ddt.entries(root)), st)

    def _scan_all(self, bps, st: ScanState) -> None:
        """Scrub the blocks `bps` yields, BATCH bytes at a time, read in address order by
        the workers (BlockIO.scrub_start) while this thread gathers the next batch."""
        blocks = self.pool.blocks
        batch: list = []
        size = 0
        in_flight = None
        for bp in bps:
            batch.append(bp)
            size += bp.psize
            if size >= BATCH:
                started = (batch, blocks.scrub_start(batch))
                if in_flight is not None:
                    self._account(in_flight[0], blocks.scrub_finish(*in_flight), st)
                in_flight, batch, size = started, [], 0
        if in_flight is not None:
            self._account(in_flight[0], blocks.scrub_finish(*in_flight), st)
        self._scan_blocks(batch, st)

    def _scan_block(self, bp, st: ScanState) -> None:
        self._scan_blocks([bp], st)

    def _scan_blocks(self, bps: list, st: ScanState) -> None:
        if not bps:
            return
        results = self.pool.blocks.scrub_many(bps) if len(bps) > 1 else \
            [self.pool.blocks.scrub(bps[0])]
        self._account(bps, results, st)

    def _account(self, bps: list, results: list, st: ScanState) -> None:
        for bp, (_bad, repaired, lost) in zip(bps, results):
            size = sum(d.asize for d in bp.dvas)
            st.examined += size
            st.pass_examined += size
            st.repaired += repaired * bp.psize
            st.errors += lost


def resume(pool: Pool, background: bool = True) -> None:
    """An owner opening the pool goes on with what was left running when it was last closed,
    as the kernel does after an import: a scan not paused, or a resilver a side still needs.
    The labels say which sides are resilvering and the MOS holds the scan, and a crash can
    come between the two writes: a side marked resilvering with no resilver in the MOS gets
    one started here."""
    st = load(pool)
    scrubber = Scrubber(pool)
    if any(leaf.resilvering for leaf in pool.leaves()) and \
            not (st is not None and st.func == "resilver" and st.state == "scanning"):
        scrubber.start("resilver")
    elif st is None or st.state != "scanning" or st.paused:
        return
    else:
        scrubber.start()
    if background:
        scrubber.in_background()
    else:
        scrubber.run(commit_each=True)
