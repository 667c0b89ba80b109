"""The allocator: free space of every top-level vdev, with frees deferred until durable.

Theory of operation. Each top-level vdev keeps its free space as sorted, coalesced extents
(two parallel lists searched with bisect). Allocation is next-fit from a per-vdev cursor, so a
stream of writes lands sequentially. The extra copies of a block (ditto blocks: metadata, and
data under copies=2|3) go to other vdevs where there are any; on the same vdev they land at
least an eighth of it away from the block's other copies (OpenZFS's ditto distance), from a
cursor of their own so that they too are written sequentially: one damaged region of the
device (up to an eighth of it) never holds every copy of a block. Where the device is too full
for that, a copy goes wherever it fits. The one rule that makes copy-on-write crash safe lives
here: a block freed in txg T may still be reachable from the uberblock of T-1, which is what
import finds if power fails before T's uberblock is written, so it must not be overwritten
before T is durable. Such frees go to `deferred`; when T's sync has written everything but its
uberblock, `begin_release()` sets them apart (frees of T+1, now open, start a new list), and
`finish_release()` holds them once T's uberblock is durable (or, if T's commit failed, hands
them on to the next txg's list). Held frees return to the free lists only REWIND_TXGS txgs
later: so the trees of the last REWIND_TXGS txgs before the newest stay whole on disk, and an
import can rewind to one of them when the newest cannot be read (`zpool import -F`). A block born in the open txg was never
referenced by a committed uberblock and is freed at once.

The on-disk space map (formats/spacemap.py) records allocated = everything that is neither
free nor deferred; since a txg's map is only used once that txg is durable, deferred frees count
as free there. `view` (mapview.py) keeps that set as allocations and frees happen, and encodes
it by pieces: a commit re-encodes only what its txg changed. `allocated_extents` computes the
same set from the free lists, the reference the consistency checks compare it with.
"""
from __future__ import annotations

import errno
from bisect import bisect_right
from collections import deque

from fusezfs.formats.bp import DVA
from fusezfs.formats.spacemap import SECTOR, Extents
from fusezfs.engine.mapview import MapView


DITTO_SHIFT = 3         # copies of a block on one vdev: at least 1/8 of it apart
REWIND_TXGS = 2         # txgs before the newest whose blocks stay intact (zpool import -F)


class NoSpace(OSError):
    def __init__(self) -> None:
        super().__init__(errno.ENOSPC, "out of space")


class FreeSpace:
    """Free extents of one top-level vdev."""

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, end
        self.starts: list[int] = [start] if end > start else []
        self.lens: list[int] = [end - start] if end > start else []
        self.free_bytes = end - start if end > start else 0
        self.cursor = start
        self.ditto_cursor = start + (end - start) // 2     # where copies kept apart go next

    def set_allocated(self, allocated: Extents) -> None:
        """Rebuild from a space map's allocated extents (the complement within [start, end))."""
        self.starts, self.lens = [], []
        pos = self.start
        for off, length in allocated:
            if off < pos or off + length > self.end:
                raise ValueError("space map extent outside the vdev or out of order")
            if off > pos:
                self.starts.append(pos)
                self.lens.append(off - pos)
            pos = off + length
        if pos < self.end:
            self.starts.append(pos)
            self.lens.append(self.end - pos)
        self.free_bytes = sum(self.lens)
        self.cursor = self.start
        self.ditto_cursor = self.start + (self.end - self.start) // 2

    def allocate(self, size: int) -> int | None:
        n = len(self.starts)
        if n == 0:
            return None
        first = max(bisect_right(self.starts, self.cursor) - 1, 0)
        lens = self.lens
        for j in (*range(first, n), *range(0, first)):
            if lens[j] >= size:
                off = self.starts[j]
                if lens[j] == size:
                    del self.starts[j]
                    del lens[j]
                else:
                    self.starts[j] += size
                    lens[j] -= size
                self.free_bytes -= size
                self.cursor = off + size
                return off
        return None

    def allocate_apart(self, size: int, taken: list[tuple[int, int]], distance: int) -> int | None:
        """Allocate `size` bytes at least `distance` away from every (offset, length) in
        `taken`, next-fit from the ditto cursor; None if no such place is free."""
        n = len(self.starts)
        if n == 0:
            return None
        first = max(bisect_right(self.starts, self.ditto_cursor) - 1, 0)
        for i, j in enumerate((*range(first, n), *range(0, first + 1))):
            lo, hi = self.starts[j], self.starts[j] + self.lens[j]
            pos = max(lo, self.ditto_cursor) if i == 0 else lo     # the wrap: all of it
            while pos + size <= hi:
                clash = [o + length for o, length in taken
                         if pos < o + length + distance and o < pos + size + distance]
                if not clash:
                    self._take(j, pos, size)
                    self.ditto_cursor = pos + size
                    return pos
                pos = round_up(max(clash) + distance)
        return None

    def _take(self, j: int, pos: int, size: int) -> None:
        """Remove [pos, pos + size) from free extent j, which holds it."""
        lo, length = self.starts[j], self.lens[j]
        before, after = pos - lo, lo + length - (pos + size)
        assert before >= 0 and after >= 0
        if before and after:
            self.lens[j] = before
            self.starts.insert(j + 1, pos + size)
            self.lens.insert(j + 1, after)
        elif before:
            self.lens[j] = before
        elif after:
            self.starts[j], self.lens[j] = pos + size, after
        else:
            del self.starts[j]
            del self.lens[j]
        self.free_bytes -= size

    def free(self, off: int, size: int) -> None:
        if off < self.start or off + size > self.end:
            raise AssertionError(f"free of [{off}, {off + size}) outside the vdev")
        starts, lens = self.starts, self.lens
        i = bisect_right(starts, off)
        if i > 0 and starts[i - 1] + lens[i - 1] > off:
            raise AssertionError(f"double free of [{off}, {off + size})")
        if i < len(starts) and off + size > starts[i]:
            raise AssertionError(f"double free of [{off}, {off + size})")
        merge_prev = i > 0 and starts[i - 1] + lens[i - 1] == off
        merge_next = i < len(starts) and off + size == starts[i]
        if merge_prev and merge_next:
            lens[i - 1] += size + lens[i]
            del starts[i]
            del lens[i]
        elif merge_prev:
            lens[i - 1] += size
        elif merge_next:
            starts[i] = off
            lens[i] += size
        else:
            starts.insert(i, off)
            lens.insert(i, size)
        self.free_bytes += size

    def is_free(self, off: int, size: int) -> bool:
        i = bisect_right(self.starts, off) - 1
        return i >= 0 and self.starts[i] + self.lens[i] >= off + size

    def extents(self) -> Extents:
        return list(zip(self.starts, self.lens))


def round_up(n: int) -> int:
    return (n + SECTOR - 1) // SECTOR * SECTOR


class Allocator:
    def __init__(self, ranges: dict[int, tuple[int, int]]) -> None:
        self.spaces = {v: FreeSpace(s, e) for v, (s, e) in ranges.items()}
        self.view = MapView(ranges)         # the space map as of now (mapview.py)
        self.deferred: list[DVA] = []
        self.releasing: list[DVA] = []      # frees of the txg being committed
        self.held: deque[list[DVA]] = deque()   # frees of the last REWIND_TXGS durable txgs
        self.deferred_bytes = 0             # of all of these (every write's space check asks)
        self._rotor = 0
        self.changes = 0            # allocations and frees so far: tells sync a txg is not empty

    def add_vdev(self, vdev: int, start: int, end: int) -> None:
        """A new top-level vdev (zpool add): all of it free."""
        assert vdev not in self.spaces
        self.spaces[vdev] = FreeSpace(start, end)
        self.view.add_vdev(vdev, start, end)
        self.changes += 1

    # ---- loading and saving ---------------------------------------------------------------
    def load(self, allocated: dict[int, Extents]) -> None:
        for v, space in self.spaces.items():
            space.set_allocated(allocated.get(v, []))
        self.view.load(allocated)
        self.deferred = []
        self.releasing = []
        self.held = deque()
        self.deferred_bytes = 0

    def allocated_extents(self) -> dict[int, Extents]:
        """Allocated = not free and not deferred, per vdev (what the space map records)."""
        out: dict[int, Extents] = {}
        for v, space in self.spaces.items():
            holes = space.extents()
            holes += [(d.offset, d.asize) for d in self.pending() if d.vdev == v]
            holes.sort()
            alloc: Extents = []
            pos = space.start
            for off, length in holes:
                if off > pos:
                    alloc.append((pos, off - pos))
                pos = max(pos, off + length)
            if pos < space.end:
                alloc.append((pos, space.end - pos))
            out[v] = alloc
        return out

    # ---- allocation -----------------------------------------------------------------------
    @property
    def free_bytes(self) -> int:
        return sum(s.free_bytes for s in self.spaces.values())

    @property
    def size(self) -> int:
        return sum(s.end - s.start for s in self.spaces.values())

    def allocate(self, size: int, others: list[DVA] | tuple = ()) -> DVA:
        """Allocate `size` bytes (rounded to sectors) for a block whose other copies are
        `others`: on a vdev none of them is on where there is one, else an eighth of the vdev
        away from them where it fits (the module comment)."""
        size = round_up(size)
        self.changes += 1
        vdevs = sorted(self.spaces)
        avoid = {d.vdev for d in others}
        # stripe: rotate the starting vdev, prefer the emptier ones
        order = vdevs[self._rotor % len(vdevs):] + vdevs[:self._rotor % len(vdevs)]
        self._rotor += 1
        order.sort(key=lambda v: (v in avoid, -self.spaces[v].free_bytes * 8 // max(1, self.spaces[v].end - self.spaces[v].start)))
        for v in order:
            space = self.spaces[v]
            off = None
            if v in avoid:
                taken = [(d.offset, d.asize) for d in others if d.vdev == v]
                off = space.allocate_apart(size, taken, (space.end - space.start) >> DITTO_SHIFT)
            if off is None:
                off = space.allocate(size)
            if off is not None:
                self.view.add(v, off, size)
                return DVA(v, off, size)
        raise NoSpace()

    def allocate_low(self, size: int, align: int = 4096, scan: int = 64) -> DVA | None:
        """`size` bytes at the lowest free address, a multiple of `align`, among the first
        `scan` free extents of the vdevs, or None (the caller then allocates as usual). For
        the intent log: its blocks, freed at every txg, are written again in the same few
        places, which a pool file has already allocated, so the flush that follows each log
        write costs its file system no new block allocation; whole aligned pages are written
        without reading the page first."""
        size = round_up(size)
        for v in sorted(self.spaces):
            space = self.spaces[v]
            for j in range(min(scan, len(space.starts))):
                start, length = space.starts[j], space.lens[j]
                off = -(-start // align) * align
                if off + size <= start + length:
                    space._take(j, off, size)
                    self.view.add(v, off, size)
                    self.changes += 1
                    return DVA(v, off, size)
        return None

    def claim(self, dva: DVA) -> bool:
        """Allocate exactly `dva`'s extent if all of it is free (import claiming the intent
        log's blocks, which no space map records: zil.py); False, changing nothing, if not."""
        space = self.spaces.get(dva.vdev)
        if space is None or dva.asize <= 0 or not space.is_free(dva.offset, dva.asize):
            return False
        j = bisect_right(space.starts, dva.offset) - 1
        space._take(j, dva.offset, dva.asize)
        self.view.add(dva.vdev, dva.offset, dva.asize)
        self.changes += 1
        return True

    def free(self, dva: DVA, *, deferred: bool) -> None:
        self.changes += 1
        self.view.remove(dva.vdev, dva.offset, dva.asize)    # free in the map either way
        if deferred:
            self.deferred.append(dva)
            self.deferred_bytes += dva.asize
        else:
            self.spaces[dva.vdev].free(dva.offset, dva.asize)

    def begin_release(self) -> None:
        """The committing txg's frees, set apart from those of the txg opening now."""
        assert not self.releasing, "a txg commit is already in flight"
        self.releasing, self.deferred = self.deferred, []

    def finish_release(self, durable: bool) -> None:
        """The committing txg is durable: its frees are held, and those of the txg
        REWIND_TXGS before it become allocatable. If its commit failed, they wait for the next
        txg that commits (it does not reach them either)."""
        if durable:
            self.held.append(self.releasing)
            while len(self.held) > REWIND_TXGS:
                for d in self.held.popleft():
                    self.spaces[d.vdev].free(d.offset, d.asize)
                    self.deferred_bytes -= d.asize
        else:
            self.deferred[:0] = self.releasing
        self.releasing = []
        assert self.deferred_bytes == sum(d.asize for d in self.pending()), \
            "deferred bytes drifted"

    def pending(self) -> list[DVA]:
        """Every free not yet allocatable: deferred, being committed, or held."""
        return self.deferred + self.releasing + [d for frees in self.held for d in frees]
