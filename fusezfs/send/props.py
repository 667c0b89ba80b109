"""Properties in a send stream (zfs send -p): the nvlist of a compound stream's BEGIN, both ways.

Theory of operation
-------------------
libzfs's send_prelim_records packs {"tosnap": short name, ["fromsnap": short name,]
"not_recursive": flag, "fss": {"0x<fs guid>": FS}} with FS = {"name", "parentfromsnap",
["origin": the origin snapshot's guid,] "props", "snaps": {short name: guid}, "snapprops":
{short name: props}} (send_iterate_fs, send_iterate_snap). "props" holds the filesystem's
properties set locally or received (send_iterate_prop): strings for string and user properties,
uint64 for numbers and for index properties (their number: compression=zstd is 16), read-only
ones left out, and quotas and reservations only when set on the filesystem itself. "snaps" has
every snapshot up to the one sent; "snapprops" the ones the stream sends (their user properties).

A receiver finds the entry whose "snaps" has a substream's toguid (fsavl_find) and sets its
"props" as *received* values (`zfs get` source "received"; a local value still wins, `zfs
inherit -S` brings a received one back), replacing what an earlier receive set; -x masks one.
Unknown and read-only names are skipped, as a receiver of a newer sender would.
"""
from __future__ import annotations

from typing import Any

from fusezfs.dsl import dsprops
from fusezfs.dsl.datasets import Datasets, Record
from fusezfs.send import nvlist

QUOTAS = ("quota", "reservation", "refquota", "refreservation")


def _to_stream(name: str, raw: Any) -> Any | None:
    """A fusezfs raw property value as send_iterate_prop packs it (None: left out)."""
    if dsprops.is_user(name):
        return str(raw)
    canon = dsprops.canonical(name)
    if canon is None:
        return None
    p = dsprops.PROPS[canon]
    if p.readonly:
        return None
    if p.type == dsprops.STRING:
        return str(raw)
    if p.type == dsprops.INDEX:
        return nvlist.Typed(nvlist.UINT64, dict(p.index).get(str(raw), 0))
    return nvlist.Typed(nvlist.UINT64, int(raw))


def _from_stream(name: str, value: Any) -> tuple[str, Any] | None:
    """A value from a stream as a fusezfs raw received value (None: skipped)."""
    if dsprops.is_user(name):
        return (name, str(value)) if isinstance(value, str) else None
    canon = dsprops.canonical(name)
    if canon is None or dsprops.PROPS[canon].readonly:
        return None
    p = dsprops.PROPS[canon]
    if p.type == dsprops.STRING:
        return (canon, str(value)) if isinstance(value, str) else None
    if not isinstance(value, int):
        return None
    if p.type == dsprops.INDEX:
        names = [n for n, v in p.index if v == value]
        return (canon, names[0]) if names else None
    return canon, value


def props_of(rec: Record) -> dict:
    """send_iterate_prop: local and received values of a filesystem (local ones win)."""
    out = {}
    for source in (rec.received, rec.props):
        for name, raw in source.items():
            value = _to_stream(name, raw)
            if value is not None:
                out[name] = value
    return out


def package(dsl: Datasets, head: Record, tosnap: Record, fromsnap: str | None,
            sent: list[Record]) -> bytes:
    """The packed nvlist of a -p stream of `head` up to snapshot `tosnap`, sending `sent`."""
    snaps = [s for s in dsl.snapshots(head.id) if s.createtxg <= tosnap.createtxg]
    fs: dict = {"name": dsl.name(head.id), "parentfromsnap": 0}
    if head.origin:
        fs["origin"] = dsl.record(head.origin).guid
    fs["props"] = props_of(head)
    fs["snaps"] = {s.component: s.guid for s in snaps}
    fs["snapprops"] = {s.component: {n: str(v) for n, v in s.props.items()
                                     if dsprops.is_user(n)} for s in sent}
    nvl: dict = {}
    if fromsnap is not None:
        nvl["fromsnap"] = fromsnap
    nvl["tosnap"] = tosnap.component
    nvl["not_recursive"] = None
    nvl["fss"] = {f"0x{head.guid:x}": fs}
    return nvlist.encode(nvl)


class StreamProps:
    """What a received -p stream's nvlist says, for each substream (by its toguid)."""

    def __init__(self, payload: bytes) -> None:
        self.nvl = nvlist.decode(payload)
        self.recursive = "not_recursive" not in self.nvl

    def for_guid(self, toguid: int) -> tuple[dict, dict] | None:
        """(received properties, the snapshot's properties) of the filesystem entry that sent
        snapshot `toguid`, as fusezfs raw values; None if no entry has it."""
        for fs in (self.nvl.get("fss") or {}).values():
            if not isinstance(fs, dict):
                continue
            snaps = fs.get("snaps") or {}
            for short, guid in snaps.items():
                if guid == toguid:
                    props = dict(filter(None, (_from_stream(n, v)
                                               for n, v in (fs.get("props") or {}).items())))
                    snapprops = (fs.get("snapprops") or {}).get(short) or {}
                    return props, {n: str(v) for n, v in snapprops.items()
                                   if dsprops.is_user(n) and isinstance(v, str)}
        return None
