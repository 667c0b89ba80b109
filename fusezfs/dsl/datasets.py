"""Datasets (ZFS's DSL): the dataset directory, snapshots, clones, and space by birth time.

Theory of operation. Every filesystem ("head") has an object tree in the MOS (`ds<ID>`), a
record (`ds\\0<ID>`: JSON), a name entry (`dsname\\0<PARENT><COMPONENT>`) and a deadlist (a tree
`dl<N>` of block pointers it freed that a snapshot still references). A snapshot is a record,
a name entry (`dsname\\0<HEAD>@<NAME>`), a root pointer (`ss<ID>`: the head's root when it was
taken) and the deadlist it took over from the head. Everything is in the MOS, so every change
commits atomically with the txg that carries it; there is no other state to get out of step.

Birth time does the bookkeeping (DESIGN.md). When a head's tree stops referencing a block
(`kill`): if the block was born after the head's latest snapshot (`prev_txg`), no snapshot has
it and it is freed; otherwise it goes on the head's deadlist. Taking a snapshot copies the root
pointer and hands over the deadlist: O(1) whatever the dataset holds. Destroying snapshot S
(previous P, next N) frees the entries of N's deadlist born after P (only S had them) and merges
S's deadlist into N's. A clone is a head whose root starts as a snapshot's and whose `prev_txg`
starts at the origin's txg, so blocks it inherits are never freed by it.

A bookmark (`dsname\\0<HEAD>#<NAME>`, a record of kind "bookmark" whose parent is its head) keeps
only what it copied from its snapshot: guid, createtxg, creation and the referenced sizes. It
owns no blocks, so it outlives the snapshot, and (guid, createtxg) is all an incremental send
from it needs: every block born after createtxg is new to a receiver that has the snapshot.

Space, per head (bytes allocated, all copies): `refer` = every block its tree reaches;
`used_head` (usedbydataset) = those born after its origin; `used_snap` (usedbysnapshots) = deadlist
entries (its own and its snapshots') born after its origin. Both change only in `born`, `kill`
and snapshot destruction, where the invariants are asserted; `recount` recomputes everything
from the trees for the consistency checker.

Snapshots are taken between two syncs: the pool first commits everything pending, then the
records are created and committed in a txg that writes no dataset blocks, so a snapshot holds
exactly the blocks born up to its `createtxg`.
"""
from __future__ import annotations

import errno
import json
import time
from dataclasses import dataclass, field, fields

from fusezfs.engine import dedup
from fusezfs.dsl import dsprops
from fusezfs.engine.blocks import Policy
from fusezfs.formats.bp import BT_DATA, BT_NODE, FLAG_DEDUP, BlockPointer, decode_bp, encode_bp
from fusezfs.formats.spacemap import SECTOR
from fusezfs.dsl.names import dataset_name_error
from fusezfs.engine.pool import META_POLICY, NodeStore, OnePerPool, Pool, new_guid
from fusezfs.engine.tree import Tree

REC_PREFIX = b"ds\0"
NAME_PREFIX = b"dsname\0"
NEXT_ID_KEY = b"dsnextid"
ROOT_ID = 1
DELIMITER = {"snapshot": "@", "bookmark": "#"}    # between a head's name and theirs
HIDDEN = "%"        # in a filesystem's name: a receive's temporary dataset (no command names it)
HEADS = ("filesystem", "volume")   # kinds that own a live tree (volumes: fusezfs/zpl/volumes.py)



def sectors(size: int) -> int:
    """A block size in whole sectors, as ZFS's sizes are: its logical sizes are multiples of
    512 and psize is rounded to the pool's ashift. logicalreferenced and compressratio count
    these (a few bytes of a compressible record still take a sector, so 20 MiB of one repeated
    byte is 256x, not thousands; a tiny metadata node is 1.00x, not less)."""
    return -(-size // SECTOR) * SECTOR

class DatasetError(Exception):
    """A failed dataset operation; `message` is OpenZFS's text after "cannot VERB 'NAME': "."""

    def __init__(self, message: str, code: int = errno.EINVAL, detail: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.detail = detail or []


@dataclass
class Record:
    id: int
    kind: str                      # "filesystem", "volume", "snapshot" or "bookmark"
    component: str                 # last name component ("" for the pool's root dataset)
    parent: int = 0                # filesystem: parent's id; snapshot, bookmark: its head's id
    guid: int = 0
    createtxg: int = 0
    creation: int = 0
    origin: int = 0                # head: origin snapshot id (a clone), else 0
    origin_txg: int = 0            # head: blocks born at or before this belong to the origin
    prev_snap: int = 0             # head: latest snapshot; snapshot: the one before it
    prev_txg: int = 0              # head: createtxg of the latest snapshot, else origin_txg
    deadlist: int = 0              # id of this record's deadlist tree (`dl<N>`)
    refer: int = 0                 # allocated bytes of every block the tree reaches
    refer_lsize: int = 0           # the same, logical sizes in whole sectors
    refer_psize: int = 0           # the same, physical sizes in whole sectors, before copies
                                   # (ZFS's compressed bytes: what compressratio divides by)
    used_head: int = 0             # head: usedbydataset
    used_snap: int = 0             # head: usedbysnapshots
    written: int = 0               # bytes born after the previous snapshot
    props: dict = field(default_factory=dict)     # local property values (raw, dsprops)
    received: dict = field(default_factory=dict)  # values set by a receive
    masked: list = field(default_factory=list)    # inherited explicitly over a received value
    holds: dict = field(default_factory=dict)      # snapshot: tag -> creation time
    clones: list = field(default_factory=list)     # snapshot: clone head ids
    defer_destroy: bool = False

    def encode(self) -> bytes:
        # the fields as they are (asdict would deep-copy every list and dict first, element
        # by element in Python: a snapshot's clones list made each new clone's commit O(clones))
        return json.dumps({name: getattr(self, name) for name in _RECORD_FIELDS},
                          sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> "Record":
        return cls(**json.loads(raw))


_RECORD_FIELDS = tuple(f.name for f in fields(Record))


def _id_bytes(n: int) -> bytes:
    return n.to_bytes(8, "big")


def tree_name(ds_id: int) -> bytes:
    return b"ds%d" % ds_id


def snap_root_name(snap_id: int) -> bytes:
    return b"ss%d" % snap_id


def deadlist_name(dl_id: int) -> bytes:
    return b"dl%d" % dl_id


def deadlist_key(bp: BlockPointer) -> bytes:
    d = bp.dvas[0]
    return bp.birth.to_bytes(8, "big") + d.vdev.to_bytes(4, "big") + d.offset.to_bytes(8, "big")


class HeadStore(NodeStore):
    """How a head's tree writes and frees blocks: through the dataset's accounting."""

    def __init__(self, dsl: "Datasets", ds_id: int) -> None:
        super().__init__(dsl.pool.blocks, META_POLICY)
        self.dsl = dsl
        self.ds_id = ds_id

    def write_node(self, data: bytes, level: int) -> BlockPointer:
        bp = self.blocks.write(data, BT_NODE, META_POLICY, level)
        self.dsl.born(self.dsl.record(self.ds_id), bp)
        return bp

    def free(self, bp: BlockPointer) -> None:
        self.dsl.kill(self.dsl.record(self.ds_id), bp)


class ReadOnlyStore(NodeStore):
    def write_node(self, data: bytes, level: int) -> BlockPointer:
        raise OSError(errno.EROFS, "snapshots are read-only")

    def free(self, bp: BlockPointer) -> None:
        raise OSError(errno.EROFS, "snapshots are read-only")


class Datasets(OnePerPool):
    """The dataset directory of one open pool. Callers hold `pool.lock`.

    There is exactly one per open pool: `Datasets(pool)` returns the existing one. Two would
    each cache records and write them back at sync, each undoing the other's changes."""

    def _setup(self, pool: Pool) -> None:
        self.pool = pool
        self.records: dict[int, Record] = {}
        self.dirty: set[int] = set()
        self.deleted: set[int] = set()
        # called with every new (non-clone) filesystem: the POSIX layer above gives it its
        # root directory (zfs create makes the ZPL at once); None for bare object trees
        self.records_changed = 0     # bumped when datasets come or go or properties change
        # bumped when a dataset with a reservation or refreservation property comes or goes,
        # or such a property is set or inherited: properties.reserving's cache is keyed to it,
        # so that creating a dataset with none costs no walk over every dataset
        self.reservations_changed = 0
        self._reserving: list[int] | None = None      # properties.reserving's cache
        self._reserving_gen = -1
        self._pool_limited: dict[int, bool] = {}      # properties.only_pool_limits's cache
        self._pool_limited_gen = -1
        self.format_hook = None
        # called after a head's tree was replaced (rollback): whoever caches a view of the
        # old tree (the POSIX layer above) must drop it before it writes there again
        self.replaced_hook = None
        # (dsl, rec) -> {"volsize", "volblocksize"} of a volume or its snapshot, read from its
        # tree by the layer that knows the layout (volumes.geometry); {} where none is set
        self.geometry_hook = None
        pool.sync_hooks.append(self._write_records)
        if self.mos.get(REC_PREFIX + _id_bytes(ROOT_ID)) is None:
            self._create_root()

    @property
    def mos(self) -> Tree:
        return self.pool.mos

    # ---- records --------------------------------------------------------------------------
    def record(self, ds_id: int) -> Record:
        rec = self.records.get(ds_id)
        if rec is None:
            raw = self.mos.get(REC_PREFIX + _id_bytes(ds_id))
            if raw is None:
                raise KeyError(ds_id)
            rec = self.records[ds_id] = Record.decode(raw)
        return rec

    def touch(self, rec: Record) -> None:
        self.dirty.add(rec.id)

    def _write_records(self, pool: Pool) -> None:
        for ds_id in sorted(self.dirty):
            if ds_id in self.deleted:
                continue
            self.mos.put(REC_PREFIX + _id_bytes(ds_id), self.records[ds_id].encode())
        self.dirty.clear()
        for ds_id in sorted(self.deleted):
            self.mos.delete(REC_PREFIX + _id_bytes(ds_id))
            self.records.pop(ds_id, None)
        self.deleted.clear()

    def _new_id(self) -> int:
        raw = self.mos.get(NEXT_ID_KEY)
        n = int(raw) if raw else ROOT_ID + 1
        self.mos.put(NEXT_ID_KEY, b"%d" % (n + 1))
        return n

    def _create_root(self) -> None:
        raw = self.mos.get(b"rootprops")
        props = dsprops.validate_props(json.loads(raw), creating=True) if raw else {}
        rec = Record(ROOT_ID, "filesystem", "", 0, new_guid(), self.pool.txg, int(time.time()),
                     deadlist=self._new_id(), props=props)
        self.records[rec.id] = rec
        self.touch(rec)
        self.mos.put(NAME_PREFIX + _id_bytes(0), _id_bytes(ROOT_ID))

    # ---- names ----------------------------------------------------------------------------
    def name(self, ds_id: int) -> str:
        rec = self.record(ds_id)
        if rec.kind in DELIMITER:
            return f"{self.name(rec.parent)}{DELIMITER[rec.kind]}{rec.component}"
        parts = []
        while rec.id != ROOT_ID:
            parts.append(rec.component)
            rec = self.record(rec.parent)
        return "/".join([self.pool.name] + parts[::-1])

    def _child_key(self, parent: int, component: str) -> bytes:
        return NAME_PREFIX + _id_bytes(parent) + component.encode()

    def lookup(self, name: str) -> Record | None:
        """The record called `name` (filesystem or `fs@snap`), or None."""
        fs, at, snap = name.partition("@")
        parts = fs.split("/")
        if parts[0] != self.pool.name:
            return None
        ds_id = ROOT_ID
        for part in parts[1:]:
            raw = self.mos.get(self._child_key(ds_id, part))
            if raw is None:
                return None
            ds_id = int.from_bytes(raw, "big")
        if at:
            raw = self.mos.get(self._child_key(ds_id, "@" + snap))
            if raw is None:
                return None
            ds_id = int.from_bytes(raw, "big")
        return self.record(ds_id)

    def get(self, name: str) -> Record:
        rec = self.lookup(name)
        if rec is None:
            raise DatasetError("dataset does not exist", errno.ENOENT)
        return rec

    def children(self, ds_id: int, *, hidden: bool = False) -> list[Record]:
        """Child filesystems, by name; with `hidden`, those of receives in progress too."""
        prefix = NAME_PREFIX + _id_bytes(ds_id)
        out = []
        for key, value in self.mos.scan(prefix, prefix + b"\xff"):
            if key[len(prefix):len(prefix) + 1] not in (b"@", b"#") and \
                    (hidden or HIDDEN not in key[len(prefix):].decode(errors="replace")):
                out.append(self.record(int.from_bytes(value, "big")))
        return out

    def snapshots(self, ds_id: int) -> list[Record]:
        """Snapshots of a head, oldest first (creation order)."""
        prefix = NAME_PREFIX + _id_bytes(ds_id) + b"@"
        snaps = [self.record(int.from_bytes(v, "big")) for _k, v in self.mos.scan(prefix, prefix + b"\xff")]
        return sorted(snaps, key=lambda r: (r.createtxg, r.id))

    def descendants(self, ds_id: int) -> list[Record]:
        """Every filesystem below ds_id, depth first, parents before children."""
        out = []
        for child in self.children(ds_id):
            out.append(child)
            out += self.descendants(child.id)
        return out

    def next_of(self, snap: Record) -> Record:
        """The snapshot after `snap` in its head's chain, or the head itself."""
        for rec in self.snapshots(snap.parent):
            if rec.prev_snap == snap.id:
                return rec
        return self.record(snap.parent)

    # ---- trees ----------------------------------------------------------------------------
    def tree(self, rec: Record) -> Tree:
        """A head's live tree, or a snapshot's read-only one."""
        if rec.kind == "snapshot":
            return Tree(ReadOnlyStore(self.pool.blocks, META_POLICY),
                        self.pool.objset_root(snap_root_name(rec.id)), cache=self.pool.node_cache)
        return self.pool.objset(tree_name(rec.id), store=HeadStore(self, rec.id))

    def deadlist(self, dl_id: int) -> Tree:
        """A deadlist for changing (made empty on first use)."""
        return self.pool.objset(deadlist_name(dl_id))

    def dead_entries(self, dl_id: int, born_after: int = -1):
        """(key, bp) of a deadlist's entries born after `born_after`, without creating it."""
        if not self.pool.has_objset(deadlist_name(dl_id)):
            return []
        lo = (born_after + 1).to_bytes(8, "big") if born_after >= 0 else None
        return [(k, decode_bp(v)) for k, v in self.deadlist(dl_id).scan(lo)]

    # ---- the two places space changes ------------------------------------------------------
    def born(self, rec: Record, bp: BlockPointer) -> None:
        """`bp` was just written for head `rec`."""
        rec.refer += bp.asize
        rec.refer_lsize += sectors(bp.lsize)
        rec.refer_psize += sectors(bp.psize)
        rec.used_head += bp.asize
        rec.written += bp.asize
        self.touch(rec)

    def kill(self, rec: Record, bp: BlockPointer) -> None:
        """Head `rec`'s tree no longer references `bp`: free it, or keep it for a snapshot."""
        rec.refer -= bp.asize
        rec.refer_lsize -= sectors(bp.lsize)
        rec.refer_psize -= sectors(bp.psize)
        if bp.birth > rec.origin_txg:
            rec.used_head -= bp.asize
        if bp.birth > rec.prev_txg:
            rec.written -= bp.asize
            self.pool.blocks.free(bp)
        else:
            self._dead_put(rec.deadlist, bp)
            if bp.birth > rec.origin_txg:
                rec.used_snap += bp.asize
        assert rec.refer >= 0 and rec.used_head >= 0 and rec.written >= 0, rec
        self.touch(rec)

    def _dead_put(self, dl_id: int, bp: BlockPointer, key: bytes | None = None) -> None:
        """Put `bp` on a deadlist. Dedup hits written in one txg are identical pointers yet
        distinct references (dedup.py): such a pointer gets a sequence number after its key
        until the key is free, so no reference overwrites another."""
        dl = self.deadlist(dl_id)
        key = key or deadlist_key(bp)
        if bp.flags & FLAG_DEDUP:
            base, n = key[:20], 0
            while dl.get(key) is not None:
                key = base + n.to_bytes(4, "big")
                n += 1
        dl.put(key, encode_bp(bp))

    def write_block(self, rec: Record, data: bytes | memoryview, policy: Policy) -> BlockPointer:
        bp = self.pool.blocks.write(data, BT_DATA, policy)
        self.born(rec, bp)
        return bp

    def write_blocks(self, rec: Record, bufs: list, policy: Policy) -> list[BlockPointer]:
        bps = self.pool.blocks.write_many(bufs, BT_DATA, policy)
        for bp in bps:
            self.born(rec, bp)
        return bps

    # ---- create ---------------------------------------------------------------------------
    def check_new_name(self, name: str, *, hidden: bool = False) -> Record:
        """The parent a new filesystem `name` would have (raises the zfs error if none).
        `hidden`: its last component may hold HIDDEN (a receive's temporary dataset)."""
        why = dataset_name_error(name.replace(HIDDEN, "-") if hidden else name)
        if why:
            raise DatasetError(why)
        if self.lookup(name) is not None:
            raise DatasetError("dataset already exists", errno.EEXIST)
        parent_name = name.rpartition("/")[0]
        if not parent_name:
            raise DatasetError("missing dataset name")
        parent = self.lookup(parent_name)
        if parent is None:
            if parent_name.split("/")[0] != self.pool.name:
                raise DatasetError("no such pool '%s'" % parent_name.split("/")[0], errno.ENOENT)
            raise DatasetError("parent does not exist", errno.ENOENT)
        return parent

    def create_parents(self, name: str) -> None:
        """`-p`: create every missing ancestor of `name` (not `name` itself)."""
        parts = name.split("/")
        for i in range(2, len(parts)):
            if self.lookup("/".join(parts[:i])) is None:
                self.create("/".join(parts[:i]))

    def create(self, name: str, props: dict[str, str] | None = None, *,
               parents: bool = False, hidden: bool = False, kind: str = "filesystem") -> Record:
        """A new head: a filesystem (formatted by `format_hook`), or with kind "volume" a
        volume, whose tree the caller (volumes.create_volume) fills in the same txg."""
        if parents:
            self.create_parents(name)
        parent = self.check_new_name(name, hidden=hidden)
        if parent.kind != "filesystem":
            raise DatasetError("parent is not a filesystem")
        rec = Record(self._new_id(), kind, name.rpartition("/")[2], parent.id,
                     new_guid(), self.pool.txg, int(time.time()), deadlist=self._new_id(),
                     props=dict(props or {}))
        self._link(rec)
        if self.format_hook is not None and kind == "filesystem":
            self.format_hook(rec)
        return rec

    def _link(self, rec: Record) -> None:
        self.records_changed += 1
        self.note_reservations(rec)
        self.records[rec.id] = rec
        self.touch(rec)
        key = DELIMITER.get(rec.kind, "") + rec.component
        self.mos.put(self._child_key(rec.parent, key), _id_bytes(rec.id))

    def _unlink(self, rec: Record) -> None:
        self.records_changed += 1
        self.note_reservations(rec)
        key = DELIMITER.get(rec.kind, "") + rec.component
        self.mos.delete(self._child_key(rec.parent, key))
        self.deleted.add(rec.id)

    def note_reservations(self, rec: Record) -> None:
        """`rec` came, went or had its properties changed: if it has a reservation or
        refreservation property (of any value), the set of reserving datasets may differ."""
        if "reservation" in rec.props or "refreservation" in rec.props:
            self.reservations_changed += 1

    # ---- snapshots ------------------------------------------------------------------------
    def snapshot(self, names: list[str], props: dict[str, str] | None = None, *,
                 hidden: bool = False, commit: bool = True) -> list[Record]:
        """Snapshot several datasets atomically: one txg, one createtxg for all. `hidden`:
        the filesystems may be receives' temporary ones (names holding HIDDEN). `commit`
        false leaves the txg holding the new records open for the caller to commit (one txg
        fewer, for a caller that goes on with other records, as `container create` does); it
        must write nothing to these heads, nor to clones of the new snapshots, before that
        commit: those blocks would be born in the snapshots' own txg."""
        heads = []
        for name in names:
            why = dataset_name_error(name.replace(HIDDEN, "-") if hidden else name, snapshot=True)
            if why:
                raise DatasetError(why)
            fs, _, snap = name.partition("@")
            head = self.lookup(fs)
            if head is None or head.kind not in HEADS:
                raise DatasetError("dataset does not exist", errno.ENOENT)
            if self.lookup(name) is not None:
                raise DatasetError("dataset already exists", errno.EEXIST)
            if any(h.id == head.id and s == snap for h, s in heads):
                raise DatasetError("dataset already exists", errno.EEXIST)
            heads.append((head, snap))
        self.pool.sync()                      # everything born so far is <= the open txg - 1
        txg = self.pool.txg
        out = []
        for head, snap in heads:
            tree = self.tree(head)
            assert not tree.dirty
            rec = Record(self._new_id(), "snapshot", snap, head.id, new_guid(), txg,
                         int(time.time()), prev_snap=head.prev_snap, deadlist=head.deadlist,
                         refer=head.refer, refer_lsize=head.refer_lsize,
                         refer_psize=head.refer_psize, used_head=head.used_head,
                         written=head.written, props=dict(props or {}))
            self.pool.put_objset_root(snap_root_name(rec.id), tree.root)
            self._link(rec)
            head.prev_snap, head.prev_txg = rec.id, txg
            head.deadlist = self._new_id()
            head.written = 0
            self.touch(head)
            out.append(rec)
        if commit:
            self.pool.sync()
        return out

    def destroyed(self, rec: Record) -> bool:
        """`rec` was destroyed (its record is gone, or goes at the next sync)."""
        return rec.id in self.deleted or (rec.id not in self.records and
                                          self.mos.get(REC_PREFIX + _id_bytes(rec.id)) is None)

    def snapshot_used(self, snap: Record) -> int:
        """What destroying `snap` alone would free: entries of the next deadlist born after
        the previous snapshot."""
        boundary = self.record(snap.prev_snap).createtxg if snap.prev_snap else \
            self.record(snap.parent).origin_txg
        return sum(bp.asize for _k, bp in self.dead_entries(self.next_of(snap).deadlist, boundary))

    def destroy_snapshot(self, snap: Record, *, defer: bool = False) -> int | None:
        """Destroy one snapshot; returns the bytes it freed (what it alone held), or None if it
        was only marked for deferred destroy. One destroyed already (say by the deferred
        destroy its last clone's destroy set off) is left alone and frees 0, as the kernel
        ignores it (dsl_destroy_snapshot_check): destroying it again would free its blocks
        twice."""
        if self.destroyed(snap):
            return 0
        if snap.clones or snap.holds:
            if defer:
                snap.defer_destroy = True
                self.touch(snap)
                return None
            if snap.holds:
                raise DatasetError("dataset is busy", errno.EBUSY)
            raise DatasetError("snapshot has dependent clones", errno.EEXIST,
                               [self.name(c) for c in snap.clones])
        self.pool.sync()                     # trees clean: walks below see the current state
        head = self.record(snap.parent)
        boundary = self.record(snap.prev_snap).createtxg if snap.prev_snap else head.origin_txg
        nxt = self.next_of(snap)
        freed = 0
        for key, bp in self.dead_entries(nxt.deadlist, boundary):
            self.deadlist(nxt.deadlist).delete(key)
            self.pool.blocks.free(bp)
            freed += bp.asize
        for key, bp in self.dead_entries(snap.deadlist):
            self._dead_put(nxt.deadlist, bp, key)
        head.used_snap -= freed
        assert head.used_snap >= 0, head
        if self.pool.has_objset(deadlist_name(snap.deadlist)):
            self.pool.destroy_objset(deadlist_name(snap.deadlist))
        self.pool.forget_objset(snap_root_name(snap.id))
        nxt.prev_snap = snap.prev_snap
        if nxt.id == head.id:
            head.prev_txg = boundary
        nxt.written = self._written_between(nxt, boundary)
        self.touch(nxt)
        self.touch(head)
        self._unlink(snap)
        return freed

    def _written_between(self, snap: Record, boundary: int) -> int:
        """Bytes `snap` references that were born after `boundary` (for its `written`)."""
        total = 0
        tree = self.tree(snap)
        for kind, bp in tree.walk():
            if kind in ("node", "block") and bp.birth > boundary:
                total += bp.asize
        return total

    # ---- clones ---------------------------------------------------------------------------
    def clone(self, snap_name: str, name: str, props: dict[str, str] | None = None, *,
              parents: bool = False, hidden: bool = False) -> Record:
        snap = self.lookup(snap_name)
        if snap is None or snap.kind != "snapshot":
            raise DatasetError("dataset does not exist", errno.ENOENT)
        if parents:
            self.create_parents(name)
        parent = self.check_new_name(name, hidden=hidden)
        rec = Record(self._new_id(), self.record(snap.parent).kind, name.rpartition("/")[2],
                     parent.id, new_guid(), self.pool.txg, int(time.time()), origin=snap.id,
                     origin_txg=snap.createtxg, prev_txg=snap.createtxg,
                     deadlist=self._new_id(), refer=snap.refer, refer_lsize=snap.refer_lsize,
                     refer_psize=snap.refer_psize, props=dict(props or {}))
        self.pool.objset(tree_name(rec.id), store=HeadStore(self, rec.id),
                         root=self.pool.objset_root(snap_root_name(snap.id)))
        snap.clones.append(rec.id)
        self.touch(snap)
        self._link(rec)
        return rec

    # ---- destroy a filesystem ---------------------------------------------------------------
    def destroy_filesystem(self, rec: Record) -> None:
        """Destroy a head with no snapshots and no children: free what it alone owns. Its
        bookmarks go with it, as OpenZFS destroys a head's bookmark ZAP."""
        assert rec.kind in HEADS and rec.id != ROOT_ID
        if self.snapshots(rec.id) or self.children(rec.id, hidden=True):
            raise DatasetError("filesystem has children", errno.EEXIST)
        for bookmark in self.bookmarks(rec.id):
            self.destroy_bookmark(bookmark)
        tree = self.tree(rec)
        tree.sync()
        for _kind, bp in list(tree.walk()):
            if bp.birth > rec.origin_txg:
                self.pool.blocks.free(bp)
        self.pool.forget_objset(tree_name(rec.id))
        if self.pool.has_objset(deadlist_name(rec.deadlist)):
            self.pool.destroy_objset(deadlist_name(rec.deadlist))
        if rec.origin:
            origin = self.record(rec.origin)
            origin.clones.remove(rec.id)
            self.touch(origin)
            if origin.defer_destroy and not origin.clones and not origin.holds:
                self.destroy_snapshot(origin)
        self._unlink(rec)

    # ---- rollback -------------------------------------------------------------------------
    def rollback(self, head: Record) -> None:
        """Return a head to its latest snapshot, freeing what was written since."""
        snap = self.record(head.prev_snap)
        self.pool.sync()
        tree = self.tree(head)
        kept = 0                             # the head's blocks the snapshot has, born after origin
        for kind, bp in list(tree.walk()):
            if bp.birth > snap.createtxg:
                self.pool.blocks.free(bp)
            elif kind in ("node", "block") and bp.birth > head.origin_txg:
                kept += bp.asize
        back = sum(bp.asize for _k, bp in self.dead_entries(head.deadlist, head.origin_txg))
        head.used_snap -= back
        if self.pool.has_objset(deadlist_name(head.deadlist)):
            self.pool.destroy_objset(deadlist_name(head.deadlist))
        head.deadlist = self._new_id()
        head.refer, head.refer_lsize, head.refer_psize = snap.refer, snap.refer_lsize, snap.refer_psize
        # The snapshot's blocks born after the head's origin: those the head still has, and
        # those it dropped since (its deadlist). Not `snap.used_head`: that was counted from the
        # origin the head had when the snapshot was taken, which a promote moves (the promoted
        # clone's origin goes back, the demoted head's forward).
        head.used_head = kept + back
        head.written = 0
        self.pool.forget_objset(tree_name(head.id))
        self.pool.objset(tree_name(head.id), store=HeadStore(self, head.id),
                         root=self.pool.objset_root(snap_root_name(snap.id)))
        self.touch(head)
        if self.replaced_hook is not None:
            self.replaced_hook(head)

    # ---- the end of a receive into an existing head ------------------------------------------
    def clone_swap(self, head: Record, tmp: Record) -> Record:
        """Give `head` the contents of `tmp` (a hidden filesystem a receive built) and the
        snapshot `tmp` took of them, its only one, which becomes head's latest; `tmp` is gone.
        As OpenZFS's dsl_dataset_clone_swap at the end of a receive into `head/%recv`. `tmp` is
        a clone of head's latest snapshot S, or (a full stream over a head with no snapshot and
        no origin: receive -F) a filesystem of its own. head keeps its id, guid, name,
        children, properties and older snapshots; what it wrote since S is freed. Only records
        and tree roots change (one txg), and the space counters follow by arithmetic: with a
        = head's deadlist born after its origin (S's blocks head dropped) and b = the new
        snapshot's (S's blocks the stream dropped), S's own blocks are used_head - written + a,
        of which the new tree keeps all but b, plus tmp's own. Returns the snapshot."""
        new, = self.snapshots(tmp.id)
        assert tmp.origin == head.prev_snap and not tmp.written and not tmp.clones
        assert head.prev_snap or not head.origin
        self.pool.sync()                          # every tree clean: walks see their blocks
        tree = self.tree(head)
        for _kind, bp in list(tree.walk(born_after=head.prev_txg)):
            if _kind != "tree":
                self.pool.blocks.free(bp)         # what head wrote since S
        a = sum(bp.asize for _k, bp in self.dead_entries(head.deadlist, head.origin_txg))
        b = sum(bp.asize for _k, bp in self.dead_entries(new.deadlist, head.origin_txg))
        s_own = head.used_head - head.written + a
        if self.pool.has_objset(deadlist_name(head.deadlist)):
            self.pool.destroy_objset(deadlist_name(head.deadlist))   # S still has its blocks
        root = self.pool.objset_root(tree_name(tmp.id))
        self.pool.forget_objset(tree_name(head.id))
        self.pool.forget_objset(tree_name(tmp.id))                   # its blocks are head's
        self.pool.objset(tree_name(head.id), store=HeadStore(self, head.id), root=root)
        head.used_head = s_own - b + tmp.used_head
        head.used_snap += b - a
        head.refer, head.refer_lsize, head.refer_psize = tmp.refer, tmp.refer_lsize, tmp.refer_psize
        head.written = 0
        head.deadlist = tmp.deadlist
        self.mos.delete(self._child_key(tmp.id, "@" + new.component))
        new.parent, new.prev_snap, new.used_head = head.id, head.prev_snap, head.used_head
        head.prev_snap, head.prev_txg = new.id, new.createtxg
        self._link(new)
        if tmp.origin:
            origin = self.record(tmp.origin)
            origin.clones.remove(tmp.id)
            self.touch(origin)
        self._unlink(tmp)
        self.touch(head)
        if self.replaced_hook is not None:
            self.replaced_hook(head)
        return new

    # ---- rename ---------------------------------------------------------------------------
    def rename(self, rec: Record, new_name: str) -> None:
        if rec.kind == "snapshot":
            fs, _, snap = new_name.partition("@")
            if fs != self.name(rec.parent):
                raise DatasetError("snapshots must be part of same dataset")
            if self.lookup(new_name) is not None:
                raise DatasetError("dataset already exists", errno.EEXIST)
            self.mos.delete(self._child_key(rec.parent, "@" + rec.component))
            rec.component = snap
            self._link(rec)
            return
        parent = self.check_new_name(new_name)
        walk = parent
        while True:
            if walk.id == rec.id:
                raise DatasetError("New dataset name cannot be a descendant of current dataset name")
            if walk.id == ROOT_ID:
                break
            walk = self.record(walk.parent)
        self.mos.delete(self._child_key(rec.parent, rec.component))
        rec.parent = parent.id
        rec.component = new_name.rpartition("/")[2]
        self._link(rec)

    # ---- holds ----------------------------------------------------------------------------
    def hold(self, snap: Record, tag: str) -> None:
        if tag in snap.holds:
            raise DatasetError("tag already exists on this dataset", errno.EEXIST)
        snap.holds[tag] = int(time.time())
        self.touch(snap)

    def release(self, snap: Record, tag: str) -> None:
        if tag not in snap.holds:
            raise DatasetError("no such tag on this dataset", errno.ESRCH)
        del snap.holds[tag]
        self.touch(snap)
        if snap.defer_destroy and not snap.holds and not snap.clones:
            self.destroy_snapshot(snap)

    # ---- bookmarks ------------------------------------------------------------------------
    def bookmarks(self, head_id: int) -> list[Record]:
        """A head's bookmarks, by name."""
        prefix = NAME_PREFIX + _id_bytes(head_id) + b"#"
        return [self.record(int.from_bytes(v, "big"))
                for _k, v in self.mos.scan(prefix, prefix + b"\xff")]

    def lookup_bookmark(self, name: str) -> Record | None:
        """The bookmark `fs#name`, or None. `lookup` never answers bookmarks, so no code that
        expects a filesystem or a snapshot is ever handed one."""
        fs, _, short = name.partition("#")
        head = self.lookup(fs)
        if head is None or head.kind not in HEADS:
            return None
        raw = self.mos.get(self._child_key(head.id, "#" + short))
        return None if raw is None else self.record(int.from_bytes(raw, "big"))

    def create_bookmark(self, name: str, source: Record) -> Record:
        """Bookmark `fs#name` of snapshot or bookmark `source`: its guid, createtxg, creation
        and referenced sizes (zfs_bookmark_phys_t with the bookmark_written fields). The
        caller has checked the name, that the head exists and the bookmark does not, and
        that `source` is an earlier point of the head's timeline (`is_before`)."""
        fs, _, short = name.partition("#")
        head = self.get(fs)
        rec = Record(self._new_id(), "bookmark", short, head.id, source.guid, source.createtxg,
                     source.creation, refer=source.refer, refer_lsize=source.refer_lsize,
                     refer_psize=source.refer_psize)
        self._link(rec)
        return rec

    def destroy_bookmark(self, rec: Record) -> None:
        assert rec.kind == "bookmark"
        self._unlink(rec)

    def bookmark_source(self, name: str) -> tuple[int, int]:
        """(guid, createtxg) of bookmark `fs#name`: what `send -i fs#name` needs, since the
        receiver finds its snapshot by that guid and everything born after createtxg is what
        changed. Raises DatasetError (ENOENT) if there is no such bookmark."""
        rec = self.lookup_bookmark(name)
        if rec is None:
            raise DatasetError("dataset does not exist", errno.ENOENT)
        return rec.guid, rec.createtxg

    def is_before(self, later: Record, earlier_head: int, earlier_txg: int) -> bool:
        """Whether the point (head `earlier_head`, txg `earlier_txg`) -- a snapshot, or a
        bookmark -- is earlier in `later`'s timeline (dsl_dataset_is_before): a snapshot of
        the same head before it, or one at or before an origin its head descends from. Then
        every block `later` has that was born at or before earlier_txg is one that point had,
        which incremental sends, `written@`, bookmarks and diff rely on."""
        if later.kind == "snapshot" and earlier_txg >= later.createtxg:
            return False
        head = self.record(later.parent) if later.kind == "snapshot" else later
        while True:
            if head.id == earlier_head:
                return True
            if not head.origin:
                return False
            origin = self.record(head.origin)
            if origin.createtxg == earlier_txg and origin.parent == earlier_head:
                return True
            if earlier_txg >= origin.createtxg:
                return False
            head = self.record(origin.parent)

    # ---- promote --------------------------------------------------------------------------
    def promote(self, clone: Record) -> None:
        """Make a clone independent of its origin: the origin and the snapshots before it
        move to the clone, and the origin's filesystem becomes a clone of it."""
        if not clone.origin:
            raise DatasetError("not a cloned filesystem")
        origin = self.record(clone.origin)
        old = self.record(origin.parent)                 # the filesystem being demoted
        chain = self.snapshots(old.id)
        moving = chain[:chain.index(origin) + 1]
        clone_snaps = {s.component for s in self.snapshots(clone.id)}
        conflict = [s for s in moving if s.component in clone_snaps]
        if conflict:
            raise DatasetError(f"snapshot name '{conflict[0].component}' from origin conflicts "
                               f"with '{self.name(clone.id)}@{conflict[0].component}' from target",
                               errno.EEXIST)
        # bookmarks up to the origin move with the snapshots (dsl_dataset_promote_sync)
        marks = [b for b in self.bookmarks(old.id) if b.createtxg <= origin.createtxg]
        clone_marks = {b.component for b in self.bookmarks(clone.id)}
        for b in marks:
            if b.component in clone_marks:
                raise DatasetError(f"conflicting snapshot '{b.component}' from parent "
                                   f"'{self.name(origin.id)}'", errno.EEXIST)
        self.pool.sync()
        for snap in moving + marks:
            self.mos.delete(self._child_key(old.id, DELIMITER[snap.kind] + snap.component))
            snap.parent = clone.id
            self._link(snap)
        # the clone's own snapshots now follow the origin in its chain
        own = self.snapshots(clone.id)
        first_own = [s for s in own if s.id not in {m.id for m in moving}]
        if first_own:
            first_own[0].prev_snap = origin.id
            self.touch(first_own[0])
        old_origin, old_origin_txg = old.origin, old.origin_txg
        clone.origin, clone.origin_txg = old_origin, old_origin_txg
        if not first_own:
            clone.prev_snap = origin.id
        old.origin, old.origin_txg = origin.id, origin.createtxg
        later = [s for s in chain if s not in moving]
        if later:
            later[0].prev_snap = 0
            self.touch(later[0])
        else:
            old.prev_snap = 0
        origin.clones.remove(clone.id)
        origin.clones.append(old.id)
        if old_origin:
            o = self.record(old_origin)
            o.clones.remove(old.id)
            o.clones.append(clone.id)
            self.touch(o)
        for rec in (clone, old, origin):
            self.touch(rec)
        for rec in (clone, old):
            counts = self.recount(rec)
            rec.used_head, rec.used_snap = counts["used_head"], counts["used_snap"]

    # ---- space -----------------------------------------------------------------------------
    def used(self, rec: Record) -> int:
        """`used` of a head (itself, its snapshots, its children, its refreservation) or of a
        snapshot (what destroying it alone would free)."""
        if rec.kind == "snapshot":
            return self.snapshot_used(rec)
        # below its reservation a dataset counts as using the reservation (zfsprops(7))
        return max(self.used_actual(rec), int(rec.props.get("reservation") or 0))

    def used_actual(self, rec: Record) -> int:
        """A head's used without the reservation floor: the four usedby* added up."""
        return (rec.used_head + rec.used_snap + self.used_by_children(rec)
                + self.used_by_refreservation(rec))

    def used_by_children(self, rec: Record) -> int:
        return sum(self.used(child) for child in self.children(rec.id, hidden=True))

    def used_by_refreservation(self, rec: Record) -> int:
        refres = rec.props.get("refreservation") or 0
        return max(0, int(refres) - rec.used_head)

    def chain_deadlists(self, head: Record) -> list[int]:
        return [s.deadlist for s in self.snapshots(head.id)] + [head.deadlist]

    def recount(self, head: Record) -> dict[str, int]:
        """Recompute a head's space from its tree and deadlists (the consistency checker)."""
        refer = lsize = psize = used_head = written = 0
        for kind, bp in self.tree(head).walk():
            if kind in ("node", "block"):
                refer += bp.asize
                lsize += sectors(bp.lsize)
                psize += sectors(bp.psize)
                if bp.birth > head.origin_txg:
                    used_head += bp.asize
                if bp.birth > head.prev_txg:
                    written += bp.asize
        used_snap = sum(bp.asize for dl_id in self.chain_deadlists(head)
                        for _k, bp in self.dead_entries(dl_id, head.origin_txg))
        return {"refer": refer, "refer_lsize": lsize, "refer_psize": psize,
                "used_head": used_head, "used_snap": used_snap, "written": written}

    def check(self) -> list[str]:
        """Every space invariant of every dataset; returns the faults found."""
        faults = []
        todo = [self.record(ROOT_ID)]
        while todo:
            head = todo.pop()
            todo += self.children(head.id, hidden=True)
            counts = self.recount(head)
            for key, value in counts.items():
                if getattr(head, key) != value:
                    faults.append(f"{self.name(head.id)}: {key} is {getattr(head, key)}, "
                                  f"recounted {value}")
            snaps = self.snapshots(head.id)
            if sum(self.snapshot_used(s) for s in snaps) > head.used_snap:
                faults.append(f"{self.name(head.id)}: snapshots' used exceeds usedbysnapshots")
            for snap in snaps:
                refer = sum(bp.asize for kind, bp in self.tree(snap).walk() if kind != "tree")
                if refer != snap.refer:
                    faults.append(f"{self.name(snap.id)}: referenced is {snap.refer}, "
                                  f"recounted {refer}")
        ddt = self.pool.blocks.ddt
        if ddt.totals()[0] or self.pool.has_objset(dedup.DDT_OBJSET):
            faults += ddt.check(dedup.reference_counts(self))
        return faults + self._check_bookmarks()

    def _check_bookmarks(self) -> list[str]:
        """Every bookmark record belongs to a live filesystem under its own name: none is left
        behind by the destroy, rename or promote of its filesystem."""
        faults = []
        ids = {int.from_bytes(k[len(REC_PREFIX):], "big")
               for k, _v in self.mos.scan(REC_PREFIX, REC_PREFIX + b"\xff")}
        for ds_id in sorted((ids | set(self.records)) - self.deleted):
            rec = self.record(ds_id)
            if rec.kind != "bookmark":
                continue
            try:
                head = self.record(rec.parent)
            except KeyError:
                head = None
            if head is None or head.kind not in HEADS or self.destroyed(head):
                faults.append(f"bookmark {ds_id} ({rec.component}) outlived its filesystem")
            elif self.lookup_bookmark(self.name(ds_id)) is not rec:
                faults.append(f"{self.name(ds_id)}: its name does not lead to it")
        return faults
