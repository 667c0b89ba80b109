"""`zfs receive` as the command line runs it: where a stream goes, OpenZFS's checks, and the
switch into place that makes a receive all or nothing, across crashes too.

Theory of operation
-------------------
A substream is never applied to the dataset it is for. It is applied to a *hidden* filesystem
(a name holding '%', which no command accepts and no listing shows; datasets.py):

- a full stream for a new filesystem P/C builds P/C%recv, a filesystem of its own, which is
  renamed P/C at the end;
- a full stream over an existing head H (receive -F; H has no snapshot and is no clone, as
  OpenZFS requires) builds H/%recv, a filesystem of its own;
- an incremental stream into H builds H/%recv, a clone of H's snapshot that is the stream's
  source (OpenZFS's `%recv` clone).

When END has arrived with every checksum right, the hidden filesystem's objects are finished
and it takes the snapshot (the sender's guid and creation time); then, in one txg, it is
switched into place: renamed, or swapped into H (`Datasets.clone_swap`: H keeps its identity,
children and properties, takes the new contents and the new snapshot as its latest, and what H
wrote since the source is freed, as OpenZFS's clone swap at the end of a receive).

Crashes. The hidden filesystem and a marker naming it (MOS key `recvtmp\\0` + its id) are
made in one txg, and the marker goes in the txg that switches it into place. An import finds
the markers of receives that never finished (`cleanup`, run when a pool's Handle is made) and
destroys what they name: a crash at any point leaves the target exactly as it was before the
receive, or exactly as the receive leaves it. A failed receive destroys its hidden filesystem at
once (`abort`); a receive into the same place later also clears a leftover one first.

Locks. Nothing here waits on input while holding the pool lock: `run` reads a batch of records
(a few MiB at most) with no lock held, then applies it under the lock. The switch is the one
step the mount daemon shows (a filesystem appears, a head's contents change), so it runs through
the caller's `critical` (sessions.critical), which re-checks what may have changed meanwhile (a
head written to or snapshotted, a name taken). Receives in progress are remembered per pool, so
a second receive into the same place is refused as busy instead of destroying the first's work.

Compound streams (send -I) are a BEGIN of header type 2, an END checking it, the substreams,
and a final END record; each substream is received by itself, as libzfs does.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterator
from weakref import WeakKeyDictionary

from fusezfs.dsl import dsprops, properties
from fusezfs.dsl.datasets import HIDDEN, DatasetError, Datasets, Record
from fusezfs.dsl.names import dataset_name_error
from fusezfs.send import records as R
from fusezfs.send.receiver import (
    INCREMENTAL,
    NEW_FS,
    SUPPORTED_FEATURES,
    Applier,
    ReceiveError,
    Received,
    modified,
)
from fusezfs.send.znode import MAP_KEY, ObjectMap
from fusezfs.send.zvol import DMU_OST_ZVOL, VolumeApplier

RECEIVE = "cannot receive"
MARK_PREFIX = b"recvtmp\0"           # + the hidden filesystem's id (u64 BE); value empty
BATCH_BYTES = 4 << 20                # records read ahead of the lock, at most
BATCH_RECORDS = 4096

_live: "WeakKeyDictionary[Datasets, set[int]]" = WeakKeyDictionary()


@dataclass
class Options:
    """zfs receive's flags that change what a receive does."""
    force: bool = False                  # -F
    dryrun: bool = False                 # -n
    nomount: bool = False                # -u
    isprefix: bool = False               # -d (and -e)
    istail: bool = False                 # -e
    props: dict[str, str] = field(default_factory=dict)      # -o
    excluded: list[str] = field(default_factory=list)        # -x


def stream_error(e: R.StreamError, action: str) -> ReceiveError:
    """OpenZFS 2.1's words for a stream that cannot be read: libzfs's own for a BEGIN it reads
    itself, the kernel's (recv_ecksum_set_aux, EINVAL) for the records after it."""
    if e.header:
        return ReceiveError("failed to read from stream" if e.truncated else e.message,
                            action=RECEIVE)
    if e.checksum:
        return ReceiveError("checksum mismatch", action=action)
    if e.truncated:
        return ReceiveError("incomplete stream", action=action)
    return ReceiveError(e.message, action=action)


def check_begin(begin: R.Begin, swapped: bool) -> None:
    """What libzfs refuses in a BEGIN before it looks at any dataset."""
    if begin.features & ~SUPPORTED_FEATURES:
        raise ReceiveError(f"stream has unsupported feature, feature flags = "
                           f"{begin.features:x}", action=RECEIVE)
    if "@" not in begin.toname:
        raise ReceiveError("invalid stream (bad snapshot name)", action=RECEIVE)
    if swapped:
        # the headers are read either way, but the znodes and ZAPs inside would need
        # swapping object type by object type (zap_byteswap, zfs_znode_byteswap)
        raise ReceiveError("stream has unsupported feature (from a big-endian sender)",
                           action=RECEIVE)


def check_type(begin: R.Begin) -> None:
    """A substream's object set type (zfs_receive_one): filesystems and volumes (zvol.py)."""
    if begin.type not in (R.DMU_OST_ZFS, DMU_OST_ZVOL):
        raise ReceiveError(f"invalid record type: 0x{begin.type}",
                           action=INCREMENTAL if begin.fromguid else NEW_FS)


def destination(tosnap: str, toname: str, sendfs: str, opts: Options) -> str:
    """The snapshot a substream named `toname` makes, for `zfs receive [-d|-e] TOSNAP`
    (zfs_receive_one's chopprefix): -e appends the sent name's last component, -d all of it
    but the pool, a filesystem operand what follows the sent filesystem (its @snap), and a
    snapshot operand is the name itself."""
    if opts.istail:
        if "@" in tosnap:
            raise ReceiveError("invalid argument - snapshot not allowed with -e", action=RECEIVE)
        cut = sendfs.rfind("/")
        chop = "/" + toname if cut < 0 else toname[cut:]
    elif opts.isprefix:
        if "@" in tosnap:
            raise ReceiveError("invalid argument - snapshot not allowed with -d", action=RECEIVE)
        cut = toname.find("/")
        chop = toname[cut:] if cut >= 0 else toname[toname.index("@"):]
    elif "@" not in tosnap:
        chop = toname[len(sendfs):]
    else:
        chop = ""
    dest = tosnap + chop
    if dataset_name_error(dest, snapshot=True):
        raise ReceiveError("invalid name", action=RECEIVE)
    return dest


def marks(dsl: Datasets) -> list[int]:
    """Ids of hidden filesystems of receives that have not switched into place."""
    return [int.from_bytes(k[len(MARK_PREFIX):], "big")
            for k, _v in dsl.mos.scan(MARK_PREFIX, MARK_PREFIX[:-1] + b"\1")]


def _mark_key(ds_id: int) -> bytes:
    return MARK_PREFIX + ds_id.to_bytes(8, "big")


def _discard(dsl: Datasets, rec: Record) -> None:
    """Destroy a hidden filesystem and its snapshot (a receive's leftover), and its marker."""
    if not dsl.destroyed(rec):
        for snap in reversed(dsl.snapshots(rec.id)):
            dsl.destroy_snapshot(snap)
        dsl.destroy_filesystem(rec)
    dsl.mos.delete(_mark_key(rec.id))
    _live.get(dsl, set()).discard(rec.id)


def cleanup_one(dsl: Datasets, rec: Record) -> bool:
    """receive -A: destroy the hidden filesystem `rec` an interrupted receive left; False if
    a receive running here is using it."""
    if rec.id in _live.get(dsl, set()):
        return False
    _discard(dsl, rec)
    dsl.pool.sync()
    return True


def cleanup(dsl: Datasets) -> int:
    """Destroy what receives interrupted by a crash left (see the module comment), except
    receives running in this process. Returns how many were found. The caller holds the lock."""
    live = _live.get(dsl, set())
    found = [i for i in marks(dsl) if i not in live]
    for ds_id in found:
        try:
            rec = dsl.record(ds_id)
        except KeyError:
            dsl.mos.delete(_mark_key(ds_id))
            continue
        _discard(dsl, rec)
    if found:
        dsl.pool.sync()
    return len(found)


class Receive:
    """One substream into `dest` (FS@SNAP): check, start, apply, finish, switch; or abort.
    Every method but `switch` (run by the caller's `critical`) wants the pool lock held."""

    def __init__(self, dsl: Datasets, dest: str, begin: R.Begin, opts: Options,
                 on_new: Callable[[Record], None] | None = None,
                 received: tuple[dict, dict] | None = None) -> None:
        self.dsl = dsl
        self.dest = dest
        self.begin = begin
        self.opts = opts
        self.on_new = on_new             # a new filesystem appeared (receive -u: keep unmounted)
        self.full = begin.fromguid == 0
        self.volume = begin.type == DMU_OST_ZVOL     # applied by zvol.VolumeApplier
        # a clone's first substream of a replication stream: a new filesystem, cloned from
        # the local snapshot with the fromguid (zfs_receive_one's stream_wantsnewfs)
        self.clone = bool(begin.flags & R.DRR_FLAG_CLONE) and not self.full
        self.action = NEW_FS if self.full or self.clone else INCREMENTAL
        self.fs, _, self.snapname = dest.partition("@")
        self.head: Record | None = None          # the existing head it goes into
        self.source: Record | None = None        # the snapshot the hidden clone starts from
        self.tmp: Record | None = None
        self.tmpname = ""
        self.skip = False                        # the snapshot is here already (same guid)
        self.applier: Applier | None = None
        self.raw_props: dict = {}                # -o, validated
        self.received = received                 # send -p: (properties, snapshot's) or None

    def fail(self, message: str, action: str | None = None, before: str = "") -> ReceiveError:
        return ReceiveError(message, action=action or self.action, before=before)

    # ---- before anything changes ---------------------------------------------------------
    def check(self) -> None:
        """OpenZFS's checks, in its order (zfs_receive_one, dmu_recv_begin_check)."""
        dsl, fs = self.dsl, self.fs
        try:
            self.raw_props = dsprops.validate_props(self.opts.props, creating=self.full)
        except dsprops.PropError as e:
            raise self.fail(e.message) from None
        head = dsl.lookup(fs)
        kind = "volume" if self.begin.type == DMU_OST_ZVOL else "filesystem"
        if head is not None and head.kind in ("filesystem", "volume") and head.kind != kind:
            raise self.fail(f"destination '{fs}' is a {head.kind}: the stream is of a {kind}")
        if head is not None and head.kind != kind:
            head = None
        if self.clone and head is not None:
            self.clone = False                   # an existing clone: an incremental stream
            self.action = INCREMENTAL
        if self.clone:
            from fusezfs.send.replicate import snapshot_by_guid
            self.source = snapshot_by_guid(dsl, self.begin.fromguid)
            if self.source is None:
                raise self.fail(f"local origin for clone {self.dest} does not exist")
        if self.full or self.clone:
            if head is not None:
                if not self.opts.force:
                    raise self.fail(f"destination '{fs}' exists\nmust specify -F to "
                                    "overwrite it")
                snaps = dsl.snapshots(head.id)
                if snaps:
                    raise self.fail(f"destination has snapshots (eg. {dsl.name(snaps[0].id)})"
                                    "\nmust destroy them to overwrite it")
                if head.origin:
                    raise self.fail(f"destination '{fs}' is a clone\nmust destroy it to "
                                    "overwrite it")
                self.head = head
                self.tmpname = f"{fs}/{HIDDEN}recv"
                self._not_busy()
                return
            if "/" not in fs:
                raise self.fail(f"destination '{fs}' does not exist")
            parent, _, child = fs.rpartition("/")
            if dsl.lookup(parent) is None and not (self.opts.isprefix and not self.opts.istail
                                                   and not self.opts.dryrun):
                raise self.fail("unable to restore to destination",
                                before=f"cannot open '{parent}': dataset does not exist\n")
            self.tmpname = f"{parent}/{child}{HIDDEN}recv"
            self._not_busy()
            return
        if head is None:
            raise self.fail(f"destination '{fs}' does not exist")
        self.head = head
        self.tmpname = f"{fs}/{HIDDEN}recv"
        self._not_busy()
        there = dsl.lookup(self.dest)
        if there is not None:
            if there.guid == self.begin.toguid:
                self.skip = True                 # libzfs: "snap X already exists; ignoring"
                return
            raise self.fail("destination already exists", action=f"cannot restore to {self.dest}")
        self._source()

    def _not_busy(self) -> None:
        """Another receive into the same place is running here (OpenZFS: EBUSY, the %recv
        clone exists)."""
        tmp = self.dsl.lookup(self.tmpname)
        if tmp is not None and tmp.id in _live.get(self.dsl, set()):
            raise self.fail("dataset is busy")

    def _source(self) -> list[Record]:
        """Find the stream's source among the head's snapshots (recv_begin_check_existing_impl)
        and return the later ones. With -F the hidden clone starts from the source and the
        later snapshots are destroyed at the switch; without, nothing may have been written
        since the source (later snapshots of nothing new are allowed) and the clone starts
        from the latest snapshot, which then holds the same."""
        dsl, fs, head = self.dsl, self.fs, self.head
        snaps = dsl.snapshots(head.id)
        found = [i for i, s in enumerate(snaps) if s.guid == self.begin.fromguid]
        if not found:
            raise self.fail(f"most recent snapshot of {fs} does not\nmatch incremental source")
        if self.opts.force:
            self.source = snaps[found[-1]]
            return snaps[found[-1] + 1:]
        dsl.pool.sync()
        if modified(dsl, head, snaps[found[-1]]):
            raise self.fail(f"destination {fs} has been modified\nsince most recent snapshot")
        self.source = snaps[-1]
        return []

    # ---- the hidden filesystem -----------------------------------------------------------
    def start(self) -> None:
        """Make the hidden filesystem the records go into (after `check`)."""
        dsl = self.dsl
        if (self.full or self.clone) and self.head is None and self.opts.isprefix and \
                not self.opts.istail:
            dsl.create_parents(self.fs)          # receive -d makes the missing parents
            if dsl.lookup(self.fs.rpartition("/")[0]) is None:
                raise self.fail("unable to restore to destination")
        old = dsl.lookup(self.tmpname)
        if old is not None:
            if old.id in _live.get(dsl, set()):
                raise self.fail("dataset is busy")
            _discard(dsl, old)                   # an earlier receive's leftover
        try:
            if self.full:
                saved, dsl.format_hook = dsl.format_hook, None     # the stream has the root
                try:
                    self.tmp = dsl.create(self.tmpname, self.raw_props, hidden=True,
                                          kind="volume" if self.volume else "filesystem")
                finally:
                    dsl.format_hook = saved
            else:
                self.tmp = dsl.clone(dsl.name(self.source.id), self.tmpname, self.raw_props,
                                     hidden=True)
        except DatasetError as e:
            raise self.fail(e.message) from None
        dsl.mos.put(_mark_key(self.tmp.id), b"")
        _live.setdefault(dsl, set()).add(self.tmp.id)
        if self.received is not None:            # the data is written as they say
            self.tmp.received = dict(self.received[0])
            dsl.touch(self.tmp)
            dsl.records_changed += 1
        dsl.pool.sync()           # durable now, as dmu_recv_begin's sync task makes %recv
        if self.volume:
            self.applier = VolumeApplier(dsl, self.tmp, self.full)
            return
        omap = ObjectMap(0, 0, 0, []) if self.full else \
            ObjectMap.decode(dsl.tree(self.tmp).get(MAP_KEY))
        self.applier = Applier(dsl, self.tmp, omap, self.full)

    def apply(self, records: list[R.Record]) -> None:
        try:
            for rec in records:
                self.applier.apply(rec)
        except R.StreamError as e:
            raise stream_error(e, self.action) from None
        # the pool's dirty budget: a long stream commits txgs as it goes (memory stays bounded;
        # what they commit is the hidden filesystem's, which a crash then leaves to cleanup)
        self.dsl.pool.note_written(sum(len(getattr(r, "data", b"") or b"") for r in records))

    def finish(self) -> None:
        """END has arrived, checksum right: finish the objects and take the snapshot."""
        try:
            self.applier.finish()
        except R.StreamError as e:
            raise stream_error(e, self.action) from None
        snap, = self.dsl.snapshot([f"{self.tmpname}@{self.snapname}"], hidden=True)
        snap.guid = self.begin.toguid
        snap.creation = self.begin.creation_time
        self.dsl.touch(snap)
        self.dsl.pool.sync()

    # ---- into place ----------------------------------------------------------------------
    def switch(self) -> Record:
        """Put the received snapshot where it belongs (see the module comment), after checking
        again what may have changed while the stream came; returns the filesystem."""
        dsl, fs = self.dsl, self.fs
        if dsl.destroyed(self.tmp):
            raise self.fail("dataset does not exist")
        if self.head is None:
            if dsl.lookup(fs) is not None:
                raise self.fail("destination already exists", action=f"cannot restore to {fs}")
            try:
                dsl.rename(self.tmp, fs)
            except DatasetError as e:
                raise self.fail(e.message) from None
            final = self.tmp
            if self.on_new is not None:
                self.on_new(final)
        else:
            head = self.head
            if dsl.destroyed(head):
                raise self.fail(f"destination '{fs}' does not exist")
            if self.full:
                if dsl.snapshots(head.id):
                    raise self.fail(f"destination has snapshots (eg. "
                                    f"{dsl.name(dsl.snapshots(head.id)[0].id)})\nmust destroy "
                                    "them to overwrite it")
            else:
                if dsl.lookup(self.dest) is not None:
                    raise self.fail("destination already exists",
                                    action=f"cannot restore to {self.dest}")
                later = self._source()
                if not self.opts.force and self.tmp.origin != head.prev_snap:
                    raise self.fail(f"most recent snapshot of {fs} does not\nmatch "
                                    "incremental source")     # (snapshotted meanwhile)
                for snap in reversed(later):     # -F: what the source does not have goes
                    try:
                        dsl.destroy_snapshot(snap)
                    except DatasetError as e:
                        raise self.fail(e.message) from None
            dsl.clone_swap(head, self.tmp)
            final = head
            if self.received is not None:
                head.received = dict(self.received[0])
                dsl.touch(head)
                dsl.records_changed += 1
            if self.opts.props:
                properties.set_props(dsl, head, self.opts.props)
        if self.received is not None and self.received[1]:
            snap = dsl.lookup(self.dest if self.head is not None else f"{fs}@{self.snapname}")
            snap.received = dict(self.received[1])
            dsl.touch(snap)
        for name in self.opts.excluded:
            canon = dsprops.canonical(name) or name
            if canon not in final.props and canon in final.received:
                properties.inherit(dsl, final, canon)      # -x: as if never received
        dsl.mos.delete(_mark_key(self.tmp.id))
        _live.get(dsl, set()).discard(self.tmp.id)
        dsl.pool.sync()
        return final

    def abort(self) -> None:
        """Destroy the hidden filesystem: the target stays as it was."""
        if self.tmp is not None:
            _discard(self.dsl, self.tmp)
            self.dsl.pool.sync()


def batches(reader: R.StreamReader) -> Iterator[list[R.Record]]:
    """The records of the current substream up to END (not included), a few MiB at a time;
    a stream error (checksums included) is raised where the reader meets it."""
    batch: list[R.Record] = []
    size = 0
    for rec in reader.records():
        if isinstance(rec, R.End):
            break
        batch.append(rec)
        size += R.RECORD_SIZE + len(getattr(rec, "data", b"") or b"")
        if size >= BATCH_BYTES or len(batch) >= BATCH_RECORDS:
            yield batch
            batch, size = [], 0
    yield batch


def run(rx: Receive, reader: R.StreamReader, lock, critical: Callable[[Callable[[], Any]], Any],
        started: Callable[[Receive], None] | None = None) -> Record | None:
    """Receive one substream whose BEGIN `reader` has read: check and start under `lock`,
    records read with no lock and applied under it, the switch through `critical`; on any
    failure the hidden filesystem is destroyed. `started` is called once the checks passed
    (receive -v says so then). Returns the filesystem received into (None for -n or a
    snapshot already there, whose records are read and dropped)."""
    with lock:
        rx.check()
        if not rx.opts.dryrun and not rx.skip:
            rx.start()
    if started is not None:
        started(rx)
    if rx.opts.dryrun or rx.skip:
        try:
            for _batch in batches(reader):
                pass
        except R.StreamError as e:
            raise stream_error(e, rx.action) from None
        return None
    try:
        try:
            for batch in batches(reader):
                with lock:
                    rx.apply(batch)
        except R.StreamError as e:
            raise stream_error(e, rx.action) from None
        with lock:
            rx.finish()
        return critical(rx.switch)
    except BaseException:
        with lock:
            rx.abort()
        raise


def read_begin(reader: R.StreamReader, *, package: bool = False) -> R.Begin | None:
    """The next BEGIN, in libzfs's words when it cannot be read; None at the end (of the
    input, or of a compound stream)."""
    try:
        begin = reader.begin(package=package)
    except R.StreamError as e:
        raise stream_error(e, RECEIVE) from None
    if begin is None:
        if not package:
            raise ReceiveError("failed to read from stream", action=RECEIVE)
        return None
    check_begin(begin, reader.swap)
    return begin


def substreams(reader: R.StreamReader, target: str = "",
               on_replication: Callable[[R.Begin, Any], None] | None = None
               ) -> Iterator[tuple[R.Begin, str, Any]]:
    """(BEGIN, the sending filesystem, what a -p stream says of its properties or None) of
    every substream of the input: one, or those of a compound stream (send -I, -p, -R), after
    checking its header. A replication stream (-R) into `target` calls `on_replication`
    (BEGIN, StreamProps) before its first substream (replicate.prune's moment)."""
    from fusezfs.send.props import StreamProps
    begin = read_begin(reader)
    if begin.hdrtype != R.DMU_COMPOUNDSTREAM:
        check_type(begin)
        yield begin, begin.toname.partition("@")[0], None
        return
    props = None
    if begin.payload:
        try:
            props = StreamProps(begin.payload)
        except (ValueError, KeyError, TypeError):
            raise ReceiveError("invalid backup stream", action=RECEIVE) from None
        if props.recursive and "@" in target:
            raise ReceiveError("cannot specify snapshot name for multi-snapshot stream",
                               action=RECEIVE)
    try:
        reader.package_end()
    except R.StreamError as e:
        raise stream_error(e, RECEIVE) from None
    sendfs = begin.toname.partition("@")[0]
    if props is not None and props.recursive and on_replication is not None:
        on_replication(begin, props)
    while True:
        sub = read_begin(reader, package=True)
        if sub is None:
            return
        if sub.hdrtype != R.DMU_SUBSTREAM:
            raise ReceiveError("invalid backup stream", action=RECEIVE)
        check_type(sub)
        yield sub, sendfs, props.for_guid(sub.toguid) if props is not None else None


def receive_stream(dsl: Datasets, target: str, src: BinaryIO, *,
                   force: bool = False) -> Received:
    """The library's receive: every substream of `src` into filesystem `target`, as `zfs
    receive [-F] TARGET` does; the caller holds the pool lock throughout. Returns what the
    last substream made."""
    reader = R.StreamReader(src)
    opts = Options(force=force)
    done = None
    for begin, sendfs, received in substreams(reader):
        rx = Receive(dsl, destination(target, begin.toname, sendfs, opts), begin, opts,
                     received=received)
        run(rx, reader, nullcontext(), lambda fn: fn())
        done = Received(rx.dest, rx.full, reader.offset)
    return done


def check_props(props: dict[str, str], excluded: list[str]) -> None:
    """zfs_receive_checkprops: -o and -x name properties a receive may set or exclude."""
    for name in list(props) + list(excluded):
        if dsprops.is_user(name):
            continue
        canon = dsprops.canonical(name)
        if canon == "origin" or canon in ("encryption", "keyformat", "keylocation", "pbkdf2iters"):
            continue
        if canon is None or dsprops.PROPS[canon].readonly or canon in ("version", "volsize"):
            raise ReceiveError(f"invalid property '{name}'", action=RECEIVE)


__all__ = ["Options", "Receive", "ReceiveError", "batches", "check_props", "cleanup",
           "destination", "read_begin", "receive_stream", "run", "substreams"]
