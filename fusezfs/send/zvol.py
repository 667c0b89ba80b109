"""`zfs send` of a volume: a DMU_OST_ZVOL object set, as OpenZFS's zvols are sent.

Theory of operation
-------------------
An OpenZFS volume's object set has two objects (zvol_create_cb): object 1 (ZVOL_OBJ,
DMU_OT_ZVOL, no bonus) holds the bytes in blocks of volblocksize, and object 2 (ZVOL_ZAP_OBJ,
DMU_OT_ZVOL_PROP) is a ZAP whose entry "size" (one uint64) is the volsize. A fusezfs volume's
tree keeps the same things as one POSIX file (volumes.py, FORMAT.md 7.1): its records are the
blocks, its size the volsize. So the stream is: BEGIN (drr_type DMU_OST_ZVOL), OBJECT 1 and
its blocks in offset order: a WRITE per stored block (full stream) or per block born after the
source's txg (incremental), and a FREE per run of blocks that is not stored (a hole reads as
zeros; in an incremental stream that also frees what was discarded since), the last to the end
of the object; then OBJECT 2 and the WRITE of its ZAP (a microzap, zap.py), and FREEOBJECTS for
every other object. Objects come in order and WRITEs in (object, offset) order, as OpenZFS's
receiver requires. The ZAP and the OBJECT records are sent in incrementals too: volsize may
have changed. Blocks are sent whole (volsize is a multiple of volblocksize); changes are found
by birth time, as sender.py finds them, and nothing is compared by content.

Receiving (`VolumeApplier`, used by incoming.Receive for a DMU_OST_ZVOL substream) goes the
other way into the hidden volume a receive builds (a new volume for a full stream, a clone of
the source snapshot for an incremental one; incoming.py makes it and switches it into place):
OBJECT 1 gives the block size (formatting a new volume's tree with it; an incremental stream
must keep it), WRITEs of object 1 become records (an all-zero block a hole when compression is
on, as the POSIX layer stores it), FREEs delete whole records and zero partial ones, object 2's
ZAP gives the size, set on the data object at the end with its `used`. Other objects are an
invalid stream.
"""
from __future__ import annotations

from collections.abc import Iterator

from fusezfs.formats.bp import decode_bp, encode_bp
from fusezfs.zpl.posix_layout import K_DATA, Inode, blkid_of, data_key, inode_key, kind_hi, kind_lo
from fusezfs.engine.tree import REF_BLOCK, Tree
from fusezfs.send import records as R
from fusezfs.send.zap import ZapError, decode_zap, encode_zap, salt_for, uint64_items
from fusezfs.send.znode import DN_MAX_OBJECT

DMU_OST_ZVOL = 3
DMU_OT_ZVOL = 23
DMU_OT_ZVOL_PROP = 24
ZVOL_OBJ, ZVOL_ZAP_OBJ = 1, 2
DATA_INO = 2                    # volumes.DATA_INO: the volume's data object in its tree
BATCH = 64                      # blocks read at once (neighbours on disk in one call)


class VolumeSender:
    """The records of a volume snapshot's stream after `begin` (whose type it sets), from
    `from_txg` (the source's createtxg, 0 for a full stream); `read` reads blocks."""

    def __init__(self, tree: Tree, read, begin: R.Begin, from_txg: int = 0) -> None:
        self.tree = tree
        self.read = read
        self.begin = begin
        self.from_txg = from_txg
        begin.type = DMU_OST_ZVOL

    def records(self) -> Iterator[R.Record]:
        guid = self.begin.toguid
        node = Inode.decode(DATA_INO, self.tree.get(inode_key(DATA_INO)))
        bs, size = node.blksz, node.size
        yield self.begin
        yield R.Object(ZVOL_OBJ, DMU_OT_ZVOL, 0, bs, toguid=guid)
        pos = 0
        batch: list = []
        for key, value in self.tree.scan(kind_lo(DATA_INO, K_DATA), kind_hi(DATA_INO, K_DATA)):
            bp = decode_bp(value[:128])
            if bp is None:
                continue
            offset = blkid_of(key) * bs
            if offset > pos:
                yield from self._writes(batch, bs, guid)
                batch = []
                yield R.Free(ZVOL_OBJ, pos, offset - pos, toguid=guid)
            if bp.birth > self.from_txg:
                batch.append((offset, bp))
                if len(batch) >= BATCH:
                    yield from self._writes(batch, bs, guid)
                    batch = []
            pos = offset + bs
        yield from self._writes(batch, bs, guid)
        yield R.Free(ZVOL_OBJ, pos, R.FREE_TO_END, toguid=guid)
        # objects in order, and WRITEs in (object, offset) order, as receivers require
        zblksz, zap = encode_zap(uint64_items({b"size": size}), salt_for(ZVOL_ZAP_OBJ))
        yield R.Object(ZVOL_ZAP_OBJ, DMU_OT_ZVOL_PROP, 0, zblksz, toguid=guid)
        yield R.Write(ZVOL_ZAP_OBJ, DMU_OT_ZVOL_PROP, 0, zap, toguid=guid)
        yield R.FreeObjects(ZVOL_ZAP_OBJ + 1, DN_MAX_OBJECT - ZVOL_ZAP_OBJ - 1, toguid=guid)

    def _writes(self, batch: list, bs: int, guid: int) -> Iterator[R.Record]:
        if not batch:
            return
        for (offset, _bp), data in zip(batch, self.read([bp for _o, bp in batch])):
            if len(data) < bs:
                data = bytes(data) + bytes(bs - len(data))
            yield R.Write(ZVOL_OBJ, DMU_OT_ZVOL, offset, data, toguid=guid)


class VolumeApplier:
    """Applies a volume substream's records to hidden volume `rec` (incoming.Receive's
    applier for DMU_OST_ZVOL streams; the module comment)."""

    def __init__(self, dsl, rec, full: bool) -> None:
        from fusezfs.dsl import properties
        self.dsl = dsl
        self.rec = rec
        self.full = full
        self.tree: Tree = dsl.tree(rec)
        self.policy = properties.write_policy(dsl, rec)
        self.compress = str(properties.value(dsl, rec, "compression")) != "off"
        raw = self.tree.get(inode_key(DATA_INO))
        self.blksz = Inode.decode(DATA_INO, raw).blksz if raw is not None else 0
        self.zap = bytearray()
        self.last_write = (0, 0)

    def apply(self, r: R.Record) -> None:
        if isinstance(r, R.Object):
            self._object(r)
        elif isinstance(r, R.Write):
            self._write(r)
        elif isinstance(r, R.Free):
            if r.object == ZVOL_OBJ:
                self._free(r.offset, r.length)
        elif isinstance(r, R.FreeObjects):
            if r.firstobj <= ZVOL_ZAP_OBJ:
                raise R.StreamError("invalid backup stream")
        elif isinstance(r, R.Other):
            raise R.StreamError(f"stream has unsupported feature (record type "
                                f"{R.TYPE_NAMES[r.type]})")

    def _object(self, r: R.Object) -> None:
        if r.object == ZVOL_ZAP_OBJ and r.type == DMU_OT_ZVOL_PROP:
            return
        if r.object != ZVOL_OBJ or r.type != DMU_OT_ZVOL or r.blksz < 512 or r.blksz % 512 \
                or r.blksz & (r.blksz - 1) or r.blksz > (128 << 10):
            raise R.StreamError("invalid backup stream")
        if self.blksz and r.blksz != self.blksz:
            raise R.StreamError("invalid backup stream")
        if not self.blksz:                      # a new volume: its tree, empty, this block size
            from fusezfs.zpl.volumes import format_volume
            format_volume(self.dsl, self.rec, r.blksz, 0)
            self.blksz = r.blksz

    def _write(self, w: R.Write) -> None:
        if (w.object, w.offset) < self.last_write:
            raise R.StreamError("invalid backup stream")
        self.last_write = (w.object, w.offset)
        data = bytes(w.data)
        if w.compressiontype or len(data) != w.logical_size:
            raise R.StreamError("stream has unsupported feature (compressed WRITE records)")
        if w.object == ZVOL_ZAP_OBJ:
            end = w.offset + len(data)
            if len(self.zap) < end:
                self.zap.extend(bytes(end - len(self.zap)))
            self.zap[w.offset:end] = data
            return
        bs = self.blksz
        if w.object != ZVOL_OBJ or not bs or w.offset % bs:
            raise R.StreamError("invalid backup stream")
        for off in range(0, len(data), bs):
            self._set((w.offset + off) // bs, data[off:off + bs])

    def _set(self, blkid: int, piece: bytes) -> None:
        key = data_key(DATA_INO, blkid)
        if self.compress and piece.count(0) == len(piece):
            if self.tree.get(key) is not None:
                self.tree.delete(key)
            return
        bp = self.dsl.write_blocks(self.rec, [piece], self.policy)[0]
        self.tree.put(key, encode_bp(bp), REF_BLOCK)

    def _free(self, offset: int, length: int) -> None:
        """Bytes [offset, offset+length) read as zeros: whole records go, partial ones are
        zeroed in part (as receiver.py frees a file's range)."""
        bs = self.blksz
        if not bs:
            raise R.StreamError("invalid backup stream")
        end = (1 << 64) if length == R.FREE_TO_END else offset + length
        first, last = -(-offset // bs), end // bs             # whole records [first, last)
        if offset % bs:
            self._zero(offset // bs, offset % bs, min(bs, end - offset // bs * bs))
        if end % bs and end < (1 << 63) and last >= first:
            self._zero(last, 0, end % bs)
        if first < last:
            hi = data_key(DATA_INO, last) if end < (1 << 63) else kind_hi(DATA_INO, K_DATA)
            self.tree.delete_range(data_key(DATA_INO, first), hi)

    def _zero(self, blkid: int, start: int, stop: int) -> None:
        raw = self.tree.get(data_key(DATA_INO, blkid))
        bp = decode_bp(raw[:128]) if raw is not None else None
        if bp is None:
            return
        data = bytearray(self.dsl.pool.blocks.read(bp))
        data[start:stop] = bytes(stop - start)
        self._set(blkid, bytes(data))

    def finish(self) -> None:
        try:
            size = decode_zap(bytes(self.zap)).get(b"size")
        except ZapError:
            size = None
        if not self.blksz or size is None or size[0] != 8 or len(size[1]) != 1 or \
                not size[1][0] or size[1][0] % self.blksz:
            raise R.StreamError("invalid backup stream")
        volsize = size[1][0]
        self._free(volsize, R.FREE_TO_END)       # nothing past the end
        node = Inode.decode(DATA_INO, self.tree.get(inode_key(DATA_INO)))
        node.size = volsize
        node.used = sum(decode_bp(v[:128]).asize for _k, v in self.tree.scan(
            kind_lo(DATA_INO, K_DATA), kind_hi(DATA_INO, K_DATA)) if decode_bp(v[:128]))
        self.tree.put(inode_key(DATA_INO), node.encode())
