"""fallocate(2) for the POSIX layer (ZFS's zpl_fallocate_common and zfs_freesp): a mixin of Posix.

Theory of operation
-------------------
Modes, as ZFS on Linux answers them:

* 0 and FALLOC_FL_KEEP_SIZE: a copy-on-write filesystem cannot set blocks aside for later
  writes (an overwrite needs new space too), so, as ZFS, nothing is allocated; the space the
  range would take where the file has no data yet (plus 10% for metadata, ZFS's
  zfs_fallocate_reserve_percent) is checked up front against the quotas up the tree and the
  pool (EDQUOT / ENOSPC, nothing changed), and without KEEP_SIZE the file grows to the end of
  the range. Holes stay holes and SEEK_HOLE reports them.
* FALLOC_FL_PUNCH_HOLE (with KEEP_SIZE, as Linux requires) and FALLOC_FL_ZERO_RANGE free the
  range: whole records inside it are removed from the tree (their blocks freed by birth time:
  a block a snapshot holds goes to the deadlist, so the snapshot keeps its data), buffered
  records dropped, and the records at its edges zeroed in their buffers. ZERO_RANGE without
  KEEP_SIZE then grows the file to the end of the range; with KEEP_SIZE both stop at the size.
* Every other mode (COLLAPSE_RANGE, INSERT_RANGE, UNSHARE_RANGE, ...) is EOPNOTSUPP.

Crash safety is the POSIX layer's as for any write: every change is made under the pool's lock
in the open txg, so a txg holds all of a fallocate or none of it; the intent log notes a freed
range (and the size) in order with the file's writes, so an fsync after a punch makes it
durable and replay frees the same range.
"""
from __future__ import annotations

import errno
import os

from fusezfs.formats.bp import decode_bp
from fusezfs.zpl.posix_layout import K_DATA, MAX_FILE_SIZE, Inode, data_key, kind_hi
from fusezfs.zpl.posix_log import P, T
from fusezfs.zpl.posix_types import err, locked

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
SUPPORTED = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE
RESERVE_PERCENT = 110       # ZFS's zfs_fallocate_reserve_percent


class Allocation:
    """Mixin of Posix (module comment). Expects the FileData and IntentLogging mixins."""

    @locked
    def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        """fallocate(2) on an open file (module comment for the modes)."""
        h = self._handle(fh)
        if mode & ~SUPPORTED:
            raise err(errno.EOPNOTSUPP)
        punch = bool(mode & FALLOC_FL_PUNCH_HOLE)
        zero = bool(mode & FALLOC_FL_ZERO_RANGE)
        keep = bool(mode & FALLOC_FL_KEEP_SIZE)
        if (punch and not keep) or (punch and zero):
            raise err(errno.EOPNOTSUPP)         # what the VFS answers before any filesystem
        if offset < 0 or length <= 0:
            raise err(errno.EINVAL)
        if h.flags & os.O_ACCMODE == os.O_RDONLY:
            raise err(errno.EBADF)
        node = self._inode(h.ino)
        if node.is_dir:
            raise err(errno.EISDIR)
        if not node.is_reg:
            raise err(errno.ENODEV)
        end = offset + length
        if end > MAX_FILE_SIZE:
            raise err(errno.EFBIG)
        self._writable()
        size = node.size
        grown = 0
        if punch or zero:
            stop = min(end, size)
            if offset < stop:
                grown = self._punch(node, offset, stop)
                self._note(P, node.ino, offset, stop)
            if zero and not keep and end > size:
                grown += self._truncate(node, end)
                self._note(T, node.ino, end)
            if offset < stop or node.size != size:
                node.mtime = node.ctime = self.io.now_ns()
                self._mark(node)
        else:
            want = self._hole_bytes(node, offset, end) * RESERVE_PERCENT // 100
            self.io.check_space(self._dirty_data + want)
            if not keep and end > size:
                grown = self._truncate(node, end)
                node.mtime = node.ctime = self.io.now_ns()
                self._mark(node)
                self._note(T, node.ino, end)
        if grown:
            self.io.note_written(grown)

    def _hole_bytes(self, node: Inode, start: int, end: int) -> int:
        """Bytes of [start, end) in records that hold no data (stored or buffered)."""
        bs, ino = node.blksz, node.ino
        first, last = start // bs, (end - 1) // bs
        have = 0
        recs = self._records.get(ino) or {}
        seen = set()
        for k, v in self.tree.scan(data_key(ino, first), data_key(ino, last + 1)):
            blkid = int.from_bytes(k[9:17], "big")
            if decode_bp(v) is not None:
                seen.add(blkid)
        seen.update(b for b, buf in recs.items() if first <= b <= last and len(buf))
        for b in seen:
            have += min(end, (b + 1) * bs) - max(start, b * bs)
        return (end - start) - have

    def _punch(self, node: Inode, start: int, end: int) -> int:
        """Free [start, end) (end <= size): whole records out of the tree and the buffer,
        the partial ones at the edges zeroed. Returns new buffer bytes (see _write)."""
        bs, ino, size = node.blksz, node.ino, node.size
        grown = 0
        head = start // bs
        if start % bs:                              # the head: part of a record
            hi = min(end, size, (head + 1) * bs) - head * bs
            grown += self._zero_part(node, head, start % bs, hi)
            head += 1
        stop = -(-size // bs) if end >= size else end // bs    # the last may end at EOF
        if head < stop:                             # records wholly inside
            recs = self._records.get(ino)
            if recs:
                for b in [b for b in recs if head <= b < stop]:
                    gone = recs.pop(b)
                    self._unfreeze(gone)
                    self._dirty_data -= len(gone)
            lo, hi = data_key(ino, head), data_key(ino, stop)
            freed = count = 0
            for _k, v in self.tree.scan(lo, hi):
                bp = decode_bp(v)
                count += 1
                if bp is not None:
                    freed += bp.asize
            if count:
                self.tree.delete_range(lo, hi)  # blocks freed by birth time (snapshots keep)
                node.used -= freed
        if end < size and end % bs and end // bs >= head:   # the tail: part of a record
            grown += self._zero_part(node, end // bs, 0, end % bs)
        return grown

    def _zero_part(self, node: Inode, blkid: int, lo: int, hi: int) -> int:
        """Zero bytes [lo, hi) of record `blkid` in its buffer (read from its block first);
        a record with no data there stays as it is. Returns new buffer bytes."""
        ino = node.ino
        recs = self._records.setdefault(ino, {})
        buf = recs.get(blkid)
        grown = 0
        if buf is None:
            old = self._stored_record(ino, blkid)
            if old is None or len(old) <= lo:
                if not recs:
                    del self._records[ino]
                return 0
            buf = recs[blkid] = bytearray(old)
            self._dirty_data += len(buf)
            grown = len(buf)
        else:
            buf = self._thaw(recs, blkid, buf)
        if len(buf) > lo:
            if hi >= len(buf):
                self._dirty_data -= len(buf) - lo
                del buf[lo:]                        # beyond a buffer reads as zeros
            else:
                buf[lo:hi] = bytes(hi - lo)
        return grown

    def _data_at(self, ino: int, blkid: int) -> bool:
        """Whether record `blkid` holds data: its buffer if it has one (an emptied buffer
        is a hole the next flush makes), else its block."""
        recs = self._records.get(ino)
        if recs is not None and blkid in recs:
            return len(recs[blkid]) > 0
        return self.tree.get(data_key(ino, blkid)) is not None

    def _seek(self, node: Inode, offset: int, whence: int) -> int:
        """SEEK_DATA / SEEK_HOLE at record granularity, holes as they are: a record that is
        neither stored nor buffered (never written, punched, truncated away, all zeros under
        compression once flushed) is a hole; so is everything from the size on."""
        if offset < 0 or offset >= node.size:
            raise err(errno.ENXIO)
        bs, ino = node.blksz, node.ino
        first = offset // bs
        last = (node.size - 1) // bs
        recs = self._records.get(ino) or {}
        if whence == os.SEEK_DATA:
            cands = [b for b, buf in recs.items() if b >= first and len(buf)]
            for k, _v in self.tree.scan(data_key(ino, first), kind_hi(ino, K_DATA)):
                b = int.from_bytes(k[9:17], "big")
                if b not in recs:
                    cands.append(b)
                    break
            cands = [b for b in cands if b <= last]
            if not cands:
                raise err(errno.ENXIO)
            return max(offset, min(cands) * bs)
        b = first
        while b <= last and self._data_at(ino, b):
            b += 1
        return min(max(offset, b * bs), node.size)
