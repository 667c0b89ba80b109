"""Replication streams (`zfs send -R`, `zfs receive` of them): a filesystem, its descendants,
their snapshots and properties, clones after their origins.

Theory of operation
-------------------
Sending. libzfs's zfs_send with `replicate` writes a compound stream (records.package_header)
whose BEGIN carries the nvlist gather_nvlist builds (no "not_recursive"): "tosnap", "fromsnap"
(with -i/-I) and "fss", one entry per filesystem, keyed "0x<filesystem guid>", holding "name",
"parentfromsnap" (the guid of the parent's fromsnap, or of its tosnap when it has no fromsnap;
0 for the top), "origin" (a clone's origin snapshot's guid), "props" (send_iterate_prop), "snaps"
(every snapshot up to the filesystem's tosnap: short name -> guid) and "snapprops" (each
snapshot's user properties). `gather` builds it, walking the filesystems parents first; a
filesystem without tosnap is left out (with its descendants) when it was created after its
parent's tosnap, else the send fails as libzfs's does.

Then the substreams, filesystem by filesystem in the order of "fss", a filesystem only after
its parent and its origin (dump_filesystems): for each, its snapshots in txg order after the
fromsnap (all of them without -i/-I; with -i only the tosnap and snapshots that are origins of
clones in the set; with -I all), the first one full, or incremental from the origin with
DRR_FLAG_CLONE for a clone, or from fromsnap, the others from the one sent before. `plan`
gives that list; cli_send writes it.

Receiving. Each substream is received by itself (incoming.py); a substream flagged CLONE makes
a new filesystem, a clone of the local snapshot with its fromguid. An incremental replication
stream first goes through `prune` (recv_incremental_replication): with -F, every snapshot of
the destination tree whose guid the stream does not list is destroyed, and every filesystem none
of whose snapshots it lists; user properties of the snapshots are set as received. Each step is
a normal destroy in its own right, so a crash between them leaves a consistent pool (what is
destroyed is what the stream says the source destroyed); the substreams after it are atomic
each.
"""
from __future__ import annotations

from dataclasses import dataclass

from fusezfs.dsl import dsprops
from fusezfs.dsl.datasets import DatasetError, Datasets, Record
from fusezfs.send import nvlist
from fusezfs.send.props import props_of


class ReplicateError(Exception):
    """A replication send that cannot be made; `lines` are what libzfs prints."""

    def __init__(self, lines: str) -> None:
        super().__init__(lines)
        self.lines = lines


@dataclass
class Part:
    """One substream: `snap`, incremental from `source` (None: full), `clone`: the source is
    the origin of `snap`'s filesystem (DRR_FLAG_CLONE)."""
    snap: Record
    source: Record | None
    clone: bool = False
    fromshort: str | None = None          # what send -v prints as the source


def _snap_named(dsl: Datasets, head: Record, short: str | None) -> Record | None:
    if not short:
        return None
    for s in dsl.snapshots(head.id):
        if s.component == short:
            return s
    return None


def _user_props(rec: Record) -> dict:
    out = {}
    for source in (rec.received, rec.props):
        for n, v in source.items():
            if dsprops.is_user(n):
                out[n] = str(v)
    return out


def gather(dsl: Datasets, top: Record, tosnap: str, fromsnap: str | None
           ) -> tuple[dict, list[tuple[Record, list[Record]]]]:
    """(the "fss" nvlist, [(filesystem, its snapshots up to tosnap)] in walk order)."""
    fss: dict = {}
    order: list[tuple[Record, list[Record]]] = []
    top_name = dsl.name(top.id)

    def visit(fs: Record, parent_guid: int, parent_to_txg: int) -> None:
        to = _snap_named(dsl, fs, tosnap)
        if to is None:
            if parent_to_txg and fs.createtxg > parent_to_txg:
                return                    # created after the parent's tosnap: not sent
            raise ReplicateError(f"cannot send {top_name}@{tosnap} recursively: snapshot "
                                 f"{dsl.name(fs.id)}@{tosnap} does not exist\n")
        snaps = [s for s in dsl.snapshots(fs.id) if s.createtxg <= to.createtxg]
        entry: dict = {"name": dsl.name(fs.id), "parentfromsnap": parent_guid}
        if fs.origin:
            entry["origin"] = dsl.record(fs.origin).guid
        entry["props"] = props_of(fs)
        entry["snaps"] = {s.component: s.guid for s in snaps}
        entry["snapprops"] = {s.component: _user_props(s) for s in snaps}
        fss[f"0x{fs.guid:x}"] = entry
        order.append((fs, snaps))
        frm = _snap_named(dsl, fs, fromsnap)
        mine = (frm or to).guid
        for child in dsl.children(fs.id):
            visit(child, mine, to.createtxg)

    visit(top, 0, 0)
    return fss, order


def package_nvlist(fss: dict, tosnap: str, fromsnap: str | None) -> bytes:
    """The BEGIN payload of a replication stream (send_prelim_records)."""
    nvl: dict = {}
    if fromsnap is not None:
        nvl["fromsnap"] = fromsnap
    nvl["tosnap"] = tosnap
    nvl["fss"] = fss
    return nvlist.encode(nvl)


def plan(dsl: Datasets, order: list[tuple[Record, list[Record]]], tosnap: str,
         fromsnap: str | None, doall: bool) -> list[Part]:
    """The substreams, in dump_filesystems' order (parents and origins first)."""
    by_snap_guid = {}
    for fs, snaps in order:
        for s in snaps:
            by_snap_guid[s.id] = fs.id
    origins = {fs.origin for fs, _s in order if fs.origin}
    in_set = {fs.id for fs, _s in order}
    sent: set[int] = set()
    parts: list[Part] = []
    pending = list(order)
    while pending:
        later = []
        for fs, snaps in pending:
            if fs.parent in in_set and fs.parent not in sent and fs.id != order[0][0].id:
                later.append((fs, snaps))
                continue
            if fs.origin and fs.origin in by_snap_guid and by_snap_guid[fs.origin] not in sent:
                later.append((fs, snaps))
                continue
            parts += _dump_filesystem(dsl, fs, snaps, tosnap, fromsnap, doall, origins)
            sent.add(fs.id)
        if len(later) == len(pending):
            raise ReplicateError("invalid backup stream\n")    # a cycle: cannot happen
        pending = later
    return parts


def _dump_filesystem(dsl: Datasets, fs: Record, snaps: list[Record], tosnap: str,
                     fromsnap: str | None, doall: bool, origins: set[int]) -> list[Part]:
    """dump_filesystem: the substreams of one filesystem."""
    missing_from = fromsnap is not None and _snap_named(dsl, fs, fromsnap) is None
    seen_from = fromsnap is None or missing_from
    seen_to = False
    prev: Record | None = None
    out = []
    for s in snaps:
        if not seen_from and s.component == fromsnap:
            seen_from, prev = True, s
            continue
        if seen_to or not seen_from:
            continue
        is_to = s.component == tosnap
        seen_to = seen_to or is_to
        if not doall and not is_to and s.id not in origins:
            continue
        if prev is None and fs.origin:
            origin = dsl.record(fs.origin)
            out.append(Part(s, origin, True, None))
        else:
            out.append(Part(s, prev, False, prev.component if prev else None))
        prev = s
    return out


# ---- receiving ---------------------------------------------------------------------------------
def snapshot_by_guid(dsl: Datasets, guid: int) -> Record | None:
    """The snapshot of the pool with `guid` (guid_to_name)."""
    from fusezfs.dsl.datasets import ROOT_ID
    root = dsl.record(ROOT_ID)
    for fs in [root] + dsl.descendants(ROOT_ID):
        for s in dsl.snapshots(fs.id):
            if s.guid == guid:
                return s
    return None


def prune(dsl: Datasets, tofs: str, nvl: dict, force: bool, say=None) -> None:
    """recv_incremental_replication before the substreams of an incremental replication
    stream into `tofs`: with -F, what the source destroyed goes; snapshot user properties are
    set as received. The caller holds the pool lock."""
    top = dsl.lookup(tofs)
    if top is None or top.kind != "filesystem":
        return
    stream_snaps: dict[int, tuple[dict, str]] = {}
    for entry in (nvl.get("fss") or {}).values():
        if isinstance(entry, dict):
            for short, guid in (entry.get("snaps") or {}).items():
                stream_snaps[guid] = (entry, short)
    changed = False
    for fs in reversed([top] + dsl.descendants(top.id)):      # children before parents
        fsname = dsl.name(fs.id)
        kept = False
        for snap in dsl.snapshots(fs.id):
            found = stream_snaps.get(snap.guid)
            if found is None:
                if force:
                    changed |= _destroy(dsl.destroy_snapshot, snap,
                                        f"{fsname}@{snap.component}", say)
                continue
            kept = True
            entry, short = found
            props = (entry.get("snapprops") or {}).get(short) or {}
            user = {n: str(v) for n, v in props.items() if dsprops.is_user(n)
                    and isinstance(v, str)}
            if user and user != snap.received:
                snap.received = dict(user)
                dsl.touch(snap)
                dsl.records_changed += 1
                changed = True
        if not kept and force and fs.id != top.id and not dsl.children(fs.id) \
                and not dsl.snapshots(fs.id):
            changed |= _destroy(dsl.destroy_filesystem, fs, fsname, say)
    if changed:
        dsl.pool.sync()


def _destroy(destroy, rec: Record, name: str, say) -> bool:
    """recv_destroy: one snapshot or filesystem; a failure is said and the rest goes on."""
    try:
        destroy(rec)
        return True
    except DatasetError as e:
        if say is not None:
            say(f"cannot destroy {name}: {e.message}\n")
        return False
