"""Copies of a block kept apart: metadata (two copies) and data under copies=2|3 on one device
land at least an eighth of it apart, so that no single damaged region up to that size holds
every copy of a block; and the pool survives any one zeroed 1 MiB region."""
from __future__ import annotations

import random

import pytest

from fusezfs.engine.allocator import DITTO_SHIFT, Allocator, FreeSpace
from fusezfs.engine.blocks import Policy
from fusezfs.engine.devices import MemoryDevice
from fusezfs.formats.bp import BT_DATA, CKSUM_XXH3_128, COMP_OFF, decode_bp, encode_bp
from fusezfs.engine.pool import Pool
from fusezfs.engine.tree import REF_BLOCK
from fusezfs.engine.verify import verify

MiB = 1 << 20


def every_block(pool: Pool) -> list:
    seen, out = set(), [pool.spacemap_bp]
    for tree in [pool.mos] + [pool.objset(n, create=False) for n in pool.objset_names()]:
        out += [bp for kind, bp in tree.walk(seen) if kind in ("node", "block")]
    return out


def test_allocate_apart_keeps_its_distance_and_its_own_cursor():
    space = FreeSpace(0, 8 * MiB)
    firsts = [space.allocate(4096) for _ in range(50)]
    seconds = [space.allocate_apart(4096, [(o, 4096)], MiB) for o in firsts]
    assert all(abs(s - f) >= MiB for f, s in zip(firsts, seconds))
    assert seconds == sorted(seconds) and seconds[1] - seconds[0] == 4096   # sequential
    # no room that far away: None, and nothing was taken
    small = FreeSpace(0, 64 * 1024)
    off = small.allocate(4096)
    before = small.free_bytes
    assert small.allocate_apart(4096, [(off, 4096)], MiB) is None and small.free_bytes == before
    # a full allocator falls back to any free place rather than failing the write
    alloc = Allocator({0: (0, 64 * 1024)})
    a = alloc.allocate(4096)
    b = alloc.allocate(4096, [a])
    assert b.offset != a.offset


@pytest.mark.parametrize("copies", [2, 3])
def test_copies_on_one_device_are_an_eighth_apart(copies):
    pool = Pool.create("tank", [("file", [MemoryDevice(64 * MiB)])])
    tree = pool.objset(b"t")
    rng = random.Random(copies)
    for i in range(200):
        bp = pool.blocks.write(rng.randbytes(rng.randrange(1, 20000)), BT_DATA,
                               Policy(COMP_OFF, 0, CKSUM_XXH3_128, copies))
        tree.put(b"k%d" % i, encode_bp(bp), REF_BLOCK)
    pool.sync()
    distance = pool.tops[0].size >> DITTO_SHIFT
    blocks = every_block(pool)
    assert sum(len(bp.dvas) > 1 for bp in blocks) > 200
    for bp in blocks:
        offs = sorted(d.offset for d in bp.dvas)
        assert all(b - a >= distance for a, b in zip(offs, offs[1:])), bp
    assert verify(pool).ok


def test_no_zeroed_mebibyte_loses_a_block_of_metadata_or_copies2_data():
    """Zero each 1 MiB region of a 64 MiB pool file in turn (labels aside): import works,
    every block still has a good copy and verify repairs the pool back to clean."""
    dev = MemoryDevice(64 * MiB)
    pool = Pool.create("tank", [("file", [dev])])
    tree = pool.objset(b"t")
    rng = random.Random(1)
    want = {}
    for i in range(300):
        data = rng.randbytes(rng.randrange(1, 30000))
        tree.put(b"k%d" % i, encode_bp(pool.blocks.write(data, BT_DATA,
                                                          Policy(copies=2))), REF_BLOCK)
        want[b"k%d" % i] = data
    pool.close()
    image = bytes(dev.data)
    start, end = 512 * 1024, 64 * MiB - 512 * 1024       # between the two labels
    for region in range(start, end, MiB):
        dev.data[:] = image
        dev.data[region:region + MiB] = bytes(MiB)
        pool = Pool.open([dev])
        t = pool.objset(b"t", create=False)
        got = {k: pool.blocks.read(decode_bp(v)) for k, v, _r in t.scan_items()}
        assert got == want, region
        assert verify(pool).ok, region
        pool.close()
