"""`pool verify`: prove that the committed state is whole and that the allocator agrees with it.

Walks everything reachable from the newest uberblock (the MOS tree, every object tree it names,
every block those trees own, the space map block), reading and checksumming every block, and
then compares the set of extents reached with the set the space map says is allocated:

* an extent reached twice is a block used twice (two owners would overwrite each other);
* reached but not allocated: the allocator could hand it out again (corruption waiting to happen);
* allocated but not reached: a leak (space lost until the pool is recreated).

Deduplicated blocks are named by many block pointers (dedup.py): those pointers are not counted
as owners of their extents; the dedup table's entries are, once each, and every dedup pointer
must match an entry (same key, same DVAs), every entry must be named by some pointer. Exact
reference counts need the datasets' lineages: `Datasets.check` compares them.

Every copy of every block is read and checked (each DVA, each mirror side, read in address
order in batches: `BlockIO.scrub_many`, which sends any block with a bad copy through `scrub`), so
damage to a second copy or a mirror's other side is found, counted on its device and repaired
from a good copy, not hidden behind the first good one; a block with no good copy is a fault.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from fusezfs.engine.blocks import ChecksumError, describe
from fusezfs.engine.dedup import key_of
from fusezfs.formats import spacemap
from fusezfs.formats.bp import FLAG_DEDUP, BlockPointer
from fusezfs.engine.tree import Tree


@dataclass
class Report:
    blocks: int = 0
    bytes: int = 0
    faults: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.faults

    def text(self, pool_name: str) -> str:
        lines = [f"pool '{pool_name}': checked {self.blocks} blocks, {self.bytes} bytes allocated"]
        if self.ok:
            lines.append("no errors found")
        else:
            lines.append(f"{len(self.faults)} fault(s):")
            lines += [f"  {f}" for f in self.faults]
        return "\n".join(lines)


def _coalesce(extents: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for off, length in sorted(extents):
        if out and out[-1][0] + out[-1][1] == off:
            out[-1] = (out[-1][0], out[-1][1] + length)
        else:
            out.append((off, length))
    return out


def _subtract(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Extents covered by a but not by b (both sorted and coalesced)."""
    out = []
    j = 0
    for off, length in a:
        pos, end = off, off + length
        while j < len(b) and b[j][0] + b[j][1] <= pos:
            j += 1
        k = j
        while pos < end:
            if k < len(b) and b[k][0] < end:
                if b[k][0] > pos:
                    out.append((pos, b[k][0] - pos))
                pos = max(pos, b[k][0] + b[k][1])
                k += 1
            else:
                out.append((pos, end - pos))
                break
    return out


VERIFY_BATCH = 4096      # blocks gathered before their copies are read (BlockIO.scrub_many)


def verify(pool) -> Report:
    """Sync the pool, then check its committed state (see the module comment)."""
    with pool.lock:
        pool.sync()
        report = Report()
        reached: dict[int, list[tuple[int, int, str]]] = {v: [] for v in pool.tops}
        seen: set[tuple] = set()   # a block shared by several trees is one block
        walked: set[tuple] = set()     # nodes walked: subtrees snapshots share are walked once

        dedup_refs: dict[bytes, BlockPointer] = {}      # table key -> a pointer naming it

        pending: list[tuple[BlockPointer, str]] = []    # to read, in address order, in batches

        def scrub_pending() -> None:
            results = pool.blocks.scrub_many([bp for bp, _what in pending]) if pending else []
            for (bp, what), (_bad, _repaired, lost) in zip(pending, results):
                if lost:
                    report.faults.append(f"{what}: checksum error: {describe(bp)}")
            pending.clear()

        def note(bp: BlockPointer, what: str) -> None:
            if bp.flags & FLAG_DEDUP:       # the table's entry owns the extents (below)
                dedup_refs.setdefault(key_of(bp), bp)
                return
            if bp.identity() in seen:
                return
            seen.add(bp.identity())
            report.blocks += 1
            pending.append((bp, what))
            if len(pending) >= VERIFY_BATCH:
                scrub_pending()
            for d in bp.dvas:
                if d.vdev not in reached:
                    report.faults.append(f"{what} {describe(bp)}: DVA names unknown vdev {d.vdev}")
                    continue
                reached[d.vdev].append((d.offset, d.asize, what))

        def walk_tree(tree: Tree, what: str) -> None:
            try:
                for kind, bp in tree.walk(walked):
                    if kind == "node":
                        note(bp, f"{what} node")
                    elif kind == "block":
                        note(bp, f"{what} block")
                    elif kind == "tree":
                        if bp is not None:
                            walk_tree(Tree(tree.store, bp), f"{what}/tree")
            except ChecksumError as e:
                report.faults.append(f"{what}: {e.strerror}")

        walk_tree(Tree(pool.mos.store, pool.mos.root), "mos")
        try:
            entries = {key: entry.bp for key, entry in pool.blocks.ddt.entries()}
        except (ChecksumError, ValueError) as e:
            report.faults.append(f"dedup table unreadable: {e}")
            entries = {}
        for key, bp in entries.items():
            note(replace(bp, flags=0), "dedup table entry")
            ref = dedup_refs.get(key)
            if ref is None:
                report.faults.append(f"dedup table entry {describe(bp)}: no block pointer "
                                     f"names it (leaked)")
        for key, bp in dedup_refs.items():
            if key not in entries or entries[key].dvas != bp.dvas:
                report.faults.append(f"dedup block {describe(bp)}: not in the dedup table")
        from fusezfs.engine.zil import chain_extents  # the intent log: reached through its header
        for d in chain_extents(pool):
            if d.vdev in reached:
                reached[d.vdev].append((d.offset, d.asize, "intent log"))
        sm_bp = pool.spacemap_bp
        note(sm_bp, "spacemap")
        scrub_pending()
        try:
            on_disk = spacemap.decode(pool.blocks.read(sm_bp, cache=False))
        except (ChecksumError, ValueError) as e:
            report.faults.append(f"space map unreadable: {e}")
            return report
        in_memory = pool.allocator.allocated_extents()
        for vdev, extents in reached.items():
            extents.sort()
            for (o1, l1, w1), (o2, l2, w2) in zip(extents, extents[1:]):
                if o2 < o1 + l1:
                    report.faults.append(f"vdev {vdev}: [{o2:#x}, {o2 + l2:#x}) used twice "
                                         f"({w1} and {w2})")
            used = _coalesce([(o, n) for o, n, _ in extents])
            allocated = _coalesce(on_disk.get(vdev, []))
            report.bytes += sum(n for _, n in allocated)
            for off, length in _subtract(used, allocated):
                report.faults.append(f"vdev {vdev}: [{off:#x}, {off + length:#x}) is in use but "
                                     f"free in the space map")
            for off, length in _subtract(allocated, used):
                report.faults.append(f"vdev {vdev}: [{off:#x}, {off + length:#x}) is allocated "
                                     f"but unreachable (leaked)")
            if _coalesce(in_memory.get(vdev, [])) != allocated:
                report.faults.append(f"vdev {vdev}: the allocator in memory differs from the "
                                     f"space map on disk")
            if pool.allocator.view.vdevs[vdev].extents() != in_memory.get(vdev, []):
                report.faults.append(f"vdev {vdev}: the space map kept for the next txg "
                                     f"(mapview) differs from the allocator's free lists")
        return report


def intact(pool) -> bool:
    """Whether everything the loaded uberblock reaches reads back with a matching checksum
    (some copy of each block): what a rewinding import asks of an older txg. Reads only; the
    caller turns healing off, since a bad copy there may be a newer txg's block."""
    walked: set = set()

    def ok(tree: Tree) -> bool:
        for kind, bp in tree.walk(walked):
            if kind == "block":
                pool.blocks.read(bp, verify_only=True)
            elif kind == "tree" and not ok(Tree(tree.store, bp)):
                return False
        return True
    try:
        pool.blocks.read(pool.spacemap_bp, verify_only=True)
        return ok(Tree(pool.mos.store, pool.mos.root))
    except (ChecksumError, ValueError):
        return False
