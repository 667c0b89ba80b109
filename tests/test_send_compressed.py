"""`send -c` (send/compressed.py): zstd blocks go as stored, with ZFS's zstd header, in WRITE
records flagged zstd and a BEGIN with the COMPRESSED and ZSTD features; the stream is smaller
than a plain one and its estimate exact; zstream reads it; a receiver into a zstd dataset keeps
the very frames (same physical sizes), into an uncompressed one the data; broken frames are
refused; the trees equal the source's."""
from __future__ import annotations

import io

import zstream
from fusezfs.formats.bp import COMP_ZSTD, decode_bp
from fusezfs.zpl.posix_layout import K_DATA, kind_hi, kind_lo
from fusezfs.send import records as R
from fusezfs.send.compressed import ZIO_COMPRESS_ZSTD
from test_send_cli import Cli, trees

TEXT = b"".join(b"line %d of a compressible file, more or less the same\n" % i
                for i in range(20000))


def stored_blocks(c: Cli, snap: str) -> list[tuple[int, int]]:
    """(compression, physical size) of every data block of `snap`, in key order."""
    with c.opened(snap.split("/")[0]) as h:
        tree = h.dsl.tree(h.dsl.get(snap))
        fs = h.filesystem(snap)
        ino = fs.resolve("/text")
        return [(bp.comp, bp.psize) for _k, v in tree.scan(kind_lo(ino, K_DATA),
                                                           kind_hi(ino, K_DATA))
                if (bp := decode_bp(v)) is not None]


def test_compressed_send_and_receive(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSEZFS_STATE_DIR", str(tmp_path / "state"))
    c = Cli(tmp_path)
    c.pool("tank")
    c.pool("other")
    c.ok("create", "-o", "compression=zstd", "tank/z")
    c.ok("create", "-o", "compression=zstd", "other/zz")
    with c.opened("tank") as h:
        fs = h.filesystem("tank/z")
        fs.write_file("/text", TEXT)                       # 8 records, the last one short
        fs.write_file("/small", TEXT[:10000])
        fs.write_file("/random", bytes(range(256)) * 1000)
        h.dsl.snapshot(["tank/z@a"])
        fs.write_file("/text", TEXT[:300000] + b"changed" + TEXT[300007:])
        h.dsl.snapshot(["tank/z@b"])
    plain = c.ok("send", "tank/z@a").stdout
    comp = c.ok("send", "-c", "tank/z@a").stdout
    assert len(comp) < len(plain) // 3
    lines = c.ok("send", "-c", "-nP", "tank/z@a").stdout.decode().splitlines()
    assert lines[-1] == f"size\t{len(comp)}"
    reader = R.StreamReader(io.BytesIO(comp))
    begin = reader.begin()
    assert begin.features == R.FEATURE_COMPRESSED | R.FEATURE_ZSTD
    writes = [r for r in reader.records() if isinstance(r, R.Write)]
    zstd = [w for w in writes if w.compressiontype == ZIO_COMPRESS_ZSTD]
    assert len(zstd) >= 7 and all(w.logical_size == 128 << 10 and
                                  w.compressed_size % 512 == 0 for w in zstd)
    if zstream.unavailable() is None:
        (tmp_path / "c").write_bytes(comp)
        d = zstream.dump(tmp_path / "c")
        assert d.returncode == 0 and "Expected checksum" not in d.stdout, d.stderr
    # into a zstd dataset the frames are kept as they were; into one without compression
    # the data is the same
    for target in ("other/zz/copy", "other/plain"):
        r = c.sh(f"$F send -c tank/z@a | $F receive {target} && "
                 f"$F send -c -i @a tank/z@b | $F receive {target}")
        assert r.returncode == 0, r.stderr
        trees(c, [("tank/z@a", f"{target}@a"), ("tank/z@b", f"{target}@b")])
    src = stored_blocks(c, "tank/z@b")
    kept = stored_blocks(c, "other/zz/copy@b")
    assert [b for b in src if b[0] == COMP_ZSTD][:-1] == [b for b in kept
                                                          if b[0] == COMP_ZSTD][:-1]
    assert all(comp_ != COMP_ZSTD for comp_, _p in stored_blocks(c, "other/plain@b"))
    # a frame that does not decompress to its logical size is refused, nothing kept
    broken = bytearray(comp)
    first = comp.index(b"\x28\xb5\x2f\xfd")                # the first zstd frame's magic
    broken[first + 40:first + 48] = b"\xff" * 8
    from fusezfs.send.fletcher import fletcher4
    end = len(broken) - R.RECORD_SIZE                      # keep the checksums right
    import struct
    struct.pack_into("<4Q", broken, end + 8, *fletcher4(bytes(broken[:end])))
    r = c.run("receive", "other/zz/bad", input=bytes(broken))
    assert (r.returncode, r.stderr.decode()) == (
        1, "cannot receive new filesystem stream: invalid backup stream\n")
    assert c.run("list", "other/zz/bad").returncode == 1
    c.check()
