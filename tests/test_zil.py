"""The intent log (fusezfs/engine/zil.py, fusezfs/zpl/posix_log.py): fsync appends records instead of
committing a txg; a crash right after loses nothing fsync returned for; sync=always, O_SYNC,
sync=disabled and logbias=throughput behave as in ZFS; a torn tail ends the log; a txg's
commit frees the log; import claims the chain (verify agrees) and replays it once."""
from __future__ import annotations

import os

import pytest

from fusezfs.engine import zil
from fusezfs.api import Handle
from fusezfs.engine.devices import FaultyDevice, MemoryDevice, Power, PowerCut
from fusezfs.formats.bp import DVA
from fusezfs.engine.pool import Pool
from fusezfs.engine.verify import verify

MiB = 1 << 20


class Rig:
    """A pool on a fault-injecting device, with filesystem tank/fs."""

    def __init__(self, props: dict | None = None, size: int = 64 * MiB) -> None:
        self.power = Power()
        self.dev = FaultyDevice(MemoryDevice(size, "m0"), self.power)
        self.pool = Pool.create("tank", [("file", [self.dev])])
        self.h = Handle(self.pool)
        self.h.dsl.create("tank/fs", dict(props or {}))
        self.pool.sync()
        self.fs = self.h.filesystem("tank/fs")

    @property
    def log(self) -> zil.IntentLog:
        return zil.IntentLog(self.pool)

    def new(self, path: str, data: bytes = b"", flags: int = os.O_RDWR) -> int:
        parent, name = self.fs.parent_of(path)
        fh, _a = self.fs.create(parent, name, 0o644, flags)
        if data:
            self.fs.write(fh, 0, data)
        return fh

    def crash(self, mode: str = "drop") -> "Recovered":
        """The pool as the platter has it after the power fails now."""
        self.pool._stop_committer()
        return Recovered(Pool.open([self.dev.crash_image(mode)]))


class Recovered:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.txg = pool.synced_txg          # before anything replays
        self.log = pool.attached.get(zil.IntentLog)
        self.found = None if self.log is None or self.log.replay is None else \
            list(self.log.replay)

    def fs(self):
        return Handle(self.pool).filesystem("tank/fs")


def first_fsync(r: Rig) -> None:
    """The first commit of a pool has no durable header to append to: it commits a txg,
    which makes the chain."""
    fh = r.new("/warmup", b"x")
    r.fs.fsync(fh)
    r.fs.release(fh)
    assert r.pool.mos.get(zil.HEADER_KEY) is not None


def test_fsync_appends_records_instead_of_committing_a_txg():
    r = Rig()
    first_fsync(r)
    txg = r.pool.synced_txg
    r.fs.mkdir(1, "dir")
    fh = r.new("/dir/file", b"hello " * 1000)
    r.fs.write(fh, 6000, b"world")
    writes = r.power.writes
    r.fs.fsync(fh)
    assert r.pool.synced_txg == txg, "fsync committed a txg"
    assert r.log.commits == 1 and r.power.writes - writes == r.log.blocks_written >= 1
    expect = r.fs.read_file("/dir/file")
    rec = r.crash("drop")                   # only what was flushed survives
    assert rec.txg == txg
    kinds = [x.type for x in rec.found]
    assert kinds[:2] == [zil.TX_CREATE, zil.TX_CREATE] and zil.TX_WRITE in kinds
    assert kinds[-1] == zil.TX_ATTR
    fs = rec.fs()
    assert fs.read_file("/dir/file") == expect
    st = fs.getattr(fs.resolve("/dir/file"))
    assert st.st_size == len(expect) and st.st_mode & 0o777 == 0o644
    assert rec.pool.synced_txg > txg            # the replay was committed at once
    assert verify(rec.pool).ok and Handle(rec.pool).dsl.check() == []


def test_names_are_logged_so_the_fsynced_file_is_found():
    """Renames, links and removes of any file are logged with every commit, in order: the
    file fsync'ed is found under its name of that moment, the others keep their names."""
    r = Rig()
    first_fsync(r)
    a = r.new("/a", b"A")
    r.fs.release(a)
    r.pool.sync()                               # a's bytes are durable; its names move below
    r.fs.mkdir(1, "d")
    r.fs.rename(1, "a", r.fs.resolve("/d"), "b")
    r.fs.link(r.fs.resolve("/d/b"), 1, "c")
    r.fs.unlink(1, "warmup")
    fh = r.new("/d/e", b"E" * 5000)
    r.fs.rename(r.fs.resolve("/d"), "e", 1, "e2")
    r.fs.fsync(fh)
    fs = r.crash().fs()
    assert sorted(fs.listdir("/")) == [b"c", b"d", b"e2"]
    assert fs.listdir("/d") == [b"b"] and fs.read_file("/c") == b"A"
    assert fs.getattr(fs.resolve("/c")).st_nlink == 2
    assert fs.read_file("/e2") == b"E" * 5000


def test_a_file_not_fsynced_keeps_its_last_durable_bytes():
    r = Rig()
    first_fsync(r)
    other = r.new("/other", b"old")
    r.pool.sync()
    r.fs.write(other, 0, b"new")                # never fsync'ed
    fh = r.new("/mine", b"mine")
    r.fs.fsync(fh)
    fs = r.crash().fs()
    assert fs.read_file("/other") == b"old" and fs.read_file("/mine") == b"mine"


def test_truncates_and_writes_replay_to_the_final_bytes():
    """Bytes are read when the commit is made; truncates between writes replay in place."""
    r = Rig({"recordsize": "4096"})
    first_fsync(r)
    fh = r.new("/f", os.urandom(20000))
    r.pool.sync()
    ino = r.fs.resolve("/f")
    r.fs.write(fh, 100, b"x" * 9000)
    r.fs.setattr(ino, size=3000)
    r.fs.write(fh, 5000, b"y" * 100)
    r.fs.setattr(ino, size=12000)
    r.fs.write(fh, 11000, b"z" * 3000)
    r.fs.setattr(ino, mode=0o600)
    expect = r.fs.read_file("/f")
    r.fs.fsync(fh)
    fs = r.crash().fs()
    assert fs.read_file("/f") == expect
    assert fs.getattr(fs.resolve("/f")).st_mode & 0o777 == 0o600


def test_sync_disabled_fsync_returns_without_making_anything_durable():
    r = Rig({"sync": "disabled"})
    fh = r.new("/f", b"data")
    r.fs.fsync(fh)
    assert r.pool.mos.get(zil.HEADER_KEY) is None and r.pool.attached.get(zil.IntentLog) is None
    fs = r.crash().fs()
    assert fs.listdir("/") == []                # as ZFS: durable only at the txg commit


def test_sync_always_makes_every_operation_durable():
    r = Rig({"sync": "always"})
    first_fsync(r)
    txg = r.pool.synced_txg
    fh = r.new("/f", b"one")
    r.fs.write(fh, 3, b" two")
    r.fs.mkdir(1, "d")
    r.fs.setxattr(r.fs.resolve("/f"), "user.k", b"v")
    assert r.pool.synced_txg == txg and r.log.commits >= 4
    fs = r.crash().fs()
    assert fs.read_file("/f") == b"one two" and fs.listdir("/d") == []
    assert fs.getxattr(fs.resolve("/f"), "user.k") == b"v"


@pytest.mark.parametrize("flag", [os.O_SYNC, os.O_DSYNC])
def test_o_sync_writes_are_durable_when_write_returns(flag):
    r = Rig()
    first_fsync(r)
    fh = r.new("/f", flags=os.O_RDWR | flag)
    r.fs.write(fh, 0, b"synchronous")
    fh2 = r.new("/g", b"buffered")
    r.fs.write(fh, 11, b"!")                    # logs g's create, not g's bytes
    fs = r.crash().fs()
    assert fs.read_file("/f") == b"synchronous!"
    assert fs.read_file("/g") == b""
    del fh2


def test_logbias_throughput_logs_full_records_by_block_pointer():
    """Full records are written in place and the log names them; the txg then takes those
    very blocks (written once); overwriting one in the same txg never reuses its space
    before the txg is durable, so the log still reads it after a crash."""
    r = Rig({"logbias": "throughput", "recordsize": "16384", "compression": "off"})
    first_fsync(r)
    data = os.urandom(64 * 1024 + 100)
    fh = r.new("/big", data)
    r.fs.fsync(fh)
    assert r.log.bytes_written < 16 * 1024          # block pointers, not 64 KiB of bytes
    rec = r.crash()
    kinds = [x.type for x in rec.found]
    assert kinds.count(zil.TX_INDIRECT) == 4 and kinds.count(zil.TX_WRITE) == 1
    assert rec.fs().read_file("/big") == data
    assert verify(rec.pool).ok

    r2 = Rig({"logbias": "throughput", "recordsize": "16384", "compression": "off"})
    first_fsync(r2)
    fh = r2.new("/big", data)
    r2.fs.fsync(fh)
    ino = r2.fs.resolve("/big")
    from fusezfs.formats.bp import decode_bp
    from fusezfs.zpl.posix_layout import data_key
    logged = decode_bp(r2.fs.tree.get(data_key(ino, 0)))
    assert logged.birth == r2.pool.txg         # born in the open txg, named by the log
    r2.fs.write(fh, 0, os.urandom(16384))      # replaced in that same txg
    r2.fs.flush()
    r2.fs.tree.sync()                           # the tree frees the replaced block now
    d = logged.dvas[0]
    assert not r2.pool.allocator.spaces[d.vdev].is_free(d.offset, d.asize)
    assert d in r2.pool.allocator.deferred      # not reusable before the txg is durable


def test_a_torn_tail_ends_the_log_and_only_whole_commits_replay():
    r = Rig()
    first_fsync(r)
    fh = r.new("/f", b"first")
    r.fs.fsync(fh)
    r.fs.write(fh, 0, b"SECOND" + os.urandom(300_000))   # a commit of several blocks
    r.power.cut_after(1)                        # its second block meets the cut
    with pytest.raises(PowerCut):
        r.fs.fsync(fh)
    for mode in ("keep", "drop", "reorder"):
        rec = r.crash(mode)
        assert rec.fs().read_file("/f") == b"first", mode
        rec.pool.close()


def test_the_txg_commit_frees_the_log_and_verify_counts_it():
    r = Rig()
    first_fsync(r)
    free = r.pool.free
    fh = r.new("/f", os.urandom(200_000))
    for _ in range(5):
        r.fs.write(fh, 0, os.urandom(1000))
        r.fs.fsync(fh)
    assert len(r.log.live) >= 5
    r.pool.sync()
    assert r.log.live == [] and verify(r.pool).ok
    header = zil.Header.decode(r.pool.mos.get(zil.HEADER_KEY))
    assert header.first == r.log.next[0]
    r.pool.sync()
    r.pool.sync()
    r.pool.sync()                               # the held frees come back
    assert abs(r.pool.free - (free - 200_000)) < 64 * 1024
    assert verify(r.pool).ok


def test_import_claims_the_chain_and_a_pool_command_keeps_it_for_replay():
    """A process that imports and commits without opening the filesystems (a pool command)
    keeps the records: they are claimed (allocated, counted reachable by verify) and the
    header remembers from which txg to replay, so they are not mistaken for committed ones."""
    r = Rig()
    first_fsync(r)
    fh = r.new("/f", b"kept " * 3000)
    r.fs.fsync(fh)
    image = r.dev.crash_image("drop")
    p1 = Pool.open([image])
    log = p1.attached[zil.IntentLog]
    assert log.replay and log.claimed
    for dva in log.claimed:
        assert not p1.allocator.spaces[dva.vdev].is_free(dva.offset, dva.asize)
    assert verify(p1).ok                        # syncs: txg numbers move past the records'
    p1.sync(force=True)
    p1.close()
    p2 = Pool.open([image])
    assert p2.synced_txg > max(x.txg for x in p2.attached[zil.IntentLog].replay)
    fs = Handle(p2).filesystem("tank/fs")
    assert fs.read_file("/f") == b"kept " * 3000
    assert p2.attached[zil.IntentLog].replay is None
    assert verify(p2).ok and Handle(p2).dsl.check() == []
    p2.close()
    p3 = Pool.open([image])                     # replayed once: nothing left to claim
    assert p3.attached.get(zil.IntentLog) is None or not p3.attached[zil.IntentLog].replay
    assert Handle(p3).filesystem("tank/fs").read_file("/f") == b"kept " * 3000
    assert verify(p3).ok
    p3.close()


def test_the_log_goes_on_after_replay_with_a_new_chain():
    r = Rig()
    first_fsync(r)
    fh = r.new("/f", b"1")
    r.fs.fsync(fh)
    rec = r.crash()
    old_guid = rec.log.header.guid
    fs = rec.fs()
    new = zil.IntentLog(rec.pool)
    assert new.header is not None and new.header.guid != old_guid
    fh = fs.open(fs.resolve("/f"), os.O_RDWR)
    fs.write(fh, 1, b"2")
    fs.fsync(fh)
    assert new.commits == 1
    assert fs.read_file("/f") == b"12" and verify(rec.pool).ok


def test_records_and_blocks_round_trip_and_reject_anything_else():
    recs = [zil.write_record(7, 5, 100, b"abc"),
            zil.truncate_record(7, 5, 3),
            zil.attr_record(7, 5, 0o100644, 1, 2, 3, 4, 5, 6),
            zil.create_record(7, 1, b"name", 5, 0o120777, 0, 0, 4096, 0, 9, (1, 2, 3, 4),
                              b"target"),
            zil.link_record(7, 1, b"l", 5), zil.remove_record(7, 1, b"r", 5, True),
            zil.rename_record(7, 1, b"x", 2, b"yy", 1),
            zil.setxattr_record(7, 5, b"user.a", b"v"), zil.rmxattr_record(7, 5, b"user.a")]
    got = [zil.decode_record(x) for x in recs]
    assert got[0].data == b"abc" and got[0].offset == 100
    assert (got[1].offset, got[1].size) == (3, 0)
    assert got[2].times == (4, 5, 6) and got[3].target == b"target" and got[3].gen == 9
    assert got[5].flags == 1 and (got[6].name, got[6].new_name) == (b"x", b"yy")
    assert got[7].data == b"v" and all(g.ds == 7 for g in got)
    nxt = DVA(0, 1 << 20, 8192)
    raw = zil.encode_block(11, 3, 42, nxt, zil.FLAG_COMMIT, recs)
    assert len(raw) % 512 == 0
    here = DVA(0, 4096, len(raw))
    blk = zil.decode_block(raw, here, 11, 3)
    assert blk is not None and blk.records == recs and blk.next == nxt and blk.txg == 42
    assert zil.decode_block(raw, here, 12, 3) is None        # another chain
    assert zil.decode_block(raw, here, 11, 4) is None        # another place in the chain
    for off in (20, 70, zil.BLOCK_HDR + 5, zil.BLOCK_HDR + 200):
        bad = bytearray(raw)
        bad[off] ^= 1
        assert zil.decode_block(bytes(bad), here, 11, 3) is None, off
    assert zil.split_write(recs[0], zil.WRITE_HDR + 511) is None   # too little room
    assert zil.split_write(recs[1], 4096) is None                  # only writes split
    big = zil.write_record(7, 5, 0, bytes(range(256)) * 8)
    head, tail = zil.split_write(big, zil.WRITE_HDR + 600)
    h, t = zil.decode_record(head), zil.decode_record(tail)
    assert h.data + t.data == bytes(range(256)) * 8 and t.offset == 600


def test_sync_turned_on_mid_txg_commits_what_was_never_noted():
    """Changes made under sync=disabled were never noted: after `zfs set sync=standard` the
    first fsync commits the txg instead of logging half a story."""
    r = Rig()
    first_fsync(r)                              # the pool's log is there
    r.h.dsl.create("tank/d", {"sync": "disabled"})
    r.pool.sync()
    fs = r.h.filesystem("tank/d")
    fh, _a = fs.create(1, "f")
    fs.write(fh, 0, b"made while disabled")
    rec = r.h.dsl.get("tank/d")
    rec.props["sync"] = "standard"
    r.h.dsl.touch(rec)
    from fusezfs.dsl.objset import DatasetIO
    fs.io = DatasetIO(r.h.dsl, rec)             # as the daemon applies a property change
    fs.write(fh, 0, b"M")
    fs.fsync(fh)
    got = Handle(r.crash().pool).filesystem("tank/d")
    assert got.read_file("/f") == b"Made while disabled"


def test_a_filesystem_object_dropped_with_notes_pending_does_not_log_half():
    """Handle.forget drops a Posix object whose creates were noted but not logged; the next
    one for that dataset commits the txg at fsync rather than log writes to a file whose
    create no record holds."""
    r = Rig()
    first_fsync(r)
    r.fs.release(r.new("/g", b"created"))
    r.h.forget("tank/fs")
    fs = r.h.filesystem("tank/fs")
    assert fs is not r.fs
    fh = fs.open(fs.resolve("/g"), os.O_RDWR)
    fs.write(fh, 7, b" and written")
    fs.fsync(fh)
    assert r.crash().fs().read_file("/g") == b"created and written"
