"""The space map kept for the next txg (fusezfs/engine/mapview.py) against the one computed from the
allocator's free lists: byte for byte, after random allocations, frees (deferred and not),
txg releases, new vdevs and reloads; and a pool's commits after many datasets."""
from __future__ import annotations

import random

import pytest

from fusezfs.engine import mapview
from fusezfs.engine.allocator import Allocator, NoSpace
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
        monkeypatch.setattr(mapview, "GROUP", 4)
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
    from fusezfs.dsl.datasets import Datasets
    from fusezfs.engine.devices import FileDevice
    from fusezfs.engine.pool import Pool
    from fusezfs.engine.verify import verify
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


def _pool(tmp_path, name="cc"):
    from fusezfs.engine.devices import FileDevice
    from fusezfs.engine.pool import Pool
    path = str(tmp_path / f"{name}.img")
    with open(path, "wb") as f:
        f.truncate(256 * MiB)
    return Pool.create(name, [("file", [FileDevice(path)])])


def test_reservations_follow_changes_without_walks(tmp_path, monkeypatch):
    """Creating datasets with no reservation walks no dataset list; a reservation set, moved by
    a rename, inherited away or destroyed with its dataset changes what the pool has free."""
    from fusezfs.dsl import properties
    from fusezfs.dsl.datasets import Datasets
    pool = _pool(tmp_path)
    with pool.lock:
        dsl = Datasets(pool)
        for i in range(5):
            dsl.create(f"cc/a{i}")
        free0 = properties.pool_available(dsl)
        walks = []
        real = Datasets.descendants
        monkeypatch.setattr(Datasets, "descendants",
                            lambda self, ds_id: walks.append(ds_id) or real(self, ds_id))
        for i in range(40):
            dsl.create(f"cc/b{i}")
            properties.pool_available(dsl)
        dsl.snapshot(["cc/b1@s"])
        dsl.clone("cc/b1@s", "cc/c1")
        properties.pool_available(dsl)
        assert walks == []
        properties.set_props(dsl, dsl.get("cc/b3"), {"reservation": str(8 * MiB)})
        assert properties.pool_available(dsl) <= free0 - 7 * MiB
        properties.set_props(dsl, dsl.get("cc/b4"), {"refreservation": str(4 * MiB)})
        assert properties.pool_available(dsl) <= free0 - 11 * MiB
        properties.inherit(dsl, dsl.get("cc/b3"), "reservation")
        assert free0 - 5 * MiB <= properties.pool_available(dsl) <= free0 - 3 * MiB
        dsl.destroy_filesystem(dsl.get("cc/b4"))
        assert properties.pool_available(dsl) >= free0 - MiB
        rec = dsl.create("cc/r", {"reservation": str(2 * MiB)})
        assert properties.pool_available(dsl) <= free0 - MiB
        assert [r.id for r in properties.reserving(dsl)] == [rec.id]
    pool.close()


def test_commit_writes_only_trees_that_changed(tmp_path, monkeypatch):
    """A txg that changed one dataset among many syncs that one tree (and the MOS), not every
    open tree; what it wrote survives a reopen."""
    from fusezfs.dsl.datasets import Datasets
    from fusezfs.engine.devices import FileDevice
    from fusezfs.engine.pool import Pool
    from fusezfs.engine.tree import Tree
    pool = _pool(tmp_path)
    with pool.lock:
        dsl = Datasets(pool)
        recs = [dsl.create(f"cc/d{i}") for i in range(30)]
        for rec in recs:
            dsl.tree(rec).put(b"k", b"first")
        pool.sync()
        asked, synced = [], []
        real_sync, real_dirty = Tree.sync, Tree.dirty
        monkeypatch.setattr(Tree, "sync", lambda self: synced.append(self) or real_sync(self))
        monkeypatch.setattr(Tree, "dirty", property(
            lambda self: asked.append(self) or real_dirty.fget(self)))
        dsl.tree(recs[7]).put(b"k", b"second")
        pool.sync()
        monkeypatch.undo()
        mine = dsl.tree(recs[7])
        others = {id(dsl.tree(r)) for r in recs if r is not recs[7]}
        assert mine in synced
        assert not [t for t in asked + synced if id(t) in others]
    pool.close()
    pool = Pool.open([FileDevice(str(tmp_path / "cc.img"))])
    with pool.lock:
        dsl = Datasets(pool)
        assert dsl.tree(dsl.get("cc/d7")).get(b"k") == b"second"
        assert dsl.tree(dsl.get("cc/d8")).get(b"k") == b"first"
    pool.close()


def test_leaf_reencoded_from_its_old_bytes_is_the_same_bytes():
    """formats.node.encode_leaf_from: after inserts, deletes and value changes anywhere in a
    leaf, the bytes are encode_leaf's exactly."""
    import bisect
    from fusezfs.formats.node import encode_leaf, encode_leaf_from
    rng = random.Random(5)
    for trial in range(2000):
        keys = sorted({rng.randbytes(rng.randint(1, 12)) for _ in range(rng.randint(1, 60))})
        vals = [rng.randbytes(rng.randint(0, 20)) for _ in keys]
        refs = [rng.choice([0, 0, 1, 2]) for _ in keys]
        raw = encode_leaf(keys, vals, refs)
        k2, v2, r2 = keys.copy(), vals.copy(), refs.copy()
        for _ in range(rng.randint(0, 4)):
            op = rng.random()
            if op < 0.4:
                k = rng.randbytes(rng.randint(1, 12))
                if k not in k2:
                    i = bisect.bisect(k2, k)
                    k2.insert(i, k)
                    v2.insert(i, rng.randbytes(rng.randint(0, 20)))
                    r2.insert(i, 0)
            elif op < 0.7 and len(k2) > 1:
                i = rng.randrange(len(k2))
                del k2[i], v2[i], r2[i]
            elif k2:
                i = rng.randrange(len(k2))
                v2[i], r2[i] = rng.randbytes(rng.randint(0, 20)), rng.choice([0, 1])
        assert encode_leaf_from(k2, v2, r2, (raw, keys, vals, refs)) == \
            encode_leaf(k2, v2, r2), trial


def test_a_commit_reencodes_only_the_entries_that_changed(tmp_path, monkeypatch):
    """A leaf written in one txg and changed by one put in the next is written from its old
    bytes (a few entries packed, not all of them), and reads back whole after a reopen."""
    from fusezfs.dsl.datasets import Datasets
    from fusezfs.engine.devices import FileDevice
    from fusezfs.formats import node as fmt
    from fusezfs.engine.pool import Pool
    pool = _pool(tmp_path)
    with pool.lock:
        dsl = Datasets(pool)
        tree = dsl.tree(dsl.create("cc/big"))
        for i in range(150):
            tree.put(b"key%04d" % i, b"v" * 40)
        pool.sync()
        packed = []
        real_full, real_from = fmt.encode_leaf, fmt.encode_leaf_from
        monkeypatch.setattr(fmt, "encode_leaf", lambda k, v, r: packed.append(len(k)) or
                            real_full(k, v, r))
        monkeypatch.setattr(fmt, "encode_leaf_from", lambda k, v, r, b: packed.append(
            -1) or real_from(k, v, r, b))
        tree.put(b"key0075", b"changed")
        pool.sync()
        monkeypatch.undo()
        assert -1 in packed                         # the dataset's leaf, from its old bytes
        assert max(packed) < 150                    # no leaf of it packed whole
    pool.close()
    pool = Pool.open([FileDevice(str(tmp_path / "cc.img"))])
    with pool.lock:
        t = Datasets(pool).tree(Datasets(pool).get("cc/big"))
        assert t.get(b"key0075") == b"changed" and t.get(b"key0149") == b"v" * 40
    pool.close()
