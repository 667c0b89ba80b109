"""The zfs verbs at the top level of `fusezfs`: create, destroy, snapshot, rollback, clone,
promote, rename, list, get, set, inherit, hold, holds, release.

Each verb opens the pool a dataset name starts with (through the registry), checks everything
before changing anything, applies the change, and closes the pool, which commits the txg.
Messages are OpenZFS's: "cannot VERB 'NAME': REASON", exit 1; usage errors exit 2.
"""
from __future__ import annotations

import errno
from contextlib import contextmanager
from typing import Iterator

from . import dsprops
from . import properties as props_
from .cli import Failed, Usage, error, parse, print_table
from .cli_pool import imported_names, open_pool
from .datasets import DatasetError, Datasets, Record, ROOT_ID
from .names import dataset_name_error

USAGE = {
    "create": "\tcreate [-p] [-o property=value] ... <filesystem>",
    "destroy": "\tdestroy [-fnpRrv] <filesystem|volume>\n"
               "\tdestroy [-dnpRrv] <filesystem|volume>@<snap>[%<snap>][,...]",
    "snapshot": "\tsnapshot [-r] [-o property=value] ... <filesystem|volume>@<snap> ...",
    "rollback": "\trollback [-rRf] <snapshot>",
    "clone": "\tclone [-p] [-o property=value] ... <snapshot> <filesystem|volume>",
    "promote": "\tpromote <clone-filesystem>",
    "rename": "\trename [-f] <filesystem|volume|snapshot> <filesystem|volume|snapshot>\n"
              "\trename -p [-f] <filesystem|volume> <filesystem|volume>\n"
              "\trename -r <snapshot> <snapshot>",
    "list": "\tlist [-Hp] [-r|-d max] [-o property[,...]] [-s property]...\n"
            "\t    [-S property]... [-t type[,...]] [filesystem|volume|snapshot] ...",
    "get": "\tget [-rHp] [-d max] [-o \"all\" | field[,...]]\n"
           "\t    [-t type[,...]] [-s source[,...]]\n"
           "\t    <\"all\" | property[,...]> [filesystem|volume|snapshot|bookmark] ...",
    "set": "\tset <property=value> ... <filesystem|volume|snapshot> ...",
    "inherit": "\tinherit [-rS] <property> <filesystem|volume|snapshot> ...",
    "hold": "\thold [-r] <tag> <snapshot> ...",
    "holds": "\tholds [-rH] <snapshot> ...",
    "release": "\trelease [-r] <tag> <snapshot> ...",
}
PROP_VERBS = {"list", "get", "set", "inherit"}


def usage_text(verb: str) -> str:
    text = "usage:\n" + USAGE[verb] + "\n"
    if verb in PROP_VERBS:
        text += dsprops.usage_properties()
    return text.rstrip("\n")


# ---- opening ------------------------------------------------------------------------------
@contextmanager
def session(pool_name: str, what: str) -> Iterator[Datasets]:
    """The dataset directory of a pool; `what` is the name reported if the pool is unknown."""
    if pool_name not in imported_names():
        raise Failed(f"cannot open '{what}': dataset does not exist")
    pool = open_pool(pool_name)
    try:
        with pool.lock:
            yield Datasets(pool)
    finally:
        pool.close()


def pool_of(name: str) -> str:
    return name.split("/")[0].split("@")[0]


def need(dsl: Datasets, name: str, verb: str = "open") -> Record:
    rec = dsl.lookup(name)
    if rec is None:
        raise Failed(f"cannot {verb} '{name}': dataset does not exist")
    return rec


def parse_props(opts: list[tuple[str, str]], flag: str = "-o") -> dict[str, str]:
    out: dict[str, str] = {}
    for opt, val in opts:
        if opt != flag:
            continue
        if "=" not in val:
            raise Usage(f"missing '=' for property=value argument")
        k, v = val.split("=", 1)
        if k in out:
            raise Failed(f"property '{k}' specified multiple times")
        out[k] = v
    return out


def dserr(verb: str, name: str, e: DatasetError) -> Failed:
    text = f"cannot {verb} '{name}': {e.message}"
    return Failed(text)


# ---- create, clone, snapshot ---------------------------------------------------------------
def cmd_create(args: list[str]) -> int:
    opts, rest = parse(args, "po:V:sb:")
    if any(o == "-V" for o, _ in opts):
        raise Failed("cannot create volumes: fusezfs has no volume support")
    props = parse_props(opts)
    if not rest:
        raise Usage("missing filesystem argument")
    if len(rest) > 1:
        raise Usage("too many arguments")
    name = rest[0]
    why = dataset_name_error(name)
    if why:
        raise Failed(f"cannot create '{name}': {why}")
    try:
        raw = dsprops.validate_props(props, creating=True)
    except dsprops.PropError as e:
        raise Failed(f"cannot create '{name}': {e.message}") from None
    with session(pool_of(name), name) as dsl:
        if ("-p", "") in opts and dsl.lookup(name) is not None:
            return 0
        try:
            dsl.create(name, raw, parents=("-p", "") in opts)
        except DatasetError as e:
            raise dserr("create", name, e) from None
    return 0


def cmd_clone(args: list[str]) -> int:
    opts, rest = parse(args, "po:")
    props = parse_props(opts)
    if len(rest) < 1:
        raise Usage("missing source dataset argument")
    if len(rest) < 2:
        raise Usage("missing target dataset argument")
    if len(rest) > 2:
        raise Usage("too many arguments")
    snap, name = rest
    why = dataset_name_error(snap, snapshot=True)
    if why:
        raise Failed(f"cannot open '{snap}': {why}")
    why = dataset_name_error(name)
    if why:
        raise Failed(f"cannot create '{name}': {why}")
    if pool_of(snap) != pool_of(name):
        raise Failed(f"cannot create '{name}': source and target pools differ")
    try:
        raw = dsprops.validate_props(props, creating=True)
    except dsprops.PropError as e:
        raise Failed(f"cannot create '{name}': {e.message}") from None
    with session(pool_of(snap), snap) as dsl:
        need(dsl, snap)
        try:
            dsl.clone(snap, name, raw, parents=("-p", "") in opts)
        except DatasetError as e:
            raise dserr("create", name, e) from None
    return 0


def cmd_snapshot(args: list[str]) -> int:
    opts, rest = parse(args, "ro:")
    props = parse_props(opts)
    if not rest:
        raise Usage("missing snapshot argument")
    recursive = ("-r", "") in opts
    for name in rest:
        why = dataset_name_error(name, snapshot=True)
        if why:
            raise Failed(f"cannot create snapshot '{name}': {why}")
    pools = {pool_of(n) for n in rest}
    if len(pools) > 1:
        raise Failed("cannot create snapshots in multiple pools")
    for key in props:
        if not dsprops.is_user(key):
            raise Failed(f"cannot create snapshot '{rest[0]}': {dsprops.MSG_SNAPSHOT_PROPS}")
    with session(pools.pop(), rest[0].partition("@")[0]) as dsl:
        names = []
        for name in rest:
            fs, _, snap = name.partition("@")
            head = dsl.lookup(fs)
            if head is None or head.kind != "filesystem":
                raise Failed(f"cannot open '{fs}': dataset does not exist")
            names.append(name)
            if recursive:
                names += [f"{dsl.name(d.id)}@{snap}" for d in dsl.descendants(head.id)]
        try:
            dsl.snapshot(names, props)
        except DatasetError as e:
            bad = next((n for n in names if dsl.lookup(n) is not None), names[0])
            raise Failed(f"cannot create snapshot '{bad}': {e.message}") from None
    return 0


# ---- destroy ---------------------------------------------------------------------------------
def _snapshot_targets(dsl: Datasets, spec: str, recursive: bool) -> list[Record]:
    """fs@a,b,c%e: the snapshots named (ranges inclusive), in every descendant with -r."""
    fs, _, snaps = spec.partition("@")
    head = dsl.lookup(fs)
    if head is None:
        raise Failed(f"could not find any snapshots to destroy; check snapshot names.")
    heads = [head] + (dsl.descendants(head.id) if recursive else [])
    out = []
    for h in heads:
        chain = dsl.snapshots(h.id)
        names = [s.component for s in chain]
        for part in snaps.split(","):
            if "%" in part:
                lo, _, hi = part.partition("%")
                i = names.index(lo) if lo in names else (0 if not lo else None)
                j = names.index(hi) if hi in names else (len(names) - 1 if not hi else None)
                if i is None or j is None:
                    continue
                out += chain[i:j + 1]
            elif part in names:
                out.append(chain[names.index(part)])
    return out


def _dependents(dsl: Datasets, rec: Record) -> list[Record]:
    """Everything -R would destroy with `rec`: clones of its snapshots and their dependents."""
    out = []
    snaps = [rec] if rec.kind == "snapshot" else dsl.snapshots(rec.id)
    for s in snaps:
        for cid in s.clones:
            clone = dsl.record(cid)
            out.append(clone)
            out += _subtree(dsl, clone, dependents=True)
    return out


def _subtree(dsl: Datasets, rec: Record, *, dependents: bool) -> list[Record]:
    """Descendant filesystems and all snapshots below `rec` (and -R dependents)."""
    out = list(dsl.snapshots(rec.id))
    for child in dsl.children(rec.id):
        out.append(child)
        out += _subtree(dsl, child, dependents=dependents)
    if dependents:
        for s in dsl.snapshots(rec.id):
            for cid in s.clones:
                clone = dsl.record(cid)
                out.append(clone)
                out += _subtree(dsl, clone, dependents=True)
    return out


def _destroy_order(dsl: Datasets, recs: list[Record]) -> list[Record]:
    """Clones and children before what they depend on."""
    seen: dict[int, Record] = {}
    for r in recs:
        seen.setdefault(r.id, r)
    depth = {}

    def rank(r: Record) -> int:
        if r.id in depth:
            return depth[r.id]
        d = 0
        if r.kind == "snapshot":
            d = max([rank(dsl.record(c)) + 1 for c in r.clones if c in seen] + [0])
        else:
            d = max([rank(c) + 1 for c in dsl.children(r.id) if c.id in seen]
                    + [rank(s) + 1 for s in dsl.snapshots(r.id) if s.id in seen] + [0])
        depth[r.id] = d
        return d
    return sorted(seen.values(), key=lambda r: (rank(r), r.createtxg, r.id))


def cmd_destroy(args: list[str]) -> int:
    opts, rest = parse(args, "dfnpRrv")
    flags = {o for o, _ in opts}
    if not rest:
        raise Usage("missing dataset argument")
    if len(rest) > 1:
        raise Usage("too many arguments")
    name = rest[0]
    recursive, deps, dry = "-r" in flags or "-R" in flags, "-R" in flags, "-n" in flags
    with session(pool_of(name), name) as dsl:
        if "@" in name:
            why = dataset_name_error(name.replace(",", "").replace("%", ""), snapshot=True) \
                if not name.endswith("@") else "empty component or misplaced '@' or '#' delimiter in name"
            if why and "@" not in name.partition("@")[2]:
                raise Failed(f"cannot destroy '{name}': {why}")
            targets = _snapshot_targets(dsl, name, "-r" in flags)
            if not targets:
                if dsl.lookup(name.partition("@")[0]) is None:
                    raise Failed(f"cannot open '{name.partition('@')[0]}': dataset does not exist")
                if "," not in name and "%" not in name:
                    raise Failed(f"could not find any snapshots to destroy; check snapshot names.")
                return 0
            victims = list(targets)
            for snap in targets:
                if snap.clones and not deps and "-d" not in flags:
                    raise Failed(f"cannot destroy '{dsl.name(snap.id)}': snapshot has dependent "
                                 f"clones\nuse '-R' to destroy the following datasets:\n"
                                 + "\n".join(dsl.name(c) for c in snap.clones))
                if deps:
                    victims += _dependents(dsl, snap)
        else:
            rec = need(dsl, name)
            if rec.id == ROOT_ID:
                raise Failed(f"cannot destroy '{name}': operation does not apply to pools\n"
                             f"use 'zfs destroy -r {name}' to destroy all datasets in the pool\n"
                             f"use 'zpool destroy {name}' to destroy the pool itself")
            below = _subtree(dsl, rec, dependents=False)
            if below and not recursive:
                raise Failed(f"cannot destroy '{name}': filesystem has children\n"
                             f"use '-r' to destroy the following datasets:\n"
                             + "\n".join(dsl.name(r.id) for r in below))
            victims = [rec] + below
            ids = {v.id for v in victims}
            outside = [dsl.record(c) for v in victims if v.kind == "snapshot"
                       for c in v.clones if c not in ids]
            if outside and not deps:
                raise Failed(f"cannot destroy '{name}': filesystem has dependent clones\n"
                             f"use '-R' to destroy the following datasets:\n"
                             + "\n".join(dsl.name(r.id) for r in outside))
            if deps:
                for v in list(victims):
                    victims += _dependents(dsl, v) if v.kind == "filesystem" else []
        order = _destroy_order(dsl, victims)
        reclaim = sum(dsl.used(r) if r.kind == "snapshot" else r.used_head for r in order)
        if "-v" in flags or "-p" in flags:
            for r in order:
                if "-p" in flags:
                    print(f"destroy\t{dsl.name(r.id)}")
                else:
                    print(f"{'would destroy' if dry else 'will destroy'} {dsl.name(r.id)}")
            if "-p" in flags:
                print(f"reclaim\t{reclaim}")
            else:
                print(f"{'would reclaim' if dry else 'will reclaim'} {dsprops.nicebytes(reclaim)}")
        if dry:
            return 0
        for r in order:
            try:
                if r.kind == "snapshot":
                    dsl.destroy_snapshot(r, defer="-d" in flags)
                else:
                    dsl.destroy_filesystem(r)
            except DatasetError as e:
                target = dsl.name(r.id)
                if e.code == errno.EBUSY:
                    raise Failed(f"cannot destroy snapshot {target}: {e.message}") from None
                raise dserr("destroy", target, e) from None
    return 0


# ---- rollback, promote, rename ------------------------------------------------------------------
def cmd_rollback(args: list[str]) -> int:
    opts, rest = parse(args, "rRf")
    flags = {o for o, _ in opts}
    if not rest:
        raise Usage("missing dataset argument")
    if len(rest) > 1:
        raise Usage("too many arguments")
    name = rest[0]
    why = dataset_name_error(name, snapshot=True)
    if why:
        raise Failed(f"cannot open '{name}': {why}")
    with session(pool_of(name), name) as dsl:
        snap = need(dsl, name)
        head = dsl.record(snap.parent)
        chain = dsl.snapshots(head.id)
        later = chain[chain.index(snap) + 1:]
        if later and not flags & {"-r", "-R"}:
            raise Failed(f"cannot rollback to '{name}': more recent snapshots or bookmarks exist\n"
                         f"use '-r' to force deletion of the following snapshots and bookmarks:\n"
                         + "\n".join(dsl.name(s.id) for s in later))
        clones = [dsl.record(c) for s in later for c in s.clones]
        if clones and "-R" not in flags:
            raise Failed(f"cannot rollback to '{name}': clones of previous snapshots exist\n"
                         f"use '-R' to force deletion of the following clones and dependents:\n"
                         + "\n".join(dsl.name(c.id) for c in clones))
        victims = later + [d for s in later for d in _dependents(dsl, s)]
        for r in _destroy_order(dsl, victims):
            if r.kind == "snapshot":
                dsl.destroy_snapshot(r)
            else:
                dsl.destroy_filesystem(r)
        dsl.rollback(head)
    return 0


def cmd_promote(args: list[str]) -> int:
    opts, rest = parse(args, "")
    if not rest:
        raise Usage("missing clone filesystem argument")
    if len(rest) > 1:
        raise Usage("too many arguments")
    name = rest[0]
    with session(pool_of(name), name) as dsl:
        rec = need(dsl, name)
        try:
            dsl.promote(rec)
        except DatasetError as e:
            raise dserr("promote", name, e) from None
    return 0


def cmd_rename(args: list[str]) -> int:
    opts, rest = parse(args, "fpru")
    flags = {o for o, _ in opts}
    if len(rest) < 1:
        raise Usage("missing source dataset argument")
    if len(rest) < 2:
        raise Usage("missing target dataset argument")
    if len(rest) > 2:
        raise Usage("too many arguments")
    old, new = rest
    if "-r" in flags and "@" not in old:
        raise Failed("recursive rename must be a snapshot")
    if pool_of(old) != pool_of(new):
        raise Failed(f"cannot rename to '{new}': datasets must be within same pool")
    if "@" in old and "@" not in new and new.count("/") == 0 and new:
        new = old.partition("@")[0] + "@" + new           # zfs rename fs@a b
    why = dataset_name_error(new, snapshot="@" in old)
    if why:
        raise Failed(f"cannot rename to '{new}': {why}")
    with session(pool_of(old), old) as dsl:
        rec = need(dsl, old)
        try:
            if "-r" in flags:
                snap_old, snap_new = old.partition("@")[2], new.partition("@")[2]
                head = dsl.record(rec.parent)
                for h in [head] + dsl.descendants(head.id):
                    s = dsl.lookup(f"{dsl.name(h.id)}@{snap_old}")
                    if s is not None:
                        dsl.rename(s, f"{dsl.name(h.id)}@{snap_new}")
            else:
                if "-p" in flags and "@" not in new:
                    parent = new.rpartition("/")[0]
                    if dsl.lookup(parent) is None:
                        dsl.create(parent, parents=True)
                dsl.rename(rec, new)
        except DatasetError as e:
            raise Failed(f"cannot rename to '{new}': {e.message}") from None
    return 0


# ---- holds ---------------------------------------------------------------------------------------
def _hold_targets(dsl: Datasets, names: list[str], recursive: bool, verb: str) -> list[Record]:
    out = []
    for name in names:
        if "@" not in name:
            raise Failed(f"'{name}' is not a snapshot")
        rec = dsl.lookup(name)
        if rec is None:
            raise Failed(f"cannot {verb} '{name}': dataset does not exist")
        out.append(rec)
        if recursive:
            head = dsl.record(rec.parent)
            for d in dsl.descendants(head.id):
                s = dsl.lookup(f"{dsl.name(d.id)}@{rec.component}")
                if s is not None:
                    out.append(s)
    return out


def cmd_hold(args: list[str], release: bool = False) -> int:
    opts, rest = parse(args, "r")
    verb = "release" if release else "hold"
    if len(rest) < 2:
        raise Usage("too few arguments")
    tag, names = rest[0], rest[1:]
    with session(pool_of(names[0]), names[0]) as dsl:
        for rec in _hold_targets(dsl, names, ("-r", "") in opts, "open"):
            try:
                (dsl.release if release else dsl.hold)(rec, tag)
            except DatasetError as e:
                what = "cannot release hold from snapshot" if release else "cannot hold snapshot"
                raise Failed(f"{what} '{dsl.name(rec.id)}': {e.message}") from None
    return 0


def cmd_holds(args: list[str]) -> int:
    opts, rest = parse(args, "rHp")
    if not rest:
        raise Usage("missing snapshot argument")
    rows = []
    with session(pool_of(rest[0]), rest[0]) as dsl:
        for rec in _hold_targets(dsl, rest, ("-r", "") in opts, "open"):
            for tag, when in sorted(rec.holds.items()):
                rows.append([dsl.name(rec.id), tag, dsprops.format_time(when, ("-p", "") in opts)])
    if rows or ("-H", "") in opts:
        print_table(["NAME", "TAG", "TIMESTAMP"], rows, scripted=("-H", "") in opts)
    return 0


# ---- list and get ----------------------------------------------------------------------------
def _types(text: str) -> set[str]:
    out = set()
    for t in text.split(","):
        if t in ("filesystem", "snapshot", "volume", "bookmark"):
            out.add(t)
        elif t == "snap":
            out.add("snapshot")
        elif t == "fs":
            out.add("filesystem")
        elif t == "vol":
            out.add("volume")
        elif t == "all":
            out |= {"filesystem", "snapshot", "volume", "bookmark"}
        else:
            raise Usage(f"invalid type '{t}'")
    return out


def _collect(dsl: Datasets, rec: Record, depth: int, types: set[str]) -> list[Record]:
    """rec and what is below it down to `depth` (-1: unlimited), filtered by type."""
    out = [rec] if rec.kind in types else []
    if rec.kind == "snapshot" or depth == 0:
        return out
    if "snapshot" in types:
        out += dsl.snapshots(rec.id)
    for child in dsl.children(rec.id):
        out += _collect(dsl, child, depth - 1, types)
    return out


def _sort_key(dsl: Datasets, rec: Record) -> tuple:
    """zfs's default order: by filesystem name, a filesystem before its snapshots, snapshots
    by creation."""
    name = dsl.name(rec.id)
    fs = name.partition("@")[0]
    return (fs, rec.kind == "snapshot", rec.createtxg, rec.id)


def _gather(args_names: list[str], recursive: bool, depth: int, types: set[str],
            verb: str) -> Iterator[tuple[Datasets, list[Record]]]:
    if not args_names:
        for pool_name in imported_names():
            with session(pool_name, pool_name) as dsl:
                yield dsl, _collect(dsl, dsl.record(ROOT_ID), -1 if depth < 0 else depth, types)
        return
    for name in args_names:
        with session(pool_of(name), name) as dsl:
            rec = dsl.lookup(name)
            if rec is None:
                raise Failed(f"cannot open '{name}': dataset does not exist")
            if recursive or depth >= 0:
                found = _collect(dsl, rec, depth, types | ({rec.kind} if rec.kind == "snapshot" else set()))
            else:
                found = [rec]
            yield dsl, found


def cmd_list(args: list[str]) -> int:
    opts, names = parse(args, "Hpro:d:s:S:t:")
    flags = {o for o, _ in opts}
    columns = ["name", "used", "available", "referenced", "mountpoint"]
    sort: list[tuple[str, bool]] = []
    types = None
    depth = -1
    try:
        for opt, val in opts:
            if opt == "-o":
                got = dsprops.parse_proplist(val)
                columns = got if got is not None else ["name"] + dsprops.all_properties("filesystem")
            elif opt in ("-s", "-S"):
                sort.append((dsprops.check_sort_property(val), opt == "-S"))
            elif opt == "-t":
                types = _types(val)
            elif opt == "-d":
                if not val.isdigit():
                    raise Usage(f"invalid depth '{val}'")
                depth = int(val)
    except dsprops.PropError as e:
        raise Usage(e.message) from None
    recursive = "-r" in flags or depth >= 0
    if depth < 0 and "-r" in flags:
        depth = -1
    if types is None:
        types = {"filesystem", "volume"}
        if names and any("@" in n for n in names):
            types.add("snapshot")
    parsable = "-p" in flags
    rows: list[tuple[tuple, list[str]]] = []
    status = 0
    try:
        for dsl, recs in _gather(names, recursive, depth if recursive or not names else -1,
                                 types, "list"):
            if not names:
                recs = [r for r in recs if r.kind in types]
            for rec in recs:
                row = [_value(dsl, rec, col, parsable)[0] for col in columns]
                key = _sort_key(dsl, rec)
                sortvals = []
                for prop, desc in sort:
                    v, numeric = _sort_value(dsl, rec, prop)
                    sortvals.append((v, numeric, desc))
                rows.append(((sortvals, key), row))
    except Failed as e:
        error(e.message)
        status = 1
    rows = _sorted(rows)
    if not rows and status == 0 and not names:
        error("no datasets available")
        return 0
    right = {i for i, c in enumerate(columns) if dsprops.canonical(c) and dsprops.align_right(c)}
    if rows:
        print_table([dsprops.column_header(c) for c in columns], [r for _k, r in rows],
                    scripted="-H" in flags, right=right)
    return status


def _sorted(rows):
    import functools

    def cmp(a, b):
        (sa, ka), (sb, kb) = a[0], b[0]
        for (va, num, desc), (vb, _n, _d) in zip(sa, sb):
            if va is None and vb is None:
                continue
            if va is None or vb is None:
                return 1 if va is None else -1      # unset values last
            if va != vb:
                r = -1 if va < vb else 1
                return -r if desc else r
        return -1 if ka < kb else (1 if ka > kb else 0)
    return sorted(rows, key=functools.cmp_to_key(cmp))


def _sort_value(dsl: Datasets, rec: Record, prop: str):
    if prop == "name":
        return dsl.name(rec.id), False
    got = _raw(dsl, rec, prop)
    if got is None:
        return None, False
    if dsprops.sorts_numerically(prop):
        try:
            return int(got), True
        except (TypeError, ValueError):
            return None, True
    return str(got), False


def _raw(dsl: Datasets, rec: Record, prop: str):
    comp = props_.computed(dsl, rec, [prop] if dsprops.is_written(prop) else None)
    if prop in comp:
        return comp[prop]
    if dsprops.is_user(prop) or dsprops.canonical(prop):
        if not dsprops.is_user(prop) and not dsprops.applies(prop, rec.kind):
            return None
        return dsprops.resolve(prop, props_.chain(dsl, rec)).value
    return None


def _value(dsl: Datasets, rec: Record, prop: str, parsable: bool) -> tuple[str, str]:
    if prop == "name":
        return dsl.name(rec.id), "-"
    comp = props_.computed(dsl, rec, [prop] if dsprops.is_written(prop) else None)
    got = dsprops.get_property(prop, rec.kind, props_.chain(dsl, rec), comp, parsable=parsable)
    return got if got is not None else ("-", "-")


def cmd_get(args: list[str]) -> int:
    opts, rest = parse(args, "rHpd:o:s:t:")
    flags = {o for o, _ in opts}
    fields = ["name", "property", "value", "source"]
    sources = None
    types = {"filesystem", "volume", "snapshot"}
    depth = -1
    for opt, val in opts:
        if opt == "-o":
            fields = ["name", "property", "value", "received", "source"] if val == "all" else val.split(",")
            for f in fields:
                if f not in ("name", "property", "value", "received", "source"):
                    raise Usage(f"invalid field '{f}'")
        elif opt == "-s":
            sources = set(val.split(","))
            for s in sources:
                if s not in ("local", "default", "inherited", "temporary", "received", "none"):
                    raise Usage(f"invalid source '{s}'")
        elif opt == "-t":
            types = _types(val)
        elif opt == "-d":
            if not val.isdigit():
                raise Usage(f"invalid depth '{val}'")
            depth = int(val)
    if not rest:
        raise Usage("missing property argument")
    try:
        wanted = dsprops.parse_proplist(rest[0])
    except dsprops.PropError as e:
        raise Usage(e.message) from None
    recursive = "-r" in flags or depth >= 0
    rows = []
    status = 0
    try:
        for dsl, recs in _gather(rest[1:], recursive, depth, types, "get"):
            for rec in recs:
                if rec.kind not in types:
                    continue
                names = wanted if wanted is not None else \
                    dsprops.all_properties(rec.kind) + sorted(
                        set(rec.props) | {k for lv in props_.chain(dsl, rec) for k in lv.local
                                          if dsprops.is_user(k)})
                comp = props_.computed(dsl, rec, [n for n in names if dsprops.is_written(n)])
                chain = props_.chain(dsl, rec)
                for prop in names:
                    if prop == "name" and wanted is None:
                        continue
                    got = dsprops.get_property(prop, rec.kind, chain, comp,
                                               parsable="-p" in flags)
                    if got is None:
                        if wanted is None:
                            continue
                        got = ("-", "-")
                    value, source = got
                    if sources is not None and not _source_matches(source, sources):
                        continue
                    row = {"name": dsl.name(rec.id), "property": prop, "value": value,
                           "received": "-", "source": source}
                    rows.append([row[f] for f in fields])
    except Failed as e:
        error(e.message)
        status = 1
    if rows:
        print_table([f.upper() for f in fields], rows, scripted="-H" in flags)
    return status


def _source_matches(source: str, wanted: set[str]) -> bool:
    if source.startswith("inherited"):
        return "inherited" in wanted
    if source == "-":
        return "none" in wanted
    return source in wanted


# ---- set and inherit -------------------------------------------------------------------------
def cmd_set(args: list[str]) -> int:
    opts, rest = parse(args, "u")
    pairs = [a for a in rest if "=" in a]
    targets = [a for a in rest if "=" not in a]
    if not rest:
        raise Usage("missing arguments")
    if not pairs:
        raise Usage(f"missing '=' for property=value argument")
    if not targets:
        raise Usage("missing dataset name(s)")
    props: dict[str, str] = {}
    for pair in pairs:
        k, v = pair.split("=", 1)
        if k in props:
            raise Failed(f"property '{k}' specified multiple times")
        props[k] = v
    status = 0
    for name in targets:
        try:
            with session(pool_of(name), name) as dsl:
                rec = need(dsl, name)
                try:
                    props_.set_props(dsl, rec, props)
                except DatasetError as e:
                    raise Failed(f"cannot set property for '{name}': {e.message}") from None
        except Failed as e:
            error(e.message)
            status = 1
    return status


def cmd_inherit(args: list[str]) -> int:
    opts, rest = parse(args, "rS")
    flags = {o for o, _ in opts}
    if not rest:
        raise Usage("missing property argument")
    if len(rest) < 2:
        raise Usage("missing dataset argument")
    try:
        prop = dsprops.check_inherit(rest[0], received="-S" in flags)
    except dsprops.PropError as e:
        if e.usage:
            raise Usage(e.message) from None
        raise Failed(e.message) from None
    status = 0
    for name in rest[1:]:
        try:
            with session(pool_of(name), name) as dsl:
                rec = need(dsl, name)
                targets = [rec] + (dsl.descendants(rec.id) if "-r" in flags and rec.kind != "snapshot" else [])
                for r in targets:
                    try:
                        dsprops.check_inherit_type(prop, r.kind)
                    except dsprops.PropError as e:
                        raise Failed(f"cannot inherit {prop} for '{dsl.name(r.id)}': {e.message}") from None
                    props_.inherit(dsl, r, prop, received="-S" in flags)
        except Failed as e:
            error(e.message)
            status = 1
    return status


VERBS = {"create": cmd_create, "destroy": cmd_destroy, "snapshot": cmd_snapshot,
         "snap": cmd_snapshot, "rollback": cmd_rollback, "clone": cmd_clone,
         "promote": cmd_promote, "rename": cmd_rename, "list": cmd_list, "get": cmd_get,
         "set": cmd_set, "inherit": cmd_inherit, "hold": cmd_hold,
         "release": lambda a: cmd_hold(a, release=True), "holds": cmd_holds}


def run(verb: str, argv: list[str]) -> int:
    try:
        return VERBS[verb](argv)
    except Usage as e:
        if e.message:
            error(e.message)
        error(usage_text("snapshot" if verb == "snap" else verb))
        return 2
    except Failed as e:
        if e.message:
            error(e.message)
        return e.code
