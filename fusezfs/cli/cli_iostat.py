"""`zpool iostat [-Hpv] [pool] ...`: each pool's (with -v, each vdev's) capacity, in the
layout of OpenZFS 2.1.11's zpool iostat (zpool_main.c: print_iostat_header, print_vdev_stats).

Capacity is real: a top-level vdev's allocated and free bytes come from the allocator (frees
still held back for rewind count as allocated), the pool's are their sums, and leaves of a mirror show none (as in OpenZFS, only top-level vdevs
have capacity). The operations and bandwidth columns are OpenZFS's I/O counters since the pool
was imported; fusezfs keeps no such counters, so they show '-' (zpool's "not applicable"),
never made-up numbers, and an interval (`zpool iostat 5`) is refused for the same reason.
Scripts that read the vdev names out of `zpool iostat -v` (the test suite's get_disklist) get
them in OpenZFS's order and indentation.
"""
from __future__ import annotations

from fusezfs.errors import Failed
from fusezfs.cli.common import nicenum, parse
from fusezfs.cli.cli_pool import for_each_pool, imported_names
from fusezfs.engine.pool import Pool

TOP = (("capacity", 2), ("operations", 2), ("bandwidth", 2))
BOTTOM = ("alloc", "free", "read", "write", "read", "write")


def _labels(labels: list[tuple[str, int]], width: int) -> str:
    """print_iostat_labels: each label centred (OpenZFS's way) over its columns."""
    out = ""
    for name, columns in labels:
        span = width * columns + 2 * (columns - 1)
        start = max(0, span // columns - len(name) // columns)
        out += "  " + " " * start + name + " " * max(0, span - start - len(name))
    return out


def _rows(pool: Pool, verbose: bool) -> list[tuple[str, int, int | None, int | None]]:
    """(name, depth, alloc, size) of the pool and, with -v, of its vdevs."""
    spaces = pool.allocator.spaces
    tops = []
    for vid, top in sorted(pool.tops.items()):
        space = spaces[vid]
        size = space.end - space.start
        tops.append((top, size - space.free_bytes, size))
    # the pool's line is the sum of its top-level vdevs', as OpenZFS's root vdev is
    rows = [(pool.name, 0, sum(a for _, a, _ in tops), sum(s for _, _, s in tops))]
    if verbose:
        for top, alloc, size in tops:
            if top.kind == "mirror":
                rows.append((f"mirror-{top.id}", 2, alloc, size))
                rows += [(leaf.path, 4, None, None) for leaf in top.leaves]
            else:
                rows += [(leaf.path, 2, alloc, size) for leaf in top.leaves]
    return rows


def cmd_iostat(args: list[str]) -> int:
    opts, names = parse(args, "Hpv")
    flags = {o for o, _ in opts}
    scripted, literal, verbose = "-H" in flags, "-p" in flags, "-v" in flags
    if names and names[-1].replace(".", "", 1).isdigit():
        raise Failed("zpool iostat: intervals are not supported: fusezfs keeps no I/O "
                     "statistics to sample")
    pools: list[list[tuple[str, int, int | None, int | None]]] = []
    status = for_each_pool(names or imported_names(),
                           lambda pool: pools.append(_rows(pool, verbose)))
    if not pools:
        if not names:
            print("no pools available")
        return status
    na = "0" if literal else "-"
    col = 15 if literal else 5                  # default_column_width

    def num(n: int | None) -> str:
        return na if n is None else str(n) if literal else nicenum(n)

    width = max(len("pool"), *(len(name) + depth for rows in pools
                               for name, depth, _, _ in rows))
    dashes = "-" * width + ("  " + "-" * col) * len(BOTTOM)
    if not scripted:
        print(" " * width + _labels(list(TOP), col))
        print(f"{'pool':<{width}}" + _labels([(b, 1) for b in BOTTOM], col))
        print(dashes)
    for rows in pools:
        for name, depth, alloc, size in rows:
            cells = [num(alloc), num(None if size is None else size - alloc)] + [na] * 4
            if scripted:
                print("\t".join([name] + cells))
            else:
                label = " " * depth + name
                print(f"{label:<{width}}" + "".join(f"  {c:>{col}}" for c in cells))
        if verbose and not scripted:
            print(dashes)
    return status
