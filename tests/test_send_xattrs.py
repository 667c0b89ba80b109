"""Extended attributes in streams (send/xattrs.py): a full stream and incrementals that add,
change, enlarge past the inline limit and remove xattrs, and drop the file that had them, give
a received tree with the source's xattrs each time; the objects are ZFS's xattr directories and
files, which zstream reads; a stream's xattr objects come after every file object."""
from __future__ import annotations

import io

import zstream
from fusezfs.send import records as R
from fusezfs.send.xattrs import XATTR_BASE
from fusezfs.send.znode import ZFS_XATTR, Znode
from test_send_receive import check, new_handle, recv, send

ROOT = 1


def xattrs_of(h, name: str) -> dict:
    """path -> {xattr name: value} of every file with xattrs (the root as "/")."""
    fs = h.filesystem(name)
    out = {}

    def visit(ino: int, path: str) -> None:
        got = {n: fs.getxattr(ino, n) for n in fs.listxattr(ino)}
        if got:
            out[path or "/"] = got
        a = fs.getattr(ino)
        if a.st_mode & 0o170000 == 0o040000:
            for e in fs.readdir(ino):
                if e.name not in (b".", b".."):
                    visit(e.ino, f"{path}/{e.name.decode()}")
    visit(ROOT, "")
    return out


def test_xattrs_go_along(tmp_path):
    src, dst = new_handle("tank"), new_handle("other")
    with src.pool.lock:
        fs = src.filesystem("tank/fs")
        fs.write_file("/a", b"data")
        fs.write_file("/b", b"more")
        fs.makedirs("/d")
        fs.setxattr(fs.resolve("/a"), b"user.one", b"1")
        fs.setxattr(fs.resolve("/a"), b"user.two", b"")
        fs.setxattr(fs.resolve("/a"), b"trusted.t", b"secret")
        fs.setxattr(fs.resolve("/d"), b"user.dir", b"on a directory")
        fs.setxattr(ROOT, b"user.root", b"r")
        src.dsl.snapshot(["tank/fs@a"])
        fs.setxattr(fs.resolve("/a"), b"user.one", b"changed")
        fs.removexattr(fs.resolve("/a"), b"user.two")
        fs.setxattr(fs.resolve("/b"), b"user.big", bytes(range(256)) * 40)   # a block
        fs.removexattr(fs.resolve("/d"), b"user.dir")
        src.dsl.snapshot(["tank/fs@b"])
        fs.unlink(ROOT, "a")
        fs.write_file("/c", b"new")
        fs.setxattr(fs.resolve("/c"), b"user.c", b"c")
        src.dsl.snapshot(["tank/fs@c"])
        want = {s: xattrs_of(src, f"tank/fs@{s}") for s in "abc"}
    assert want["a"]["/a"] == {b"user.one": b"1", b"user.two": b"", b"trusted.t": b"secret"}
    full = send(src, "tank/fs@a")
    recv(dst, "other/copy", full)
    prev = "a"
    for snap in "bc":
        recv(dst, "other/copy", send(src, f"tank/fs@{snap}", f"tank/fs@{prev}"))
        prev = snap
    with dst.pool.lock:
        for s in "abc":
            assert xattrs_of(dst, f"other/copy@{s}") == want[s], s
    check(dst)
    # the stream: xattr directories (flag ZFS_XATTR, the owner as parent) and value files
    # (user. stripped) after every other object, WRITEs in increasing order
    reader = R.StreamReader(io.BytesIO(full))
    reader.begin()
    recs = list(reader.records())
    xobjs = [r for r in recs if isinstance(r, R.Object) and r.object >= XATTR_BASE]
    dirs = [r for r in xobjs if Znode.decode(r.bonus).flags & ZFS_XATTR]
    assert len(dirs) == 3 and len(xobjs) == 3 + 5
    first_x = recs.index(xobjs[0])
    assert all(getattr(r, "object", 0) >= XATTR_BASE or isinstance(r, R.End)
               for r in recs[first_x:] if not isinstance(r, R.FreeObjects))
    writes = [(r.object, r.offset) for r in recs if isinstance(r, R.Write)]
    assert writes == sorted(writes)
    if zstream.unavailable() is None:
        (tmp_path / "full").write_bytes(full)
        d = zstream.dump(tmp_path / "full")
        assert d.returncode == 0 and "Expected checksum" not in d.stdout, d.stderr
