"""Devices, compression, block pointers, labels, space maps and the allocator, each on its own."""
from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusezfs.engine import compress
from fusezfs.engine.allocator import REWIND_TXGS, Allocator, FreeSpace, NoSpace
from fusezfs.engine.devices import FaultyDevice, MemoryDevice, PowerCut
from fusezfs.formats import label as fl
from fusezfs.formats import spacemap
from fusezfs.formats.bp import (
    BP_SIZE,
    CKSUM_SHA256,
    CKSUM_XXH3_128,
    COMP_GZIP,
    COMP_OFF,
    COMP_ZSTD,
    DVA,
    BlockPointer,
    checksum,
    decode_bp,
    encode_bp,
)


# ---- devices --------------------------------------------------------------------------------
def test_faulty_device_cut_and_crash_images():
    dev = FaultyDevice(MemoryDevice(8192))
    dev.write(0, b"a" * 512)
    dev.flush()
    dev.write(512, b"b" * 512)
    dev.cut_after(1)
    dev.write(1024, b"c" * 512)
    with pytest.raises(PowerCut):
        dev.write(1536, b"d" * 512)
    with pytest.raises(PowerCut):
        dev.read(0, 1)
    keep = dev.crash_image("keep")
    assert keep.read(0, 2048) == b"a" * 512 + b"b" * 512 + b"c" * 512 + bytes(512)
    drop = dev.crash_image("drop")
    assert drop.read(0, 2048) == b"a" * 512 + bytes(1536)
    for seed in range(20):
        img = dev.crash_image("reorder", random.Random(seed))
        assert img.read(0, 512) == b"a" * 512          # flushed data always survives
        assert img.read(1536, 512) == bytes(512)        # the cut write never lands


def test_faulty_device_reads_see_unflushed_writes_and_flip_bit():
    dev = FaultyDevice(MemoryDevice(4096))
    dev.write(100, b"hello")
    assert dev.read(98, 9) == b"\0\0hello\0\0"
    dev.flip_bit(100, 0)
    assert dev.read(100, 5) == b"iello"


# ---- compression ----------------------------------------------------------------------------
@pytest.mark.parametrize("prop", ["zstd", "zstd-1", "zstd-19", "gzip", "gzip-1", "gzip-9", "on"])
def test_compression_round_trip(prop):
    algorithm, level = compress.parse(prop)
    data = b"the quick brown fox jumps over the lazy dog\n" * 1000
    used, phys = compress.compress(data, algorithm, level)
    assert used == algorithm and len(phys) < len(data) // 8
    assert compress.decompress(bytes(phys), used, len(data)) == data


def test_incompressible_data_is_stored_raw():
    data = random.Random(1).randbytes(65536)
    used, phys = compress.compress(data, COMP_ZSTD, 3)
    assert used == COMP_OFF and phys == data


@pytest.mark.parametrize("bad", ["zstd-0", "zstd-20", "gzip-10", "lz5", "", "ZSTD"])
def test_invalid_compression_names(bad):
    with pytest.raises(ValueError):
        compress.parse(bad)


def test_decompress_rejects_wrong_size():
    used, phys = compress.compress(b"x" * 4096, COMP_GZIP, 6)
    with pytest.raises(ValueError):
        compress.decompress(bytes(phys), used, 4095)


# ---- block pointers -------------------------------------------------------------------------
bps = st.builds(
    BlockPointer,
    dvas=st.lists(st.builds(DVA, st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1),
                            st.integers(1, 2**32 - 1)), min_size=1, max_size=3).map(tuple),
    lsize=st.integers(0, 2**32 - 1), psize=st.integers(0, 2**32 - 1),
    birth=st.integers(0, 2**64 - 1), comp=st.sampled_from([COMP_OFF, COMP_ZSTD, COMP_GZIP]),
    cksum=st.just(CKSUM_XXH3_128), type=st.integers(0, 255),
    checksum=st.binary(min_size=16, max_size=16), level=st.integers(0, 255),
    fill=st.integers(0, 2**64 - 1), flags=st.integers(0, 255))


@given(bps)
def test_bp_round_trip(bp):
    raw = encode_bp(bp)
    assert len(raw) == BP_SIZE
    assert decode_bp(raw) == bp


def test_hole_and_malformed_bp():
    assert decode_bp(bytes(BP_SIZE)) is None
    assert encode_bp(None) == bytes(BP_SIZE)
    with pytest.raises(ValueError):
        decode_bp(b"\xff" * BP_SIZE)
    with pytest.raises(ValueError):
        decode_bp(b"\0" * 10)


def test_checksums_differ_by_algorithm():
    assert len(checksum(b"abc", CKSUM_XXH3_128)) == 16
    assert len(checksum(b"abc", CKSUM_SHA256)) == 32
    assert checksum(b"abc", CKSUM_XXH3_128) != checksum(b"abd", CKSUM_XXH3_128)


# ---- labels and uberblocks ------------------------------------------------------------------
def test_config_round_trip_and_corruption():
    raw = fl.encode_config({"name": "tank", "pool_guid": 7}, 3)
    assert len(raw) == fl.CONFIG_SIZE
    assert fl.decode_config(raw) == ({"name": "tank", "pool_guid": 7}, 3)
    for pos in (0, 9, 20, 30, 45):
        bad = bytearray(raw)
        bad[pos] ^= 0x10
        assert fl.decode_config(bytes(bad)) is None
    assert fl.decode_config(bytes(fl.CONFIG_SIZE)) is None


@given(bps, st.integers(0, 2**63), st.integers(1, 2**63))
def test_uberblock_round_trip(bp, txg, guid):
    ub = fl.Uberblock(txg, guid, 12345, bp, None)
    raw = ub.encode()
    assert len(raw) == fl.UB_SIZE
    assert fl.decode_uberblock(raw) == ub


def test_torn_uberblock_is_rejected():
    ub = fl.Uberblock(9, 1, 2, None, None).encode()
    for cut in (8, 100, 500, fl.UB_SIZE - 1):
        torn = ub[:cut] + bytes(fl.UB_SIZE - cut)
        assert fl.decode_uberblock(torn) is None


# ---- space maps -----------------------------------------------------------------------------
@given(st.dictionaries(st.integers(0, 5), st.lists(st.tuples(st.integers(1, 1000), st.integers(1, 1000)),
                                                   max_size=50)))
def test_spacemap_round_trip(raw):
    maps = {}
    for vdev, pairs in raw.items():
        pos, extents = 0, []
        for gap, length in pairs:
            pos += gap * 512
            extents.append((pos, length * 512))
            pos += length * 512
        maps[vdev] = extents
    assert spacemap.decode(spacemap.encode(maps)) == maps


def test_spacemap_rejects_garbage():
    for junk in (b"", b"FZSM", b"XXXX\1\0\0\0\0\0\0\0", spacemap.encode({0: [(512, 512)]})[:-1]):
        with pytest.raises(ValueError):
            spacemap.decode(junk)


# ---- allocator ------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 64)), max_size=200), st.integers(0, 2**32))
def test_freespace_against_a_model(ops, seed):
    rng = random.Random(seed)
    space = FreeSpace(512, 512 + 512 * 256)
    used: dict[int, int] = {}
    for alloc, nsect in ops:
        if alloc or not used:
            off = space.allocate(nsect * 512)
            if off is None:
                # allocate() fails only when no single free extent is large enough (it does not
                # split a request): free space may still exceed the request, fragmented
                assert all(n < nsect * 512 for _a, n in space.extents()), space.extents()
                continue
            for o, n in used.items():
                assert off + nsect * 512 <= o or o + n <= off, "overlapping allocation"
            assert 512 <= off and off + nsect * 512 <= space.end
            used[off] = nsect * 512
        else:
            off = rng.choice(sorted(used))
            space.free(off, used.pop(off))
        assert space.free_bytes == 512 * 256 - sum(used.values())
        # free extents are sorted, coalesced and disjoint from what is used
        ext = space.extents()
        for (a, n), (b, _m) in zip(ext, ext[1:]):
            assert a + n < b
    for off, n in list(used.items()):
        space.free(off, n)
    assert space.extents() == [(512, 512 * 256)]


def test_double_free_is_caught():
    space = FreeSpace(0, 4096)
    off = space.allocate(512)
    space.free(off, 512)
    with pytest.raises(AssertionError):
        space.free(off, 512)


def test_deferred_frees_and_space_map_view():
    alloc = Allocator({0: (1024, 1024 + 8192), 1: (1024, 1024 + 8192)})
    a = alloc.allocate(1000)
    assert a.asize == 1024
    b = alloc.allocate(512, [a])
    assert b.vdev != a.vdev
    alloc.free(a, deferred=True)
    assert not alloc.spaces[a.vdev].is_free(a.offset, a.asize)      # not reusable yet
    assert (a.offset, a.asize) not in alloc.allocated_extents()[a.vdev]  # free on disk
    alloc.begin_release()                 # the txg that freed a commits; the next one opens
    c = alloc.allocate(512)
    alloc.free(c, deferred=True)          # freed in the next txg
    assert not alloc.spaces[a.vdev].is_free(a.offset, a.asize)
    assert alloc.deferred_bytes == 1024 + 512
    alloc.finish_release(durable=False)   # that commit failed: a waits for the next one
    assert alloc.deferred == [a, c] and not alloc.releasing
    alloc.begin_release()
    alloc.finish_release(durable=True)
    # durable, but held while REWIND_TXGS more txgs commit: the trees of the txgs before it
    # must stay whole for a rewinding import
    for _ in range(REWIND_TXGS):
        assert not alloc.spaces[a.vdev].is_free(a.offset, a.asize)
        assert alloc.deferred_bytes == 1024 + 512
        assert alloc.allocated_extents() == {a.vdev: [], b.vdev: [(b.offset, 512)]}
        alloc.begin_release()
        alloc.finish_release(durable=True)
    assert alloc.spaces[a.vdev].is_free(a.offset, a.asize)
    assert alloc.spaces[c.vdev].is_free(c.offset, c.asize) and alloc.deferred_bytes == 0
    assert alloc.allocated_extents() == {a.vdev: [], b.vdev: [(b.offset, 512)]}
    with pytest.raises(NoSpace):
        alloc.allocate(1 << 20)


def test_prefetch_asks_for_new_ground_only(tmp_path, monkeypatch):
    """A streaming reader's read-ahead: the first call asks for the whole window, later ones
    top it up in pieces of half a window, and never past the end of the device."""
    from fusezfs.engine.devices import FileDevice
    path = tmp_path / "dev"
    path.write_bytes(b"")
    os.truncate(path, 40 << 20)
    dev = FileDevice(str(path))
    asked = []
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, off, n, advice: asked.append((off, n)))
    MiB = 1 << 20
    for off in range(0, 40 * MiB, MiB):
        dev.prefetch(off + MiB, 8 * MiB)
    assert asked[0] == (MiB, 8 * MiB) and asked[1] == (9 * MiB, 4 * MiB)
    covered = [o for off, n in asked for o in range(off, off + n, MiB)]
    assert len(covered) == len(set(covered))            # nothing asked twice
    assert max(off + n for off, n in asked) == 40 * MiB
    n = len(asked)
    dev.prefetch(5 * MiB, 8 * MiB)                      # inside what was asked: nothing
    assert len(asked) == n
    dev.prefetch(0, 8 * MiB)                            # outside it: a new window
    assert asked[-1] == (0, 8 * MiB)
    dev.close()
