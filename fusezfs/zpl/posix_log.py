"""The POSIX layer's half of the intent log (ZFS's zfs_log.c and zfs_replay.c): what changed
since the last durable txg, turned into log records when a file must be durable, and replayed
after a crash. A mixin of Posix; the chain of log blocks is zil.py's.

Theory of operation
-------------------
With `sync` standard or always, every change a filesystem makes is noted in memory as an *itx*
(intent transaction), tagged with the open txg: a write's byte range, a truncate, a change of
attributes or of an xattr, and, fully encoded at once, every change of names (create, link,
remove, rename) with what replay needs to redo it exactly (the inode number, mode, owner, times
and generation of a new file). Nothing is written then, and a write's bytes are not copied.

fsync of file F (also msync, an O_SYNC/O_DSYNC write, and every operation under sync=always)
commits: every name change not yet logged, in order (so F is found by the names it has), and F's
own changes: its writes as records carrying the bytes F holds *now* (ZFS's WR_NEED_COPY), in
groups between its truncates, and a last record with all F's attributes. The records go to the
log as one commit (zil.IntentLog.commit: blocks, then one flush per device). Reading the bytes
at commit time is exact for the final state: every byte a write touched is logged with F's
current content, truncates replay in their places, and the attributes record sets the final
size and times. Itxs of txgs that are durable are dropped (the tree has them); those of files
committed are dropped once logged. A commit whose records would outweigh the txg itself
(more than LOG_MAX bytes) commits the txg instead: the data is then written once, not twice.

logbias=throughput: full records F has buffered are written as ordinary data blocks at once
(ZFS's WR_INDIRECT, a dmu_sync) and the log carries only their block pointers; the txg then
takes those very blocks, so the bytes are written once. The log pins them (zil.IntentLog.pin):
if the txg replaces them before it commits, their free is deferred, never reused under a log
record that names them.

sync=disabled: nothing is noted and fsync returns at once; only txg commits make changes
durable (ZFS's behaviour). A filesystem whose tree was replaced in the open txg (a rollback)
commits the txg at fsync until that txg is durable: records must never be replayed on a tree
they were not made against.

Replay (`replay`, at import, api.Handle) applies the records of one dataset in log order on the
tree of the txg import loaded, through the same operations (no itxs are noted meanwhile, and the
dirty budget does not sync halfway: a replay is committed whole by one txg, or not at all, and
then done again from the start after another crash). A record that no longer applies (its file
removed later in the same log) is skipped, as ZFS's replay skips ENOENT.
"""
from __future__ import annotations

import errno
import logging
import stat
from collections import deque

from fusezfs.engine import zil
from fusezfs.formats.bp import decode_bp
from fusezfs.zpl.posix_layout import Inode, data_key, inode_key, xattr_key
from fusezfs.zpl.posix_types import err
from fusezfs.engine.tree import REF_BLOCK

log = logging.getLogger("fusezfs.log")

LOG_MAX = 32 << 20          # bytes of records above which fsync commits the txg instead
LIGHT = 1 << 20             # bytes of writes an fsync logs on the FUSE loop's thread at most
# itx kinds
W, T, A, X, P = range(5)    # per file: write (a, b: byte range), truncate (a: size),
#                             attributes, xattr (a: name), punch (a, b: the range freed)


class IntentLogging:
    """Mixin of Posix: notes itxs, commits them at fsync, replays records. Expects self.io,
    self.tree, self._inode, self._inodes, self._read, self._write, self._truncate, ..."""

    def _log_init(self) -> None:
        self._names: deque[tuple[int, bytes]] = deque()     # (txg, record) of name changes
        self._files: dict[int, list[tuple]] = {}    # ino -> [(txg, kind, a, b)], in order
        self._sync_now: set[int] = set()        # files to commit when the operation ends
        self._barrier = 0                       # txg that must be durable before logging
        self._replaying = False
        self._log_on = getattr(self.io, "sync_mode", "disabled") != "disabled"

    # ---- noting --------------------------------------------------------------------------
    def _logging(self) -> bool:
        on = getattr(self.io, "sync_mode", "disabled") != "disabled"
        if on != self._log_on:                  # `zfs set sync` reached this filesystem
            self._log_on = on
            if on:              # what changed while it was off was never noted: the log is
                self._barrier = max(self._barrier, self.io.txg)    # usable from the next txg
        return on and not self._replaying

    def _note(self, kind: int, ino: int, a=0, b=0) -> None:
        if not self._logging():
            return
        txg = self.io.txg
        mine = self._files.get(ino)
        if mine is None:
            mine = self._files[ino] = []
        elif kind == W:
            last = mine[-1]
            if last[1] == W and last[0] == txg and last[2] <= a <= last[3]:
                mine[-1] = (txg, W, last[2], max(b, last[3]))     # an appending writer
                self._always(ino)
                return
        mine.append((txg, kind, a, b))
        self._always(ino)

    def _always(self, ino: int) -> None:
        if self.io.sync_mode == "always":
            self._sync_now.add(ino)

    def _note_names(self, record: bytes) -> None:
        """A change of names, encoded now (zil.*_record): what replay needs to redo it."""
        if self._logging():
            self._names.append((self.io.txg, record))
            self._always(0)

    def _log_ds(self) -> int:
        return self.io.rec.id

    def _note_create(self, parent: int, name: bytes, node: Inode) -> None:
        if self._logging():
            self._note_names(zil.create_record(
                self._log_ds(), parent, name, node.ino, node.mode, node.uid, node.gid,
                node.blksz, node.rdev, node.gen, (node.atime, node.mtime, node.ctime,
                                                  node.crtime), node.target))

    def _note_link(self, parent: int, name: bytes, ino: int) -> None:
        if self._logging():
            self._note_names(zil.link_record(self._log_ds(), parent, name, ino))

    def _note_remove(self, parent: int, name: bytes, ino: int, is_dir: bool) -> None:
        if self._logging():
            self._note_names(zil.remove_record(self._log_ds(), parent, name, ino, is_dir))

    def _note_rename(self, parent: int, name: bytes, new_parent: int, new_name: bytes,
                     flags: int) -> None:
        if self._logging():
            self._note_names(zil.rename_record(self._log_ds(), parent, name, new_parent,
                                               new_name, flags))

    # ---- committing ----------------------------------------------------------------------
    def _log_trim(self, durable: int, inos=None) -> None:
        """Forget itxs of durable txgs (the tree holds their changes): of the names, and of
        files `inos` (None: of every file)."""
        names = self._names
        while names and names[0][0] <= durable:
            names.popleft()
        files = self._files
        for ino in list(files) if inos is None else [i for i in inos if i in files]:
            mine = files[ino]
            if mine[-1][0] <= durable:
                del files[ino]
            elif mine[0][0] <= durable:
                files[ino] = [x for x in mine if x[0] > durable]

    @property
    def pending_itxs(self) -> int:
        """Changes noted and not yet logged or durable (for tests and tools)."""
        return len(self._names) + sum(map(len, self._files.values()))

    def _log_flushed(self) -> None:
        """After a flush (every txg sync runs one): drop the itxs durable txgs hold."""
        if self._names or self._files:
            ilog = getattr(self.io, "intent_log", None)
            if ilog is not None:
                self._log_trim(ilog().pool.synced_txg)

    def _commit_now(self) -> None:
        """The end of an operation under sync=always or through an O_SYNC handle."""
        inos, self._sync_now = self._sync_now, set()
        self._log_commit(inos - {0})

    def _log_commit(self, inos: set[int] | None) -> None:
        """Make the changes of files `inos` (None: of every file) and every change of names
        durable: by the intent log, or by a txg commit where the log cannot take them."""
        if not self._logging():
            if getattr(self.io, "sync_mode", None) is None:     # no log below (tests' io)
                self.flush()
                self.io.sync()
            return
        ilog = self.io.intent_log()
        pool = ilog.pool
        if not ilog.ready() or pool.synced_txg < self._barrier:
            self.io.sync()
            return
        inos = list(self._files) if inos is None else [i for i in inos if i in self._files]
        self._log_trim(pool.synced_txg, inos)
        records = self._log_records(inos, ilog)
        if not records:
            for ino in inos:                # (files gone since: nothing of them to log)
                self._files.pop(ino, None)
            return
        if sum(map(len, records)) > LOG_MAX or not ilog.commit(records):
            self.io.sync()
            return
        self._names.clear()                     # logged: durable now, with their files
        for ino in inos:
            self._files.pop(ino, None)

    def _log_records(self, inos: list[int], ilog) -> list[bytes]:
        """Every change of names, in order (replay then finds the files where they are),
        then each file's writes with its bytes of now, its truncates and punches in their
        places, its xattrs and last its attributes."""
        ds = self._log_ds()
        out: list[bytes] = [record for _txg, record in self._names]
        for ino in inos:
            if ino not in self._files:
                continue
            node = self._log_node(ino)
            if node is None:
                continue
            writes: list = []
            xattrs: set = set()
            for _txg, kind, a, b in self._files[ino]:
                if kind == W:
                    writes.append((a, b))
                elif kind in (T, P):        # in their place among the file's writes
                    out += self._write_records(ds, ino, writes, ilog)
                    writes = []
                    out.append(zil.truncate_record(ds, ino, a) if kind == T else
                               zil.free_record(ds, ino, a, b - a))
                elif kind == X:
                    xattrs.add(a)
            out += self._write_records(ds, ino, writes, ilog)
            for name in sorted(xattrs):
                item = self.tree.get_item(xattr_key(ino, name))
                if item is None:
                    out.append(zil.rmxattr_record(ds, ino, name))
                else:
                    value, ref = item
                    if ref == REF_BLOCK:
                        bp = decode_bp(value)
                        value = b"" if bp is None else self.io.read_blocks([bp])[0]
                    out.append(zil.setxattr_record(ds, ino, name, value))
            out.append(zil.attr_record(ds, ino, node.mode, node.uid, node.gid, node.size,
                                       node.atime, node.mtime, node.ctime))
        return out

    def _log_node(self, ino: int) -> Inode | None:
        try:
            return self._inode(ino)
        except OSError:
            return None                 # gone since: its records would not apply anyway

    def _write_records(self, ds: int, ino: int, ranges: list, ilog) -> list[bytes]:
        """Records of the bytes file `ino` holds now in `ranges` (merged), cut at its size."""
        if not ranges:
            return []
        node = self._log_node(ino)
        if node is None or not node.is_reg:
            return []
        merged: list[list[int]] = []
        for a, b in sorted(ranges):
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        out = []
        # (never for dedup: the record would name a block other references share, which the
        # import's claim and the free after replay must not touch; its bytes are logged)
        indirect = getattr(self.io, "logbias", "latency") == "throughput" and \
            not getattr(getattr(self.io, "policy", None), "dedup", 0)
        for a, b in merged:
            b = min(b, node.size)
            if a >= b:
                continue
            if indirect:
                out += self._indirect(ds, node, a, b, ilog)
            else:
                out.append(zil.write_record(ds, ino, a, self._read(node, a, b - a)))
        return out

    def _indirect(self, ds: int, node: Inode, a: int, b: int, ilog) -> list[bytes]:
        """logbias=throughput: the full records within [a, b) that are buffered are written
        now as the file's blocks (into the tree, as a flush would) and logged by block
        pointer; the rest of [a, b) is logged with its bytes."""
        bs, ino = node.blksz, node.ino
        recs = self._records.get(ino) or {}
        full = [blkid for blkid in range(-(-a // bs), b // bs)
                if len(recs.get(blkid, b"")) == bs and (blkid + 1) * bs <= node.size]
        if full:
            self._flush_batch([(ino, blkid, recs[blkid]) for blkid in full])
        out, pos = [], a
        for blkid in full + [None]:
            lo = b if blkid is None else blkid * bs
            if pos < lo:
                out.append(zil.write_record(ds, ino, pos, self._read(node, pos, lo - pos)))
            if blkid is None:
                break
            raw = self.tree.get(data_key(ino, blkid))
            bp = None if raw is None else decode_bp(raw)
            if bp is None:                  # all zeros, stored as a hole (compression)
                out.append(zil.write_record(ds, ino, lo, bytes(bs)))
            else:
                ilog.pin(bp)
                out.append(zil.indirect_record(ds, ino, lo, bs, bp))
            pos = lo + bs
        return out

    def fsync_is_light(self, fh: int | None) -> bool:
        """Whether fsync of open file `fh` (None: fsync_all) is a small append to the log (or
        nothing at all): no txg to wait for or commit, at most LIGHT bytes of writes to log.
        The FUSE adapter then runs it on its loop's thread rather than a worker's."""
        with self.lock:
            if fh is not None and fh not in self._handles:
                return False
            if not self._logging() or self.io.readonly:
                return getattr(self.io, "sync_mode", None) is not None  # disabled: nothing
            ilog = self.io.intent_log()
            if not ilog.appendable() or ilog.pool.synced_txg < self._barrier:
                return False
            inos = self._files if fh is None else [self._handles[fh].ino]
            pending = 0
            for ino in inos:
                for _txg, kind, a, b in self._files.get(ino, ()):
                    if kind == W:
                        pending += b - a
                        if pending > LIGHT:
                            return False
            return True

    # ---- public --------------------------------------------------------------------------
    def fsync_all(self) -> None:
        """fsync of a directory (the whole-filesystem checkpoint through FUSE): every pending
        change of this filesystem made durable by the log (or a txg commit)."""
        with self.lock:
            if getattr(self.io, "sync_mode", None) == "disabled" or self.io.readonly:
                return
            self._log_commit(None)

    def _after_reload(self) -> None:
        """The tree was replaced (rollback): forget itxs; log again once that is durable."""
        self._names.clear()
        self._files.clear()
        self._sync_now.clear()
        self._barrier = self.io.txg

    # ---- replay --------------------------------------------------------------------------
    def replay(self, records: list) -> int:
        """Apply log records of this filesystem in order (module comment); returns how many
        applied. Called with the pool's lock held, before anything else uses the dataset."""
        applied = 0
        self._replaying = True
        try:
            for r in records:
                try:
                    self._replay_one(r)
                    applied += 1
                except OSError as e:
                    log.info("replay: %s record of inode %d skipped (%s)",
                             zil.TX_NAMES.get(r.type, r.type), r.ino, e.strerror)
        finally:
            self._replaying = False
        return applied

    def _replay_one(self, r) -> None:
        if r.type == zil.TX_WRITE:
            self._replay_write(r.ino, r.offset, r.data)
        elif r.type == zil.TX_INDIRECT:
            data = self.io.read_blocks([r.bp])[0]
            self._replay_write(r.ino, r.offset, memoryview(data)[:r.size])
        elif r.type == zil.TX_TRUNCATE:
            node = self._inode(r.ino)
            if not node.is_reg:
                raise err(errno.EINVAL)
            if r.size:                      # a range freed (fallocate), the size kept
                end = min(r.offset + r.size, node.size)
                if r.offset < end:
                    self._punch(node, r.offset, end)
            else:
                self._truncate(node, r.offset)
            self._mark(node)
        elif r.type == zil.TX_ATTR:
            node = self._inode(r.ino)
            if node.is_reg and node.size != r.size:
                self._truncate(node, r.size)
            node.mode = stat.S_IFMT(node.mode) | (r.mode & 0o7777)
            node.uid, node.gid = r.uid, r.gid
            node.atime, node.mtime, node.ctime = r.times
            self._mark(node)
        elif r.type == zil.TX_CREATE:
            self._replay_create(r)
        elif r.type == zil.TX_LINK:
            self.link(r.ino, r.parent, r.name)
        elif r.type == zil.TX_REMOVE:
            found = self._dir_find(self._dir(r.parent).ino, r.name)
            if found is None or found[1] != r.ino:
                raise err(errno.ENOENT)
            (self.rmdir if r.flags & 1 else self.unlink)(r.parent, r.name)
        elif r.type == zil.TX_RENAME:
            self.rename(r.parent, r.name, r.new_parent, r.new_name, r.flags)
        elif r.type == zil.TX_SETXATTR:
            self.setxattr(r.ino, r.name, r.data)
        elif r.type == zil.TX_RMXATTR:
            self.removexattr(r.ino, r.name)

    def _replay_write(self, ino: int, offset: int, data) -> None:
        node = self._inode(ino)
        if not node.is_reg:
            raise err(errno.EINVAL)
        self._write(node, offset, data)
        self._mark(node)

    def _replay_create(self, r) -> None:
        """The file exactly as it was made: its inode number, generation, mode and times."""
        if r.ino in self._inodes or self.tree.get(inode_key(r.ino)) is not None:
            raise err(errno.EEXIST)
        d = self._create_dir(r.parent)
        name, cookie = self._new_name(d, r.name)
        atime, mtime, ctime, crtime = r.times
        is_dir = stat.S_ISDIR(r.mode)
        node = Inode(r.ino, r.mode, r.uid, r.gid, 2 if is_dir else 1, r.blksz or
                     self.io.recordsize, 2 if is_dir else len(r.target), r.rdev, r.gen, d.ino,
                     0, atime, mtime, ctime, crtime, bytes(r.target))
        self.sb.next_ino = max(self.sb.next_ino, r.ino + 1)
        self.sb.objects += 1
        self._sb_dirty = True
        self._inodes[r.ino] = node
        self._mark(node)
        self._dir_add(d, name, node, ctime, cookie)


def replay_all(handle) -> int:
    """Import's replay (api.Handle): the records the intent log claimed, applied dataset by
    dataset in log order on writable views made for it, then one txg commits them all and
    the log starts a new chain. Returns the number of records applied."""
    from fusezfs.dsl.datasets import DatasetError
    from fusezfs.dsl.objset import DatasetIO
    from fusezfs.zpl.posix import Posix
    from fusezfs.engine.zil import IntentLog

    pool = handle.pool
    ilog = pool.attached.get(IntentLog)
    if ilog is None or ilog.replay is None:
        return 0
    by_ds: dict[int, list] = {}
    for rec in ilog.replay:
        by_ds.setdefault(rec.ds, []).append(rec)
    applied = 0
    for ds_id, records in by_ds.items():
        try:
            rec = handle.dsl.record(ds_id)
        except (KeyError, DatasetError):
            continue
        if rec.kind != "filesystem":
            continue
        io = DatasetIO(handle.dsl, rec)
        io.readonly = False                 # the log holds what was written while it was not
        io.note_written = lambda nbytes: None   # no sync halfway (module comment)
        fs = Posix(io)
        applied += fs.replay(records)
        fs.flush()
    ilog.replayed()
    pool.sync()
    return applied


