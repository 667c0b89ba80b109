"""fusezfs's send streams against real ZFS code: OpenZFS 2.1.11's `zstream dump -v` reads them
with no checksum complaint and the record counts expected, and zfs-fuse (pool version 23)
receives the full and the incremental stream into trees equal to the source (contents, sizes,
holes, modes, owners, times, symlinks, hard links; zfs-fuse keeps no xattrs)."""
from __future__ import annotations

import json
import os
import random
import stat

import pytest

import zstream
from fusezfs.api import Handle
from fusezfs.engine.devices import MemoryDevice
from fusezfs.engine.pool import Pool
from fusezfs.send.sender import Source, send_snapshot
from fusezfs.engine.verify import verify

MiB = 1 << 20
ROOT = 1


@pytest.fixture
def handle():
    pool = Pool.create("tank", [("file", [MemoryDevice(256 * MiB, "d0")])])
    h = Handle(pool)
    with pool.lock:
        h.dsl.create("tank/fs")
    yield h
    pool.sync()
    assert verify(pool).ok


def populate(h: Handle) -> None:
    """A tree with every kind of thing a stream carries."""
    fs = h.filesystem("tank/fs")
    fs.write_file("/a", b"hello\n")
    fs.makedirs("/d/deeper")
    fs.write_file("/d/b", b"x\n")
    fs.symlink(ROOT, "sl", b"a")
    fs.symlink(ROOT, "longlink", b"t" * 100)
    fs.link(fs.resolve("/a"), ROOT, "hl")
    fh, _ = fs.create(ROOT, "sparse")
    fs.write(fh, 500000, b"end")
    fs.release(fh)
    fs.write_file("/big", random.Random(1).randbytes(300 * 1024))
    fs.setattr(fs.resolve("/a"), mode=0o640)
    fs.setattr(fs.resolve("/d/b"), uid=12, gid=34, mtime=1_600_000_000 * 10**9)
    fs.write_file("/d/" + "n" * 60, b"long name")       # a fatzap directory
    for i in range(100):
        fs.write_file(f"/many/f{i}", b"%d" % i) if i else fs.makedirs("/many")
    fs.mknod(ROOT, "fifo", stat.S_IFIFO | 0o600)
    fs.write_file("/empty", b"")


def change(h: Handle) -> None:
    fs = h.filesystem("tank/fs")
    fs.write_file("/a", b"changed content\n")
    fs.unlink(ROOT, "big")
    fs.makedirs("/e")
    fs.rename(fs.resolve("/d"), "b", fs.resolve("/e"), "b-moved")
    fh = fs.open(fs.resolve("/sparse"), os.O_RDWR)
    fs.write(fh, 10, b"start")
    fs.release(fh)
    fs.setattr(fs.resolve("/many/f5"), size=3 * 131072 + 7)


def tree_of(h: Handle, name: str) -> dict:
    """path -> what is compared, read through fusezfs's library."""
    fs = h.filesystem(name)
    out = {}

    def walk(ino: int, path: str) -> None:
        for e in fs.readdir(ino):
            if e.name in (b".", b".."):
                continue
            p = f"{path}/{e.name.decode()}".lstrip("/")
            a = fs.getattr(e.ino)
            item = dict(mode=a.st_mode, uid=a.st_uid, gid=a.st_gid, size=a.st_size,
                        nlink=a.st_nlink, mtime=a.st_mtime_ns // 10**9, ino=e.ino)
            if stat.S_ISREG(a.st_mode):
                fh = fs.open(e.ino)
                item["data"] = fs.read(fh, 0, a.st_size + 1).hex()
                fs.release(fh)
            elif stat.S_ISLNK(a.st_mode):
                item["target"] = fs.readlink(e.ino).decode()
            elif stat.S_ISDIR(a.st_mode):
                walk(e.ino, p)
            out[p] = item
    walk(ROOT, "")
    return out


WALKER = r"""
import hashlib, json, os, stat, sys
root = sys.argv[1]; out = {}
for dp, dns, fns in os.walk(root):
    for n in dns + fns:
        p = os.path.join(dp, n); st = os.lstat(p)
        e = dict(mode=st.st_mode, uid=st.st_uid, gid=st.st_gid, size=st.st_size,
                 nlink=st.st_nlink, mtime=int(st.st_mtime), ino=st.st_ino, blocks=st.st_blocks)
        if stat.S_ISREG(st.st_mode): e["data"] = open(p, "rb").read().hex()
        if stat.S_ISLNK(st.st_mode): e["target"] = os.readlink(p)
        out[os.path.relpath(p, root)] = e
print(json.dumps(out))
"""


def same_trees(ours: dict, theirs: dict) -> None:
    """Equal but for inode numbers, which must only group the same hard links."""
    assert sorted(ours) == sorted(theirs)
    for path in ours:
        a, b = dict(ours[path]), dict(theirs[path])
        b.pop("blocks", None)
        a.pop("ino"), b.pop("ino")
        assert a == b, path
    groups = lambda t: sorted(sorted(p for p in t if t[p]["ino"] == i)  # noqa: E731
                              for i in {v["ino"] for v in t.values()})
    assert groups(ours) == groups(theirs)


def streams(h: Handle, tmp_path) -> tuple:
    with h.pool.lock:
        populate(h)
        h.dsl.snapshot(["tank/fs@a"])
        change(h)
        h.dsl.snapshot(["tank/fs@b"])
        a, b = h.dsl.get("tank/fs@a"), h.dsl.get("tank/fs@b")
        with open(tmp_path / "full", "wb") as f:
            wfull = send_snapshot(h.dsl, a, f)
        with open(tmp_path / "incr", "wb") as f:
            wincr = send_snapshot(h.dsl, b, f, Source(a.guid, a.createtxg, h.dsl.tree(a)))
    return wfull, wincr


def test_zstream_reads_full_and_incremental_streams(handle, tmp_path):
    zstream.require()
    wfull, wincr = streams(handle, tmp_path)
    for path, w in ((tmp_path / "full", wfull), (tmp_path / "incr", wincr)):
        r = zstream.dump(path)
        assert r.returncode == 0, r.stderr
        assert "checksum" not in r.stderr and "Expected checksum" not in r.stdout
        assert f"Total stream length = {w.size} " in r.stdout
        counts = zstream.summary(r.stdout)
        assert {k: counts[k] for k in ("BEGIN", "OBJECT", "FREEOBJECTS", "WRITE", "FREE",
                                       "END")} == \
            {k: w.counts[i] for i, k in enumerate(["BEGIN", "OBJECT", "FREEOBJECTS", "WRITE",
                                                   "FREE", "END"])}
    full = zstream.summary(zstream.dump(tmp_path / "full").stdout)
    # 2 special objects + 112 inodes (root, many and its 99 files, a, d, deeper, b, sl,
    # longlink, sparse, big, long name, fifo, empty: hl is a name, not an inode)
    assert full["OBJECT"] == 2 + 112
    # one WRITE per block: master, unlinked set, each directory's ZAP (root 1, d 2 (fatzap),
    # deeper 1, many 1), a 1, b 1, longlink 1, sparse 1, big 3, long name 1, 99 small files
    assert full["WRITE"] == 2 + 5 + 1 + 1 + 1 + 1 + 3 + 1 + 99
    assert full["FREEOBJECTS"] == 1                      # everything past the last object
    incr = zstream.summary(zstream.dump(tmp_path / "incr").stdout)
    # changed: root, a, d, e (new), b (moved), sparse, many/f5 and their neighbours in
    # rewritten leaves only where the inode record itself changed; big is gone
    assert incr["FREEOBJECTS"] >= 1 and incr["OBJECT"] < 20
    assert f"toname = tank/fs@b" in zstream.dump(tmp_path / "incr").stdout


def test_dry_run_size_is_the_real_size(handle, tmp_path):
    wfull, wincr = streams(handle, tmp_path)
    with handle.pool.lock:
        a, b = handle.dsl.get("tank/fs@a"), handle.dsl.get("tank/fs@b")
        dfull = send_snapshot(handle.dsl, a, None, dry=True)
        dincr = send_snapshot(handle.dsl, b, None, Source(a.guid, a.createtxg,
                                                          handle.dsl.tree(a)), dry=True)
    assert (dfull.size, dfull.counts) == (wfull.size, wfull.counts)
    assert (dincr.size, dincr.counts) == (wincr.size, wincr.counts)
    assert os.path.getsize(tmp_path / "full") == wfull.size


def test_zfsfuse_receives_full_and_incremental(handle, tmp_path):
    from zfsfuse import ZfsFuse, require
    require()
    streams(handle, tmp_path)
    with handle.pool.lock:
        want_a = tree_of(handle, "tank/fs@a")
        want_b = tree_of(handle, "tank/fs@b")
    mnt = tmp_path / "mnt"
    (tmp_path / "walk.py").write_text(WALKER)
    with ZfsFuse() as zf:
        dev = zf.sparse_file("d0", 256 * MiB)
        zf.zpool("create", "-m", str(mnt), "zt", dev, check=True)
        r = zf.run(["sh", "-c", f"zfs receive zt/copy < {tmp_path / 'full'}"])
        assert r.returncode == 0, r.stderr
        got_a = json.loads(zf.run(["python3", tmp_path / "walk.py", mnt / "copy"],
                                  check=True).stdout)
        same_trees(want_a, got_a)
        assert got_a["sparse"]["blocks"] * 512 < 200_000           # a hole, not zeros
        # reading set atimes: -F rolls them back, as with any receive into a used copy
        r = zf.run(["sh", "-c", f"zfs receive -F zt/copy < {tmp_path / 'incr'}"])
        assert r.returncode == 0, r.stderr
        # zfs-fuse keeps stale kernel caches over a receive: look through a fresh mount
        zf.zfs("umount", "zt/copy", check=True, busy_retries=10)
        zf.zfs("mount", "zt/copy", check=True)
        got_b = json.loads(zf.run(["python3", tmp_path / "walk.py", mnt / "copy"],
                                  check=True).stdout)
        same_trees(want_b, got_b)
        snaps = zf.zfs("list", "-H", "-t", "snapshot", "-o", "name", check=True).stdout.split()
        assert snaps == ["zt/copy@a", "zt/copy@b"]
