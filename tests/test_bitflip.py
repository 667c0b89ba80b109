"""Bit flips in stored blocks, metadata included: never wrong bytes, always counted.

Each trial flips random bits in a pool's allocated space (data blocks, tree nodes and the space
map alike), then works out from the bytes themselves which copy of which block each flip
damaged, and checks every outcome against what that damage allows:

* a block with a good copy left reads correctly; one with every copy damaged (lost) raises
  ChecksumError, and only such a loss may make a read, the import or the opening of a tree fail;
* no read ever returns wrong bytes;
* a damaged copy that a read tried is counted on the device that holds it and rewritten from a
  good copy, and a device with no damaged copy counts nothing;
* `pool status` shows the counters and lists exactly the lost blocks that were read.
"""
from __future__ import annotations

import random

import pytest

from fusezfs.engine.blocks import ChecksumError, Policy, describe
from fusezfs.cli.cli_pool import format_status
from fusezfs.engine.devices import MemoryDevice
from fusezfs.formats.bp import BT_DATA, COMP_OFF, COMP_ZSTD, decode_bp, encode_bp
from fusezfs.engine.pool import Pool, PoolError
from fusezfs.engine.tree import REF_BLOCK, Tree
from fusezfs.engine.verify import verify

MiB = 1 << 20


def build(devs, layout: str) -> dict[bytes, bytes]:
    topo = [("mirror", devs)] if layout == "mirror" else [("file", devs)]
    pool = Pool.create("flip", topo)
    tree = pool.objset(b"t")
    rng = random.Random(5)
    expect = {}
    for i in range(120):
        key = b"f%03d" % i
        data = (b"line %d of some text\n" % i) * rng.randrange(10, 400)
        policy = Policy(rng.choice([COMP_OFF, COMP_ZSTD]), 3, copies=rng.choice([1, 2]))
        tree.put(key, encode_bp(pool.blocks.write(data, BT_DATA, policy)), REF_BLOCK)
        expect[key] = data
        tree.put(b"m%03d" % i, b"meta %d" % i * 20)
        expect[b"m%03d" % i] = b"meta %d" % i * 20
    pool.close()
    return expect


def reachable(pool: Pool) -> list[tuple[object, object]]:
    """Every block of the committed state as (what, bp): what is "spacemap", "mos" (a MOS
    node), "t" (a node of tree t) or the key of t whose data block it is. The blocks must
    cover the allocated space exactly, so that every flip lands in a block the test knows."""
    out: list[tuple[object, object]] = [("spacemap", pool.spacemap_bp)]
    assert pool.objset_names() == [b"t"]
    for kind, bp in Tree(pool.mos.store, pool.mos.root).walk():
        if kind == "node":
            out.append(("mos", bp))
    tree = pool.objset(b"t", create=False)
    out += [("t", bp) for kind, bp in tree.walk() if kind == "node"]
    out += [(key, decode_bp(val)) for key, val in tree.scan(b"f", b"g")]
    allocated = sum(n for exts in pool.allocator.allocated_extents().values() for _o, n in exts)
    assert sum(d.asize for _w, bp in out for d in bp.dvas) == allocated
    return out


@pytest.mark.parametrize("layout,routes", [
    ("file", {"import failed", "tree nodes lost", "data blocks lost"}),
    ("mirror", {"all healed"}),
])
def test_random_bit_flips_never_return_wrong_bytes(layout, routes):
    """30 trials of 44 flips each. On a single file blocks may be lost, and every outcome is
    checked against which ones; the trials must between them take every route named (an
    import that fails, a tree that loses nodes, data blocks lost under whole nodes), so that
    no branch of the checks goes untested. A mirror takes the flips on its first side only:
    nothing may be lost and every trial must read everything right and heal it all."""
    seen = set()
    for seed in range(30):
        try:
            seen.add(trial(layout, seed))
        except AssertionError as e:
            e.add_note(f"layout={layout} seed={seed}")
            raise
    assert routes <= seen, f"routes never taken: {routes - seen}"


def trial(layout: str, seed: int) -> str:
    """One pool, 40 flips over its allocated bytes and 4 aimed at its metadata, every check
    below; returns which route the damage took. In a mirror the flips hit the first side
    only, the side reads try first, so every damaged copy a read reaches is seen, and a
    verify afterwards must find every damaged first copy, count it and repair it."""
    devs = [MemoryDevice(16 * MiB, f"d{i}") for i in range(2 if layout == "mirror" else 1)]
    expect = build(devs, layout)
    rng = random.Random(seed)
    probe = Pool.open(devs)
    assert verify(probe).ok
    blocks = reachable(probe)
    extents = [(v, o, n) for v, exts in probe.allocator.allocated_extents().items() for o, n in exts]
    tops = probe.tops
    probe.close()

    orig = {d.path: bytes(d.data) for d in devs}

    def flip(v: int, pos: int) -> None:
        leaves = tops[v].leaves
        dev = leaves[0].device if layout == "mirror" else rng.choice(leaves).device
        dev.data[pos] ^= 1 << rng.randrange(8)

    weights = [n for _, _, n in extents]
    for _ in range(40):
        v, off, n = rng.choices(extents, weights)[0]
        flip(v, off + rng.randrange(n))
    # metadata is a few blocks among a hundred data blocks: aim some flips at it, so that
    # trials also damage (and sometimes lose) tree nodes, the MOS and the space map
    metadata = [bp for what, bp in blocks if what in ("spacemap", "mos", "t")]
    for _ in range(4):
        bp = rng.choice(metadata)
        d = rng.choice(bp.dvas)
        flip(d.vdev, d.offset + rng.randrange(bp.psize))

    # which copies the flips damaged, in the order a read tries them (DVA by DVA, each
    # DVA's children in order); flips in a block's padding (past psize) damage nothing
    def damaged(dev, off, size) -> bool:
        return dev.data[off:off + size] != orig[dev.path][off:off + size]

    leading: dict = {}       # bp identity -> devices of the damaged copies a read meets first
    lost: dict = {}          # bp identity -> (what, bp), for blocks with no good copy left
    damaged_devs = set()
    for what, bp in blocks:
        copies = [leaf.device for d in bp.dvas for leaf in tops[d.vdev].leaves]
        offs = [d.offset for d in bp.dvas for _leaf in tops[d.vdev].leaves]
        bad = [damaged(dev, off, bp.psize) for dev, off in zip(copies, offs)]
        damaged_devs.update(dev.path for dev, b in zip(copies, bad) if b)
        first_good = bad.index(False) if False in bad else len(bad)
        leading[bp.identity()] = [dev.path for dev in copies[:first_good]]
        if all(bad):
            lost[bp.identity()] = (what, bp)
    assert damaged_devs, "40 flips damaged nothing: the trial tests nothing"
    lost_what = {what for what, _bp in lost.values()}
    lost_nodes = lost_what & {"spacemap", "mos", "t"}
    data_bp = {what: bp for what, bp in blocks if isinstance(what, bytes)}
    lost_keys = {what for what in lost_what if isinstance(what, bytes)}
    if layout == "mirror":
        assert not lost, "one side of a mirror damaged, yet a block lost both copies"

    try:
        pool = Pool.open(devs)
    except PoolError as e:
        # the import reads the space map and MOS nodes: it may fail only if one of them is lost
        assert "I/O error" in str(e), e
        assert lost_what & {"spacemap", "mos"}, f"import failed with no metadata lost: {e}"
        return "import failed"
    assert "spacemap" not in lost_what, "the import read a lost space map and succeeded"

    failed: set[bytes] = set()
    attempted: set[bytes] = set()       # data keys whose block pointer was read, so the block too
    try:
        tree = pool.objset(b"t", create=False)
    except ChecksumError:
        assert "mos" in lost_what, "tree t could not be opened with no MOS node lost"
        failed = set(expect)
    else:
        for key, data in expect.items():
            try:
                raw = tree.get(key)
                if key in data_bp:
                    attempted.add(key)
                    got = pool.blocks.read(decode_bp(raw))
                else:
                    got = raw
            except ChecksumError:
                failed.add(key)
                assert key in lost_keys or lost_nodes, f"{key!r} failed, nothing lost on its way"
                continue
            assert got == data, f"wrong bytes returned for {key!r}"
    assert lost_keys & attempted <= failed
    if not lost_nodes:
        assert failed == lost_keys, "with every node whole, exactly the lost data blocks fail"
    if layout == "mirror":
        assert not failed

    # counted where they must be: every damaged copy a data read met, on its own device
    # (node reads add to that); a device with no damaged copy counts nothing
    for leaf in pool.leaves():
        path = leaf.path
        if path not in damaged_devs:
            assert leaf.cksum_errors == 0, path
        met = sum(leading[data_bp[k].identity()].count(path) for k in attempted)
        assert leaf.cksum_errors >= met, (path, leaf.cksum_errors, met)
    # every damaged copy met on a block that had a good one is rewritten, once
    must_heal = sum(len(leading[data_bp[k].identity()]) for k in attempted - lost_keys)
    can_heal = sum(len(devs_) for ident, devs_ in leading.items() if ident not in lost)
    assert must_heal <= pool.blocks.repairs <= can_heal
    # each rewrite follows a mismatch counted on a device, the import's own reads included
    # (test_copy_healed_during_import_is_counted)
    counted = sum(leaf.cksum_errors for leaf in pool.leaves())
    assert counted >= pool.blocks.repairs

    status = format_status(pool, verbose=True)
    for leaf in pool.leaves():
        row = next(line for line in status.splitlines() if line.strip().startswith(leaf.path))
        assert row.split()[-1] == str(leaf.cksum_errors)
    permanent = set(pool.blocks.permanent_errors)
    assert permanent <= {describe(bp) for _w, bp in lost.values()}, "an error for a whole block"
    assert bool(permanent) == bool(failed) == ("Permanent errors" in status)
    if not lost_nodes:
        assert permanent == {describe(data_bp[k]) for k in lost_keys & attempted}

    if layout == "mirror":
        # a verify reads every copy of every block (each DVA, each side), so every damaged
        # copy of what the pool still reaches (its sync may have replaced damaged metadata)
        # is now met, second copies included: each is repaired and counted on d0, and
        # nothing the pool reaches is left damaged
        before, before_verify = pool.blocks.repairs, bytes(devs[0].data)
        assert verify(pool).ok
        was = {bp.identity() for _w, bp in blocks}    # (blocks written since are whole)
        now = [(w, bp) for w, bp in reachable(pool) if bp.identity() in was]
        left = sum(damaged(devs[0], d.offset, bp.psize) for _w, bp in now for d in bp.dvas)
        assert left == 0, f"{left} damaged copies left unrepaired"
        d0, d1 = pool.leaves()
        assert d1.cksum_errors == 0
        assert d0.cksum_errors == pool.blocks.repairs > 0
        must = sum(orig[devs[0].path][d.offset:d.offset + bp.psize] != before_verify[d.offset:
                   d.offset + bp.psize] for _w, bp in now for d in bp.dvas)
        assert pool.blocks.repairs - before == must
    pool.close()
    return "tree nodes lost" if lost_nodes else "data blocks lost" if lost_keys else "all healed"


def test_copy_healed_during_import_is_counted():
    """A checksum error is counted wherever a read meets it, the import's reads included
    (ZFS does): here the import reads the space map, finds its first copy bad, repairs it from
    the mirror's other side, and the device that returned the bad copy must show it."""
    devs = [MemoryDevice(16 * MiB, f"d{i}") for i in range(2)]
    build(devs, "mirror")
    pool = Pool.open(devs)
    sm = pool.spacemap_bp
    pool.close()
    devs[0].data[sm.dvas[0].offset + 3] ^= 1
    pool = Pool.open(devs)
    assert pool.blocks.repairs == 1
    assert [leaf.cksum_errors for leaf in pool.leaves()] == [1, 0]


def test_flip_in_every_metadata_copy_is_an_error_not_garbage():
    devs = [MemoryDevice(16 * MiB, "d0")]
    build(devs, "file")
    pool = Pool.open(devs)
    root = pool.objset(b"t").root
    for d in root.dvas:
        devs[0].data[d.offset + 5] ^= 0x80
    pool.close()
    pool = Pool.open(devs)
    with pytest.raises(ChecksumError):
        pool.objset(b"t", create=False).get(b"f000")
    assert pool.leaves()[0].cksum_errors == len(root.dvas)
    assert "Permanent errors" in format_status(pool, verbose=True)
