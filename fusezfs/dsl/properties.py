"""Dataset properties applied to datasets: inheritance chains, computed values, set and inherit
with their checks, and the write policy the properties ask for.

dsprops.py knows the table and the words; datasets.py knows the records and the space. This
module joins them. Local values live in a dataset's record (`props`, `received`, `masked`), so
a `set` is one record change in the open txg: it commits atomically with everything else.
"""
from __future__ import annotations

import errno
from dataclasses import replace

from fusezfs.engine import compress, dedup
from fusezfs.dsl import dsprops
from fusezfs.engine.blocks import Policy
from fusezfs.dsl.datasets import DatasetError, Datasets, Record, ROOT_ID
from fusezfs.formats.bp import CKSUM_SHA256, CKSUM_XXH3_128
from fusezfs.formats.node import MAX_VALUE

SLOP_SHIFT = 5            # 1/32 of the pool is kept back from datasets (spa_slop_shift)
# Set by the daemon serving a pool (daemon.SingleMounts.mounted): (dsl, rec) -> whether one
# of its FUSE sessions shows rec. Elsewhere nothing is mounted: the pool's files are this process's.
mounted_hook = None


def level(dsl: Datasets, rec: Record) -> dsprops.Level:
    return dsprops.Level(dsl.name(rec.id), rec.props, rec.received, set(rec.masked))


def chain(dsl: Datasets, rec: Record) -> list[dsprops.Level]:
    """The record's own level, then its head's (for a snapshot), then every ancestor's. A
    bookmark has only its own (empty) level: it inherits nothing, user properties included."""
    out = [level(dsl, rec)]
    if rec.kind == "bookmark":
        return out
    if rec.kind == "snapshot":
        rec = dsl.record(rec.parent)
        out.append(level(dsl, rec))
    while rec.id != ROOT_ID:
        rec = dsl.record(rec.parent)
        out.append(level(dsl, rec))
    return out


def value(dsl: Datasets, rec: Record, name: str):
    """Effective raw value of a settable property."""
    return dsprops.resolve(name, chain(dsl, rec)).value


def as_int(raw) -> int:
    return int(raw) if raw not in (None, "", "none") else 0


def write_policy(dsl: Datasets, rec: Record) -> Policy:
    """compression, checksum and copies as the block layer takes them.

    fusezfs writes zstd or gzip: compression=on and the fast algorithms it lacks (lz4, lzjb,
    zle, zstd-fast-N) are written with zstd-1, the fastest level. Every checksum value is
    honoured with a real checksum: the cryptographic ones as sha256, the rest (on, off,
    fletcher2/4) as xxh3-128 -- a block is never stored unverifiable.
    """
    comp_name = str(value(dsl, rec, "compression"))
    if comp_name == "on" or comp_name in ("lz4", "lzjb", "zle") or comp_name.startswith("zstd-fast"):
        comp_name = "zstd-1"
    algorithm, lvl = compress.parse(comp_name)
    strong = str(value(dsl, rec, "checksum")).startswith(("sha256", "sha512", "skein", "edonr",
                                                          "blake3"))
    # dedup keys its table by a strong checksum, whatever `checksum` says (as OpenZFS's
    # zio_checksum_dedup_select): deduped blocks are written with sha256
    dedup_mode = dedup.mode(str(value(dsl, rec, "dedup")))
    return Policy(algorithm, lvl, CKSUM_SHA256 if strong or dedup_mode else CKSUM_XXH3_128,
                  int(value(dsl, rec, "copies")), dedup_mode)


# ---- space ----------------------------------------------------------------------------------
def reserving(dsl: Datasets) -> list[Record]:
    """The datasets with a reservation or refreservation set. Cached on the dataset directory
    (every write asks, through check_space) and dropped only when a dataset carrying either
    property comes or goes or either property is set or inherited
    (`Datasets.reservations_changed`): creating datasets without them (a container, a clone)
    costs no walk over every dataset."""
    ids = dsl._reserving
    if ids is None or dsl.reservations_changed != dsl._reserving_gen:
        ids = [r.id for r in dsl.descendants(ROOT_ID)
               if as_int(r.props.get("reservation")) or as_int(r.props.get("refreservation"))]
        dsl._reserving, dsl._reserving_gen = ids, dsl.reservations_changed
    return [dsl.record(i) for i in ids]


def pool_available(dsl: Datasets) -> int:
    pool = dsl.pool
    slop = pool.size >> SLOP_SHIFT
    # space promised but not yet used: reservations (beyond what the dataset uses) and
    # refreservations (beyond what its own data uses: usedbyrefreservation)
    reserved = sum(max(0, as_int(r.props.get("reservation")) - dsl.used_actual(r))
                   + dsl.used_by_refreservation(r) for r in reserving(dsl))
    return max(0, pool.free - slop - reserved)


def own_reserve(dsl: Datasets, rec: Record) -> int:
    """Space set aside for this dataset that pool_available left out: its own to use."""
    reservation = as_int(rec.props.get("reservation"))
    # used_actual adds up the children: only worth it when there is a reservation
    return (max(0, reservation - dsl.used_actual(rec)) if reservation else 0) + \
        dsl.used_by_refreservation(rec)


def available(dsl: Datasets, rec: Record) -> int:
    """AVAIL: what this dataset may still write, after pool space, quotas up the tree and its
    refquota."""
    if rec.kind == "snapshot":
        rec = dsl.record(rec.parent)
    avail = pool_available(dsl) + own_reserve(dsl, rec)
    refquota = as_int(rec.props.get("refquota"))
    if refquota:
        avail = min(avail, max(0, refquota - rec.refer))
    walk = rec
    while True:
        quota = as_int(walk.props.get("quota"))
        if quota:
            avail = min(avail, max(0, quota - dsl.used(walk)))
        if walk.id == ROOT_ID:
            break
        walk = dsl.record(walk.parent)
    return avail


def only_pool_limits(dsl: Datasets, rec: Record) -> bool:
    """Whether nothing but the pool's free space limits what head `rec` may write: no quota on
    it or an ancestor, no refquota, no reservation or refreservation anywhere in the pool.
    Cached per dataset until a property changes or datasets come, go or move
    (`records_changed`), as `reserving` is: every create and write asks."""
    if dsl._pool_limited_gen != dsl.records_changed:
        dsl._pool_limited = {}
        dsl._pool_limited_gen = dsl.records_changed
    known = dsl._pool_limited.get(rec.id)
    if known is None:
        known = rec.kind != "snapshot" and not reserving(dsl) and \
            not as_int(rec.props.get("refquota"))
        walk = rec
        while known:
            known = not as_int(walk.props.get("quota"))
            if walk.id == ROOT_ID:
                break
            walk = dsl.record(walk.parent)
        dsl._pool_limited[rec.id] = known
    return known


def check_space(dsl: Datasets, rec: Record, nbytes: int) -> None:
    """Raise EDQUOT (a quota or refquota would be exceeded) or ENOSPC before anything is
    written, so a write either fits whole or changes nothing."""
    if only_pool_limits(dsl, rec):      # what the general case below comes to then
        if nbytes > pool_available(dsl):
            raise OSError(errno.ENOSPC, "No space left on device")
        return
    refquota = as_int(rec.props.get("refquota"))
    if refquota and rec.refer + nbytes > refquota:
        raise OSError(errno.EDQUOT, "Disk quota exceeded")
    walk = rec
    while True:
        quota = as_int(walk.props.get("quota"))
        if quota and dsl.used(walk) + nbytes > quota:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        if walk.id == ROOT_ID:
            break
        walk = dsl.record(walk.parent)
    if nbytes > pool_available(dsl) + own_reserve(dsl, rec):
        raise OSError(errno.ENOSPC, "No space left on device")


# ---- computed (read-only) properties --------------------------------------------------------
def computed(dsl: Datasets, rec: Record, wanted: list[str] | None = None) -> dict:
    """Raw values of the read-only properties of `rec` for dsprops.get_property."""
    if rec.kind == "bookmark":
        # what dsl_bookmark_fetch_props gives of a bookmark with the bookmark_written fields:
        # no compressratio (libzfs finds none and leaves it out)
        return {"type": "bookmark", "creation": rec.creation, "referenced": rec.refer,
                "guid": rec.guid, "createtxg": rec.createtxg,
                "logicalreferenced": rec.refer_lsize}
    snap = rec.kind == "snapshot"
    used = dsl.used(rec)
    out = {
        "type": rec.kind, "creation": rec.creation, "used": used, "referenced": rec.refer,
        "guid": rec.guid, "createtxg": rec.createtxg, "objsetid": rec.id,
        "compressratio": dsprops.compress_ratio(rec.refer_lsize, rec.refer_psize),
        "refcompressratio": dsprops.compress_ratio(rec.refer_lsize, rec.refer_psize),
        "logicalreferenced": rec.refer_lsize, "written": rec.written,
    }
    if snap:
        out.update({"userrefs": len(rec.holds), "defer_destroy": rec.defer_destroy,
                    "clones": [dsl.name(c) for c in rec.clones], "available": None})
        out["logicalused"] = None
    else:
        by_children = dsl.used_by_children(rec)
        out.update({
            "available": available(dsl, rec),
            "mounted": bool(mounted_hook and mounted_hook(dsl, rec)),
            "usedbysnapshots": rec.used_snap, "usedbydataset": rec.used_head,
            "usedbychildren": by_children,
            "usedbyrefreservation": dsl.used_by_refreservation(rec),
            "logicalused": rec.refer_lsize + sum(
                computed(dsl, c)["logicalused"] for c in dsl.children(rec.id)),
            "origin": dsl.name(rec.origin) if rec.origin else None,
        })
    head = dsl.record(rec.parent) if snap else rec
    if head.kind == "volume" and dsl.geometry_hook is not None:
        out.update(dsl.geometry_hook(dsl, rec))
    for name in wanted or []:
        if dsprops.is_written(name):
            out[name] = written_since(dsl, rec, name)
    return out


def written_since(dsl: Datasets, rec: Record, prop: str) -> int | None:
    """`written@SNAP`, `written@FS@SNAP`, `written#BOOKMARK` or `written@FS#BOOKMARK`: bytes
    `rec` references that were born after that snapshot or bookmark, which must be an earlier
    point of its timeline (zfs_prop_get_written_int, dsl_dataset_space_written); None ("-")
    if there is no such point. A short name is taken in rec's own filesystem. Everything rec
    has that was born at or before the point's txg the point has too (Datasets.is_before), so
    the blocks born after it are exactly what it lacks."""
    what = prop[len("written@"):]
    head = dsl.record(rec.parent) if rec.kind == "snapshot" else rec
    if "@" not in what and "#" not in what:
        what = dsl.name(head.id) + prop[len("written")] + what
    if "#" in what:
        point = dsl.lookup_bookmark(what)
    else:
        point = dsl.lookup(what)
        point = point if point is not None and point.kind == "snapshot" else None
    if point is None or not dsl.is_before(rec, point.parent, point.createtxg):
        return None
    total = 0
    for kind, bp in dsl.tree(rec).walk():
        if kind in ("node", "block") and bp.birth > point.createtxg:
            total += bp.asize
    return total


# ---- set and inherit ------------------------------------------------------------------------
def set_props(dsl: Datasets, rec: Record, props: dict[str, str]) -> None:
    """`zfs set a=b c=d`: all checked first, then all applied (one record change)."""
    if rec.kind == "snapshot":
        for name in props:
            if not dsprops.is_user(name):
                raise DatasetError(dsprops.MSG_SNAPSHOT_PROPS)
    try:
        raw = dsprops.validate_props(props, rec.kind)
    except dsprops.PropError as e:
        raise DatasetError(e.message, errno.EINVAL) from None
    for name, val in raw.items():
        if name == "quota" and as_int(val) and as_int(val) < dsl.used(rec):
            raise DatasetError(dsprops.MSG_QUOTA_TOO_SMALL, errno.ENOSPC)
        if name == "refquota" and as_int(val) and as_int(val) < rec.refer:
            raise DatasetError(dsprops.MSG_QUOTA_TOO_SMALL, errno.ENOSPC)
        if name in ("reservation", "refreservation") and as_int(val) > available(dsl, rec) + \
                as_int(rec.props.get(name)):
            raise DatasetError(dsprops.MSG_RESV_TOO_BIG, errno.ENOSPC)
    _check_record_fits(dsl, rec, raw)
    dsl.note_reservations(rec)                  # before (a reservation unset) and after
    for name, val in raw.items():
        level_ = level(dsl, rec)
        dsprops.apply_set(level_, name, val)
        rec.props = dict(level_.local)
        rec.masked = sorted(level_.masked)
    dsl.note_reservations(rec)
    dsl.touch(rec)
    dsl.records_changed += 1


def _check_record_fits(dsl: Datasets, rec: Record, raw: dict) -> None:
    """A dataset's record, its properties included, is one MOS tree item of at most
    MAX_VALUE bytes (datasets.py): a set that would outgrow it is refused before anything
    changes (E2BIG), where it would otherwise fail at the txg's commit. OpenZFS keeps
    properties in a ZAP of their own and has no such limit: user properties of more than
    about 8 KiB in all on one dataset are a fusezfs limitation."""
    trial = dsprops.Level(dsl.name(rec.id), dict(rec.props), dict(rec.received),
                          set(rec.masked))
    for name, val in raw.items():
        dsprops.apply_set(trial, name, val)
    after = replace(rec, props=dict(trial.local), masked=sorted(trial.masked))
    if len(after.encode()) > MAX_VALUE:
        raise DatasetError("property list too large: fusezfs keeps a dataset's properties in "
                           f"{MAX_VALUE} bytes", errno.E2BIG)


def inherit(dsl: Datasets, rec: Record, name: str, *, received: bool = False) -> None:
    dsl.note_reservations(rec)
    level_ = level(dsl, rec)
    dsprops.apply_inherit(level_, name, received=received)
    rec.props = dict(level_.local)
    rec.masked = sorted(level_.masked)
    dsl.note_reservations(rec)
    dsl.touch(rec)
    dsl.records_changed += 1
