"""Deduplication: the dedup table (DDT) and its reference counts.

Theory of operation. A dataset with `dedup` set writes its data blocks with a strong checksum
(sha256) and looks each one up in the pool's dedup table before it allocates anything. The
table is keyed by what makes two stored blocks interchangeable: the checksum of the physical
(compressed) bytes, the logical and physical sizes, the compression and the number of copies.
An entry holds the block pointer of the one stored block (its birth is the txg the bytes were
written: the *physical* birth) and how many block pointers in the pool name it.

* A miss allocates and writes the block as usual and inserts an entry with one reference.
* A hit writes nothing: the new block pointer is the entry's with the open txg as its birth
  (the *logical* birth, which the datasets' birth-time accounting goes by) and the dedup flag,
  and the entry gains a reference. With `verify` the stored bytes are read and compared first;
  on a mismatch (a checksum collision) the block is written as an ordinary one, not deduped.
* A free of a block pointer with the dedup flag drops one reference; the space is freed only
  when the last goes, and then deferred or not by the *physical* birth (a block written in an
  earlier txg is still reachable from the last durable uberblock).

Space. Each block pointer is a reference, so a dataset's `used`, `referenced`, `written` and
its snapshots' space charge the block's allocated size once per reference (as OpenZFS does),
while the pool's `allocated` counts the stored block once. `dedupratio` is referenced over
allocated over the entries of the table (OpenZFS's ddt_get_pool_dedup_ratio); the histogram
`zpool status -D` prints is kept as running totals in the MOS (`ddtstats`), changed with every
entry and checked against a recount by `check`.

Crash safety. The table is an object tree (`objset\\0ddt` in the MOS, FORMAT.md section 10):
copy-on-write like every other tree, its new root committed in the same txg as the dataset trees
whose block pointers its counts describe, and the totals in the same MOS. A power cut before the
uberblock of that txg lands leaves the previous table, counts and trees together; one after it,
the new ones. The space of a block whose last reference goes is freed by the allocator's
ordinary rules (deferred until durable, then held for rewind), so no block the last durable
table names is ever overwritten.

Memory. The table lives on disk; what is in memory is the pool's bounded cache of decoded tree
nodes (shared with every other tree) and the nodes the open txg changed, which are written out
at every sync: a table of any size costs a bounded amount of memory.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, replace
from typing import Iterator

from fusezfs.formats.bp import CKSUM_SHA256, FLAG_DEDUP, BlockPointer, decode_bp, encode_bp
from fusezfs.formats.node import REF_BLOCK
from fusezfs.engine.tree import Tree

DDT_OBJSET = b"ddt"             # the table's tree, `objset\0ddt` in the MOS
STATS_KEY = b"ddtstats"         # the histogram's running totals, JSON, in the MOS

DEDUP_OFF, DEDUP_ON, DEDUP_VERIFY = 0, 1, 2

_KEY_TAIL = struct.Struct(">IIBB")      # lsize, psize, compression, copies (after the digest)
_REFCOUNT = struct.Struct("<Q")
STAT_FIELDS = ("blocks", "lsize", "psize", "dsize",
               "ref_blocks", "ref_lsize", "ref_psize", "ref_dsize")


def mode(value: str) -> int:
    """The `dedup` property's value as the block layer takes it (sha256 is the only dedup
    checksum fusezfs offers, so on and sha256 are the same)."""
    if value in ("off", "", None):
        return DEDUP_OFF
    return DEDUP_VERIFY if value.endswith("verify") else DEDUP_ON


def table_key(digest: bytes, lsize: int, psize: int, comp: int, copies: int) -> bytes:
    return digest + _KEY_TAIL.pack(lsize, psize, comp, copies)


def key_of(bp: BlockPointer) -> bytes:
    return table_key(bp.checksum, bp.lsize, bp.psize, bp.comp, len(bp.dvas))


@dataclass(frozen=True)
class Entry:
    bp: BlockPointer            # the stored block; birth = physical birth; dedup flag set
    refcount: int

    def encode(self) -> bytes:
        return encode_bp(self.bp) + _REFCOUNT.pack(self.refcount)

    @classmethod
    def decode(cls, raw: bytes) -> "Entry":
        bp = decode_bp(raw[:128])
        if bp is None or len(raw) != 128 + _REFCOUNT.size:
            raise ValueError("malformed dedup table entry")
        return cls(bp, _REFCOUNT.unpack_from(raw, 128)[0])

    def stats(self) -> list[int]:
        """This entry's share of the histogram (OpenZFS's ddt_stat_generate)."""
        dsize = self.bp.asize
        n = self.refcount
        return [1, self.bp.lsize, self.bp.psize, dsize,
                n, n * self.bp.lsize, n * self.bp.psize, n * dsize]


def bucket(refcount: int) -> int:
    """Histogram bucket: refcounts 2^h to 2^(h+1)-1."""
    return refcount.bit_length() - 1


class DedupTable:
    """The pool's dedup table. Callers hold the pool lock (the block layer's writers do)."""

    def __init__(self, pool) -> None:
        self.pool = pool
        self._stats: dict[int, list[int]] | None = None
        self._stats_mos = None          # the MOS the totals were loaded from (a rewind loads
        self._stats_dirty = False       # another)
        pool.sync_hooks.append(self._save_stats)

    # ---- the table ---------------------------------------------------------------------------
    def _tree(self, create: bool):
        if not create and not self.pool.has_objset(DDT_OBJSET):
            return None
        return self.pool.objset(DDT_OBJSET)

    def lookup(self, key: bytes) -> Entry | None:
        tree = self._tree(create=False)
        raw = tree.get(key) if tree is not None else None
        return Entry.decode(raw) if raw is not None else None

    def insert(self, key: bytes, bp: BlockPointer) -> None:
        """A block just written: its entry with one reference."""
        self._put(key, None, Entry(bp, 1))

    def add_reference(self, key: bytes, entry: Entry) -> BlockPointer:
        """A hit: one more reference; returns the block pointer the new reference stores."""
        self._put(key, entry, replace(entry, refcount=entry.refcount + 1))
        return replace(entry.bp, birth=self.pool.blocks.txg)

    def release(self, bp: BlockPointer) -> BlockPointer | None:
        """One reference to `bp` went; returns the stored block's pointer (physical birth)
        when it was the last, so the caller frees its space. A pointer the table does not know
        is left alone: its space stays allocated and `pool verify` reports it."""
        key = key_of(bp)
        entry = self.lookup(key)
        if entry is None or entry.bp.dvas != bp.dvas:
            return None
        if entry.refcount == 1:
            self._put(key, entry, None)
            return entry.bp
        self._put(key, entry, replace(entry, refcount=entry.refcount - 1))
        return None

    def _put(self, key: bytes, old: Entry | None, new: Entry | None) -> None:
        tree = self._tree(create=True)
        totals = self.stats()
        for entry, sign in ((old, -1), (new, 1)):
            if entry is None:
                continue
            row = totals.setdefault(bucket(entry.refcount), [0] * len(STAT_FIELDS))
            for i, v in enumerate(entry.stats()):
                row[i] += sign * v
            assert row[0] >= 0 and row[4] >= row[0], "dedup histogram went negative"
            if not row[0]:
                del totals[bucket(entry.refcount)]
        self._stats_dirty = True
        if new is None:
            tree.delete(key)
        else:
            tree.put(key, new.encode())

    def entries(self, root: BlockPointer | None = None) -> Iterator[tuple[bytes, Entry]]:
        """Every (key, entry), in key order (of the committed table when `root` is given)."""
        tree = self._tree(create=False) if root is None else self._at(root)
        if tree is not None:
            for key, raw in tree.scan():
                yield key, Entry.decode(raw)

    def _at(self, root: BlockPointer) -> Tree:
        return Tree(self.pool.mos.store, root, cache=self.pool.node_cache)

    # ---- statistics --------------------------------------------------------------------------
    def stats(self) -> dict[int, list[int]]:
        """Histogram bucket -> the eight totals of STAT_FIELDS (the live, in-memory copy)."""
        if self._stats is None or self._stats_mos is not self.pool.mos:
            raw = self.pool.mos.get(STATS_KEY)
            self._stats = {int(h): row for h, row in json.loads(raw).items()} if raw else {}
            self._stats_mos = self.pool.mos
            self._stats_dirty = False
        return self._stats

    def _save_stats(self, pool) -> None:
        if self._stats_dirty and self._stats_mos is pool.mos:
            rows = {str(h): row for h, row in sorted(self._stats.items())}
            if rows:
                pool.mos.put(STATS_KEY, json.dumps(rows).encode())
            else:
                pool.mos.delete(STATS_KEY)
            self._stats_dirty = False

    def totals(self) -> list[int]:
        out = [0] * len(STAT_FIELDS)
        for row in self.stats().values():
            out = [a + b for a, b in zip(out, row)]
        return out

    def ratio_percent(self) -> int:
        """dedupratio x 100, truncated, as OpenZFS computes it (100 with no entries)."""
        t = self.totals()
        return t[7] * 100 // t[3] if t[3] else 100

    def object_stats(self) -> tuple[int, int, int]:
        """(entries, bytes on disk per entry, bytes in core per entry) for `status -D`: the
        table's node blocks (allocated, all copies) and their decoded sizes, per entry."""
        tree = self._tree(create=False)
        count = self.totals()[0]
        if tree is None or not count:
            return count, 0, 0
        tree_nodes = list(tree.walk()) if tree.root is not None else []
        disk = sum(bp.asize for kind, bp in tree_nodes if kind == "node")
        core = sum(bp.lsize for kind, bp in tree_nodes if kind == "node")
        return count, disk // count, core // count

    # ---- the consistency checker -------------------------------------------------------------
    def check(self, references: dict[bytes, int]) -> list[str]:
        """The table against `references` (key -> dedup block pointers found in the pool's
        trees, each reference once): every count exact, every entry referenced, every entry's
        pointer well formed, and the running totals equal to a recount."""
        faults = []
        recount: dict[int, list[int]] = {}
        seen = set()
        for key, entry in self.entries():
            seen.add(key)
            want = references.get(key, 0)
            if entry.refcount != want:
                faults.append(f"dedup table entry {key[:8].hex()}: refcount {entry.refcount}, "
                              f"{want} block pointers reference it")
            if key_of(entry.bp) != key or not entry.bp.flags & FLAG_DEDUP \
                    or entry.bp.cksum != CKSUM_SHA256:
                faults.append(f"dedup table entry {key[:8].hex()}: its block pointer does not "
                              f"match its key")
            row = recount.setdefault(bucket(entry.refcount), [0] * len(STAT_FIELDS))
            for i, v in enumerate(entry.stats()):
                row[i] += v
        for key in sorted(set(references) - seen):
            faults.append(f"{references[key]} dedup block pointer(s) {key[:8].hex()} have no "
                          f"dedup table entry")
        if recount != self.stats():
            faults.append("dedup histogram totals differ from a recount of the table")
        return faults


def reference_counts(dsl) -> dict[bytes, int]:
    """Table key -> how many dedup block pointers the datasets hold (`dsl`: the pool's
    datasets.Datasets), each reference counted once although snapshots and clones share it.

    A reference is one write: a block pointer born in one filesystem's lineage (its own tree
    and its snapshots', blocks born after its origin), at one item key. The same pointer at
    the same key in the head and its snapshots is one reference (they share it); the same
    pointer at two keys, or in two lineages (two clones writing the same bytes in one txg), is
    two. Blocks a clone inherited (born at or before its origin) are its origin's."""
    counts: dict[bytes, int] = {}
    todo = [dsl.record(1)]
    while todo:
        head = todo.pop()
        todo += dsl.children(head.id, hidden=True)
        found: set = set()
        for rec in [head] + dsl.snapshots(head.id):
            for item_key, value, ref in dsl.tree(rec).scan_items():
                if ref != REF_BLOCK:
                    continue
                bp = decode_bp(value)
                if bp is not None and bp.flags & FLAG_DEDUP and bp.birth > head.origin_txg:
                    found.add((item_key, value[:128]))
        for _item_key, raw in found:
            key = key_of(decode_bp(raw))
            counts[key] = counts.get(key, 0) + 1
    return counts
