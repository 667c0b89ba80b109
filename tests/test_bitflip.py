"""Bit flips in stored blocks, metadata included: never wrong bytes, always counted."""
from __future__ import annotations

import random

import pytest

from fusezfs.blocks import ChecksumError, Policy
from fusezfs.cli_pool import format_status
from fusezfs.devices import MemoryDevice
from fusezfs.formats.bp import BT_DATA, COMP_OFF, COMP_ZSTD, decode_bp, encode_bp
from fusezfs.pool import Pool, PoolError
from fusezfs.tree import REF_BLOCK

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


@pytest.mark.parametrize("layout,seed", [("file", 1), ("file", 2), ("file", 3), ("mirror", 4)])
def test_random_bit_flips_never_return_wrong_bytes(layout, seed):
    devs = [MemoryDevice(16 * MiB, f"d{i}") for i in range(2 if layout == "mirror" else 1)]
    expect = build(devs, layout)
    rng = random.Random(seed)
    # flip bits inside allocated space: data blocks, tree nodes and the space map alike
    probe = Pool.open(devs)
    extents = [(v, o, n) for v, exts in probe.allocator.allocated_extents().items() for o, n in exts]
    probe.close()
    weights = [n for _, _, n in extents]
    for _ in range(40):
        v, off, n = rng.choices(extents, weights)[0]
        dev = rng.choice(probe.tops[v].leaves).device
        pos = off + rng.randrange(n)
        dev.data[pos] ^= 1 << rng.randrange(8)
    try:
        pool = Pool.open(devs)
    except (ChecksumError, PoolError):
        return  # both copies of vital metadata hit: an error, which is allowed; no wrong bytes
    errors = repaired = 0
    try:
        tree = pool.objset(b"t", create=False)
        for key, data in expect.items():
            try:
                raw = tree.get(key)
                got = pool.blocks.read(decode_bp(raw)) if key.startswith(b"f") else raw
            except ChecksumError:
                errors += 1
                continue
            assert got == data, f"wrong bytes returned for {key!r}"
    except ChecksumError:
        errors += 1
    counted = sum(leaf.cksum_errors for leaf in pool.leaves())
    repaired = pool.blocks.repairs
    assert counted >= errors
    assert counted > 0 or repaired > 0 or errors == 0
    status = format_status(pool, verbose=True)
    for leaf in pool.leaves():
        row = next(line for line in status.splitlines() if line.strip().startswith(leaf.path))
        assert row.split()[-1] == str(leaf.cksum_errors)
    if errors:
        assert "Permanent errors" in status
    pool.close()


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
