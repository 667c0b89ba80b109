"""File contents for the POSIX layer: records, holes, truncate, and the dirty-record buffer.

A regular file is a sequence of records of `blksz` bytes (posix_layout.py). Writes do not touch
the tree: they land in a per-file dict of dirty records (bytearrays) in memory, so that a 4 KiB
write into a 128 KiB record costs a memcpy, not a compression and a block write. A record is
read from its block once (read-modify-write) the first time a partial write touches it. The
dirty records are turned into blocks by `_flush_data`, called from `Posix.flush()` when the
pool syncs (its sync hook), on fsync and on close; many records are written in one
`write_blocks` batch so they are compressed and checksummed in parallel. A record that a write
fills completely is frozen (kept as bytes) and handed to `prepare_ahead` at once: its
compression and checksum run on the worker threads while the writer's next requests arrive,
and the flush finds them done (a later write into it thaws it; the early result is then simply
not used). Sequential read asks for all the records a request spans at once (`read_blocks`),
so neighbours on disk come in one system call. The memory the buffer
takes is reported to the pool's dirty budget with `note_written`, so a writer that fills the
budget makes the pool sync (which flushes us) before it goes on: memory stays bounded.

Invariant: a record's content is its dirty buffer if it has one, else its stored block, else
zeros; either may be shorter than the record (the rest reads as zeros) but never reaches past
st_size. Truncating down trims the record holding the new end, so growing the file again
exposes zeros, as POSIX wants.
"""
from __future__ import annotations

import errno

from fusezfs.formats.bp import decode_bp, encode_bp
from fusezfs.zpl.posix_layout import K_DATA, MAX_FILE_SIZE, Inode, blkid_of, data_key, kind_hi
from fusezfs.zpl.posix_types import err, locked
from fusezfs.engine.tree import REF_BLOCK

FLUSH_BATCH = 16 << 20      # bytes of records handed to write_blocks at once


def _one_buffer(parts: list):
    """The buffer `parts` are, when they are views covering one whole buffer (a request for
    exactly the records of one run on disk: BlockIO.read_many returns them as views of that
    run's buffer, in order): then it is the answer as it is, with no copy."""
    first = parts[0]
    if type(first) is not memoryview or type(first.obj) is not bytes:
        return None
    obj = first.obj
    total = 0
    for p in parts:
        if type(p) is not memoryview or p.obj is not obj:
            return None
        total += len(p)
    return obj if total == len(obj) else None


class FileData:
    """Mixin of Posix: everything about file contents. Expects self.io, self.tree,
    self._records {ino: {blkid: bytearray, or bytes once full (see prepare_ahead)}}, self._dirty_data, self._inodes, self._mark()."""

    # ---- reading -------------------------------------------------------------------------
    def _stored_record(self, ino: int, blkid: int) -> bytes | None:
        raw = self.tree.get(data_key(ino, blkid))
        if raw is None:
            return None
        bp = decode_bp(raw)
        return None if bp is None else self.io.read_blocks([bp])[0]

    def _stored_records(self, ino: int, first: int, last: int, recs) -> dict[int, bytes]:
        """The stored blocks of records first..last that have no dirty buffer, read together
        (neighbours on disk in one system call)."""
        want: list = []
        ids: list[int] = []
        get = self.tree.get
        for blkid in range(first, last + 1):
            if recs and blkid in recs:
                continue
            raw = get(data_key(ino, blkid))
            bp = decode_bp(raw) if raw is not None else None
            if bp is not None:
                want.append(bp)
                ids.append(blkid)
        return dict(zip(ids, self.io.read_blocks(want))) if want else {}

    def _read(self, node: Inode, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0:
            raise err(errno.EINVAL)
        fsize = node.size
        if offset >= fsize or size == 0:
            return b""
        end = min(offset + size, fsize)
        bs = node.blksz
        ino = node.ino
        recs = self._records.get(ino)
        stored = self._stored_records(ino, offset // bs, (end - 1) // bs, recs)
        parts: list = []
        pos = offset
        while pos < end:
            blkid = pos // bs
            roff = pos - blkid * bs
            chunk = min(bs - roff, end - pos)
            src = recs.get(blkid) if recs else None
            if src is not None:
                piece = src[roff:roff + chunk]           # a copy: buffers may change later
            else:
                src = stored.get(blkid)
                if src is None:
                    piece = b""
                elif roff == 0 and chunk >= len(src):
                    piece = src                         # the whole block: no copy
                else:
                    piece = memoryview(src)[roff:roff + chunk]
            parts.append(piece)
            if len(piece) < chunk:
                parts.append(bytes(chunk - len(piece)))
            pos += chunk
        if len(parts) == 1 and type(parts[0]) is bytes:
            return parts[0]
        whole = _one_buffer(parts)
        return whole if whole is not None else b"".join(parts)

    # ---- writing -------------------------------------------------------------------------
    def _write(self, node: Inode, offset: int, data) -> int:
        """Write into dirty records; returns the number of bytes of new buffer memory (the
        caller reports it with note_written once its own state is consistent)."""
        n = len(data)
        if offset < 0:
            raise err(errno.EINVAL)
        if n == 0:
            return 0
        end = offset + n
        if end > MAX_FILE_SIZE:
            raise err(errno.EFBIG)
        self.io.check_space(self._dirty_data + n)
        mv = memoryview(data)
        if mv.ndim != 1 or mv.itemsize != 1:
            mv = mv.cast("B")
        bs = node.blksz
        ino = node.ino
        size = node.size
        recs = self._records.get(ino)
        if recs is None:
            recs = self._records[ino] = {}
        grown = 0
        pos = offset
        i = 0
        while pos < end:
            blkid = pos // bs
            rstart = blkid * bs
            roff = pos - rstart
            chunk = min(bs - roff, end - pos)
            buf = recs.get(blkid)
            if buf is None:
                valid = min(bs, size - rstart) if size > rstart else 0
                if roff == 0 and chunk >= valid:
                    # the write replaces everything the record holds: no need to read it
                    if chunk == bs:         # a full record: its block can be prepared now
                        recs[blkid] = full = bytes(mv[i:i + chunk])
                        self.io.prepare_ahead(full)
                    else:
                        recs[blkid] = bytearray(mv[i:i + chunk])
                    grown += chunk
                    pos += chunk
                    i += chunk
                    continue
                old = self._stored_record(ino, blkid)
                buf = recs[blkid] = bytearray(old) if old else bytearray()
                grown += len(buf)
            else:
                buf = self._thaw(recs, blkid, buf)
            before = len(buf)
            if roff > before:
                buf += bytes(roff - before)
            buf[roff:roff + chunk] = mv[i:i + chunk]
            grown += len(buf) - before
            if before < bs == len(buf):     # an appending writer filled it up: freeze it
                recs[blkid] = full = bytes(buf)
                self.io.prepare_ahead(full)
            pos += chunk
            i += chunk
        if end > size:
            node.size = end
        self._dirty_data += grown
        return grown

    def _truncate(self, node: Inode, size: int) -> int:
        """Set the file size; frees records past the end and trims the last one. Returns the
        bytes of new buffer memory (see _write)."""
        old = node.size
        ino = node.ino
        bs = node.blksz
        grown = 0
        if size < old:
            recs = self._records.get(ino)
            # the record that will hold the new end first: reading it may fail (EIO), and
            # nothing must have changed then
            keep = size - (size // bs) * bs
            if keep:
                blkid = size // bs
                buf = recs.get(blkid) if recs else None
                if buf is not None:
                    if len(buf) > keep:
                        self._dirty_data -= len(buf) - keep
                        buf = self._thaw(recs, blkid, buf)
                        del buf[keep:]
                else:
                    raw = self.tree.get(data_key(ino, blkid))
                    bp = None if raw is None else decode_bp(raw)
                    if bp is not None and bp.lsize > keep:
                        trimmed = bytearray(memoryview(self.io.read_blocks([bp])[0])[:keep])
                        recs = self._records.setdefault(ino, {})
                        recs[blkid] = trimmed
                        self._dirty_data += keep
                        grown += keep
            first_gone = -(-size // bs)
            if recs:
                for b in [b for b in recs if b >= first_gone]:
                    gone = recs.pop(b)
                    self._unfreeze(gone)
                    self._dirty_data -= len(gone)
            if first_gone <= (old - 1) // bs:
                lo, hi = data_key(ino, first_gone), kind_hi(ino, K_DATA)
                freed = 0
                count = 0
                for _k, v in self.tree.scan(lo, hi):
                    bp = decode_bp(v)
                    count += 1
                    if bp is not None:
                        freed += bp.asize
                if count:
                    self.tree.delete_range(lo, hi)
                    node.used -= freed
        node.size = size
        return grown

    def _drop_data(self, ino: int) -> None:
        recs = self._records.pop(ino, None)
        if recs:
            self._dirty_data -= sum(len(b) for b in recs.values())
            for buf in recs.values():
                self._unfreeze(buf)

    def _thaw(self, recs: dict, blkid: int, buf):
        """The record as a bytearray to change in place: a frozen one (bytes, given to
        prepare_ahead whole) is copied and its early write undone."""
        if type(buf) is bytes:
            self._unfreeze(buf)
            buf = recs[blkid] = bytearray(buf)
        return buf

    def _unfreeze(self, buf) -> None:
        """A record buffer leaves without being written: an early write of it is undone."""
        if type(buf) is bytes:
            self.io.cancel_ahead(buf)

    def _pending_bytes(self, ino: int) -> int:
        recs = self._records.get(ino)
        return sum(-(-len(b) // 512) * 512 for b in recs.values()) if recs else 0

    # ---- SEEK_DATA / SEEK_HOLE: posix_alloc.py (with fallocate, which makes holes) ------
    @locked
    def data_extents(self, ino: int, start: int = 0, end: int | None = None
                     ) -> list[tuple[int, int]]:
        """Where file `ino` has data between `start` and `end` (default: its size): sorted,
        merged (first, past-last) byte ranges, everything else reads as zeros. For copying a
        file without reading or writing its holes (`fusezfs cp`): one tree scan of the range's
        record keys, where SEEK_DATA/SEEK_HOLE would take one per extent. Record granularity,
        as lseek: a record that is stored or buffered counts whole (clipped to the file size),
        even if it holds zeros (compression=off stores zero records a writer wrote). A caller
        copying a huge file asks window by window, so the pool lock is never held for long.
        Not a regular file: no extents."""
        node = self._inode(ino)
        if not node.is_reg:
            return []
        size = node.size
        end = size if end is None else min(end, size)
        if start < 0:
            raise err(errno.EINVAL)
        if start >= end:
            return []
        bs = node.blksz
        first, last = start // bs, (end - 1) // bs
        recs = self._records.get(ino) or {}
        ids = {b for b, buf in recs.items() if first <= b <= last and len(buf)}
        for k, v in self.tree.scan(data_key(ino, first), data_key(ino, last + 1)):
            if decode_bp(v) is not None and blkid_of(k) not in recs:   # (an emptied buffer:
                ids.add(blkid_of(k))                    # a hole the next flush makes)
        out: list[tuple[int, int]] = []
        for b in sorted(ids):
            lo, hi = max(start, b * bs), min(end, (b + 1) * bs)
            if out and out[-1][1] == lo:
                out[-1] = (out[-1][0], hi)
            else:
                out.append((lo, hi))
        return out

    # ---- flushing into blocks ------------------------------------------------------------
    def _flush_data(self) -> None:
        for ino in [i for i, recs in self._records.items() if not recs]:
            del self._records[ino]
        if not self._records:
            self._dirty_data = 0
            return
        batch: list = []
        nbytes = 0
        for ino in sorted(self._records):
            recs = self._records[ino]
            for blkid in sorted(recs):
                batch.append((ino, blkid, recs[blkid]))
                nbytes += len(recs[blkid])
                if nbytes >= FLUSH_BATCH:
                    self._flush_batch(batch)
                    batch, nbytes = [], 0
        self._flush_batch(batch)
        if not self._records:
            self._dirty_data = 0

    def _flush_batch(self, batch: list) -> None:
        if not batch:
            return
        holes_for_zeros = bool(getattr(self.io, "compress", False))
        writes = []
        holes = []
        for item in batch:
            buf = item[2]
            if not buf or (holes_for_zeros and not buf[0] and buf.count(0) == len(buf)):
                holes.append(item)
            else:
                writes.append(item)
        bps = self.io.write_blocks([w[2] for w in writes]) if writes else []
        for (ino, blkid, _buf) in holes:
            self._set_record(ino, blkid, None)
        for (ino, blkid, _buf), bp in zip(writes, bps):
            self._set_record(ino, blkid, bp)
        # only now are these records safe in the tree
        for ino, blkid, buf in batch:
            recs = self._records.get(ino)
            if recs is not None and recs.get(blkid) is buf:
                del recs[blkid]
                self._dirty_data -= len(buf)
                if not recs:
                    del self._records[ino]

    def _set_record(self, ino: int, blkid: int, bp) -> None:
        node = self._inodes[ino]
        key = data_key(ino, blkid)
        old = self.tree.get(key)
        if old is not None:
            obp = decode_bp(old)
            if obp is not None:
                node.used -= obp.asize
            if bp is None:
                self.tree.delete(key)
        if bp is not None:
            self.tree.put(key, encode_bp(bp), REF_BLOCK)
            node.used += bp.asize
        self._mark(node)
