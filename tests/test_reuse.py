"""Space that is freed and allocated again: the block cache never answers for a block that is
gone. An address allocated again holds a new block, and a read of it returns the new bytes.

The test runs in a nearly full pool (crashsim.fill), where the next-fit allocator comes back to
freed space within a few writes, and asserts that reuse really happened. (That frees wait for
the freeing txg to be durable is tests/test_pool.py's and the crash sweeps'.)"""
from __future__ import annotations

import random

from fusezfs.testing import crashsim
from fusezfs.engine.blocks import Policy
from fusezfs.engine.devices import MemoryDevice
from fusezfs.formats.bp import BT_DATA, CKSUM_XXH3_128, COMP_OFF, decode_bp, encode_bp
from fusezfs.engine.pool import Pool
from fusezfs.engine.tree import REF_BLOCK
from fusezfs.engine.verify import verify

POLICY = Policy(COMP_OFF, 0, CKSUM_XXH3_128, 1)


def _put(pool: Pool, tree, key: bytes, data: bytes):
    bp = pool.blocks.write(data, BT_DATA, POLICY)
    tree.put(key, encode_bp(bp), REF_BLOCK)     # frees the block it replaces
    return bp


def test_reused_addresses_read_the_new_block():
    """Rewrite one key again and again, reading each block back while the previous ones sit in
    the cache."""
    pool = Pool.create("tank", [("file", [MemoryDevice(crashsim.DEVICE_SIZE)])])
    crashsim.fill(pool, 128 << 10)
    tree = pool.objset(b"t")
    rng = random.Random(5)
    seen: set = set()
    reused = 0
    for i in range(60):
        data = rng.randbytes(8192)
        bp = _put(pool, tree, b"k%d" % (i % 3), data)
        reused += bp.dvas[0] in seen
        seen.add(bp.dvas[0])
        assert pool.blocks.read(decode_bp(tree.get(b"k%d" % (i % 3)))) == data, i
        if i % 2:
            pool.sync()
    assert reused >= 10, reused          # the test exercised reuse, or it proves nothing
    assert verify(pool).ok
