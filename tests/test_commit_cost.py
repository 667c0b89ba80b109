"""The space map kept for the next txg (fusezfs/mapview.py) against the one computed from the
allocator's free lists: byte for byte, after random allocations, frees (deferred and not),
txg releases, new vdevs and reloads; and a pool's commits after many datasets."""
from __future__ import annotations

import random

import pytest

from fusezfs import mapview
from fusezfs.allocator import Allocator, NoSpace
from fusezfs.formats import spacemap

MiB = 1 << 20


def reference(alloc: Allocator) -> bytes:
    return spacemap.encode(alloc.allocated_extents())


@pytest.mark.parametrize("seed", range(6))
def test_view_matches_free_lists(seed, monkeypatch):
    rng = random.Random(seed)
    if seed % 2:            # small windows: many of them, extents crossing their edges
        monkeypatch.setattr(mapview, "MIN_WINDOW_SHIFT", 12)
        monkeypatch.setattr(mapview, "WINDOWS", 64)
    alloc = Allocator({0: (4 * MiB, 20 * MiB), 1: (4 * MiB, 12 * MiB)})
    live = []
    for step in range(1500):
        r = rng.random()
        if r < 0.5 or not live:
            size = rng.choice([512, 4096, 8192, 65536, rng.randrange(1, 300_000)])
            others = [live[-1]] if live and rng.random() < 0.2 else []
            try:
                live.append(alloc.allocate(size, others))
            except NoSpace:
                pass
        elif r < 0.85:
            d = live.pop(rng.randrange(len(live)))
            alloc.free(d, deferred=rng.random() < 0.7)
        elif r < 0.9:
            d = alloc.allocate_low(rng.choice([4096, 8192]))
            if d is not None:
                live.append(d)
        elif r < 0.97:
            alloc.begin_release()
            alloc.finish_release(durable=rng.random() < 0.9)
        elif r < 0.98 and 2 not in alloc.spaces:
            alloc.add_vdev(2, 4 * MiB, 8 * MiB)
        else:
            alloc.load(alloc.allocated_extents())       # an export and import: the pending
        if step % 50 == 0 or step > 1450:
            assert alloc.view.encode() == reference(alloc), f"step {step}"
    assert alloc.view.extents() == alloc.allocated_extents()


def test_view_rejects_what_the_map_cannot_hold():
    alloc = Allocator({0: (MiB, 8 * MiB)})
    d = alloc.allocate(4096)
    with pytest.raises(AssertionError):
        alloc.view.add(0, d.offset, 512)                # allocated twice
    alloc.free(d, deferred=True)
    with pytest.raises(AssertionError):
        alloc.view.remove(0, d.offset, 4096)            # freed twice


def test_commits_write_the_view(tmp_path):
    """A pool's commits write the view's bytes, which stay the free lists' after hundreds of
    datasets and a reopen; verify (which compares them too) is clean."""
    from fusezfs.datasets import Datasets
    from fusezfs.devices import FileDevice
    from fusezfs.pool import Pool
    from fusezfs.verify import verify
    path = str(tmp_path / "p.img")
    with open(path, "wb") as f:
        f.truncate(256 * MiB)
    pool = Pool.create("mv", [("file", [FileDevice(path)])])
    with pool.lock:
        dsl = Datasets(pool)
        for i in range(60):
            rec = dsl.create(f"mv/d{i}")
            dsl.tree(rec).put(b"k", b"v" * (i * 97 % 5000))
            if i % 3 == 0:
                dsl.snapshot([f"mv/d{i}@s"])
            if i % 7 == 0 and i and (i - 1) % 3:
                dsl.destroy_filesystem(dsl.get(f"mv/d{i - 1}"))
            pool.sync()
            assert pool.allocator.view.encode() == reference(pool.allocator)
        on_disk = spacemap.decode(pool.blocks.read(pool.spacemap_bp, cache=False))
        assert on_disk == pool.allocator.view.extents()
    pool.close()
    pool = Pool.open([FileDevice(path)])
    with pool.lock:
        assert pool.allocator.view.encode() == reference(pool.allocator)
        assert not verify(pool).faults
    pool.close()
