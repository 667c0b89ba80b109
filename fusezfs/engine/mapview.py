"""The space map as the next txg writes it, kept up to date as blocks come and go, and
encoded by pieces so that a txg's commit re-encodes only what changed.

Theory of operation
-------------------
A txg's space map (formats/spacemap.py) records, per top-level vdev, the allocated extents:
everything neither free nor waiting in a deferred free (allocator.py). Computing that from the
allocator's free lists and encoding every extent again at each commit costs O(extents) of
Python per txg, and a pool grows more extents as it fills and fragments (every container
creation is two txgs: its cost rose with the number of containers before this).

`MapView` keeps the allocated extents themselves, sorted and coalesced, updated by the
allocator on every allocation (`add`) and every free, deferred or not (`remove`): a deferred
free counts as free in the map already, because a txg's map is only ever used once that txg is
durable. Freed space becoming allocatable later (a held free released) changes nothing here.

Each vdev's address range is cut into at most WINDOWS windows of a power-of-two size (64 KiB
and up); an extent belongs to the window its start falls in. Each window keeps its extents'
encoding, ready to be joined: the LEB128 varints of every extent but the first one's gap (which
is relative to the previous window's last extent, known only when the map is put together), as
a `_Run` (count, first start, last end, those bytes). Runs of GROUP consecutive windows are
joined into a group's run the same way and kept too. An add or remove marks the windows of the
extents it touched, merged or split; `encode` re-encodes those windows, re-joins their groups,
and joins the groups: per commit, Python work in proportion to the extents of the windows
changed plus GROUP steps per group changed plus one step per group, whatever the size of the
map; the compression and checksum of the block are C.

The bytes are exactly `spacemap.encode(allocator.allocated_extents())`: the on-disk format and
what makes it crash safe (the map describes its own block; the block of the previous txg's map
is a deferred free, so an uberblock of an older txg still finds its map) do not change.
fusezfs/engine/verify.py and the tests compare the two.
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right

from fusezfs.formats.spacemap import _HEAD, _SEC, MAGIC, SECTOR, VERSION, Extents, _varint

WINDOWS = 1 << 14       # per vdev, at most
MIN_WINDOW_SHIFT = 16   # 64 KiB: few extents to re-encode when one changes
GROUP = 64              # windows joined and kept together


class _Run:
    """Consecutive extents encoded: their count, the first one's start, the last one's end,
    and the varints of all but the first extent's gap."""
    __slots__ = ("count", "first", "last_end", "body")

    def __init__(self, count: int, first: int, last_end: int, body: bytes) -> None:
        self.count, self.first, self.last_end, self.body = count, first, last_end, body


def _join(runs: list[_Run], prev_end: int) -> tuple[list[bytes], int]:
    """The runs' bytes in order, each preceded by its first gap (from `prev_end`)."""
    parts: list[bytes] = []
    for run in runs:
        gap = bytearray()
        _varint((run.first - prev_end) // SECTOR, gap)
        parts.append(bytes(gap))
        parts.append(run.body)
        prev_end = run.last_end
    return parts, prev_end


class VdevMap:
    """Allocated extents of one top-level vdev, with per-window encodings. The extents are kept
    in an allocator.FreeSpace used the other way round: its "free" extents are the allocated
    ones here (the same sorted, coalescing lists and their checks)."""

    def __init__(self, start: int, end: int, allocated: Extents = ()) -> None:
        from fusezfs.engine.allocator import FreeSpace  # (allocator.py imports this module)
        self.start, self.end = start, end
        self.shift = MIN_WINDOW_SHIFT
        while (end >> self.shift) > WINDOWS:
            self.shift += 1
        self.set = FreeSpace(start, end)
        self.set.starts = [o for o, _n in allocated]
        self.set.lens = [n for _o, n in allocated]
        self.windows: dict[int, _Run] = {}
        self.groups: dict[int, _Run] = {}
        self.dirty: set[int] = {o >> self.shift for o in self.set.starts}

    def add(self, off: int, size: int) -> None:
        """[off, off + size) is allocated now (it was not)."""
        starts, shift = self.set.starts, self.shift
        i = bisect_right(starts, off)
        # the windows of the extent it starts and of the neighbours it may merge with
        self.dirty.update(starts[k] >> shift for k in (i - 1, i) if 0 <= k < len(starts))
        self.dirty.add(off >> shift)
        try:
            self.set.free(off, size)
        except AssertionError:
            raise AssertionError(f"space map: [{off:#x}, {off + size:#x}) allocated "
                                 "twice") from None

    def remove(self, off: int, size: int) -> None:
        """[off, off + size) is free in the map now (all of it was allocated)."""
        starts = self.set.starts
        j = bisect_right(starts, off) - 1
        if not self.set.is_free(off, size):
            raise AssertionError(f"space map: free of [{off:#x}, {off + size:#x}) "
                                 "that is not allocated")
        self.dirty.add(starts[j] >> self.shift)
        self.dirty.add((off + size) >> self.shift)
        self.set._take(j, off, size)

    def extents(self) -> Extents:
        return self.set.extents()

    def _encode_window(self, w: int) -> _Run | None:
        lo, hi = w << self.shift, (w + 1) << self.shift
        starts, lens = self.set.starts, self.set.lens
        i, j = bisect_left(starts, lo), bisect_left(starts, hi)
        if i == j:
            return None
        body = bytearray()
        _varint(lens[i] // SECTOR, body)
        for k in range(i + 1, j):
            _varint((starts[k] - starts[k - 1] - lens[k - 1]) // SECTOR, body)
            _varint(lens[k] // SECTOR, body)
        return _Run(j - i, starts[i], starts[j - 1] + lens[j - 1], bytes(body))

    def _join_group(self, g: int) -> _Run | None:
        runs = [self.windows[w] for w in range(g * GROUP, (g + 1) * GROUP) if w in self.windows]
        if not runs:
            return None
        parts, _end = _join(runs[1:], runs[0].last_end)
        return _Run(sum(r.count for r in runs), runs[0].first, runs[-1].last_end,
                    runs[0].body + b"".join(parts))

    def section(self, vdev: int) -> list[bytes]:
        """This vdev's section of the map: re-encode the dirty windows, re-join their groups,
        join the groups."""
        for w in self.dirty:
            win = self._encode_window(w)
            if win is None:
                self.windows.pop(w, None)
            else:
                self.windows[w] = win
        for g in {w // GROUP for w in self.dirty}:
            run = self._join_group(g)
            if run is None:
                self.groups.pop(g, None)
            else:
                self.groups[g] = run
        self.dirty.clear()
        parts, _end = _join([self.groups[g] for g in sorted(self.groups)], 0)
        return [_SEC.pack(vdev, len(self.set.starts))] + parts


class MapView:
    """The allocated extents of every top-level vdev (see the module comment)."""

    def __init__(self, ranges: dict[int, tuple[int, int]]) -> None:
        self.vdevs = {v: VdevMap(s, e) for v, (s, e) in ranges.items()}

    def load(self, allocated: dict[int, Extents]) -> None:
        self.vdevs = {v: VdevMap(m.start, m.end, allocated.get(v, []))
                      for v, m in self.vdevs.items()}

    def add_vdev(self, vdev: int, start: int, end: int) -> None:
        self.vdevs[vdev] = VdevMap(start, end)

    def add(self, vdev: int, off: int, size: int) -> None:
        self.vdevs[vdev].add(off, size)

    def remove(self, vdev: int, off: int, size: int) -> None:
        self.vdevs[vdev].remove(off, size)

    def extents(self) -> dict[int, Extents]:
        return {v: m.extents() for v, m in self.vdevs.items()}

    def encode(self) -> bytes:
        """The space map's payload: `spacemap.encode(self.extents())`, byte for byte."""
        parts = [_HEAD.pack(MAGIC, VERSION, len(self.vdevs))]
        for v in sorted(self.vdevs):
            parts += self.vdevs[v].section(v)
        return b"".join(parts)
