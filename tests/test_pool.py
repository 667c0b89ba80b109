"""The pool as a library: create, import, txgs, trees in the MOS, copies, mirrors, stripes,
deferred frees, the dirty budget, verify."""
from __future__ import annotations

import dataclasses
import random

import pytest

from fusezfs.engine.blocks import ChecksumError, Policy
from fusezfs.engine.devices import FileDevice, MemoryDevice
from fusezfs.formats.bp import BT_DATA, COMP_ZSTD, decode_bp, encode_bp
from fusezfs.engine.allocator import REWIND_TXGS
from fusezfs.engine.pool import Pool, PoolError
from fusezfs.engine.tree import REF_BLOCK
from fusezfs.engine.verify import verify

MiB = 1 << 20


def mem(n: int = 1, size: int = 16 * MiB) -> list[MemoryDevice]:
    return [MemoryDevice(size, f"mem{i}") for i in range(n)]


def reopen(devs) -> Pool:
    return Pool.open([MemoryDevice(d.size, d.path, bytes(d.data)) for d in devs])


def put_block(pool: Pool, tree, key: bytes, data: bytes, policy: Policy = Policy()) -> None:
    tree.put(key, encode_bp(pool.blocks.write(data, BT_DATA, policy)), REF_BLOCK)


def read_block(pool: Pool, tree, key: bytes) -> bytes:
    return pool.blocks.read(decode_bp(tree.get(key)))


def test_create_sync_reopen_round_trip():
    devs = mem()
    pool = Pool.create("tank", [("file", devs)], {"comment": "hello"})
    tree = pool.objset(b"data")
    for i in range(500):
        tree.put(b"k%05d" % i, b"v" * (i % 50))
    put_block(pool, tree, b"blk", b"payload " * 1000, Policy(COMP_ZSTD, 3))
    txg = pool.sync()
    assert verify(pool).ok
    pool.close()
    again = Pool.open(devs)
    assert again.name == "tank" and again.synced_txg == txg
    assert again.get_prop("comment") == "hello"
    tree = again.objset(b"data", create=False)
    assert tree.get(b"k00499") == b"v" * 49
    assert read_block(again, tree, b"blk") == b"payload " * 1000
    assert again.objset_names() == [b"data"]
    assert verify(again).ok


def test_unsynced_changes_are_lost_and_synced_ones_kept():
    devs = mem()
    pool = Pool.create("tank", [("file", devs)])
    tree = pool.objset(b"t")
    tree.put(b"a", b"1")
    pool.sync()
    tree.put(b"b", b"2")            # never synced
    image = reopen(devs)             # what a crash now would leave
    t2 = image.objset(b"t", create=False)
    assert t2.get(b"a") == b"1" and t2.get(b"b") is None
    assert verify(image).ok


def test_empty_txg_writes_nothing():
    devs = mem()
    pool = Pool.create("tank", [("file", devs)])
    txg = pool.sync()
    before = bytes(devs[0].data)
    assert pool.sync() == txg
    assert bytes(devs[0].data) == before


def test_frees_are_deferred_until_the_txg_is_durable():
    """A block the committed txg holds, replaced in the open one, is freed by that txg's sync;
    it must stay allocated until the sync's uberblock is durable (the committed txg is what a
    crash before then imports), and be free once it is."""
    devs = mem()
    pool = Pool.create("tank", [("file", devs)])
    tree = pool.objset(b"t")
    put_block(pool, tree, b"x", b"old" * 1000)
    pool.sync()
    old = decode_bp(tree.get(b"x")).dvas[0]
    space = pool.allocator.spaces[old.vdev]
    put_block(pool, tree, b"x", b"new" * 1000)      # frees the old block at the next sync
    put_block(pool, tree, b"x", b"newer" * 1000)    # frees "new", born in the open txg
    new = decode_bp(tree.get(b"x")).dvas[0]
    seen = []
    write_uberblock = pool._write_uberblock

    def check_then_write(ub):
        seen.append(space.is_free(old.offset, old.asize))
        write_uberblock(ub)
    pool._write_uberblock = check_then_write
    pool.sync()
    assert seen == [False]                          # freed by this txg, not yet durable
    assert not space.is_free(new.offset, new.asize)
    # durable now, and held while REWIND_TXGS more txgs commit (import -F may rewind to the
    # txg before it, whose tree holds the block); reusable after that
    for _ in range(REWIND_TXGS):
        assert not space.is_free(old.offset, old.asize)
        pool.sync(force=True)
    assert space.is_free(old.offset, old.asize)
    assert verify(pool).ok


def test_destroy_objset_frees_everything():
    devs = mem()
    pool = Pool.create("tank", [("file", devs)])
    pool.sync()
    base = pool.allocated
    tree = pool.objset(b"t")
    for i in range(2000):
        tree.put(b"%06d" % i, b"x" * 100)
    for i in range(20):
        put_block(pool, tree, b"b%02d" % i, random.Random(i).randbytes(5000))
    pool.sync()
    assert pool.allocated > base + 100_000
    pool.destroy_objset(b"t")
    pool.sync()
    pool.sync()
    assert verify(pool).ok
    assert pool.allocated <= base + 16 * 1024      # only the MOS and space map remain


@pytest.mark.parametrize("layout", ["mirror", "stripe"])
def test_mirror_and_stripe(layout):
    devs = mem(2)
    topo = [("mirror", devs)] if layout == "mirror" else [("file", [devs[0]]), ("file", [devs[1]])]
    pool = Pool.create("tank", topo)
    tree = pool.objset(b"t")
    for i in range(40):
        put_block(pool, tree, b"%02d" % i, bytes([i]) * 8192)
    pool.sync()
    vdevs = {decode_bp(tree.get(b"%02d" % i)).dvas[0].vdev for i in range(40)}
    assert vdevs == ({0} if layout == "mirror" else {0, 1})
    pool.close()
    again = Pool.open(list(reversed(devs)))          # device order does not matter
    tree = again.objset(b"t", create=False)
    assert all(read_block(again, tree, b"%02d" % i) == bytes([i]) * 8192 for i in range(40))
    assert verify(again).ok


def test_missing_device_is_reported():
    devs = mem(2)
    Pool.create("tank", [("file", [devs[0]]), ("file", [devs[1]])]).close()
    with pytest.raises(PoolError, match="currently unavailable"):
        Pool.open([devs[0]])
    with pytest.raises(PoolError, match="no pools available"):
        Pool.open(mem())


def test_copies_heal_a_damaged_copy():
    devs = mem()
    pool = Pool.create("tank", [("file", devs)])
    tree = pool.objset(b"t")
    put_block(pool, tree, b"x", b"precious " * 500, Policy(copies=2))
    pool.sync()
    bp = decode_bp(tree.get(b"x"))
    assert len(bp.dvas) == 2
    pool.blocks.drop_cache()
    devs[0].data[bp.dvas[0].offset + 10] ^= 0x40
    assert read_block(pool, tree, b"x") == b"precious " * 500
    leaf = pool.leaves()[0]
    assert leaf.cksum_errors == 1 and pool.blocks.repairs == 1
    pool.blocks.drop_cache()
    assert read_block(pool, tree, b"x") == b"precious " * 500
    assert leaf.cksum_errors == 1                   # healed on disk: no new error
    # both copies bad: an error, never wrong bytes
    for d in bp.dvas:
        devs[0].data[d.offset + 3] ^= 1
    pool.blocks.drop_cache()
    with pytest.raises(ChecksumError):
        read_block(pool, tree, b"x")
    assert leaf.cksum_errors == 3 and pool.blocks.permanent_errors


def test_mirror_heals_the_bad_side():
    devs = mem(2)
    pool = Pool.create("tank", [("mirror", devs)])
    tree = pool.objset(b"t")
    put_block(pool, tree, b"x", b"mirrored " * 500)
    pool.sync()
    bp = decode_bp(tree.get(b"x"))
    pool.blocks.drop_cache()
    devs[0].data[bp.dvas[0].offset] ^= 0xFF
    assert read_block(pool, tree, b"x") == b"mirrored " * 500
    assert devs[0].data[bp.dvas[0].offset:bp.dvas[0].offset + 9] == b"mirrored "
    assert [leaf.cksum_errors for leaf in pool.leaves()] == [1, 0]


def test_error_counts_survive_reimport_until_cleared():
    devs = mem()
    pool = Pool.create("tank", [("file", devs)])
    tree = pool.objset(b"t")
    put_block(pool, tree, b"x", b"data " * 500)
    pool.sync()
    bp = decode_bp(tree.get(b"x"))
    devs[0].data[bp.dvas[0].offset] ^= 1
    pool.blocks.drop_cache()
    with pytest.raises(ChecksumError):
        read_block(pool, tree, b"x")
    pool.close()
    again = Pool.open(devs)
    assert again.leaves()[0].cksum_errors == 1
    again.clear_errors()
    again.close()
    assert Pool.open(devs).leaves()[0].cksum_errors == 0


def test_dirty_budget_forces_a_sync():
    devs = mem()
    pool = Pool.create("tank", [("file", devs)])
    pool.dirty_max = 64 * 1024
    tree = pool.objset(b"t")
    start = pool.synced_txg
    for i in range(10):
        put_block(pool, tree, b"%d" % i, bytes([i]) * 32768)
        pool.note_written(32768)
    assert pool.synced_txg >= start + 4
    assert verify(pool).ok


def test_sync_timer_commits_in_the_background():
    """With nobody asking for a sync, the timer's thread commits the change. The test waits
    for a sync on that thread to return (the wait's bound only guards against hanging: what
    is asserted is that the commit happened, on the timer's thread), not for some time."""
    import threading
    devs = mem()
    pool = Pool.create("tank", [("file", devs)])
    committed = threading.Event()
    syncs: list[tuple[str, int]] = []
    real_sync = pool.sync

    def sync(*args, **kw):
        out = real_sync(*args, **kw)
        syncs.append((threading.current_thread().name, pool.synced_txg))
        if pool.synced_txg > txg:
            committed.set()
        return out

    with pool.lock:
        pool.objset(b"t").put(b"a", b"1")
        txg = pool.synced_txg
        pool.sync = sync
        pool.start_sync_timer(0.05)
    committed.wait(60)
    assert pool.synced_txg > txg
    assert any(name == "txg-sync-tank" and synced > txg for name, synced in syncs), syncs
    pool.close()
    assert Pool.open(devs).objset(b"t", create=False).get(b"a") == b"1"


def test_verify_finds_a_leak_and_a_double_use():
    devs = mem()
    pool = Pool.create("tank", [("file", devs)])
    tree = pool.objset(b"t")
    put_block(pool, tree, b"x", b"a" * 4096)
    pool.blocks.write(b"leaked" * 100, BT_DATA, Policy())     # referenced by nothing
    report = verify(pool)
    assert not report.ok and any("leaked" in f for f in report.faults)
    # two items owning the same block
    pool2 = Pool.create("tank2", [("file", mem())])
    t2 = pool2.objset(b"t")
    bp = pool2.blocks.write(b"b" * 4096, BT_DATA, Policy())
    t2.put(b"1", encode_bp(bp), REF_BLOCK)
    t2.put(b"2", encode_bp(dataclasses.replace(bp, birth=bp.birth - 1)), REF_BLOCK)
    report = verify(pool2)
    assert any("used twice" in f for f in report.faults)


def test_file_devices_are_locked_to_one_owner(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"")
    with open(path, "r+b") as f:
        f.truncate(8 * MiB)
    pool = Pool.create("tank", [("file", [FileDevice(str(path))])])
    with pytest.raises(PoolError, match="in use"):
        Pool.open([FileDevice(str(path))])
    pool.close()
    Pool.open([FileDevice(str(path))]).close()


def test_read_many_reads_neighbours_together_and_heals_one_bad_block():
    """A run of neighbouring blocks comes back in one read; a damaged one in the middle is
    healed from the mirror's other side and counted, the others are untouched, and blocks of
    several kinds (compressed, not) come back as written."""
    devs = mem(2)
    pool = Pool.create("tank", [("mirror", devs)])
    datas = [bytes([i]) * 8192 if i % 2 else (b"text %d " % i) * 2000 for i in range(12)]
    bps = pool.blocks.write_many(datas[:6], BT_DATA, Policy())
    bps += pool.blocks.write_many(datas[6:], BT_DATA, Policy(COMP_ZSTD, 3))
    pool.sync()
    offsets = [bp.dvas[0].offset for bp in bps[:6]]
    assert offsets == sorted(offsets)           # neighbours: one run
    pool.blocks.drop_cache()
    devs[0].data[bps[3].dvas[0].offset + 5] ^= 0x10
    reads = []
    device = pool.leaves()[0].device
    original = device.read

    def counting(offset, length):
        reads.append(length)
        return original(offset, length)
    device.read = counting
    assert pool.blocks.read_many(bps) == datas
    assert [leaf.cksum_errors for leaf in pool.leaves()] == [1, 0] and pool.blocks.repairs == 1
    assert len(reads) <= 4                      # runs, plus the one bad block alone
    pool.blocks.drop_cache()
    assert pool.blocks.read_many(bps) == datas  # healed on disk: no new error
    assert [leaf.cksum_errors for leaf in pool.leaves()] == [1, 0]
    # no good copy: an error, never wrong bytes
    for d in devs:
        d.data[bps[8].dvas[0].offset + 2] ^= 1
    pool.blocks.drop_cache()
    with pytest.raises(ChecksumError):
        pool.blocks.read_many(bps)


def test_early_writes_are_taken_or_given_back():
    """prepare_ahead writes uncompressed data at once; write_many takes that block instead of
    writing again, and space of early writes nobody took is free again after the sync (and
    not in the durable space map)."""
    devs = mem()
    pool = Pool.create("tank", [("file", devs)])
    tree = pool.objset(b"t")
    pool.sync()
    base = pool.allocated
    kept, dropped = b"k" * 131072, b"d" * 131072
    pool.blocks.prepare_ahead(kept, Policy())
    pool.blocks.prepare_ahead(dropped, Policy())
    pool.blocks.prepare_ahead(b"z" * 131072, Policy(COMP_ZSTD, 3))
    # space taken at once for the uncompressed ones, but not counted as allocated: the
    # upper layers still count that data as dirty
    assert pool.blocks.ahead_bytes == 2 * 131072 and pool.allocated == base
    free = pool.allocator.free_bytes
    spare = b"s" * 131072
    pool.blocks.prepare_ahead(spare, Policy())
    assert pool.allocator.free_bytes == free - 131072
    pool.blocks.cancel_ahead(spare)             # changed its mind: the space is back at once
    assert pool.allocator.free_bytes == free and pool.blocks.ahead_bytes == 2 * 131072
    writes = []
    device = pool.leaves()[0].device
    original = device.writev
    device.writev = lambda off, bufs: (writes.append(off), original(off, bufs))
    (bp,) = pool.blocks.write_many([kept], BT_DATA, Policy())
    assert writes == []                         # written early, not again
    tree.put(b"x", encode_bp(bp), REF_BLOCK)
    pool.sync()
    assert not pool.blocks._ahead and pool.blocks.ahead_bytes == 0
    pool.blocks.drop_cache()
    assert read_block(pool, tree, b"x") == kept
    assert verify(pool).ok                      # the dropped early write is not leaked
    pool.close()
    again = Pool.open(devs)
    assert verify(again).ok and read_block(again, again.objset(b"t", create=False), b"x") == kept
