"""`zfs send` as the command line runs it: a substream produced a chunk at a time, taking the
pool lock only while it makes a chunk, and what a send will weigh (send -n -v).

Theory of operation
-------------------
`Sender.records()` (sender.py) is a generator over a snapshot's tree, which never changes: a
snapshot's blocks are immutable and stay allocated while the snapshot exists. So the generator
can be suspended between any two records, with the lock released, and resumed later: the only
thing another command can do meanwhile that matters is destroy the snapshot (or the incremental
source whose tree the walk compares with), which would let their blocks be freed and reused. So
`Stream.chunks` checks, each time it takes the lock, that they still exist (blocks freed by a
destroy are not reused within the txg, and nothing is destroyed while the lock is held), makes
records until about `CHUNK` bytes are written into a buffer, releases the lock and hands the
bytes out. The caller writes them (to a pipe that may be slow, or to the mount daemon's client)
holding nothing: the mount goes on serving, and `fusezfs send tank@s | fusezfs receive
tank/copy` in one daemon does not wait on itself. Memory is one chunk plus one read batch.

A dry run (`dry`) walks the same records without reading file data (WRITE records are counted
by their sizes), so the estimate is the size the stream has: `send -nvP` says exactly what
`send | wc -c` counts.
"""
from __future__ import annotations

import io
from typing import Iterator

from fusezfs.dsl.datasets import Datasets, Record
from fusezfs.send import records as R
from fusezfs.send.sender import Sender, Source

CHUNK = 1 << 20


class SendError(Exception):
    """A send that cannot go on; `message` follows "cannot send 'NAME': "."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Stream:
    """The substream of snapshot `snap` (incremental from `source`, if given), a chunk at a
    time (see the module comment). `keep`: records whose destruction ends the send (the
    snapshot, a source snapshot). After `chunks()` is exhausted, `writer` has the size and
    the record counts; `blocks` counts the WRITE records made so far (send -vv)."""

    def __init__(self, dsl: Datasets, snap: Record, source: Source | None, lock, *,
                 keep: list[Record] = (), dry: bool = False, chunk: int = CHUNK,
                 flags: int = 0, compressed: bool = False) -> None:
        self.compressed = compressed            # send -c: blocks as stored (compressed.py)
        head = dsl.record(snap.parent) if snap.kind == "snapshot" else snap
        self.volume = head.kind == "volume"     # a DMU_OST_ZVOL object set (send/zvol.py)
        self.dsl = dsl
        self.flags = flags                      # drr_flags of BEGIN (DRR_FLAG_CLONE)
        self.snap = snap
        self.source = source
        self.lock = lock
        self.keep = [snap, *keep]
        self.dry = dry
        self.chunk = chunk
        self.writer: R.StreamWriter | None = None

    @property
    def blocks(self) -> int:
        return self.writer.counts[R.DRR_WRITE] if self.writer is not None else 0

    def _alive(self) -> None:
        for rec in self.keep:
            if self.dsl.destroyed(rec):
                raise SendError("dataset does not exist")

    def chunks(self) -> Iterator[bytes]:
        """The stream's bytes, in chunks (empty ones for a dry run)."""
        buf = io.BytesIO()
        dsl, snap, source = self.dsl, self.snap, self.source
        with self.lock:
            self._alive()
            w = self.writer = R.StreamWriter(None if self.dry else buf, dry=self.dry)
            name = dsl.name(snap.id)
            if snap.kind != "snapshot":         # dmu_send's name for a head (send FS)
                name += "@--head--"
                dsl.pool.sync()                 # its last committed state is what is sent
            begin = R.Begin(name, snap.guid, source.guid if source else 0, snap.creation,
                            flags=self.flags)
            if self.volume:
                from fusezfs.send.zvol import VolumeSender
                gen = VolumeSender(dsl.tree(snap), dsl.pool.blocks.read_many, begin,
                                   source.txg if source else 0).records()
            else:
                raw_read = None
                if self.compressed:
                    begin.features |= R.FEATURE_COMPRESSED | R.FEATURE_ZSTD
                    blocks = dsl.pool.blocks
                    raw_read = lambda bp: blocks.read(bp, verify_only=True)     # noqa: E731
                gen = Sender(dsl.tree(snap), dsl.pool.blocks.read_many, begin, source,
                             dry=self.dry, raw_read=raw_read).records()
        done = False
        while not done:
            with self.lock:
                self._alive()
                start = w.size
                while w.size - start < self.chunk:
                    rec = next(gen, None)
                    if rec is None:
                        w.end()
                        done = True
                        break
                    w.write(rec)
            data = buf.getvalue()
            buf.seek(0)
            buf.truncate()
            yield data

    def size(self) -> int:
        """Run the whole stream (a dry one: the estimate) and return its size."""
        for _chunk in self.chunks():
            pass
        return self.writer.size


def source_of(dsl: Datasets, rec: Record) -> Source:
    """The incremental source a snapshot is: its guid, createtxg and tree."""
    return Source(rec.guid, rec.createtxg, dsl.tree(rec))
