"""The allocator: free space of every top-level vdev, with frees deferred until durable.

Theory of operation. Each top-level vdev keeps its free space as sorted, coalesced extents
(two parallel lists searched with bisect). Allocation is next-fit from a per-vdev cursor, so a
stream of writes lands sequentially. The one rule that makes copy-on-write crash safe lives
here: a block freed in txg T may still be reachable from the uberblock of T-1, which is what
import finds if power fails before T's uberblock is written, so it must not be overwritten
before T is durable. Such frees go to `deferred`; when T's sync has written everything but its
uberblock, `begin_release()` sets them apart (frees of T+1, now open, start a new list), and
`finish_release()` returns them to the free lists once T's uberblock is durable (or, if T's
commit failed, hands them on to the next txg's list). A block born in the open txg was never
referenced by a committed uberblock and is freed at once.

The on-disk space map (formats/spacemap.py) records allocated = everything that is neither
free nor deferred; since a txg's map is only used once that txg is durable, deferred frees count
as free there.
"""
from __future__ import annotations

import errno
from bisect import bisect_right

from .formats.bp import DVA
from .formats.spacemap import SECTOR, Extents


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
        self.deferred: list[DVA] = []
        self.releasing: list[DVA] = []      # frees of the txg being committed
        self.deferred_bytes = 0             # of both lists (every write's space check asks)
        self._rotor = 0
        self.changes = 0            # allocations and frees so far: tells sync a txg is not empty

    # ---- loading and saving ---------------------------------------------------------------
    def load(self, allocated: dict[int, Extents]) -> None:
        for v, space in self.spaces.items():
            space.set_allocated(allocated.get(v, []))
        self.deferred = []
        self.releasing = []
        self.deferred_bytes = 0

    def allocated_extents(self) -> dict[int, Extents]:
        """Allocated = not free and not deferred, per vdev (what the space map records)."""
        out: dict[int, Extents] = {}
        for v, space in self.spaces.items():
            holes = space.extents()
            holes += [(d.offset, d.asize) for d in self.deferred + self.releasing if d.vdev == v]
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

    def allocate(self, size: int, avoid: frozenset[int] | set[int] = frozenset()) -> DVA:
        """Allocate `size` bytes (rounded to sectors), preferring vdevs not in `avoid` so that
        copies of one block land on different devices where there are several."""
        size = round_up(size)
        self.changes += 1
        vdevs = sorted(self.spaces)
        # stripe: rotate the starting vdev, prefer the emptier ones
        order = vdevs[self._rotor % len(vdevs):] + vdevs[:self._rotor % len(vdevs)]
        self._rotor += 1
        order.sort(key=lambda v: (v in avoid, -self.spaces[v].free_bytes * 8 // max(1, self.spaces[v].end - self.spaces[v].start)))
        for v in order:
            off = self.spaces[v].allocate(size)
            if off is not None:
                return DVA(v, off, size)
        raise NoSpace()

    def free(self, dva: DVA, *, deferred: bool) -> None:
        self.changes += 1
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
        """The committing txg is durable: its frees become allocatable. If its commit failed,
        they wait for the next txg that commits (it does not reach them either)."""
        if durable:
            for d in self.releasing:
                self.spaces[d.vdev].free(d.offset, d.asize)
                self.deferred_bytes -= d.asize
        else:
            self.deferred[:0] = self.releasing
        self.releasing = []
        assert self.deferred_bytes == sum(d.asize for d in self.deferred), "deferred bytes drifted"
