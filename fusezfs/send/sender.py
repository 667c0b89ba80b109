"""`zfs send`: a fusezfs snapshot, or what changed between two, as a stream of ZPL objects.

Theory of operation
-------------------
A snapshot's object tree (posix_layout.py) holds, per inode, its record, its directory entries
and its data records, under keys that start with the inode number; the stream needs, per ZFS
object, an OBJECT record (type, block size, znode bonus), the blocks (WRITE) and what is not
there (FREE for holes and past the end, FREEOBJECTS for objects that do not exist).

Changes are found by birth time, never by comparing contents: `_new_leaves` walks the tree
from its root and descends only into nodes born after `from_txg` (the incremental source's
createtxg, or 0 for a full stream, when everything is new). A leaf born after that txg is where
every changed item is: copy-on-write rewrites the leaf of every item put or deleted, and a leaf
that empties is merged into a sibling that is rewritten too (tree.py `_rebalance`), so any key
whose presence or value changed lies in the key range that a new leaf covers in the new tree.
Consecutive new leaves form *runs* of covered key space. Within a run:

- an inode with items in it was possibly changed: it is sent (OBJECT) unless the source
  snapshot has the very same inode record (an unchanged neighbour in a rewritten leaf); its
  data records born after `from_txg` are sent (WRITE), and the record slots inside the run
  with no record are holes (FREE); a new object (or one whose ZFS block size changed) gets all
  its records, read with a scan of its own keys;
- an inode number whose whole key range is covered and that has no items there does not exist
  (now): FREEOBJECTS, in ranges;
- a directory that is sent is sent whole: its entries are read with a scan of its keys and
  encoded as a ZAP (zap.py), deterministically, so the receiver's object ends up equal to the
  one a full stream would have given.

So a full stream and an incremental one are the same walk; an incremental one costs in
proportion to what changed (plus the unchanged neighbours in rewritten leaves). With a bookmark
as the source only (guid, createtxg) are known: `from_tree` is None, every inode in a run is sent
and a multi-block file's first block is sent too (its ZFS block size may have changed from the
single-block size), which the receivers accept.

Block sizes. ZFS stores a file of one block in a block of its size rounded up to 512 bytes, and
a larger one in blocks of the record size; a fusezfs file keeps the record size it was created
with and stores the last record only up to the end of the file. `zfs_layout` gives the ZFS view:
one block of roundup(size, 512) when the file fits in min(record size, 128 KiB), else blocks of
min(record size, 128 KiB) (a 1 MiB fusezfs record is eight ZFS blocks: streams fusezfs writes
need no large-block feature). Blocks are sent whole, zero-padded past the end of the file.
"""
from __future__ import annotations

import stat
from dataclasses import dataclass
from typing import Iterator

from fusezfs.formats import node as fmt_node
from fusezfs.formats.bp import BlockPointer, decode_bp
from fusezfs.zpl.posix_layout import (
    FS_INO,
    K_DATA,
    K_DIRENT,
    Inode,
    blkid_of,
    data_key,
    decode_dirent,
    inode_key,
    kind_hi,
    kind_lo,
)
from fusezfs.engine.tree import REF_BLOCK, Tree
from fusezfs.send import records as R
from fusezfs.send.compressed import send_as_stored, write_record
from fusezfs.send.xattrs import (
    XATTR_BASE,
    block_of,
    free_blocks,
    has_xattrs,
    read_xattrs,
    xattr_records,
)
from fusezfs.send.zap import encode_zap, salt_for, uint64_items
from fusezfs.send.znode import (
    DMU_OT_MASTER_NODE,
    DMU_OT_PLAIN_FILE_CONTENTS,
    DMU_OT_UNLINKED_SET,
    DMU_OT_ZNODE,
    DN_MAX_OBJECT,
    MAP_KEY,
    MASTER_NODE_OBJ,
    SYMLINK_INLINE_MAX,
    ZPL_VERSION,
    ObjectMap,
    dirent_value,
    object_type,
    znode_of,
)

MAX_ZFS_BLOCK = 128 << 10            # SPA_OLD_MAXBLOCKSIZE: no large-block feature needed
READ_BATCH = 8 << 20                 # bytes of blocks read at once


def _ino(key: bytes) -> int:
    return int.from_bytes(key[:8], "big")


def zfs_layout(size: int, blksz: int) -> tuple[int, int]:
    """(ZFS block size, number of blocks) of a file of `size` bytes and fusezfs record size."""
    zmax = min(blksz, MAX_ZFS_BLOCK)
    if size <= zmax:
        return max(512, -(-size // 512) * 512), 1
    return zmax, -(-size // zmax)


@dataclass
class Source:
    """What an incremental stream starts from: the source's guid and createtxg, and its tree
    when the source is a snapshot (None for a bookmark)."""
    guid: int
    txg: int
    tree: Tree | None = None


class Sender:
    """The records of one substream: `records()` yields BEGIN ... everything ... (END is the
    writer's). `read` reads blocks (BlockIO.read_many); with `dry`, WRITE records carry no
    data (send -n counts sizes without reading)."""

    def __init__(self, tree: Tree, read, begin: R.Begin, source: Source | None = None, *,
                 dry: bool = False, raw_read=None) -> None:
        self.tree = tree
        self.read = read
        # send -c: blocks as stored (compressed.py), read without decompressing by raw_read
        self.raw_read = raw_read
        self.begin = begin
        self.source = source
        self.from_txg = source.txg if source else 0
        self.dry = dry
        self.omap = ObjectMap.decode(tree.get(MAP_KEY))
        self.skip = self.omap.reserved() | {self.omap.root}
        # xattr objects to send after every file object (xattrs.py): ("send", object, inode)
        # or ("free", first object, last object), in increasing object order
        self.xattr_queue: list[tuple] = []

    # ---- the walk -----------------------------------------------------------------------
    def _new_leaves(self) -> Iterator[tuple[bytes, bytes | None, fmt_node.NodeData]]:
        """(lo, hi, leaf) of every leaf born after from_txg, in key order; [lo, hi) is the key
        range the leaf covers (hi None: no upper bound)."""
        root = self.tree.root
        if root is None or root.birth <= self.from_txg:
            return
        stack: list[tuple[BlockPointer, bytes, bytes | None]] = [(root, b"", None)]
        read_node = self.tree.store.read_node
        while stack:
            bp, lo, hi = stack.pop()
            node = fmt_node.decode(read_node(bp))
            if node.level == 0:
                yield lo, hi, node
                continue
            keys, kids = node.keys, node.values
            for i in range(len(keys) - 1, -1, -1):
                if kids[i].birth > self.from_txg:
                    stack.append((kids[i], lo if i == 0 else keys[i],
                                  keys[i + 1] if i + 1 < len(keys) else hi))

    def records(self) -> Iterator[R.Record]:
        yield self.begin
        if self.source is None:
            yield from self._special_objects()
        in_run = False
        run_hi: bytes | None = None
        last = -1                           # the last inode number dealt with
        cur: _Pending | None = None
        for lo, hi, leaf in self._new_leaves():
            first_of_run = not in_run or lo != run_hi
            if first_of_run and in_run:     # close the run before
                if cur is not None:
                    yield from self._holes_until(cur, run_hi)
                yield from self._dead(last + 1, _last_covered(run_hi))
            if first_of_run:
                in_run = True
                last = max(last, _first_covered(lo) - 1)
            for key, value, ref in zip(leaf.keys, leaf.values, leaf.refs):
                ino = _ino(key)
                if cur is not None and cur.ino == ino:
                    if first_of_run and cur.is_reg and cur.inode is not None:
                        cur.hole_from = self._first_slot(ino, lo)
                else:
                    if cur is not None:
                        if not first_of_run:
                            yield from self._holes_until(cur, None)
                        yield from self._complete(cur)
                    yield from self._dead(last + 1, ino - 1)
                    last = ino
                    cur = self._start(ino, lo if first_of_run else b"")
                first_of_run = False
                if cur.inode is not None and cur.is_reg and key[8] == K_DATA:
                    yield from cur.data_item(blkid_of(key), value, ref, self)
            run_hi = hi
        if cur is not None:
            yield from self._holes_until(cur, run_hi)
            yield from self._complete(cur)
        if in_run:
            yield from self._dead(last + 1, _last_covered(run_hi))
        yield from self._xattr_objects()

    def _xattr_objects(self) -> Iterator[R.Record]:
        read_one = lambda bp: self.read([bp])[0]           # noqa: E731
        for what, obj, arg in self.xattr_queue:
            if what == "send":
                items = read_xattrs(self.tree, read_one, arg.ino)
                yield from xattr_records(obj, arg, items, self.dry)
            else:
                rec = free_blocks(obj, arg)
                if rec is not None:
                    yield rec

    # ---- objects ------------------------------------------------------------------------
    def _special_objects(self) -> Iterator[R.Record]:
        """The master node and the unlinked set (full streams only: they never change)."""
        master = {b"VERSION": ZPL_VERSION, b"ROOT": self.omap.root,
                  b"DELETE_QUEUE": self.omap.delete_queue, b"normalization": 0,
                  b"utf8only": 0, b"casesensitivity": 0}
        for obj, otype, items in ((MASTER_NODE_OBJ, DMU_OT_MASTER_NODE, uint64_items(master)),
                                  (self.omap.delete_queue, DMU_OT_UNLINKED_SET, [])):
            blksz, data = encode_zap(items, salt_for(obj))
            yield R.Object(obj, otype, 0, blksz)
            yield R.Free(obj, len(data))
            yield from self._blocks(obj, otype, blksz, data)

    def _blocks(self, obj: int, otype: int, blksz: int, data: bytes) -> Iterator[R.Record]:
        for off in range(0, len(data), blksz):
            yield R.Write(obj, otype, off, b"" if self.dry else data[off:off + blksz], blksz)

    def _start(self, ino: int, lo: bytes) -> "_Pending":
        """Begin inode `ino`, met first in a run whose coverage starts at key `lo` (b"": the
        run covers everything of `ino` from its first key)."""
        p = _Pending(ino)
        if ino == FS_INO:
            return p
        raw = self.tree.get(inode_key(ino))
        if raw is None:
            return p
        inode = Inode.decode(ino, raw)
        if inode.nlink == 0:
            return p
        p.raw = raw
        p.inode = inode
        p.obj = self.omap.obj(ino)
        p.is_reg = inode.is_reg
        src = self.source
        old = None
        if src is not None and src.tree is not None:
            old_raw = src.tree.get(inode_key(ino))
            if old_raw == raw:
                p.inode = None              # unchanged: nothing to send for it
                p.alive = True
                return p
            old = Inode.decode(ino, old_raw) if old_raw is not None else None
        p.alive = True
        if inode.is_reg:
            p.zblk, p.nblocks = zfs_layout(inode.size, inode.blksz)
            if src is None or (old is not None and (old.gen != inode.gen or
                               zfs_layout(old.size, old.blksz)[0] != p.zblk)) or \
                    (src.tree is not None and old is None):
                p.whole = True
            elif src.tree is None and p.nblocks > 1:
                p.first_block = True
            # hole tracking starts where this run's coverage meets the file's records
            p.hole_from = self._first_slot(ino, lo)
        return p

    def _first_slot(self, ino: int, lo: bytes) -> int | None:
        """The first record slot of `ino` at or after key `lo` (None: past its records)."""
        if lo > kind_hi(ino, K_DATA) or lo == kind_hi(ino, K_DATA):
            return None
        if lo <= data_key(ino, 0):
            return 0
        tail = lo[9:17] + bytes(max(0, 17 - len(lo)))
        blkid = int.from_bytes(tail[:8], "big")
        return blkid if lo == data_key(ino, blkid) else blkid + 1

    def _holes_until(self, p: "_Pending", run_hi: bytes | None) -> Iterator[R.Record]:
        """FREE the record slots of `p` from where the run's records stopped to where the run
        ends (None: past the file's records), then stop tracking until the next run."""
        if p.inode is None or not p.is_reg or p.whole or p.hole_from is None:
            return
        if not p.sent_object:
            yield from p.object_records(self)
        end = p.nblocks * p.zblk
        if run_hi is not None:
            stop = self._first_slot(p.ino, run_hi)
            if stop is not None:
                end = min(end, stop * p.inode.blksz)
        start = p.hole_from * p.inode.blksz
        if start < end:
            yield R.Free(p.obj, start, end - start)
        p.hole_from = None

    def _complete(self, p: "_Pending") -> Iterator[R.Record]:
        """Everything still to send for `p` (its object record, pending and whole writes), or
        FREEOBJECTS if it does not exist."""
        if p.inode is None:
            if not p.alive and p.ino != FS_INO:
                yield from self._dead(p.ino, p.ino)
            return
        if not p.sent_object:
            yield from p.object_records(self)
        if not p.is_reg:
            return
        yield from p.flush_writes(self)
        if p.whole:
            yield from self._some_blocks(p, 0, None, holes=True)
        elif p.first_block and not p.first_sent and not p.first_queued:
            yield from self._some_blocks(p, 0, 1)

    def _some_blocks(self, p: "_Pending", first: int, last: int | None, *,
                     holes: bool = False) -> Iterator[R.Record]:
        """WRITE the records of `p` in [first, last) (None: all), FREE the holes if asked."""
        hi = data_key(p.ino, last) if last is not None else kind_hi(p.ino, K_DATA)
        batch: list[tuple[int, BlockPointer]] = []
        nbytes = 0
        pos = first * p.inode.blksz
        for key, value, ref in self.tree.scan_items(data_key(p.ino, first), hi):
            bp = decode_bp(value) if ref == REF_BLOCK else None
            if bp is None:
                continue
            blkid = blkid_of(key)
            if holes and blkid * p.inode.blksz > pos:
                yield R.Free(p.obj, pos, blkid * p.inode.blksz - pos)
            pos = (blkid + 1) * p.inode.blksz
            batch.append((blkid, bp))
            nbytes += bp.lsize
            if nbytes >= READ_BATCH:
                yield from self._write_batch(p, batch)
                batch, nbytes = [], 0
        yield from self._write_batch(p, batch)
        end = p.nblocks * p.zblk
        if holes and pos < end:
            yield R.Free(p.obj, pos, end - pos)

    def _write_batch(self, p: "_Pending", batch: list[tuple[int, BlockPointer]]
                     ) -> Iterator[R.Record]:
        if not batch:
            return
        bs, zblk, size = p.inode.blksz, p.zblk, p.nblocks * p.zblk
        if self.raw_read is not None:
            plain = []
            for blkid, bp in batch:
                if send_as_stored(bp, zblk, bs):
                    raw = None if self.dry else self.raw_read(bp)
                    yield write_record(p.obj, DMU_OT_PLAIN_FILE_CONTENTS, blkid * bs, bp, raw)
                    p.first_sent = p.first_sent or blkid == 0
                else:
                    plain.append((blkid, bp))
            batch = plain
            if not batch:
                return
        datas = [b""] * len(batch) if self.dry else self.read([bp for _b, bp in batch])
        for (blkid, _bp), data in zip(batch, datas):
            base = blkid * bs
            for off in range(0, bs, zblk):
                start = base + off
                if start >= size:
                    break
                if self.dry:
                    yield R.Write(p.obj, DMU_OT_PLAIN_FILE_CONTENTS, start, b"", zblk)
                    continue
                piece = bytes(memoryview(data)[off:off + zblk])
                if len(piece) < zblk:
                    piece += bytes(zblk - len(piece))
                yield R.Write(p.obj, DMU_OT_PLAIN_FILE_CONTENTS, start, piece)
            if blkid == 0:
                p.first_sent = True

    def _dead(self, first_ino: int, last_ino: int) -> Iterator[R.Record]:
        """FREEOBJECTS for the objects of inode numbers first..last (none of them exists)."""
        first_ino = max(first_ino, 2)                 # 0: no object; 1: the root, never dead
        if last_ino < first_ino:
            return
        lo = first_ino + self.omap.delta
        hi = min(last_ino + self.omap.delta, XATTR_BASE - 1)
        for a, b in _minus(lo, hi, self.skip):
            yield R.FreeObjects(a, b - a + 1)
        if self.source is not None:                   # and the xattr objects they had
            self.xattr_queue.append(("free", lo, min(last_ino + self.omap.delta,
                                                     DN_MAX_OBJECT)))

    # ---- directories and symlinks --------------------------------------------------------
    def directory_data(self, p: "_Pending") -> tuple[int, bytes]:
        entries = {}
        for _k, v in self.tree.scan(kind_lo(p.ino, K_DIRENT), kind_hi(p.ino, K_DIRENT)):
            child, dt, name = decode_dirent(v)
            entries[name] = dirent_value(self.omap.obj(child), dt << 12)
        return encode_zap(uint64_items(entries), salt_for(p.obj))


class _Pending:
    """One inode being sent (the walk meets its items in key order)."""

    def __init__(self, ino: int) -> None:
        self.ino = ino
        self.raw: bytes | None = None
        self.inode: Inode | None = None
        self.alive = False
        self.obj = 0
        self.is_reg = False
        self.zblk = 0
        self.nblocks = 0
        self.whole = False
        self.first_block = False
        self.first_sent = False
        self.first_queued = False
        self.sent_object = False
        self.hole_from: int | None = None
        self.writes: list[tuple[int, BlockPointer]] = []
        self.nbytes = 0

    def object_records(self, s: Sender) -> Iterator[R.Record]:
        self.sent_object = True
        inode = self.inode
        zn = znode_of(inode, s.omap)
        otype = object_type(inode.mode)
        data = b""
        if stat.S_ISDIR(inode.mode):
            blksz, data = s.directory_data(self)
        elif inode.is_reg:
            blksz = self.zblk
        elif inode.is_lnk and len(inode.target) > SYMLINK_INLINE_MAX:
            blksz = max(512, -(-len(inode.target) // 512) * 512)
            data = inode.target + bytes(blksz - len(inode.target))
        else:
            blksz = 512
            if inode.is_lnk:
                zn.target = inode.target
        src = s.source
        if has_xattrs(s.tree, inode.ino):
            zn.xattr = block_of(self.obj)
            s.xattr_queue.append(("send", self.obj, inode))
        elif src is not None and (src.tree is None or has_xattrs(src.tree, inode.ino)):
            s.xattr_queue.append(("free", self.obj, self.obj))
        bonus = zn.encode()
        yield R.Object(self.obj, otype, DMU_OT_ZNODE, blksz, bonus)
        nblocks = self.nblocks if inode.is_reg else max(1, len(data) // blksz)
        yield R.Free(self.obj, nblocks * blksz)
        if data:
            yield from s._blocks(self.obj, otype, blksz, data)

    def data_item(self, blkid: int, value: bytes, ref: int, s: Sender) -> Iterator[R.Record]:
        """A data record of this file met in a new leaf."""
        if not self.sent_object:
            yield from self.object_records(s)
        if self.whole:
            return
        bs = self.inode.blksz
        if self.hole_from is not None and blkid > self.hole_from:
            end = min(blkid * bs, self.nblocks * self.zblk)
            if self.hole_from * bs < end:
                yield R.Free(self.obj, self.hole_from * bs, end - self.hole_from * bs)
        self.hole_from = blkid + 1
        bp = decode_bp(value) if ref == REF_BLOCK else None
        if bp is None or bp.birth <= s.from_txg:
            return
        if self.first_block and not self.first_queued:
            # block 0 goes first: receivers want WRITEs in increasing offsets
            self.first_queued = True
            if blkid > 0:
                yield from self.flush_writes(s)
                yield from s._some_blocks(self, 0, 1)
        self.writes.append((blkid, bp))
        self.nbytes += bp.lsize
        if self.nbytes >= READ_BATCH:
            yield from self.flush_writes(s)

    def flush_writes(self, s: Sender) -> Iterator[R.Record]:
        batch, self.writes, self.nbytes = self.writes, [], 0
        yield from s._write_batch(self, batch)


def _first_covered(lo: bytes) -> int:
    """The first inode number whose whole key range is at or after key `lo`."""
    if not lo:
        return 0
    ino = _ino(lo + bytes(8))
    return ino if lo == ino.to_bytes(8, "big") else ino + 1


def _last_covered(hi: bytes | None) -> int:
    """The last inode number whose whole key range is before key `hi` (None: no bound)."""
    if hi is None:
        return DN_MAX_OBJECT
    return _ino(hi + bytes(8)) - 1


def _minus(lo: int, hi: int, skip: set[int]) -> Iterator[tuple[int, int]]:
    """[lo, hi] without the numbers in `skip`, as maximal ranges."""
    start = lo
    for s in sorted(x for x in skip if lo <= x <= hi):
        if s > start:
            yield start, s - 1
        start = s + 1
    if start <= hi:
        yield start, hi


def send_snapshot(dsl, snap, out, source: Source | None = None, *, dry: bool = False,
                  record_checksums: bool = False) -> R.StreamWriter:
    """Write the stream of snapshot record `snap` (from `source`, if incremental) to the
    binary file `out` (None with `dry`: count only); returns the writer (size, counts)."""
    begin = R.Begin(dsl.name(snap.id), snap.guid, source.guid if source else 0, snap.creation)
    writer = R.StreamWriter(out, record_checksums=record_checksums, dry=dry)
    sender = Sender(dsl.tree(snap), dsl.pool.blocks.read_many, begin, source, dry=dry)
    for rec in sender.records():
        writer.write(rec)
    writer.end()
    return writer
