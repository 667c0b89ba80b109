"""Receiving streams into fusezfs: fusezfs's own (full and incremental), zfs-fuse's, and the
round trip fusezfs -> zfs-fuse -> fusezfs; snapshots keep the sender's guid and creation time;
broken streams (truncated, flipped, from the wrong source) leave the target as it was."""
from __future__ import annotations

import io
import json

import pytest

from fusezfs.api import Handle
from fusezfs.engine.devices import MemoryDevice
from fusezfs.engine.pool import Pool
from fusezfs.send.receiver import ReceiveError, receive_stream
from fusezfs.send.sender import Source, send_snapshot
from fusezfs.engine.verify import verify
from test_send_stream import WALKER, change, populate, same_trees, tree_of

MiB = 1 << 20


def new_handle(name: str = "tank") -> Handle:
    pool = Pool.create(name, [("file", [MemoryDevice(256 * MiB, "d0")])])
    h = Handle(pool)
    with pool.lock:
        h.dsl.create(f"{name}/fs")
    return h


def check(h: Handle) -> None:
    h.pool.sync()
    assert verify(h.pool).ok
    assert h.dsl.check() == []


def recv(h: Handle, target: str, data: bytes, **kw):
    with h.pool.lock:
        return receive_stream(h.dsl, target, io.BytesIO(data), replaced_hook=h._replaced, **kw)


def send(h: Handle, snap: str, source: str | None = None) -> bytes:
    buf = io.BytesIO()
    with h.pool.lock:
        rec = h.dsl.get(snap)
        src = None
        if source:
            s = h.dsl.get(source)
            src = Source(s.guid, s.createtxg, h.dsl.tree(s))
        send_snapshot(h.dsl, rec, buf, src)
    return buf.getvalue()


@pytest.fixture
def pair():
    src, dst = new_handle("tank"), new_handle("other")
    with src.pool.lock:
        populate(src)
        src.dsl.snapshot(["tank/fs@a"])
        change(src)
        src.dsl.snapshot(["tank/fs@b"])
    yield src, dst
    check(src)
    check(dst)


def test_fusezfs_to_fusezfs_full_and_incremental(pair):
    src, dst = pair
    full, incr = send(src, "tank/fs@a"), send(src, "tank/fs@b", "tank/fs@a")
    r = recv(dst, "other/copy", full)
    assert r.full and r.snapshot == "other/copy@a" and r.nbytes == len(full)
    with src.pool.lock, dst.pool.lock:
        same_trees(tree_of(src, "tank/fs@a"), tree_of(dst, "other/copy@a"))
    recv(dst, "other/copy", incr)
    with src.pool.lock, dst.pool.lock:
        same_trees(tree_of(src, "tank/fs@b"), tree_of(dst, "other/copy@b"))
        same_trees(tree_of(src, "tank/fs@b"), tree_of(dst, "other/copy"))
        for name in ("a", "b"):
            s, d = src.dsl.get(f"tank/fs@{name}"), dst.dsl.get(f"other/copy@{name}")
            assert (d.guid, d.creation) == (s.guid, s.creation)
    # and on: the received copy sends an incremental of its own that a third pool takes
    third = new_handle("third")
    recv(third, "third/c", send(dst, "other/copy@a"))
    recv(third, "third/c", send(dst, "other/copy@b", "other/copy@a"))
    with src.pool.lock, third.pool.lock:
        same_trees(tree_of(src, "tank/fs@b"), tree_of(third, "third/c@b"))
    check(third)


def test_incremental_errors_leave_the_target_alone(pair):
    src, dst = pair
    full, incr = send(src, "tank/fs@a"), send(src, "tank/fs@b", "tank/fs@a")
    with pytest.raises(ReceiveError) as e:
        recv(dst, "other/copy", incr)
    assert e.value.message == "destination 'other/copy' does not exist"
    recv(dst, "other/copy", full)

    def state():
        with dst.pool.lock:
            dst.pool.sync()
            head = dst.dsl.get("other/copy")
            return dst.dsl.tree(head).root.identity(), tree_of(dst, "other/copy@a")
    before = state()
    # cut at record boundaries and inside records, flipped bytes: refused, nothing changed
    cuts = [312, 312 * 3, len(incr) // 2, len(incr) - 312, len(incr) - 1]
    for cut in cuts:            # OpenZFS 2.1: ZFS_ERR_STREAM_TRUNCATED's words
        with pytest.raises(ReceiveError) as e:
            recv(dst, "other/copy", incr[:cut])
        assert e.value.message == "incomplete stream"
    for pos in (312 + 50, len(incr) // 2, len(incr) - 400):
        bad = bytearray(incr)
        bad[pos] ^= 0x40
        with pytest.raises(ReceiveError) as e:
            recv(dst, "other/copy", bytes(bad))
        assert e.value.message in ("invalid backup stream", "checksum mismatch")
    assert state() == before
    with dst.pool.lock:
        assert [s.component for s in dst.dsl.snapshots(dst.dsl.get("other/copy").id)] == ["a"]
    # a stream whose source is not the target's latest snapshot
    with src.pool.lock:
        src.dsl.snapshot(["tank/fs@c"])
    with pytest.raises(ReceiveError) as e:
        recv(dst, "other/copy", send(src, "tank/fs@c", "tank/fs@b"))
    assert e.value.message == ("most recent snapshot of other/copy does not\n"
                               "match incremental source")
    # modified since its snapshot: refused without force, rolled back with it
    with dst.pool.lock:
        dst.filesystem("other/copy").write_file("/local", b"x")
    with pytest.raises(ReceiveError) as e:
        recv(dst, "other/copy", incr)
    assert e.value.message == ("destination other/copy has been modified\n"
                               "since most recent snapshot")
    recv(dst, "other/copy", incr, force=True)
    with src.pool.lock, dst.pool.lock:
        same_trees(tree_of(src, "tank/fs@b"), tree_of(dst, "other/copy"))


def test_broken_full_stream_leaves_nothing(pair):
    src, dst = pair
    full = send(src, "tank/fs@a")
    for cut in (100, 312 * 2, len(full) // 3, len(full) - 1):
        with pytest.raises(ReceiveError):
            recv(dst, "other/copy", full[:cut])
        with dst.pool.lock:
            assert dst.dsl.lookup("other/copy") is None
    recv(dst, "other/copy", full)
    with pytest.raises(ReceiveError) as e:
        recv(dst, "other/copy", full)
    assert e.value.message == "destination 'other/copy' exists\nmust specify -F to overwrite it"


def test_zfsfuse_streams_into_fusezfs_and_back(tmp_path):
    """zfs-fuse's full and incremental streams give fusezfs the trees zfs-fuse has; fusezfs's
    incremental from the received copy goes back into zfs-fuse."""
    from zfsfuse import ZfsFuse, require
    require()
    mnt = tmp_path / "mnt"
    (tmp_path / "walk.py").write_text(WALKER)
    h = new_handle()
    make = ("cd {m} && echo hello > a && mkdir -p d/deeper && echo x > d/b && ln -s a sl && "
            "ln a hl && truncate -s 1000000 sparse && "
            "dd if=/dev/urandom of=big bs=1k count=300 2>/dev/null && chmod 640 a && "
            "chown 12:34 d/b && touch d/{long} && mkfifo fifo && "
            "ln -s {long}{long} longlink && for i in $(seq 60); do echo $i > d/f$i; done")
    edit = ("cd {m} && echo more >> a && rm big && mkdir e && mv d/b e/b2 && rm d/f7 && "
            "truncate -s 10 d/f8 && dd if=/dev/zero of=sparse bs=1 seek=5 count=3 conv=notrunc "
            "2>/dev/null && for i in $(seq 100); do echo $i > e/g$i; done")
    with ZfsFuse() as zf:
        dev = zf.sparse_file("d0", 256 * MiB)
        zf.zpool("create", "-m", str(mnt), "zt", dev, check=True)
        zf.zfs("create", "-o", "atime=off", "zt/fs", check=True)
        zf.run(["sh", "-c", make.format(m=mnt / "fs", long="n" * 60)], check=True)
        zf.zfs("snapshot", "zt/fs@a", check=True)
        want_a = json.loads(zf.run(["python3", tmp_path / "walk.py", mnt / "fs"],
                                   check=True).stdout)
        zf.run(["sh", "-c", edit.format(m=mnt / "fs")], check=True)
        zf.zfs("snapshot", "zt/fs@b", check=True)
        want_b = json.loads(zf.run(["python3", tmp_path / "walk.py", mnt / "fs"],
                                   check=True).stdout)
        zf.run(["sh", "-c", f"zfs send zt/fs@a > {tmp_path}/full && "
                            f"zfs send -i @a zt/fs@b > {tmp_path}/incr"], check=True)
        guids = zf.zfs("get", "-H", "-o", "value", "-p", "guid", "zt/fs@a", "zt/fs@b",
                       check=True).stdout.split()
        recv(h, "tank/copy", (tmp_path / "full").read_bytes())
        with h.pool.lock:
            same_trees(tree_of(h, "tank/copy@a"), want_a)
        recv(h, "tank/copy", (tmp_path / "incr").read_bytes())
        with h.pool.lock:
            same_trees(tree_of(h, "tank/copy@b"), want_b)
            assert [str(s.guid) for s in h.dsl.snapshots(h.dsl.get("tank/copy").id)] == guids
            fs = h.filesystem("tank/copy")
            fs.write_file("/from-fusezfs", b"back\n")
            fs.unlink(fs.resolve("/d"), "f9")
            h.dsl.snapshot(["tank/copy@c"])
            want_c = tree_of(h, "tank/copy@c")
        (tmp_path / "back").write_bytes(send(h, "tank/copy@c", "tank/copy@b"))
        r = zf.run(["sh", "-c", f"zfs receive -F zt/fs < {tmp_path}/back"])
        assert r.returncode == 0, r.stderr
        zf.zfs("umount", "zt/fs", check=True, busy_retries=10)
        zf.zfs("mount", "zt/fs", check=True)
        got_c = json.loads(zf.run(["python3", tmp_path / "walk.py", mnt / "fs"],
                                  check=True).stdout)
        same_trees(want_c, got_c)
    check(h)
