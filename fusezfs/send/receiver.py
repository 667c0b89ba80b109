"""`zfs receive`: a stream of ZPL objects into a fusezfs filesystem, all or nothing.

Theory of operation
-------------------
The records are applied to the target's object tree at the layout level (posix_layout.py), as
they arrive, so a stream of any size needs memory only for its directories:

- OBJECT of a znode: the inode record (mode, owners, times, size, links, parent, generation;
  a symlink's target from the bonus buffer or, when long, from its block). The record size of a
  regular file is the object's block size; if an incremental stream changes it, the file's
  records go (the sender sends every block of such a file again, as ZFS rewrites them);
- WRITE of a file: record `offset / blksz`, stored up to the end of the file (posix_layout's
  rule); zeros are a hole when the dataset compresses;
- FREE: the records in the range go, a record cut by the range is zeroed in that part;
- FREEOBJECTS: every inode in the range is destroyed with all its items;
- directories are ZAP objects (zap.py): their blocks are gathered, and when the stream ends
  they are decoded and the directory's entries made equal to them. An incremental stream
  carries only the ZAP blocks that changed, so the ZAP a directory had is kept in the tree
  (RAW_ZAP items, FORMAT.md 8.6) and the new blocks are laid over it; a directory fusezfs made
  has none, and its ZAP is encoded again as the sender encoded it (the encoding is a function
  of the entries and the object number);
- the master node gives the root directory's and the unlinked set's object numbers; extended
  attribute directories, the shares directory and other objects that are not files are left
  out (their numbers are kept in the ObjectMap so no file ever takes them).

Object numbers become inode numbers through the target's ObjectMap (znode.py): a new
filesystem takes the sender's numbers (delta 0), an existing one keeps its own map.

Atomicity is incoming.py's: the records are applied to a hidden filesystem (a new one, or a
clone of the target's latest snapshot) that becomes the target only once END has arrived with
the right checksum; `Applier` works on whatever filesystem it is given.
"""
from __future__ import annotations

import stat
from dataclasses import dataclass
from typing import BinaryIO

from fusezfs.dsl.datasets import Datasets, Record
from fusezfs.formats.bp import BT_DATA, COMP_ZSTD, checksum, decode_bp, encode_bp
from fusezfs.zpl.posix_layout import (
    CD_BITS,
    CD_MAX,
    K_DATA,
    K_DIRENT,
    ROOT_INO,
    SUPER_KEY,
    Inode,
    Superblock,
    cookie_of,
    data_key,
    decode_dirent,
    dirent_key,
    encode_dirent,
    ino_prefix,
    inode_key,
    kind_hi,
    kind_lo,
    name_hash,
)
from fusezfs.engine.tree import REF_BLOCK, Tree
from fusezfs.send import records as R
from fusezfs.send.compressed import ZIO_COMPRESS_OFF, ZIO_COMPRESS_ZSTD, decompressed, zstd_frame
from fusezfs.send.xattrs import XATTR_BASE, XattrGather, set_xattrs
from fusezfs.send.zap import ZapError, decode_zap, encode_zap, salt_for, uint64_items
from fusezfs.send.znode import (
    DMU_OT_DIRECTORY_CONTENTS,
    DMU_OT_MASTER_NODE,
    DMU_OT_SA,
    DMU_OT_UNLINKED_SET,
    DMU_OT_ZNODE,
    MAP_KEY,
    ZFS_XATTR,
    ObjectMap,
    Znode,
    dirent_object,
    dirent_value,
)

K_RAW_ZAP = 0x21                     # ino | 0x21 | blkid: a received directory's ZAP block
# -c streams (compressed.py); LZ4 is set by every OpenZFS -c stream of a pool with lz4 on, and
# only an lz4 block itself is refused
SUPPORTED_FEATURES = R.FEATURE_COMPRESSED | R.FEATURE_ZSTD | R.FEATURE_LZ4


def raw_zap_key(ino: int, blkid: int) -> bytes:
    return ino_prefix(ino) + bytes((K_RAW_ZAP,)) + blkid.to_bytes(8, "big")


NEW_FS = "cannot receive new filesystem stream"
INCREMENTAL = "cannot receive incremental stream"


class ReceiveError(Exception):
    """A receive that failed, in OpenZFS's words (libzfs_sendrecv.c): `action` (what libzfs
    calls its errbuf: "cannot receive", "cannot receive new filesystem stream", ...) and
    `message` after it; `before`: lines libzfs prints ahead of them (a failed zfs_open's)."""

    def __init__(self, message: str, *, incremental: bool = False, action: str | None = None,
                 before: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.incremental = incremental
        self.action = action or (INCREMENTAL if incremental else NEW_FS)
        self.before = before

    def __str__(self) -> str:
        return f"{self.before}{self.action}: {self.message}"


@dataclass
class Received:
    """What a receive did (for `receive -v`)."""
    snapshot: str
    full: bool
    nbytes: int


@dataclass
class _Dir:
    obj: int
    blksz: int
    old_blksz: int                   # the block size its ZAP had before (0: new)
    data: bytearray
    touched: bool = False


class Applier:
    """Applies the records of one substream to a filesystem's tree."""

    def __init__(self, dsl: Datasets, rec: Record, omap: ObjectMap, full: bool) -> None:
        from fusezfs.dsl import properties
        self.dsl = dsl
        self.rec = rec
        self.tree: Tree = dsl.tree(rec)
        self.omap = omap
        self.full = full
        self.policy = properties.write_policy(dsl, rec)
        self.compress = str(properties.value(dsl, rec, "compression")) != "off"
        # zstd blocks of a -c stream are kept as they come when this dataset writes zstd
        self.as_received = self.policy.comp == COMP_ZSTD and not self.policy.dedup
        self.inodes: dict[int, Inode] = {}          # changed inode records, by inode number
        self.dirs: dict[int, _Dir] = {}             # directory objects met, by object number
        self.special: dict[int, bytearray] = {}     # master node and unlinked set data
        self.skipped: set[int] = set()              # objects that are not files
        self.links: dict[int, bytearray] = {}       # long symlink targets, by object number
        self.max_obj = 0
        self.last_write = (0, 0)                    # (object, offset) of the last WRITE
        self.xattrs = XattrGather()                 # xattr directories and value files
        raw = self.tree.get(SUPER_KEY)
        self.sb = Superblock.decode(raw) if raw is not None else Superblock(ROOT_INO, 2, 0)

    # ---- inodes -------------------------------------------------------------------------
    def _ino(self, obj: int) -> int:
        return self.omap.ino(obj)

    def _inode(self, ino: int) -> Inode | None:
        node = self.inodes.get(ino)
        if node is None:
            raw = self.tree.get(inode_key(ino))
            if raw is None:
                return None
            node = self.inodes[ino] = Inode.decode(ino, raw)
        return node

    def _destroy(self, ino: int) -> None:
        if ino <= ROOT_INO:
            return
        if self._inode(ino) is None and self.tree.first_item(ino_prefix(ino),
                                                             ino_prefix(ino + 1)) is None:
            return
        self.inodes.pop(ino, None)
        self.tree.delete_range(ino_prefix(ino), ino_prefix(ino + 1))
        self.sb.objects -= 1

    # ---- records ------------------------------------------------------------------------
    def apply(self, rec: R.Record) -> None:
        if isinstance(rec, R.Object):
            self._object(rec)
        elif isinstance(rec, R.Write):
            self._write(rec)
        elif isinstance(rec, R.Free):
            self._free(rec)
        elif isinstance(rec, R.FreeObjects):
            self._freeobjects(rec)
        elif isinstance(rec, R.Other):
            raise R.StreamError(f"stream has unsupported feature (record type "
                                f"{R.TYPE_NAMES[rec.type]})")

    def _object(self, r: R.Object) -> None:
        obj = r.object
        if obj == 0 or r.blksz < 512 or r.blksz % 512 or r.blksz > (16 << 20):
            raise R.StreamError("invalid backup stream")
        if obj < XATTR_BASE:
            self.max_obj = max(self.max_obj, obj)
        if r.type in (DMU_OT_MASTER_NODE, DMU_OT_UNLINKED_SET):
            self.special[obj] = bytearray()
            self.dirs.pop(obj, None)
            return
        if r.bonustype == DMU_OT_SA:
            raise R.StreamError("stream has unsupported feature (system attributes: "
                                "ZPL version 5 and later)")
        if r.bonustype != DMU_OT_ZNODE:
            self.skipped.add(obj)                  # FUID tables and the like
            return
        try:
            zn = Znode.decode(r.bonus)
        except ValueError:
            raise R.StreamError("invalid backup stream") from None
        if self.xattrs.object(r, zn) or zn.flags & ZFS_XATTR:
            if obj < XATTR_BASE:
                self.skipped.add(obj)              # (its number stays the sender's)
            return
        self.skipped.discard(obj)
        ino = self._ino(obj)
        if ino < ROOT_INO or (ino == ROOT_INO and obj != self.omap.root and not self.full):
            raise R.StreamError("invalid backup stream")
        old = self._inode(ino)
        if old is not None and (old.gen and zn.gen and old.gen != zn.gen or
                                stat.S_IFMT(old.mode) != stat.S_IFMT(zn.mode)):
            self._destroy(ino)                     # the number now names another file
            old = None
        if old is None:
            self.sb.objects += 1
        node = Inode(ino, zn.mode, zn.uid, zn.gid, zn.links, r.blksz, zn.size, zn.rdev, zn.gen,
                     self._ino(zn.parent) if zn.parent else ROOT_INO, old.used if old else 0,
                     zn.atime, zn.mtime, zn.ctime, zn.crtime,
                     zn.target[:zn.size] if stat.S_ISLNK(zn.mode) else b"")
        if old is not None and stat.S_ISREG(zn.mode):
            if old.blksz != r.blksz:
                self._drop_records(node, 0)
            elif zn.size < old.size:
                self._cut(node, zn.size)
        self.inodes[ino] = node
        if r.type == DMU_OT_DIRECTORY_CONTENTS:
            self.dirs[obj] = _Dir(obj, r.blksz, old.blksz if old is not None else 0,
                                  bytearray(), False)
        elif stat.S_ISLNK(zn.mode) and len(zn.target) < zn.size:
            # the target is in the object's block, which the stream resends only if it changed
            self.links[obj] = bytearray(old.target if old is not None and old.is_lnk else b"")

    def _write(self, w: R.Write) -> None:
        obj = w.object
        # receive_process_write_record: WRITEs come in increasing (object, offset) order (what
        # resuming relies on); a stream out of that order is refused
        if (obj, w.offset) < self.last_write:
            raise R.StreamError("invalid backup stream")
        self.last_write = (obj, w.offset)
        frame = None
        if w.compressiontype not in (0, ZIO_COMPRESS_OFF):
            data = decompressed(w)
            if w.compressiontype == ZIO_COMPRESS_ZSTD:
                frame = zstd_frame(w)
        else:
            data = bytes(w.data)
        if len(data) != w.logical_size:
            raise R.StreamError("invalid backup stream")
        if obj in self.special:
            _lay(self.special[obj], w.offset, data)
            return
        xbuf = self.xattrs.buffer(obj)
        if xbuf is not None:
            _lay(xbuf, w.offset, data)
            return
        if obj in self.skipped:
            return
        d = self.dirs.get(obj)
        if d is not None:
            if not d.touched:
                self._old_zap(d)
            _lay(d.data, w.offset, data)
            return
        if obj in self.links:
            _lay(self.links[obj], w.offset, data)
            return
        node = self._inode(self._ino(obj))
        if node is None or not node.is_reg:
            raise R.StreamError("invalid backup stream")
        bs = node.blksz
        if w.offset % bs:
            raise R.StreamError("invalid backup stream")
        if frame is not None and self.as_received and len(data) == bs and \
                w.offset + bs <= node.size:
            self._set_record(node, w.offset // bs, data, frame)      # stored as received
            return
        for off in range(0, len(data), bs):
            start = w.offset + off
            piece = data[off:off + bs][:max(0, node.size - start)]
            self._set_record(node, start // bs, piece)

    def _set_record(self, node: Inode, blkid: int, piece: bytes, frame: bytes | None = None
                    ) -> None:
        """Record `blkid` of `node` becomes `piece` (a hole if empty, or zeros compressing);
        `frame`: its zstd frame from a -c stream, stored as it is."""
        key = data_key(node.ino, blkid)
        old = self.tree.get(key)
        if old is not None:
            bp = decode_bp(old)
            if bp is not None:
                node.used -= bp.asize
        if not piece or (self.compress and piece.count(0) == len(piece)):
            if old is not None:
                self.tree.delete(key)
            return
        if frame is not None:
            blocks, policy = self.dsl.pool.blocks, self.policy
            bp = blocks._store(len(piece), (COMP_ZSTD, frame, checksum(frame, policy.cksum)),
                               policy, BT_DATA, 0)
            self.dsl.born(self.rec, bp)
        else:
            bp = self.dsl.write_blocks(self.rec, [piece], self.policy)[0]
        self.tree.put(key, encode_bp(bp), REF_BLOCK)
        node.used += bp.asize

    def _drop_records(self, node: Inode, first: int) -> None:
        lo, hi = data_key(node.ino, first), kind_hi(node.ino, K_DATA)
        for _k, v in self.tree.scan(lo, hi):
            bp = decode_bp(v)
            if bp is not None:
                node.used -= bp.asize
        self.tree.delete_range(lo, hi)

    def _cut(self, node: Inode, size: int) -> None:
        """Records past `size` go, the one holding it is trimmed."""
        bs = node.blksz
        self._drop_records(node, -(-size // bs))
        if size % bs:
            self._zero(node, size // bs, size % bs, bs)

    def _zero(self, node: Inode, blkid: int, start: int, end: int) -> None:
        """Zero bytes [start, end) of record `blkid` (a record past them keeps its length)."""
        raw = self.tree.get(data_key(node.ino, blkid))
        bp = decode_bp(raw) if raw is not None else None
        if bp is None:
            return
        data = bytearray(self.dsl.pool.blocks.read(bp))
        if start >= len(data):
            return
        data[start:min(end, len(data))] = bytes(min(end, len(data)) - start)
        keep = min(len(data), max(0, node.size - blkid * node.blksz))
        self._set_record(node, blkid, bytes(data[:keep]))

    def _free(self, f: R.Free) -> None:
        obj = f.object
        end = f.offset + f.length if f.length != R.FREE_TO_END else 1 << 64
        xbuf = self.xattrs.buffer(obj)
        if xbuf is not None:
            stop = min(end, len(xbuf))
            xbuf[f.offset:stop] = bytes(max(0, stop - f.offset))
            return
        if obj in self.special or obj in self.skipped or obj in self.links:
            return
        d = self.dirs.get(obj)
        if d is not None:
            if end > len(d.data) and f.offset >= len(d.data):
                return
            if not d.touched:
                self._old_zap(d)
            del_end = min(end, len(d.data))
            d.data[f.offset:del_end] = bytes(max(0, del_end - f.offset))
            return
        node = self._inode(self._ino(obj))
        if node is None:
            if self.tree.first_item(ino_prefix(self._ino(obj)), ino_prefix(self._ino(obj) + 1)):
                raise R.StreamError("invalid backup stream")
            return
        if not node.is_reg:
            return
        bs = node.blksz
        first = -(-f.offset // bs)
        if f.offset % bs:
            self._zero(node, f.offset // bs, f.offset % bs, min(bs, end - (f.offset // bs) * bs))
        last = end // bs                       # records [first, last) go whole
        if end % bs and last >= first and end < (1 << 64):
            self._zero(node, last, 0, end % bs)
        if end >= (1 << 63):
            self._drop_records(node, first)
        else:
            lo, hi = data_key(node.ino, first), data_key(node.ino, last)
            if lo < hi:
                for _k, v in self.tree.scan(lo, hi):
                    bp = decode_bp(v)
                    if bp is not None:
                        node.used -= bp.asize
                self.tree.delete_range(lo, hi)

    def _freeobjects(self, f: R.FreeObjects) -> None:
        if f.firstobj + f.numobjs > 1 << 64:
            raise R.StreamError("invalid backup stream")
        hi = min(f.firstobj + f.numobjs, 1 << 48)
        reserved = self.omap.reserved() | {self.omap.root}
        for obj in [o for o in list(self.dirs) if f.firstobj <= o < hi]:
            del self.dirs[obj]
        for obj in [o for o in list(self.links) if f.firstobj <= o < hi]:
            del self.links[obj]
        self.xattrs.freed(f.firstobj, hi, self._owners_in)
        lo_ino = max(ROOT_INO + 1, f.firstobj - self.omap.delta)
        hi_ino = hi - self.omap.delta
        pos = lo_ino
        while pos < hi_ino:
            item = self.tree.first_item(ino_prefix(pos), ino_prefix(hi_ino))
            if item is None:
                break
            ino = int.from_bytes(item[0][:8], "big")
            if self.omap.obj(ino) not in reserved:
                self._destroy(ino)
            pos = ino + 1

    def _owners_in(self, lo: int, hi: int) -> list[int]:
        """Object numbers in [lo, hi) of files that exist (none matter in a full stream)."""
        if self.full:
            return []
        out = [self.omap.root] if lo <= self.omap.root < hi else []
        pos, end = max(ROOT_INO + 1, lo - self.omap.delta), hi - self.omap.delta
        while pos < end:
            item = self.tree.first_item(ino_prefix(pos), ino_prefix(end))
            if item is None:
                break
            ino = int.from_bytes(item[0][:8], "big")
            out.append(self.omap.obj(ino))
            pos = ino + 1
        return out

    def _finish_xattrs(self) -> None:
        """Each owner's xattrs become its directory's; cleared owners lose theirs."""
        entries, cleared = self.xattrs.result()
        wanted = {owner: {} for owner in cleared}
        for owner, names in entries.items():
            node = self._inode(self._ino(owner))
            if node is None:
                raise R.StreamError("invalid backup stream")      # xattrs of no file
            values = wanted[owner] = {}
            for name, fobj in names:
                value = self.xattrs.value(fobj)
                if value is not None:
                    values[name] = value
        for owner, values in sorted(wanted.items()):
            node = self._inode(self._ino(owner))
            if node is None:
                continue

            def drop(raw: bytes, node: Inode = node) -> None:
                bp = decode_bp(raw)
                if bp is not None:
                    node.used -= bp.asize
            set_xattrs(self.tree, node, values,
                       lambda v: self.dsl.write_blocks(self.rec, [v], self.policy)[0], drop)

    # ---- directories --------------------------------------------------------------------
    def _old_zap(self, d: _Dir) -> None:
        """Fill `d.data` with the ZAP the directory had before this stream (see the module
        comment); nothing for a new directory or one whose block size changed."""
        d.touched = True
        ino = self._ino(d.obj)
        if self.full:
            return
        raw = list(self.tree.scan(kind_lo(ino, K_RAW_ZAP), kind_hi(ino, K_RAW_ZAP)))
        if raw:
            if d.old_blksz != d.blksz:           # ZFS frees an object whose block size changes
                return
            for k, v in raw:
                bp = decode_bp(v)
                blkid = int.from_bytes(k[9:17], "big")
                if bp is not None:
                    _lay(d.data, blkid * d.blksz, bytes(self.dsl.pool.blocks.read(bp)))
            return
        entries = {}
        for _k, v in self.tree.scan(kind_lo(ino, K_DIRENT), kind_hi(ino, K_DIRENT)):
            child, dt, name = decode_dirent(v)
            entries[name] = dirent_value(self.omap.obj(child), dt << 12)
        if not entries and self.tree.get(inode_key(ino)) is None:
            return
        blksz, data = encode_zap(uint64_items(entries), salt_for(d.obj))
        if blksz == d.blksz:
            d.data = bytearray(data)

    def _finish_dirs(self) -> None:
        for obj, d in sorted(self.dirs.items()):
            ino = self._ino(obj)
            node = self._inode(ino)
            if node is None or not d.touched:
                continue
            try:
                zap = decode_zap(bytes(d.data), d.blksz)
            except ZapError:
                raise R.StreamError("invalid backup stream") from None
            want = {}
            for name, (intlen, ints) in zap.items():
                if intlen != 8 or len(ints) != 1:
                    raise R.StreamError("invalid backup stream")
                child, dt = dirent_object(ints[0])
                if child in self.skipped or child in self.omap.reserved():
                    continue
                if self._inode(self._ino(child)) is None:
                    raise R.StreamError("invalid backup stream")     # names no object
                want[name] = (self._ino(child), dt)
            self._set_entries(ino, want)
            self.tree.delete_range(kind_lo(ino, K_RAW_ZAP), kind_hi(ino, K_RAW_ZAP))
            blocks = [bytes(d.data[o:o + d.blksz]) for o in range(0, len(d.data), d.blksz)]
            keep = [(i, b) for i, b in enumerate(blocks) if b.count(0) != len(b)]
            if keep:
                bps = self.dsl.write_blocks(self.rec, [b for _i, b in keep], self.policy)
                for (i, _b), bp in zip(keep, bps):
                    self.tree.put(raw_zap_key(ino, i), encode_bp(bp), REF_BLOCK)

    def _set_entries(self, ino: int, want: dict[bytes, tuple[int, int]]) -> None:
        have = {}
        for k, v in self.tree.scan(kind_lo(ino, K_DIRENT), kind_hi(ino, K_DIRENT)):
            child, dt, name = decode_dirent(v)
            have[name] = (cookie_of(k), child, dt)
        for name, (cookie, child, dt) in have.items():
            if want.get(name) != (child, dt):
                self.tree.delete(dirent_key(ino, cookie))
        for name, (child, dt) in sorted(want.items()):
            old = have.get(name)
            if old is not None and (old[1], old[2]) == (child, dt):
                continue
            h = name_hash(name) << CD_BITS
            used = {cookie_of(k) for k, _v in self.tree.scan(dirent_key(ino, h),
                                                              dirent_key(ino, h + CD_MAX + 1))}
            cookie = next((c for c in range(h, h + CD_MAX + 1) if c not in used), None)
            if cookie is None:
                raise R.StreamError("invalid backup stream")
            self.tree.put(dirent_key(ino, cookie), encode_dirent(child, dt, name))

    # ---- the end ------------------------------------------------------------------------
    def finish(self) -> None:
        if self.full:
            master = self.special.get(1)
            if master is None:
                raise R.StreamError("invalid backup stream")
            try:
                keys = {k: v[1][0] for k, v in decode_zap(bytes(master)).items()
                        if v[0] == 8 and len(v[1]) == 1}
            except ZapError:
                raise R.StreamError("invalid backup stream") from None
            root = keys.get(b"ROOT")
            if not root or keys.get(b"VERSION", 0) > 4 and keys.get(b"SA_ATTRS"):
                raise R.StreamError("invalid backup stream")
            self._rekey_root(root)
            self.omap = ObjectMap(0, root, keys.get(b"DELETE_QUEUE", 0), sorted(
                {v for k, v in keys.items() if k.isupper() and k not in (
                    b"ROOT", b"DELETE_QUEUE", b"VERSION") and 0 < v < 1 << 48}
                | {o for o in self.skipped}))
        else:
            self.omap.keep = sorted(set(self.omap.keep) | self.skipped)
        self._finish_dirs()
        self._finish_xattrs()
        for obj, target in self.links.items():
            node = self._inode(self._ino(obj))
            if node is not None:
                node.target = bytes(target[:node.size])
        for ino, node in sorted(self.inodes.items()):
            self.tree.put(inode_key(ino), node.encode())
        self.sb.next_ino = max(self.sb.next_ino, self.max_obj + 1,
                               max(self.inodes, default=0) + 1)
        self.tree.put(SUPER_KEY, self.sb.encode())
        self.tree.put(MAP_KEY, self.omap.encode())

    def _rekey_root(self, root: int) -> None:
        """A full stream: the root directory's object becomes inode 1 (its znode and its
        children's parent numbers were read with the root still unknown)."""
        node = self.inodes.pop(root, None)
        if node is None or not node.is_dir:
            raise R.StreamError("invalid backup stream")
        node.ino = ROOT_INO
        node.parent = ROOT_INO
        self.inodes[ROOT_INO] = node
        for n in self.inodes.values():
            if n.parent == root:
                n.parent = ROOT_INO
        self.omap = ObjectMap(0, root, 0, [])


def _lay(buf: bytearray, offset: int, data: bytes) -> None:
    end = offset + len(data)
    if len(buf) < end:
        buf.extend(bytes(end - len(buf)))
    buf[offset:end] = data


def receive_stream(dsl: Datasets, target: str, src: BinaryIO, *, force: bool = False,
                   replaced_hook=None) -> Received:
    """Receive one substream from `src` into filesystem `target` (created by a full stream;
    for an incremental one, it must exist with the source as its latest snapshot), atomically
    (incoming.py). The caller holds the pool lock."""
    from fusezfs.send.incoming import receive_stream as receive
    return receive(dsl, target, src, force=force)


def modified(dsl: Datasets, head: Record, latest: Record) -> bool:
    """The head changed since its latest snapshot: its tree's root is not the snapshot's
    (the caller synced the pool, so the tree's root is its current state)."""
    from fusezfs.dsl.datasets import snap_root_name
    a, b = dsl.tree(head).root, dsl.pool.objset_root(snap_root_name(latest.id))
    if a is None or b is None:
        return a is not b
    return a.identity() != b.identity()
