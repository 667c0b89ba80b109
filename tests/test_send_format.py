"""The stream's building blocks, without ZFS: fletcher-4, the records, XDR nvlists, ZAP objects,
znodes. Values from zfs-fuse's own streams (pool version 23) are the reference where they are
quoted (its trivial ACLs, its master node)."""
from __future__ import annotations

import io
import random
import struct

import pytest

from fusezfs.send import nvlist, records as R
from fusezfs.send.fletcher import Fletcher4, fletcher4, fletcher4_reference
from fusezfs.send.zap import (
    FZAP_BLOCK_SHIFT,
    ZapError,
    decode_zap,
    encode_fatzap,
    encode_microzap,
    encode_zap,
    microzap_fits,
    salt_for,
    uint64_items,
    zap_hash,
)
from fusezfs.send.znode import Znode, dirent_object, dirent_value, trivial_acl, znode_flags


@pytest.mark.parametrize("n", [0, 4, 8, 312, 4096, 131072, 131072 + 12, 3 * 131072 + 400, (1 << 20) + 2052])
def test_fletcher4_matches_the_word_loop(n):
    data = random.Random(n).randbytes(n)
    assert fletcher4(data) == fletcher4_reference(data)
    state = (1 << 63, 5, (1 << 64) - 1, 7)
    assert fletcher4(data, state) == fletcher4_reference(data, state)


def test_fletcher4_slots_never_overflow():
    """The largest words in every slot of whole chunks (1 MiB) and a part of one more: the
    row sums are at their largest."""
    data = b"\xff" * ((2 << 20) + 4 * 512 * 3 + 8)
    assert fletcher4(data) == fletcher4_reference(data)


def test_fletcher4_is_incremental():
    data = random.Random(1).randbytes(200_000)
    f = Fletcher4()
    for a, b in ((0, 312), (312, 100_000), (100_000, 200_000)):
        f.update(data[a:b])
    assert f.state == fletcher4_reference(data)
    with pytest.raises(ValueError):
        f.update(b"abc")


def _stream(recs, **kw) -> bytes:
    buf = io.BytesIO()
    w = R.StreamWriter(buf, **kw)
    for r in recs:
        w.write(r)
    w.end()
    return buf.getvalue()


RECS = [R.Begin("tank/fs@a", 0x1234, 0, 1700000000),
        R.Object(5, 19, 17, 512, b"\x01" * 264),
        R.Free(5, 512),
        R.Write(5, 19, 0, b"x" * 512),
        R.FreeObjects(6, 10)]


@pytest.mark.parametrize("checksums", [False, True])
def test_records_round_trip_and_checksums(checksums):
    raw = _stream(RECS, record_checksums=checksums)
    assert len(raw) == 6 * R.RECORD_SIZE + 264 + 512
    (begin, recs), = list(R.read_stream(io.BytesIO(raw)))
    assert begin.toname == "tank/fs@a" and begin.toguid == 0x1234
    assert begin.creation_time == 1700000000 and begin.hdrtype == R.DMU_SUBSTREAM
    obj, free, write, fo, end = recs
    assert (obj.object, obj.type, obj.bonustype, obj.blksz, obj.bonus) == (5, 19, 17, 512, b"\x01" * 264)
    assert (free.object, free.offset, free.length) == (5, 512, R.FREE_TO_END)
    assert (write.object, write.offset, bytes(write.data)) == (5, 0, b"x" * 512)
    assert (fo.firstobj, fo.numobjs) == (6, 10)
    assert end.toguid == 0x1234 and all(r.toguid == 0x1234 for r in (obj, free, write, fo))
    # the END checksum is fletcher-4 of everything before the END record
    assert end.checksum == fletcher4(raw[:-R.RECORD_SIZE])
    stored = struct.unpack_from("<4Q", raw, R.RECORD_SIZE + R.CHECKSUM_OFFSET)
    assert any(stored) == checksums


def test_flipped_bytes_and_truncation_are_refused():
    raw = _stream(RECS)
    for pos in (R.RECORD_SIZE + 40, R.RECORD_SIZE * 2 + 100, len(raw) - R.RECORD_SIZE - 100,
                len(raw) - R.RECORD_SIZE + 8):
        bad = bytearray(raw)
        bad[pos] ^= 0x10
        with pytest.raises(R.StreamError) as e:
            list(R.read_stream(io.BytesIO(bytes(bad))))
        assert "invalid" in e.value.message
    for cut in (1, R.RECORD_SIZE, R.RECORD_SIZE + 100, len(raw) - 1):
        with pytest.raises(R.StreamError) as e:
            list(R.read_stream(io.BytesIO(raw[:cut])))
        assert e.value.message == "invalid backup stream"
    with pytest.raises(R.StreamError):
        list(R.read_stream(io.BytesIO(b"\0" * R.RECORD_SIZE)))


def test_byteswapped_stream_is_read():
    """A stream from a big-endian sender: every header field and the checksum words swapped."""
    raw = bytearray(_stream(RECS[:1] + [R.FreeObjects(6, 10)]))

    def swap(fmt: str, off: int) -> None:
        vals = struct.unpack_from("<" + fmt, raw, off)
        struct.pack_into(">" + fmt, raw, off, *vals)
    swap("Ii", 0)
    swap("QQQIIQQ", 8)
    swap("Ii", 312)
    swap("QQQ", 320)
    # the END record: its checksum is fletcher-4 over byte-swapped words
    swap("Ii", 624)
    words = struct.unpack_from("<%dI" % (624 // 4), raw)
    ck = fletcher4(struct.pack(">%dI" % len(words), *words)[:0] + struct.pack("<%dI" % len(words),
                   *[int.from_bytes(w.to_bytes(4, "little"), "big") for w in words]))
    struct.pack_into(">4QQ", raw, 632, *ck, 0x1234)
    (begin, recs), = list(R.read_stream(io.BytesIO(bytes(raw))))
    assert begin.toguid == 0x1234 and (recs[0].firstobj, recs[0].numobjs) == (6, 10)


def test_nvlist_round_trip():
    nv = {"fromguid": 123, "toname": "tank/fs@b", "flag": None, "on": True, "neg": -5,
          "sub": {"a": "x", "b": [1, 2, 3]}, "strs": ["p", "qq"], "arr": [{"k": 1}, {"k": 2}],
          "u8": nvlist.Typed(nvlist.UINT8, 7), "raw": b"\x01\x02\x03"}
    packed = nvlist.encode(nv)
    assert packed[:4] == b"\x01\x01\x00\x00" and len(packed) % 4 == 0
    assert nvlist.decode(packed) == {**nv, "flag": True, "u8": 7}
    with pytest.raises(nvlist.NvlistError):
        nvlist.decode(packed[:-12])


def test_nvlist_bytes_are_libnvpairs():
    """One pair, byte for byte: {"a": uint64 1} as nvlist_pack(NV_ENCODE_XDR) writes it."""
    assert nvlist.encode({"a": 1}) == bytes.fromhex(
        "01010000" "00000000" "00000001"            # header, version 0, NV_UNIQUE_NAME
        "00000020" "00000020"                        # encoded 32, decoded NVP_SIZE_CALC(2, 8)
        "00000001" "61000000"                        # name "a"
        "00000008" "00000001"                        # DATA_TYPE_UINT64, 1 element
        "0000000000000001" "0000000000000000")       # value, end of list


def test_zap_hash_is_zfs_crc64():
    # CRC-64/XZ-style reflected ECMA table, seeded with the salt: h(salt, "") keeps the salt
    assert zap_hash(0xFFFF000000000001, b"") == 0xFFFF000000000000 & ~((1 << 36) - 1)
    assert zap_hash(1, b"a") != zap_hash(1, b"b")
    assert zap_hash(1, b"a") & ((1 << 36) - 1) == 0


def test_microzap_round_trip_and_size():
    items = uint64_items({b"a": 1, b"bb": 2, b"c" * 49: 3})
    assert microzap_fits(items)
    data = encode_microzap(items, salt_for(3))
    assert len(data) == 512 and decode_zap(data) == dict(items)
    many = uint64_items({b"f%d" % i: i for i in range(100)})
    blksz, data = encode_zap(many, salt_for(9))
    assert blksz == len(data) == 8192 and decode_zap(data, blksz) == dict(many)
    assert not microzap_fits(uint64_items({b"n" * 50: 1}))


@pytest.mark.parametrize("count,namelen", [(3, 60), (2100, 20), (5000, 12), (40000, 8)])
def test_fatzap_round_trip(count, namelen):
    rnd = random.Random(count)
    names = {(b"%d-" % i + rnd.randbytes(namelen).hex().encode())[:max(namelen, 8)]
             for i in range(count)}
    items = uint64_items({n: rnd.getrandbits(63) for n in names})
    blksz, data = encode_zap(items, salt_for(77))
    assert blksz == 1 << FZAP_BLOCK_SHIFT and len(data) % blksz == 0
    assert decode_zap(data, blksz) == dict(items)
    assert encode_fatzap(items, salt_for(77)) == data          # deterministic


def test_fatzap_with_an_external_pointer_table():
    """More leaves than the header's embedded table holds: the table gets blocks of its own
    (1 KiB blocks here, so that a few thousand names need them)."""
    items = uint64_items({b"name-%05d" % i: i for i in range(5000)})
    data = encode_fatzap(items, salt_for(5), bs=10)
    zt_blk, zt_numblks, zt_shift = struct.unpack_from("<3Q", data, 16)
    assert zt_numblks > 0 and zt_shift > 6 and zt_blk > 1
    assert decode_zap(data, 1024) == dict(items)


def test_zap_decoder_refuses_garbage():
    with pytest.raises(ZapError):
        decode_zap(bytes(512))
    blksz, data = encode_zap(uint64_items({b"x" * 60: 1}), 5)
    bad = bytearray(data)
    bad[8] ^= 1                                                   # the magic
    with pytest.raises(ZapError):
        decode_zap(bytes(bad), blksz)


def test_trivial_acl_is_zfs_fuses():
    """The ACEs zfs-fuse wrote for a 0755 directory and a 0640 file (from its send stream)."""
    acl, n = trivial_acl(0o40755)
    assert n == 6 and [struct.unpack_from("<HHI", acl, 8 * i) for i in range(6)] == [
        (1, 0x1000, 0), (0, 0x1000, 786743), (1, 0x2040, 6), (0, 0x2040, 33),
        (1, 0x4000, 786710), (0, 0x4000, 1179817)]
    acl, _ = trivial_acl(0o100640)
    assert [struct.unpack_from("<HHI", acl, 8 * i)[2] for i in range(6)] == [
        32, 786711, 38, 1, 786743, 1179784]
    assert znode_flags(0o40755) == 0x40800000144 and znode_flags(0o100644) == 0x40800000004
    assert znode_flags(0o120777) == 0x40800000104


def test_znode_round_trip():
    z = Znode(0o120777, 1, 3, 1, 9, 12, 34, 0, 10**18 + 5, 2 * 10**18, 3, 4, target=b"a")
    raw = z.encode()
    assert len(raw) == 265
    back = Znode.decode(raw)
    assert (back.mode, back.size, back.parent, back.links, back.gen, back.uid, back.gid,
            back.atime, back.mtime, back.target) == (0o120777, 1, 3, 1, 9, 12, 34, 10**18 + 5,
                                                     2 * 10**18, b"a")
    assert dirent_value(7, 0o100644) == (8 << 60) | 7 and dirent_object((4 << 60) | 9) == (9, 4)
