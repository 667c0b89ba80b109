"""The dataset layer as a library: snapshots, clones, destroy, rollback, promote, and space by
birth time. Every test ends with the consistency checker (reachability + space invariants)."""
from __future__ import annotations

import random

import pytest

from fusezfs.engine.blocks import Policy
from fusezfs.dsl.datasets import DatasetError, Datasets
from fusezfs.engine.devices import MemoryDevice
from fusezfs.formats.bp import decode_bp, encode_bp
from fusezfs.engine.pool import Pool
from fusezfs.engine.tree import REF_BLOCK
from fusezfs.engine.verify import verify

MiB = 1 << 20


@pytest.fixture
def dsl():
    devs = [MemoryDevice(64 * MiB, "d0")]
    pool = Pool.create("tank", [("file", devs)])
    d = Datasets(pool)
    yield d
    # the consistency checker after every test
    pool.sync()
    assert d.check() == []
    report = verify(pool)
    assert report.ok, report.faults
    again = Pool.open([MemoryDevice(devs[0].size, "d0", bytes(devs[0].data))])
    assert Datasets(again).check() == []
    assert verify(again).ok


def write(dsl: Datasets, name: str, key: bytes, data: bytes) -> None:
    rec = dsl.get(name)
    bp = dsl.write_block(rec, data, Policy())
    dsl.tree(rec).put(key, encode_bp(bp), REF_BLOCK)


def read(dsl: Datasets, name: str, key: bytes) -> bytes | None:
    raw = dsl.tree(dsl.get(name)).get(key)
    return None if raw is None else dsl.pool.blocks.read(decode_bp(raw))


def blob(seed: int, n: int = 64 * 1024) -> bytes:
    return random.Random(seed).randbytes(n)


def test_create_names_and_errors(dsl):
    dsl.create("tank/a")
    dsl.create("tank/a/b/c", parents=True)
    assert [dsl.name(r.id) for r in dsl.descendants(1)] == ["tank/a", "tank/a/b", "tank/a/b/c"]
    with pytest.raises(DatasetError, match="dataset already exists"):
        dsl.create("tank/a")
    with pytest.raises(DatasetError, match="parent does not exist"):
        dsl.create("tank/x/y")
    with pytest.raises(DatasetError, match="invalid character"):
        dsl.create("tank/a!")


def test_snapshot_holds_the_content_of_its_time(dsl):
    dsl.create("tank/fs")
    write(dsl, "tank/fs", b"f", b"one" * 1000)
    dsl.snapshot(["tank/fs@s1"])
    write(dsl, "tank/fs", b"f", b"two" * 1000)
    dsl.snapshot(["tank/fs@s2"])
    write(dsl, "tank/fs", b"f", b"three" * 1000)
    assert read(dsl, "tank/fs@s1", b"f") == b"one" * 1000
    assert read(dsl, "tank/fs@s2", b"f") == b"two" * 1000
    assert read(dsl, "tank/fs", b"f") == b"three" * 1000
    assert [s.component for s in dsl.snapshots(dsl.get("tank/fs").id)] == ["s1", "s2"]


def test_snapshot_is_o1_and_atomic_across_datasets(dsl):
    dsl.create("tank/a")
    dsl.create("tank/b")
    for i in range(50):
        write(dsl, "tank/a", b"%d" % i, blob(i, 8192))
    dsl.pool.sync()
    before = dsl.pool.allocated
    snaps = dsl.snapshot(["tank/a@x", "tank/b@x"])
    assert len({s.createtxg for s in snaps}) == 1
    assert dsl.pool.allocated - before < 64 * 1024       # metadata only
    assert dsl.used(dsl.get("tank/a@x")) == 0


def test_space_by_birth_time(dsl):
    dsl.create("tank/fs")
    for i in range(8):
        write(dsl, "tank/fs", b"%d" % i, blob(i))
    dsl.pool.sync()
    fs = dsl.get("tank/fs")
    full = fs.refer
    dsl.snapshot(["tank/fs@a"])
    for i in range(4):                                   # overwrite half
        write(dsl, "tank/fs", b"%d" % i, blob(100 + i))
    dsl.pool.sync()
    snap = dsl.get("tank/fs@a")
    assert snap.refer == full
    assert dsl.used(snap) >= 4 * 64 * 1024               # the overwritten half is only in @a
    assert fs.used_snap == dsl.used(snap)
    assert dsl.used(fs) == fs.used_head + fs.used_snap
    freed_expected = fs.used_snap
    before = dsl.pool.free
    dsl.destroy_snapshot(snap)
    dsl.pool.sync()
    dsl.pool.sync()
    assert dsl.pool.free - before >= freed_expected
    assert fs.used_snap == 0


def test_destroying_middle_snapshot_frees_only_what_it_alone_held(dsl):
    dsl.create("tank/fs")
    write(dsl, "tank/fs", b"a", blob(1))
    dsl.snapshot(["tank/fs@1"])
    write(dsl, "tank/fs", b"b", blob(2))                 # in @2 and head... then overwritten
    dsl.snapshot(["tank/fs@2"])
    write(dsl, "tank/fs", b"b", blob(3))
    write(dsl, "tank/fs", b"a", blob(4))
    dsl.snapshot(["tank/fs@3"])
    s2 = dsl.get("tank/fs@2")
    alone = dsl.used(s2)
    assert alone >= 64 * 1024                            # blob(2) is only in @2
    dsl.destroy_snapshot(s2)
    assert read(dsl, "tank/fs@1", b"a") == blob(1)
    assert read(dsl, "tank/fs@3", b"b") == blob(3)


def test_clone_chain_reads_right_data_at_each_level(dsl):
    dsl.create("tank/base")
    write(dsl, "tank/base", b"layer0", b"base" * 100)
    dsl.snapshot(["tank/base@s"])
    name = "tank/base"
    for level in range(1, 4):
        clone = f"tank/l{level}"
        dsl.clone(f"{name}@s", clone)
        write(dsl, clone, b"layer%d" % level, b"L%d" % level * 100)
        dsl.snapshot([f"{clone}@s"])
        name = clone
    for level in range(1, 4):
        for k in range(4):
            got = read(dsl, f"tank/l{level}", b"layer%d" % k)
            assert got == ((b"base" * 100 if k == 0 else b"L%d" % k * 100) if k <= level else None)
    assert read(dsl, "tank/base", b"layer1") is None
    assert dsl.get("tank/l1").used_head < 4096 * 4        # a clone shares its origin's blocks


def test_snapshot_with_clones_cannot_be_destroyed(dsl):
    dsl.create("tank/fs")
    write(dsl, "tank/fs", b"x", blob(1))
    dsl.snapshot(["tank/fs@s"])
    dsl.clone("tank/fs@s", "tank/c")
    with pytest.raises(DatasetError, match="snapshot has dependent clones") as e:
        dsl.destroy_snapshot(dsl.get("tank/fs@s"))
    assert e.value.detail == ["tank/c"]
    assert read(dsl, "tank/c", b"x") == blob(1)
    dsl.destroy_filesystem(dsl.get("tank/c"))
    dsl.destroy_snapshot(dsl.get("tank/fs@s"))


def test_rollback_frees_what_was_written_since(dsl):
    dsl.create("tank/fs")
    write(dsl, "tank/fs", b"x", blob(1))
    dsl.snapshot(["tank/fs@s"])
    dsl.pool.sync()
    base = dsl.pool.allocated
    write(dsl, "tank/fs", b"x", blob(2))
    write(dsl, "tank/fs", b"y", blob(3))
    dsl.pool.sync()
    assert dsl.pool.allocated > base + 100_000
    dsl.rollback(dsl.get("tank/fs"))
    dsl.pool.sync()
    dsl.pool.sync()
    assert read(dsl, "tank/fs", b"x") == blob(1)
    assert read(dsl, "tank/fs", b"y") is None
    assert dsl.pool.allocated <= base + 32 * 1024


def test_promote_swaps_origin_and_moves_snapshots(dsl):
    dsl.create("tank/fs")
    write(dsl, "tank/fs", b"x", blob(1))
    dsl.snapshot(["tank/fs@a"])
    write(dsl, "tank/fs", b"y", blob(2))
    dsl.snapshot(["tank/fs@b"])
    write(dsl, "tank/fs", b"z", blob(3))
    dsl.snapshot(["tank/fs@c"])
    dsl.clone("tank/fs@b", "tank/c")
    write(dsl, "tank/c", b"w", blob(4))
    dsl.promote(dsl.get("tank/c"))
    assert [s.component for s in dsl.snapshots(dsl.get("tank/c").id)] == ["a", "b"]
    assert [s.component for s in dsl.snapshots(dsl.get("tank/fs").id)] == ["c"]
    assert dsl.get("tank/c").origin == 0
    assert dsl.name(dsl.get("tank/fs").origin) == "tank/c@b"
    assert read(dsl, "tank/c@a", b"x") == blob(1)
    assert read(dsl, "tank/fs", b"z") == blob(3)
    assert read(dsl, "tank/c", b"w") == blob(4)
    # now the old parent can be destroyed without touching the promoted clone
    dsl.destroy_snapshot(dsl.get("tank/fs@c"))
    dsl.destroy_filesystem(dsl.get("tank/fs"))
    assert read(dsl, "tank/c@b", b"y") == blob(2)


def test_rename_and_holds(dsl):
    dsl.create("tank/a")
    dsl.create("tank/b")
    dsl.create("tank/a/child")
    dsl.rename(dsl.get("tank/a"), "tank/b/a2")
    assert dsl.lookup("tank/b/a2/child") is not None and dsl.lookup("tank/a") is None
    with pytest.raises(DatasetError, match="descendant"):
        dsl.rename(dsl.get("tank/b"), "tank/b/a2/x")
    dsl.snapshot(["tank/b@s"])
    snap = dsl.get("tank/b@s")
    dsl.hold(snap, "keep")
    with pytest.raises(DatasetError, match="dataset is busy"):
        dsl.destroy_snapshot(snap)
    assert not dsl.destroy_snapshot(snap, defer=True)
    assert snap.defer_destroy
    dsl.release(snap, "keep")                            # the deferred destroy happens now
    assert dsl.lookup("tank/b@s") is None
    dsl.snapshot(["tank/b@t"])
    dsl.rename(dsl.get("tank/b@t"), "tank/b@u")
    assert dsl.lookup("tank/b@u") is not None


def test_random_histories_keep_the_invariants(dsl):
    rng = random.Random(7)
    dsl.create("tank/fs")
    snaps: list[str] = []
    for step in range(60):
        r = rng.random()
        if r < 0.55:
            write(dsl, "tank/fs", b"%d" % rng.randrange(12), blob(step, rng.randrange(1, 20000)))
        elif r < 0.65:
            dsl.tree(dsl.get("tank/fs")).delete(b"%d" % rng.randrange(12))
        elif r < 0.8:
            name = f"tank/fs@s{step}"
            dsl.snapshot([name])
            snaps.append(name)
        elif r < 0.9 and snaps:
            victim = dsl.get(snaps.pop(rng.randrange(len(snaps))))
            dsl.pool.sync()                                  # space is settled at sync
            alone = dsl.used(victim)
            assert dsl.destroy_snapshot(victim) == alone    # used = what destroying it frees
        elif snaps:
            dsl.pool.sync()
        if step % 10 == 9:
            dsl.pool.sync()
            assert dsl.check() == []
    dsl.pool.sync()
    fs = dsl.get("tank/fs")
    # destroying every snapshot frees exactly usedbysnapshots
    expected = fs.used_snap
    free_before = dsl.pool.free
    freed = sum(dsl.destroy_snapshot(dsl.get(name)) for name in snaps)
    assert freed == expected                   # exactly usedbysnapshots, no more, no less
    dsl.pool.sync()
    dsl.pool.sync()
    assert dsl.pool.free - free_before >= expected
    assert fs.used_snap == 0
