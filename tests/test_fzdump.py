"""tools/fzdump: the independent pool dumper.

Two kinds of tests: hand-made pool images built here straight from docs/FORMAT.md (so they
exercise the dumper without the library, and garbage cases the library never writes), and
pools created by the real library, whose dump must name what the library put in them.
"""
import hashlib
import json
import os
import struct
import subprocess
import sys
import zlib

import pytest
import xxhash
import zstandard

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FZDUMP = os.path.join(ROOT, "tools", "fzdump")
LABEL = 262144
MiB = 1 << 20


def fzdump(*args):
    r = subprocess.run([sys.executable, FZDUMP, *map(str, args)], capture_output=True,
                       text=True, timeout=120)
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, r.stdout + r.stderr


# ---- hand-made images, from docs/FORMAT.md --------------------------------------------------

def xxh(b):
    return xxhash.xxh3_128_digest(b)


def config_area(cfg, gen):
    text = json.dumps(cfg).encode()
    head = b"FZFSLABL" + struct.pack("<IIQ", 1, len(text), gen)
    return (head + xxh(head + text) + text).ljust(16384, b"\0")


def uberblock(txg, guid, mos=bytes(128), sm=bytes(128), ts=1700000000):
    body = b"FZFSUBER" + struct.pack("<IIQQQ", 1, 0, txg, guid, ts) + mos + sm
    body = body.ljust(1008, b"\0")
    return body + xxh(body)


def bp(dvas, lsize, psize, birth, comp, btype, cksum, ck=1, level=0):
    raw = b"".join(struct.pack("<IIQ", v, asize, off) for v, asize, off in dvas)
    raw = raw.ljust(48, b"\0")
    raw += struct.pack("<IIQQBBBBBBH", lsize, psize, birth, 0, comp, ck, btype, level,
                       len(dvas), 0, 0)
    return raw + cksum.ljust(32, b"\0") + bytes(16)


def write_block(files, vdev, off, data, comp=1, btype=3, birth=1, ck=1, ndvas=1):
    """Write data at off on every file of the list (a mirror); return its BP."""
    phys = {0: data, 1: zstandard.ZstdCompressor().compress(data),
            2: zlib.compress(data)}[comp]
    for f in files:
        with open(f, "r+b") as fh:
            fh.seek(off)
            fh.write(phys)
    asize = -(-len(phys) // 512) * 512
    ck_bytes = xxh(phys) if ck == 1 else hashlib.sha256(phys).digest()
    return bp([(vdev, asize, off)] * ndvas, len(data), len(phys), birth, comp, btype,
              ck_bytes, ck), asize


def spacemap(sections):
    def leb(n):
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)
    out = b"FZSM" + struct.pack("<II", 1, len(sections))
    for vdev, extents in sections:
        out += struct.pack("<II", vdev, len(extents))
        end = 0
        for s, e in extents:
            out += leb((s - end) // 512) + leb((e - s) // 512)
            end = e
    return out


def node(level, entries):
    """A tree node payload (fusezfs/formats/node.py's docstring): leaf entries are
    (key, ref, value), internal ones (key, child BP)."""
    out = b"FZND" + struct.pack("<HBBI", 1, level, 0, len(entries))
    for e in entries:
        if level == 0:
            key, ref, value = e
            out += struct.pack("<HBBI", len(key), ref, 0, len(value)) + key + value
        else:
            key, child = e
            out += struct.pack("<H", len(key)) + key + child
    return out


class Writer:
    """Writes blocks one after the other from 512 KiB on, remembering the extents."""

    def __init__(self, tops):
        self.tops, self.cursor, self.extents = tops, 2 * LABEL, []

    def __call__(self, data, btype=2, level=0, comp=1, ck=1, ndvas=1):
        raw, asize = write_block(self.tops[0], 0, self.cursor, data, comp, btype, 1, ck, ndvas)
        raw = raw[:75] + bytes([level]) + raw[76:]
        if self.extents and self.extents[-1][1] == self.cursor:
            self.extents[-1] = (self.extents[-1][0], self.cursor + asize)
        else:
            self.extents.append((self.cursor, self.cursor + asize))
        self.cursor += asize
        return raw


def make_pool(tmp_path, layout=(("file", 1),), size=MiB, txgs=(5,), name="hand", mos=None,
              sm_edit=lambda extents: extents):
    """Build a pool: layout lists top vdevs as (type, nchildren). Returns (paths by top, guid).

    Every txg gets an uberblock in both labels of every file, whose space map is a block at
    vdev 0, offset LABEL + 512 * txg (so older txgs' maps stay readable). If mos is given, it is
    called with a Writer and returns the MOS root BP of the last txg; sm_edit may alter the
    extents of vdev 0 in the last txg's space map.
    """
    guid, tree, tops, g = 0xABCDEF, [], [], 100
    for tid, (typ, n) in enumerate(layout):
        children = []
        for c in range(n):
            p = tmp_path / f"v{tid}c{c}.img"
            with open(p, "wb") as fh:
                fh.truncate(size)
            children.append({"path": str(p), "guid": g})
            g += 1
        tree.append({"id": tid, "type": typ, "guid": g, "children": children})
        tops.append([c["path"] for c in children])
        g += 1
    for tid, top in enumerate(tree):
        for c in top["children"]:
            cfg = {"name": name, "pool_guid": guid, "state": "active", "version": 1,
                   "guid": c["guid"], "top_guid": top["guid"], "hostname": "h",
                   "created": 1700000000, "vdev_tree": tree}
            with open(c["path"], "r+b") as fh:
                for lab in (0, size - LABEL):
                    fh.seek(lab)
                    fh.write(config_area(cfg, 1))
    writer = Writer(tops)
    mos_bp = mos(writer) if mos else bytes(128)
    for txg in txgs:
        off = LABEL + 512 * txg
        last = txg == txgs[-1]
        extents = [(off, off + 512)] + (writer.extents if last else [])
        smdata = spacemap([(0, sm_edit(extents) if last else extents)])
        smbp, _ = write_block(tops[0], 0, off, smdata, birth=txg)
        ub = uberblock(txg, guid, sm=smbp, mos=mos_bp if last else bytes(128))
        for paths in tops:
            for p in paths:
                with open(p, "r+b") as fh:
                    for lab in (0, size - LABEL):
                        fh.seek(lab + 131072 + 1024 * (txg % 128))
                        fh.write(ub)
    return tops, guid


def two_level_mos(w):
    """MOS: an internal node over two leaves; an objset whose tree has one leaf, a data block."""
    data = w(b"hello world " * 100, btype=1, comp=0, ck=2)
    objset = w(node(0, [(b"file1", 1, data), (b"greeting", 0, b"hi there")]))
    leaf1 = w(node(0, [(b"errors", 0, b'{"devices": {}, "blocks": {}}'),
                       (b"objset\0tank", 2, objset)]), ndvas=2)
    leaf2 = w(node(0, [(b"prop\0comment", 0, b"my pool"), (b"rootprops", 0, b"{}")]))
    return w(node(1, [(b"", leaf1), (b"prop", leaf2)]), level=1)


def test_hand_single_file(tmp_path):
    tops, _ = make_pool(tmp_path, txgs=(3, 4, 5))
    rc, out = fzdump(*tops[0])
    assert rc == 0, out
    assert "label 0 @ 0x0: valid, generation 1" in out
    assert "label 1 @ 0xc0000: valid, generation 1" in out
    assert "pool 'hand'" in out
    assert "txg 5 " in out and "<= import <= dumped" in out
    assert "txg 3 " in out and "in 2 labels" in out
    assert "vdev 0: 1 extents, 512 bytes allocated" in out
    assert "[0x40a00, 0x40c00) 512" in out
    assert "lsize=23 psize=32 " in out and " zstd xxh128 spacemap L0 birth=5 cksum=" in out
    rc, out = fzdump("--verify", *tops[0])
    assert rc == 0 and "0 bad" in out, out


def test_hand_older_txg(tmp_path):
    tops, _ = make_pool(tmp_path, txgs=(3, 4, 5))
    rc, out = fzdump("--txg", 3, *tops[0])
    assert rc == 0 and "txg 3 " in out, out
    assert [l for l in out.splitlines() if "<= dumped" in l][0].startswith("  txg 3 ")
    assert "[0x40600, 0x40800) 512" in out
    rc, out = fzdump("--txg", 99, *tops[0])
    assert rc == 1 and "no valid uberblock of txg 99" in out


def test_hand_torn_label_and_uberblock(tmp_path):
    tops, _ = make_pool(tmp_path, txgs=(3, 4))
    with open(tops[0][0], "r+b") as fh:
        fh.seek(50)                       # inside label 0's JSON
        fh.write(b"#")
        fh.seek(131072 + 1024 * 4 + 500)  # label 0's slot of txg 4
        fh.write(b"#")
    rc, out = fzdump(*tops[0])
    assert rc == 0, out
    assert "label 0 @ 0x0: INVALID (digest mismatch)" in out
    assert "label 1 @ 0xc0000: valid" in out
    assert "txg 4 " in out and "in 1 labels (v0c0.img:L1) <= import" in out


def test_hand_mirror_bad_copy(tmp_path):
    tops, _ = make_pool(tmp_path, layout=(("mirror", 2),), txgs=(7,))
    rc, out = fzdump("--verify", *tops[0])
    assert rc == 0 and "vdev 0: mirror" in out and "0 bad" in out, out
    with open(tops[0][1], "r+b") as fh:   # damage the second child's copy of the space map
        fh.seek(LABEL + 512 * 7 + 3)
        fh.write(b"\xff")
    rc, out = fzdump(*tops[0])            # the first copy is good: no complaint
    assert rc == 0 and "bad copy" not in out and "512 bytes allocated" in out, out
    rc, out = fzdump("--verify", *tops[0])
    assert rc == 1 and "bad copy on vdev 0" in out and "1 bad" in out, out
    rc, out = fzdump(tops[0][1])          # alone, the damaged child has no good copy
    assert rc == 0 and "no good copy" in out, out


def test_hand_stripe_and_missing_device(tmp_path):
    tops, _ = make_pool(tmp_path, layout=(("file", 1), ("file", 1)), txgs=(2,))
    rc, out = fzdump(tops[1][0], tops[0][0])   # order of the files does not matter
    assert rc == 0 and "vdev 0: file" in out and "vdev 1: file" in out, out
    assert "in 4 labels" in out
    rc, out = fzdump(tops[1][0])
    assert "MISSING" in out and "no device present for vdev(s) [0]" in out, out


def test_garbage(tmp_path):
    junk = tmp_path / "junk.img"
    junk.write_bytes(os.urandom(MiB))
    rc, out = fzdump(junk)
    assert rc == 1 and "INVALID (bad magic" in out and "no valid label config" in out, out
    small = tmp_path / "small.img"
    small.write_bytes(b"x" * 1000)
    rc, out = fzdump(small, tmp_path / "nonexistent.img")
    assert rc == 1 and "too small for two labels" in out and "No such file" in out, out
    # a valid pool whose space map BP points at nonsense
    tops, guid = make_pool(tmp_path, txgs=(9,))
    bad_bp = bp([(0, 512, 0x80000)], 1 << 30, 7, 9, 9, 3, b"x" * 16)
    with open(tops[0][0], "r+b") as fh:
        fh.seek(131072 + 1024 * 10)
        fh.write(uberblock(10, guid, sm=bad_bp, mos=os.urandom(128)))
    rc, out = fzdump("--verify", tops[0][0])
    assert rc == 1 and "invalid block pointer" in out, out
    # well-checksummed nonsense: a config of the wrong shapes, an uberblock from the far future
    odd = tmp_path / "odd.img"
    with open(odd, "wb") as fh:
        fh.truncate(MiB)
        fh.write(config_area({"pool_guid": 1, "guid": [2], "vdev_tree": [{"id": [0]}]}, 1))
        fh.seek(131072 + 1024 * 3)
        fh.write(uberblock(3, 1, ts=2 ** 64 - 1, sm=bp([(0, 512, 0x80000)], 9, 9, 3, 0, 3, b"")))
    rc, out = fzdump(odd)
    assert rc == 0 and "!! config malformed" in out and "time 18446744073709551615?" in out
    assert "space map: no device present for vdev(s) [0]" in out, out


def test_hand_trees(tmp_path):
    tops, _ = make_pool(tmp_path, mos=two_level_mos)
    rc, out = fzdump("--verify", *tops[0])
    assert rc == 0 and "verify: 6 blocks read, 0 bad" in out, out
    assert "  node L1, 2 children: <0:" in out
    assert "    node L0, 2 items: <0:0x80800:0x200> <0:0x80800:0x200> " in out
    assert "      'objset\\0tank' tree: <0:" in out
    assert "          'file1' block: <0:0x80000:0x600> lsize=1200 psize=1200 off sha256 data" in out
    assert "          'greeting' inline: 8 bytes 'hi there'" in out
    assert "'prop\\0comment' inline: 7 bytes 'my pool'" in out
    rc, out = fzdump("--no-items", *tops[0])
    assert rc == 0 and "file1" not in out and "errors" not in out, out
    assert "      'objset\\0tank' tree: <0:" in out      # trees are still named and descended
    assert "          node L0, 2 items: <0:0x80600:0x200> " in out
    with open(tops[0][0], "r+b") as fh:          # damage the data block
        fh.seek(2 * LABEL + 100)
        fh.write(b"#")
    rc, out = fzdump(*tops[0])                   # data blocks are read only by --verify
    assert rc == 0 and "!!" not in out, out
    rc, out = fzdump("--verify", *tops[0])
    assert rc == 1 and "1 bad" in out and "block of 'file1': no good copy" in out, out


def test_hand_malformed_trees(tmp_path):
    def mos(w):
        unsorted = w(node(0, [(b"b", 0, b"1"), (b"a", 0, b"2")]))
        wrong_level = w(node(0, [(b"x", 0, b"")]), level=1)
        leaf = w(node(0, [(b"m", 0, b""), (b"t1", 2, unsorted), (b"t2", 2, wrong_level),
                          (b"t3", 2, bytes(128)), (b"t4", 2, b"\1" * 128)]))
        return w(node(1, [(b"", leaf), (b"a", w(node(0, [(b"n", 0, b"")])))]), level=1)
    tops, _ = make_pool(tmp_path, mos=mos)
    rc, out = fzdump("--verify", *tops[0])
    assert rc == 1, out
    assert "MOS child 0 (keys from ''): key 'm' outside the parent's range" in out
    rc, out = fzdump("--verify", "--no-items", *tops[0])
    assert "keys not strictly increasing at 'a'" not in out   # never reached: parent is bad


@pytest.mark.parametrize("edit, message", [
    (lambda x: x + [(0x90000, 0x91000)], "vdev 0: 4096 bytes allocated that no block reached "
                                          "uses (leak)"),
    (lambda x: [x[0], (x[1][0] + 0x600, x[1][1])],
     "block of 'file1': DVA <0:0x80000:0x600> not allocated in the space map"),
    (lambda x: x + [(0xc0000, 0xc0200)], "space map: vdev 0 [0xc0000, 0xc0200) not allocatable"),
    (lambda x: [x[0], (x[1][0], x[1][0] + 0x600), (x[1][0] + 0x600, x[1][1])],
     "space map: vdev 0: empty or touching extent at 0x80600"),
])
def test_hand_space_accounting(tmp_path, edit, message):
    tops, _ = make_pool(tmp_path, mos=two_level_mos, sm_edit=edit)
    rc, out = fzdump(*tops[0])
    assert rc == 0, out                          # only --verify judges
    rc, out = fzdump("--verify", *tops[0])
    assert rc == 1 and "verify: 6 blocks read, " in out and f"\n  {message}\n" in out, out


def test_parsers_reject_garbage_with_bad_only():
    """Mutated node, space map and config payloads: the parsers raise Bad and nothing else."""
    import importlib.machinery
    import importlib.util
    import random
    loader = importlib.machinery.SourceFileLoader("fzdump", FZDUMP)
    mod = importlib.util.module_from_spec(importlib.util.spec_from_loader("fzdump", loader))
    loader.exec_module(mod)
    rng = random.Random(7)
    samples = [(node(0, [(b"a", 0, b"x" * 10), (b"b", 1, bytes(128)), (b"c", 2, b"\1" * 130)]),
                mod.parse_node),
               (node(1, [(b"", b"\2" * 128), (b"k", b"\3" * 128)]), mod.parse_node),
               (spacemap([(0, [(0x40000, 0x41000), (0x50000, 0x60000)])]), mod.parse_spacemap),
               (config_area({"a": 1}, 3)[:200], lambda d: mod.parse_config(d.ljust(16384, b"\0")))]
    for base, parse in samples:
        for _ in range(3000):
            d = bytearray(base)
            for _ in range(rng.randint(1, 4)):
                r = rng.random()
                if r < 0.6:
                    d[rng.randrange(len(d))] = rng.randrange(256)
                elif r < 0.8:
                    d = d[:rng.randrange(len(d) + 1)] or bytearray(b"\0")
                else:
                    d += bytes(rng.randrange(1, 5))
            try:
                parse(bytes(d))
            except mod.Bad:
                pass


# ---- pools made by the library -----------------------------------------------------------

def library():
    pytest.importorskip("fusezfs.engine.tree")
    from fusezfs.engine.blocks import Policy
    from fusezfs.engine.devices import FileDevice
    from fusezfs.formats.bp import BT_DATA, encode_bp
    from fusezfs.engine.pool import Pool
    from fusezfs.engine.tree import REF_BLOCK
    return Pool, FileDevice, Policy, BT_DATA, encode_bp, REF_BLOCK


def pool_files(tmp_path, n):
    paths = [str(tmp_path / f"d{i}.img") for i in range(n)]
    for p in paths:
        with open(p, "wb") as fh:
            fh.truncate(64 * MiB)
    return paths


def flip(path, offset):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0xFF]))


def test_library_single_file(tmp_path):
    Pool, FileDevice, Policy, BT_DATA, encode_bp, REF_BLOCK = library()
    (path,) = pool_files(tmp_path, 1)
    pool = Pool.create("tank", [("file", [FileDevice(path)])])
    tree = pool.objset(b"home")
    tree.put(b"alpha", b"first value")
    pool.sync()
    first = pool.synced_txg
    tree.put(b"beta\x00\x01", bytes(range(20)))
    for i in range(2000):                     # enough for an internal node
        tree.put(b"many%05d" % i, b"x" * 40)
    bp = pool.blocks.write(b"payload " * 1000, BT_DATA, Policy())
    tree.put(b"blk", encode_bp(bp), REF_BLOCK)
    pool.objset(b"other").put(b"gamma", b"g")
    pool.set_prop("comment", "hello")
    pool.sync()
    txg = pool.synced_txg
    pool.close()

    rc, out = fzdump(path)
    assert rc == 0, out
    assert "pool 'tank'" in out and '"state": "active"' in out
    assert [l for l in out.splitlines() if "<= import" in l][0].startswith(f"  txg {txg} ")
    assert f"MOS tree (txg {txg}):" in out
    assert "    'objset\\0home' tree: <0:" in out and "    'objset\\0other' tree: <0:" in out
    assert "'alpha' inline: 11 bytes 'first value'" in out
    assert "'beta\\0\\x01' inline: 20 bytes '\\0\\x01\\x02" in out
    assert "'gamma' inline: 1 bytes 'g'" in out
    assert "'prop\\0comment' inline: 5 bytes 'hello'" in out
    assert "node L1, " in out and "'many01999' inline" in out
    d = bp.dvas[0]
    assert f"'blk' block: <{d.vdev}:{d.offset:#x}:{d.asize:#x}> lsize=8000 psize=" in out
    rc, out = fzdump("--no-items", path)
    assert rc == 0 and "'alpha'" not in out and "'objset\\0home' tree" in out, out

    rc, out = fzdump("--txg", first, path)    # the older state: only alpha
    assert rc == 0 and f"MOS tree (txg {first}):" in out and "'alpha' inline" in out, out
    assert "'beta" not in out and "objset\\0other" not in out

    rc, out = fzdump("--verify", path)
    assert rc == 0 and " 0 bad" in out, out
    flip(path, d.offset + 100)                # inside the data block
    rc, out = fzdump(path)                    # data blocks are read only under --verify
    assert rc == 0 and "!!" not in out, out
    rc, out = fzdump("--verify", path)
    assert rc == 1 and " 1 bad\n  block of 'blk': bad copy on vdev 0" in out, out


def test_library_mirror_and_stripe(tmp_path):
    Pool, FileDevice, Policy, BT_DATA, encode_bp, REF_BLOCK = library()
    m0, m1, s0 = pool_files(tmp_path, 3)
    pool = Pool.create("mix", [("mirror", [FileDevice(m0), FileDevice(m1)]),
                               ("file", [FileDevice(s0)])])
    tree = pool.objset(b"data")
    bps = []
    for i in range(6):                        # allocations rotate over both top-level vdevs
        bps.append(pool.blocks.write(bytes([i]) * 10000, BT_DATA, Policy(comp=1, level=3)))
        tree.put(b"file%d" % i, encode_bp(bps[-1]), REF_BLOCK)
    pool.sync()
    txg = pool.synced_txg
    pool.close(export=True)

    rc, out = fzdump("--verify", s0, m1, m0)  # any order: matched by guid
    assert rc == 0 and " 0 bad" in out, out
    assert "vdev 0: mirror" in out and "vdev 1: file" in out and '"state": "exported"' in out
    assert f"  txg {txg} " in out and "in 6 labels" in out
    assert "lsize=10000" in out and " zstd xxh128 data L0" in out
    assert {bp.dvas[0].vdev for bp in bps} == {0, 1}

    on_mirror = next(bp for bp in bps if bp.dvas[0].vdev == 0)
    flip(m1, on_mirror.dvas[0].offset + 3)    # one side of the mirror
    rc, out = fzdump("--verify", m0, m1, s0)
    assert rc == 1 and " 1 bad" in out and f"bad copy on vdev 0 {m1} @ " in out, out
    assert "no good copy" not in out          # the other side is good
    rc, out = fzdump(m1, s0)                  # without m0 the block has no good copy left
    assert "MISSING" in out, out
    rc, out = fzdump("--verify", m1, s0)
    assert rc == 1 and "no good copy" in out, out
