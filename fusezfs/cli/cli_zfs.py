"""The zfs verbs at the top level of `fusezfs`: create, destroy, snapshot, rollback, clone,
promote, rename, list, get, set, inherit, hold, holds, release.

Each verb opens the pool a dataset name starts with (through the registry), checks everything
before changing anything, applies the change, and closes the pool, which commits the txg.
Messages are OpenZFS's: "cannot VERB 'NAME': REASON", exit 1; usage errors exit 2.
"""
from __future__ import annotations

import errno
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from fusezfs.dsl import dsprops
from fusezfs import sessions
from fusezfs.dsl import properties as props_
from fusezfs.errors import Failed, Usage
from fusezfs.cli.common import error, parse, print_table
from fusezfs.api import Handle
from fusezfs.cli.cli_pool import imported_names, open_pool
from fusezfs.dsl.datasets import HEADS, DatasetError, Datasets, Record, ROOT_ID
from fusezfs.dsl.names import MAX_NAME_LEN, MAX_NESTING, dataset_name_error, nesting_error
from fusezfs.zpl.volumes import geometry, is_volume, rollback_refreservation, set_properties

USAGE = {
    "create": "\tcreate [-Pnpv] [-o property=value] ... <filesystem>\n"
              "\tcreate [-Pnpsv] [-b blocksize] [-o property=value] ... -V <size> <volume>",
    "destroy": "\tdestroy [-fnpRrv] <filesystem|volume>\n"
               "\tdestroy [-dnpRrv] <filesystem|volume>@<snap>[%<snap>][,...]\n"
               "\tdestroy <filesystem|volume>#<bookmark>",
    "snapshot": "\tsnapshot [-r] [-o property=value] ... <filesystem|volume>@<snap> ...",
    "rollback": "\trollback [-rRf] <snapshot>",
    "clone": "\tclone [-p] [-o property=value] ... <snapshot> <filesystem|volume>",
    "promote": "\tpromote <clone-filesystem>",
    "rename": "\trename [-f] <filesystem|volume|snapshot> <filesystem|volume|snapshot>\n"
              "\trename -p [-f] <filesystem|volume> <filesystem|volume>\n"
              "\trename -r <snapshot> <snapshot>",
    "bookmark": "\tbookmark <snapshot|bookmark> <newbookmark>",
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
    "diff": "\tdiff [-FHt] <snapshot> [snapshot|filesystem]",
    "upgrade": "\tupgrade [-v]\n\tupgrade [-r] [-V version] <-a | filesystem ...>",
}
PROP_VERBS = {"list", "get", "set", "inherit"}


def usage_text(verb: str) -> str:
    text = "usage:\n" + USAGE[verb] + "\n"
    if verb in PROP_VERBS:
        text += dsprops.usage_properties()
    else:                                   # zfs_main.c's usage() says this to the others
        text += ("\nFor the property list, run: zfs set|get\n"
                 "\nFor the delegated permission list, run: zfs allow|unallow\n")
    return text.rstrip("\n")


# ---- opening ------------------------------------------------------------------------------
@contextmanager
def session(pool_name: str, what: str) -> Iterator[Datasets]:
    """The dataset directory of a pool; `what` is the name reported if the pool is unknown."""
    if pool_name not in imported_names():
        raise Failed(f"cannot open '{what}': dataset does not exist")
    provided = sessions.handle(pool_name)
    if provided is not None:            # inside the daemon serving the pool (sessions.py)
        with provided.pool.lock:
            try:
                yield provided.dsl
            finally:
                provided.pool.sync()
        return
    pool = open_pool(pool_name)
    try:
        with pool.lock:
            yield Handle(pool).dsl
    finally:
        pool.close()


def pool_of(name: str) -> str:
    return name.split("/")[0].split("@")[0].split("#")[0]


def need(dsl: Datasets, name: str, verb: str = "open") -> Record:
    rec = dsl.lookup(name)
    if rec is None:
        raise Failed(f"cannot {verb} '{name}': dataset does not exist")
    return rec


def check_name(name: str, verb: str = "open", snapshot: bool | None = False) -> None:
    """Fail with "cannot VERB 'NAME': REASON" unless `name` is a valid dataset name
    (`snapshot` as for dataset_name_error)."""
    why = dataset_name_error(name, snapshot=snapshot)
    if why:
        raise Failed(f"cannot {verb} '{name}': {why}")


def one_argument(rest: list[str], what: str = "dataset") -> str:
    """The single operand of a verb: "missing WHAT argument" or "too many arguments"."""
    if not rest:
        raise Usage(f"missing {what} argument")
    if len(rest) > 1:
        raise Usage("too many arguments")
    return rest[0]


def source_and_target(rest: list[str]) -> tuple[str, str]:
    """The two operands of clone and rename."""
    if len(rest) < 1:
        raise Usage("missing source dataset argument")
    if len(rest) < 2:
        raise Usage("missing target dataset argument")
    if len(rest) > 2:
        raise Usage("too many arguments")
    return rest[0], rest[1]


def parse_props(opts: list[tuple[str, str]], flag: str = "-o") -> dict[str, str]:
    """-o property=value options; a malformed one fails without the usage text, as zfs's
    parseprop does (exit 1)."""
    out: dict[str, str] = {}
    for opt, val in opts:
        if opt != flag:
            continue
        if "=" not in val:
            raise Failed("missing '=' for property=value argument")
        k, v = val.split("=", 1)
        if k in out:
            raise Failed(f"property '{k}' specified multiple times")
        out[k] = v
    return out


def dserr(verb: str, name: str, e: DatasetError) -> Failed:
    text = f"cannot {verb} '{name}': {e.message}"
    return Failed(text)


def check_pool(name: str, pool: str | None = None) -> str:
    """The pool of a new dataset `name` (or `pool`), which must be imported."""
    pool = pool_of(name) if pool is None else pool
    if pool not in imported_names():
        raise Failed(f"cannot create '{name}': no such pool '{pool}'")
    return pool


def check_new(dsl: Datasets, name: str) -> None:
    """A new dataset `name` must not exist yet."""
    if dsl.lookup(name) is not None:
        raise Failed(f"cannot create '{name}': dataset already exists")


def creation_props(name: str, props: dict[str, str], kind: str = dsprops.FILESYSTEM) -> dict:
    """The -o properties of a new dataset `name` of type `kind`, validated."""
    try:
        return dsprops.validate_props(props, kind, creating=True)
    except dsprops.PropError as e:
        raise Failed(f"cannot create '{name}': {e.message}") from None


def check_parents(dsl: Datasets, name: str) -> None:
    """libzfs's check_parents for a new dataset `name`: its pool and its parent must exist
    (messages say "cannot create", whatever the verb). A parent in another pool than `dsl`'s
    is not looked at."""
    parent = name.rpartition("/")[0]
    if not parent:
        raise Failed(f"cannot create '{name}': missing dataset name")
    if check_pool(name, pool_of(parent)) != dsl.pool.name:
        return
    rec = dsl.lookup(parent)
    if rec is None:
        raise Failed(f"cannot create '{name}': parent does not exist")
    if rec.kind != "filesystem":
        raise Failed(f"cannot create '{name}': parent is not a filesystem")


def create_ancestors(dsl: Datasets, name: str) -> None:
    """-p: the missing filesystems above `name` (zfs_create_ancestors)."""
    if check_pool(name) != dsl.pool.name:
        return
    try:
        dsl.create_parents(name)
    except DatasetError as e:
        raise dserr("create", name, e) from None


def ready_to_create(dsl: Datasets, name: str, parents: bool) -> bool:
    """zfs_create's checks of a new dataset's place: with -p, an existing `name` is fine (False:
    nothing to do) and its missing ancestors are made; then its parent must be a filesystem
    and `name` must not exist."""
    if parents:
        if dsl.lookup(name) is not None:
            return False
        create_ancestors(dsl, name)
    check_parents(dsl, name)
    check_new(dsl, name)
    return True


def planned_create(name: str, shown: list[tuple[str, str]],
                   opts: list[tuple[str, str]]) -> bool:
    """zfs_do_create once the options and properties are checked: with -p and `name` there
    already, nothing to do; -v/-P describe what is made (`shown`: the properties as the
    command line gives them); -n makes nothing. True when the command is done."""
    flags = {o for o, _ in opts}
    dry, parseable = "-n" in flags, "-P" in flags
    verbose = parseable or "-v" in flags
    would = "would " if dry else ""
    if "-p" in flags and (dry or verbose) and not dataset_name_error(name):
        if pool_of(name) in imported_names():
            with session(pool_of(name), name) as dsl:
                if dsl.lookup(name) is not None:
                    return True
        if verbose:
            print(f"create_ancestors\t{name}" if parseable else
                  f"{would}create ancestors of {name}")
    if verbose:
        print(f"create\t{name}" if parseable else f"{would}create {name}")
        for key, value in shown:
            print(f"property\t{key}\t{value}" if parseable else f"\t{key}={value}")
    return dry


def verify_create(name: str, props: dict[str, str], kind: str) -> None:
    """-n: what zfs_do_create checks before a dry run ends: the pool, then the properties
    (as "cannot verify")."""
    pool = name.partition("/")[0]
    if pool not in imported_names():
        raise Failed(f"cannot open '{pool}': no such pool")
    try:
        dsprops.validate_props(props, kind, creating=True)
    except dsprops.PropError as e:
        raise Failed(f"cannot verify '{name}': {e.message}") from None


# ---- create, clone, snapshot ---------------------------------------------------------------
def cmd_create(args: list[str]) -> int:
    opts, rest = parse(args, "po:V:sb:nPv")
    if any(o == "-V" for o, _ in opts):
        from fusezfs.cli.cli_volumes import create_volume
        return create_volume(opts, rest)
    if any(o in ("-s", "-b") for o, _ in opts):
        raise Usage("'-s' and '-b' can only be used when creating a volume")
    props = parse_props(opts)
    name = one_argument(rest, "filesystem")
    parents = ("-p", "") in opts
    if ("-n", "") in opts:
        verify_create(name, props, dsprops.FILESYSTEM)
    if planned_create(name, list(props.items()), opts):
        return 0
    # zfs_create's order: the name, the pool and the parent, existence, then the properties
    check_name(name, "create")
    pool = pool_of(name)
    if parents and "/" not in name and pool in imported_names():
        return 0                                # the pool's own filesystem exists
    if "/" not in name:
        raise Failed(f"cannot create '{name}': missing dataset name")
    if nesting_error(name):                     # zfs_create(_ancestors) checks it first
        raise Failed(f"cannot create '{name}': {nesting_error(name)}")
    check_pool(name)
    with session(pool, name) as dsl:
        if not ready_to_create(dsl, name, parents):
            return 0
        raw = creation_props(name, props)
        try:
            dsl.create(name, raw)
        except DatasetError as e:
            raise dserr("create", name, e) from None
    return 0


def cmd_clone(args: list[str]) -> int:
    opts, rest = parse(args, "po:")
    props = parse_props(opts)
    snap, name = source_and_target(rest)
    check_name(snap, snapshot=True)
    with session(pool_of(snap), snap) as dsl:
        origin = need(dsl, snap)
        if ("-p", "") in opts and not dataset_name_error(name):
            if pool_of(name) == dsl.pool.name and dsl.lookup(name) is not None:
                return 0
            create_ancestors(dsl, name)
        check_name(name, "create")
        check_parents(dsl, name)
        # a clone is of its origin's type: a volume's takes volume properties (zfs_clone)
        raw = creation_props(name, props, dsprops.VOLUME if is_volume(dsl, origin)
                             else dsprops.FILESYSTEM)
        if pool_of(name) != dsl.pool.name:
            raise Failed(f"cannot create '{name}': source and target pools differ")
        check_new(dsl, name)
        try:
            dsl.clone(snap, name, raw)
        except DatasetError as e:
            raise dserr("create", name, e) from None
    return 0


def cmd_snapshot(args: list[str]) -> int:
    opts, rest = parse(args, "ro:")
    props = parse_props(opts)
    if not rest:
        raise Usage("missing snapshot argument")
    recursive = ("-r", "") in opts
    several = recursive or len(rest) > 1
    # zfs_do_snapshot: a name without '@', or a filesystem that cannot be opened, is a
    # usage error (after zfs_open's message)
    for name in rest:
        fs = name.partition("@")[0]
        if "@" not in name:
            raise Usage()
        why = dataset_name_error(fs)
        if why:
            raise Usage(f"cannot open '{fs}': {why}")
    pools = {pool_of(n) for n in rest}
    if len(pools) > 1:
        raise Failed("cannot create snapshots in multiple pools")
    with session(pools.pop(), rest[0].partition("@")[0]) as dsl:
        names = []
        for name in rest:
            fs, _, snap = name.partition("@")
            head = dsl.lookup(fs)
            if head is None or head.kind not in HEADS:
                raise Usage(f"cannot open '{fs}': dataset does not exist")
            names.append(name)
            if recursive:
                names += [f"{dsl.name(d.id)}@{snap}" for d in dsl.descendants(head.id)]
        try:
            for name in names:
                check_name(name, "create snapshot", snapshot=True)
            for key in props:
                if not dsprops.is_user(key):
                    # zfs_snapshot_nvl's errbuf, trailing space included
                    raise Failed(f"cannot create snapshots : {dsprops.MSG_SNAPSHOT_PROPS}")
            names = list(dict.fromkeys(names))      # an nvlist: a name given twice is one
            heads = [n.partition("@")[0] for n in names]
            if len(set(heads)) < len(heads):        # zfs_ioc_snapshot's EXDEV
                raise Failed("cannot create snapshots : multiple snapshots of same fs not "
                             "allowed")
            try:
                dsl.snapshot(names, props)
            except DatasetError as e:
                bad = next((n for n in names if dsl.lookup(n) is not None), names[0])
                raise Failed(f"cannot create snapshot '{bad}': {e.message}") from None
        except Failed as e:
            if several:
                e.message += "\nno snapshots were created"
            raise
    return 0


# ---- dependents ------------------------------------------------------------------------------
def _clones(dsl: Datasets, snap: Record) -> list[Record]:
    return sorted((dsl.record(c) for c in snap.clones), key=lambda r: (r.createtxg, r.id))


def dependents(dsl: Datasets, rec: Record) -> list[Record]:
    """What depends on `rec`, as libzfs's zfs_iter_dependents walks it: child filesystems,
    then snapshots, then each snapshot's clones, depth first, every dataset after all that
    depends on it, so the list is an order to destroy them in (`rec` itself not included).
    Children come by name, snapshots and clones by creation (ZFS's order among siblings is
    its directories' hash order)."""
    out: list[Record] = []
    seen: set[int] = set()
    stack: set[int] = set()

    def visit(r: Record, top: bool) -> None:
        if r.kind == "snapshot":
            for clone in _clones(dsl, r):
                visit(clone, False)
        else:
            if r.id in stack:
                return
            stack.add(r.id)
            for child in dsl.children(r.id):
                visit(child, False)
            for snap in dsl.snapshots(r.id):
                visit(snap, False)
            stack.discard(r.id)
        if not top and r.id not in seen:
            seen.add(r.id)
            out.append(r)
    visit(rec, True)
    return out


def _below(name: str, top: str) -> bool:
    """`name` is a descendant or a snapshot of `top` (by name, as destroy_check_dependent)."""
    return name.startswith(top) and name[len(top):len(top) + 1] in ("/", "@")


def _destroy_one(dsl: Datasets, rec: Record, defer: bool = False) -> None:
    """Destroy one record of a list worked out beforehand. A snapshot already gone (the
    deferred destroy its last clone fired took it) is skipped, as the kernel ignores it."""
    if rec.kind == "snapshot" and dsl.destroyed(rec):
        return
    name = dsl.name(rec.id)
    if is_volume(dsl, rec):
        Handle(dsl.pool).forget(rec.id)     # its data object's buffers go with it
    try:
        if rec.kind == "snapshot":
            dsl.destroy_snapshot(rec, defer=defer)
        else:
            dsl.destroy_filesystem(rec)
    except DatasetError as e:
        if e.code == errno.EBUSY and rec.kind == "snapshot":
            raise Failed(f"cannot destroy snapshot {name}: {e.message}") from None
        raise dserr("destroy", name, e) from None


# ---- destroy ---------------------------------------------------------------------------------
def _snapspec(dsl: Datasets, head: Record, spec: str) -> list[Record]:
    """zfs_iter_snapspec: `a,b,c%e` names snapshots of `head`; ranges are inclusive, an
    empty end means the first or the last; names that do not exist are skipped."""
    chain = dsl.snapshots(head.id)
    names = [s.component for s in chain]
    out = []
    for part in spec.split(","):
        if "%" in part:
            first, _, last = part.partition("%")
            if last and last not in names:
                continue
            seen = not first
            for snap in chain:
                seen = seen or snap.component == first
                if seen:
                    out.append(snap)
                if snap.component == last:
                    break
        elif part in names:
            out.append(chain[names.index(part)])
    return out


def _say_destroy(flags: set[str], dry: bool, name: str) -> None:
    if "-p" in flags:
        print(f"destroy\t{name}")
    else:
        print(f"{'would' if dry else 'will'} destroy {name}")


def _destroy_snapshots(name: str, flags: set[str]) -> int:
    """zfs destroy FS@SPEC (zfs_do_destroy's snapshot branch)."""
    fs, _, spec = name.partition("@")
    verbose, dry = bool(flags & {"-v", "-p"}), "-n" in flags
    deps, defer = "-R" in flags, "-d" in flags
    check_name(fs)
    status = 0
    with session(pool_of(fs), fs) as dsl:
        head = need(dsl, fs)
        heads = [head] + (dsl.descendants(head.id) if flags & {"-r", "-R"} else [])
        found: dict[int, Record] = {}
        for h in heads:
            for snap in _snapspec(dsl, h, spec):
                if not deps and not defer:
                    blockers = dependents(dsl, snap)
                    if blockers:
                        error(f"cannot destroy '{dsl.name(snap.id)}': snapshot has dependent "
                              f"clones\nuse '-R' to destroy the following datasets:\n"
                              + "\n".join(dsl.name(b.id) for b in blockers))
                        status = 1
                found.setdefault(snap.id, snap)
            if verbose:
                for snap in dsl.snapshots(h.id):
                    if snap.id in found:
                        _say_destroy(flags, dry, dsl.name(snap.id))
        if status:
            return status
        if not found:
            raise Failed("could not find any snapshots to destroy; check snapshot names.")
        if verbose:
            reclaim = sum(dsl.used(s) for s in found.values())
            if "-p" in flags:
                print(f"reclaim\t{reclaim}")
            else:
                print(f"{'would' if dry else 'will'} reclaim {dsprops.nicebytes(reclaim)}")
        if dry:
            return 0
        if deps:
            for snap in found.values():
                for rec in dependents(dsl, snap):
                    if verbose:
                        _say_destroy(flags, dry, dsl.name(rec.id))
                    _destroy_one(dsl, rec)
        # lzc_destroy_snaps: all or nothing
        busy = [s for s in found.values() if s.holds and not defer]
        if busy:
            raise Failed("\n".join(f"cannot destroy snapshot {dsl.name(s.id)}: dataset is busy"
                                   for s in busy))
        for snap in sorted(found.values(), key=lambda r: (-r.createtxg, -r.id)):
            _destroy_one(dsl, snap, defer=defer)
    return 0


def cmd_destroy(args: list[str]) -> int:
    opts, rest = parse(args, "vpndfrR")
    flags = {o for o, _ in opts}
    name = one_argument(rest)
    if "@" in name:
        return _destroy_snapshots(name, flags)
    if "#" in name:
        from fusezfs.cli.cli_bookmark import destroy_bookmark
        return destroy_bookmark(name, flags)
    recursive, deps, dry = bool(flags & {"-r", "-R"}), "-R" in flags, "-n" in flags
    check_name(name, snapshot=True if "-d" in flags else False)
    with session(pool_of(name), name) as dsl:
        rec = need(dsl, name)
        if rec.id == ROOT_ID and not recursive:
            raise Failed(f"cannot destroy '{name}': operation does not apply to pools\n"
                         f"use 'zfs destroy -r {name}' to destroy all datasets in the pool\n"
                         f"use 'zpool destroy {name}' to destroy the pool itself")
        below = dependents(dsl, rec)
        if not deps:
            # destroy_check_dependent: without -r, what is below by name; with -r, the clones
            # (and their dependents) elsewhere
            names = [dsl.name(r.id) for r in below]
            children = [n for n in names if _below(n, name)]
            clones = [n for n in names if not _below(n, name)]
            if children and not recursive:
                raise Failed(f"cannot destroy '{name}': {rec.kind} has children\n"
                             f"use '-r' to destroy the following datasets:\n" + "\n".join(children))
            if clones and recursive:
                raise Failed(f"cannot destroy '{name}': {rec.kind} has dependent clones\n"
                             f"use '-R' to destroy the following datasets:\n" + "\n".join(clones))
        if not dry and "-f" not in flags:
            for r in below + [rec]:
                where = sessions.busy_path(r.id, dsl.pool.name) if r.kind != "snapshot" else None
                if where:
                    raise Failed(f"cannot unmount '{where}': pool or dataset is busy")
        for r in below + [rec]:
            if flags & {"-v", "-p"}:
                _say_destroy(flags, dry, dsl.name(r.id))
            if not dry and r.id != ROOT_ID:     # -r on a pool spares the pool's own dataset
                _destroy_one(dsl, r)
    return 0


# ---- rollback, promote, rename ------------------------------------------------------------------
ROLLBACK_SHOWN = 32         # rollback_check's max_younger


def cmd_rollback(args: list[str]) -> int:
    opts, rest = parse(args, "rRf")
    flags = {o for o, _ in opts}
    name = one_argument(rest)
    check_name(name, snapshot=True)
    with session(pool_of(name), name) as dsl:
        snap = need(dsl, name)
        head = dsl.record(snap.parent)
        chain = dsl.snapshots(head.id)
        later = chain[chain.index(snap) + 1:]
        marks = [b for b in dsl.bookmarks(head.id) if b.createtxg > snap.createtxg]
        if (later or marks) and not flags & {"-r", "-R"}:
            shown = [dsl.name(s.id) for s in (later + marks)[:ROLLBACK_SHOWN]]
            if len(later) + len(marks) >= ROLLBACK_SHOWN:
                shown.append(f"Output limited to {ROLLBACK_SHOWN} snapshots/bookmarks")
            raise Failed(f"cannot rollback to '{name}': more recent snapshots or bookmarks exist\n"
                         f"use '-r' to force deletion of the following snapshots and bookmarks:\n"
                         + "\n".join(shown))
        if "-R" not in flags:
            clones = [d for s in later for d in dependents(dsl, s)]
            if clones:
                raise Failed(f"cannot rollback to '{name}': clones of previous snapshots exist\n"
                             f"use '-R' to force deletion of the following clones and dependents:\n"
                             + "\n".join(dsl.name(c.id) for c in clones))
        for s in reversed(later):
            for r in dependents(dsl, s) + [s]:
                _destroy_one(dsl, r)
        for b in marks:                         # zfs_rollback's rollback_destroy
            dsl.destroy_bookmark(b)
        before = geometry(dsl, head).get("volsize") if head.kind == "volume" else None
        dsl.rollback(head)
        if before is not None:
            rollback_refreservation(Handle(dsl.pool), head, before,
                                    props_.as_int(head.props.get("refreservation")))
    return 0


def cmd_promote(args: list[str]) -> int:
    opts, rest = parse(args, "")
    name = one_argument(rest, "clone filesystem")
    check_name(name)
    with session(pool_of(name), name) as dsl:
        rec = need(dsl, name)
        try:
            dsl.promote(rec)
        except DatasetError as e:
            raise dserr("promote", name, e) from None
    return 0


def cmd_rename(args: list[str]) -> int:
    opts, rest = parse(args, "pruf")
    flags = {o for o, _ in opts}
    old, new = source_and_target(rest)
    if "-r" in flags and "-p" in flags:
        raise Usage("-p and -r options are mutually exclusive")
    if "-u" in flags and "-p" in flags:
        raise Usage("-u and -p options are mutually exclusive")
    if "-r" in flags and "@" not in old:
        raise Usage("source dataset for recursive rename must be a snapshot")
    check_name(old, snapshot=False if flags & {"-p", "-u"} else None)
    with session(pool_of(old), old) as dsl:
        rec = need(dsl, old)
        if "-p" in flags and not dataset_name_error(new):
            create_ancestors(dsl, new)
        if new == old:
            return 0
        # zfs_rename: the target's checks say "cannot rename to", the rename's own failures
        # "cannot rename"
        if rec.kind == "snapshot":
            fs = old.partition("@")[0]
            if "@" not in new:
                new = f"{fs}@{new}"                     # zfs rename fs@a b
            elif new.startswith("@"):
                new = fs + new
            elif new.partition("@")[0] != fs:
                raise Failed(f"cannot rename to '{new}': snapshots must be part of same dataset")
            check_name(new, "rename to", snapshot=True)
        else:
            check_name(new, "rename to")
            check_parents(dsl, new)
            if pool_of(new) != dsl.pool.name:
                raise Failed(f"cannot rename to '{new}': datasets must be within same pool")
            if new.startswith(old + "/"):
                raise Failed(f"cannot rename to '{new}': New dataset name cannot be a "
                             f"descendant of current dataset name")
        try:
            if "-r" in flags:
                snap_old, snap_new = old.partition("@")[2], new.partition("@")[2]
                head = dsl.record(rec.parent)
                pairs = []
                for h in [head] + dsl.descendants(head.id):
                    s = dsl.lookup(f"{dsl.name(h.id)}@{snap_old}")
                    if s is None:
                        continue
                    if dsl.lookup(f"{dsl.name(h.id)}@{snap_new}") is not None:
                        raise Failed(f"cannot rename '{dsl.name(s.id)}': a child dataset already "
                                     f"has a snapshot with the new name")
                    pairs.append((s, f"{dsl.name(h.id)}@{snap_new}"))
                for s, target in pairs:
                    dsl.rename(s, target)
            else:
                if dsl.lookup(new) is not None:
                    raise Failed(f"cannot rename '{old}': dataset already exists")
                if rec.kind != "snapshot" and not _names_fit_after_rename(dsl, rec, old, new):
                    raise Failed(f"cannot rename '{old}': dataset name is too long")
                dsl.rename(rec, new)
        except DatasetError as e:
            raise dserr("rename", old, e) from None
    return 0


def _names_fit_after_rename(dsl: Datasets, rec: Record, old: str, new: str) -> bool:
    """dsl_valid_rename over the dataset, its descendants and their snapshots: every name
    stays under 256 characters and, when it moves deeper, under the nesting limit."""
    grow, deeper = len(new) - len(old), new.count("/") - old.count("/")
    if grow <= 0 and deeper <= 0:
        return True
    for head in [rec] + dsl.descendants(rec.id):
        for r in [head] + dsl.snapshots(head.id):
            name = dsl.name(r.id)
            depth = name.partition("@")[0].count("/") + deeper
            if len(name) + grow > MAX_NAME_LEN or (deeper > 0 and depth >= MAX_NESTING):
                return False
    return True


# ---- holds ---------------------------------------------------------------------------------------
def each_snapshot(paths: list[str], visit: Callable[[str, str, str], None]) -> int:
    """Each argument on its own, as `visit(path, fs, short)` for `fs@short`: one that is not a
    snapshot, or that `visit` fails on, is reported; how many were."""
    errors = 0
    for path in paths:
        fs, at, short = path.partition("@")
        if not at:
            error(f"'{path}' is not a snapshot")
            errors += 1
            continue
        try:
            visit(path, fs, short)
        except Failed as e:
            error(e.message)
            errors += 1
    return errors


def cmd_hold(args: list[str], release: bool = False) -> int:
    """zfs hold/release [-r] TAG SNAPSHOT...: each argument on its own (zfs_do_hold_rele_impl);
    the snapshots of one argument (with -r, the same name in every descendant) all or none."""
    opts, rest = parse(args, "r" if release else "rt")
    recursive = ("-r", "") in opts
    if len(rest) < 2:
        raise Usage()
    tag, names = rest[0], rest[1:]
    if not release and tag.startswith("."):
        raise Usage("tag may not start with '.'")

    def visit(path: str, fs: str, short: str) -> None:
        check_name(fs)
        with session(pool_of(fs), fs) as dsl:
            head = need(dsl, fs)
            heads = [head] + (dsl.descendants(head.id) if recursive else [])
            if release:
                todo, why = [], "dataset does not exist"
                for h in heads:
                    snap = dsl.lookup(f"{dsl.name(h.id)}@{short}")
                    if snap is None:
                        why = "dataset does not exist"
                    elif tag not in snap.holds:
                        why = "no such tag on this dataset"
                    else:
                        todo.append(snap)
                if not todo:
                    raise Failed(f"cannot release hold from snapshot '{path}': {why}")
                for snap in todo:
                    dsl.release(snap, tag)
            else:
                todo = [s for h in heads
                        if (s := dsl.lookup(f"{dsl.name(h.id)}@{short}")) is not None]
                if not todo:
                    raise Failed(f"cannot hold snapshot '{path}': dataset does not exist")
                for snap in todo:
                    if tag in snap.holds:
                        raise Failed(f"cannot hold snapshot '{dsl.name(snap.id)}': "
                                     f"tag already exists on this dataset")
                for snap in todo:
                    dsl.hold(snap, tag)
    return 1 if each_snapshot(names, visit) else 0


HOLDS_TIME = "%a %b %e %H:%M %Y"    # zfs_main.c's STRFTIME_FMT_STR


def cmd_holds(args: list[str]) -> int:
    opts, rest = parse(args, "rHp")
    recursive, scripted, parsable = (("-" + c, "") in opts for c in "rHp")
    if not rest:
        raise Usage()
    found: dict[str, dict[str, int]] = {}

    def visit(path: str, fs: str, short: str) -> None:
        target = fs if recursive else path
        check_name(target, snapshot=not recursive)
        with session(pool_of(target), target) as dsl:
            if recursive:
                head = need(dsl, fs)
                heads = sorted([head] + dsl.descendants(head.id), key=lambda h: dsl.name(h.id))
                snaps = [s for h in heads
                         if (s := dsl.lookup(f"{dsl.name(h.id)}@{short}")) is not None]
            else:
                snaps = [need(dsl, path)]
            for snap in snaps:
                name = dsl.name(snap.id)
                found.pop(name, None)
                found[name] = dict(snap.holds)
    errors = each_snapshot(rest, visit)
    # print_holds: the name and tag columns are as wide as their longest value, headers aside
    nwidth = max((len(n) for n in found), default=0)
    twidth = max((len(t) for holds in found.values() for t in holds), default=0)
    if not scripted:
        print(f"{'NAME':<{nwidth}}  {'TAG':<{twidth}}  TIMESTAMP")
    for name, holds in found.items():
        for tag, when in sorted(holds.items()):
            stamp = str(when) if parsable else time.strftime(HOLDS_TIME, time.localtime(when))
            if scripted:
                print(f"{name}\t{tag}\t{stamp}")
            else:
                print(f"{name:<{nwidth}}  {tag:<{twidth}}  {stamp}")
    if not found:
        error("no datasets available")
    return 1 if errors else 0


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
    if rec.kind not in HEADS or depth == 0:
        return out
    if "snapshot" in types:
        out += dsl.snapshots(rec.id)
    if "bookmark" in types:
        out += dsl.bookmarks(rec.id)
    for child in dsl.children(rec.id):
        out += _collect(dsl, child, depth - 1, types)
    return out


def _sort_key(dsl: Datasets, rec: Record) -> tuple:
    """zfs's default order: by filesystem name, a filesystem before its snapshots, snapshots
    by creation (zfs_compare). A bookmark's whole name is compared with the others'
    filesystem part, so it comes after its filesystem's snapshots."""
    name = dsl.name(rec.id)
    fs = name.partition("@")[0]
    return (fs, rec.kind == "snapshot", rec.createtxg, rec.id)


def _gather(args_names: list[str], recursive: bool, depth: int, types: set[str],
            verb: str, failed: list[str]) -> Iterator[tuple[Datasets, list[Record]]]:
    """The datasets `list`/`get` report, pool by pool (zfs_for_each). A name that cannot be
    opened is reported and added to `failed`; the others are still gathered."""
    if not args_names:
        for pool_name in imported_names():
            try:
                with session(pool_name, pool_name) as dsl:
                    yield dsl, _collect(dsl, dsl.record(ROOT_ID), -1 if depth < 0 else depth,
                                        types)
            except Failed:
                continue        # an unavailable pool shows no datasets (zpool status says why)
        return
    for name in args_names:
        try:
            with session(pool_of(name), name) as dsl:
                rec = _open_named(dsl, name, types)
                if recursive or depth >= 0:
                    found = _collect(dsl, rec, depth,
                                     types | ({rec.kind} if rec.kind == "snapshot" else set()))
                else:
                    found = [rec]
                yield dsl, found
        except Failed as e:
            error(e.message)
            failed.append(name)


def _open_named(dsl: Datasets, name: str, types: set[str]) -> Record:
    """A dataset `list`/`get` names (zfs_open): a bookmark only where bookmarks are listed."""
    if "#" not in name:
        rec = dsl.lookup(name)
    elif "bookmark" not in types:
        raise Failed(f"cannot open '{name}': bookmark delimiter '#' is not expected here")
    else:
        rec = dsl.lookup_bookmark(name)
        if rec is None and dsl.lookup(name.partition("#")[0]) is not None:
            raise Failed(f"cannot open '{name}': no such pool or dataset")   # EZFS_NOENT
    if rec is None:
        raise Failed(f"cannot open '{name}': dataset does not exist")
    return rec


def _snapshots_of_named(types: set[str], names: list[str], recursive: bool, depth: int) -> bool:
    """`zfs list|get -t snapshot FS` (or -t bookmark): the snapshots (bookmarks) of FS, a
    recursion of depth 1."""
    return bool(names) and types in ({"snapshot"}, {"bookmark"}) and not recursive and depth < 0


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
    if _snapshots_of_named(types, names, recursive, depth):
        recursive, depth = True, 1
    parsable = "-p" in flags
    rows: list[tuple[tuple, list[str]]] = []
    failed: list[str] = []
    listed: set[str] = set()
    for dsl, recs in _gather(names, recursive, depth if recursive or not names else -1,
                             types, "list", failed):
        if not names:
            recs = [r for r in recs if r.kind in types]
        for rec in recs:
            if dsl.name(rec.id) in listed:      # named twice: listed once, as zfs_for_each
                continue
            listed.add(dsl.name(rec.id))
            row = [_value(dsl, rec, col, parsable)[0] for col in columns]
            key = _sort_key(dsl, rec)
            sortvals = []
            for prop, desc in sort:
                v, numeric = _sort_value(dsl, rec, prop)
                sortvals.append((v, numeric, desc))
            rows.append(((sortvals, key), row))
    status = 1 if failed else 0
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
        if not dsprops.is_user(prop) and not dsprops.applies(prop, rec.kind,
                                                             head_type(dsl, rec)):
            return None
        return dsprops.resolve(prop, props_.chain(dsl, rec)).value
    return None


def _value(dsl: Datasets, rec: Record, prop: str, parsable: bool) -> tuple[str, str]:
    if prop == "name":
        return dsl.name(rec.id), "-"
    comp = props_.computed(dsl, rec, [prop] if dsprops.is_written(prop) else None)
    got = dsprops.get_property(prop, rec.kind, props_.chain(dsl, rec), comp, parsable=parsable,
                               head_type=head_type(dsl, rec))
    return got if got is not None else ("-", "-")


def head_type(dsl: Datasets, rec: Record) -> str:
    """The type of a snapshot's head (dsprops.applies asks: volsize is a volume snapshot's)."""
    return dsl.record(rec.parent).kind if rec.kind == "snapshot" else rec.kind


def cmd_get(args: list[str]) -> int:
    opts, rest = parse(args, "rHpd:o:s:t:")
    flags = {o for o, _ in opts}
    fields = ["name", "property", "value", "source"]
    sources = None
    types = {"filesystem", "volume", "snapshot", "bookmark"}
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
    if _snapshots_of_named(types, rest[1:], recursive, depth):
        recursive, depth = True, 1
    # zfs_for_each sorts what it gathers (names, a filesystem before its snapshots, snapshots
    # by creation), whatever the order of the arguments, and reports each dataset once
    entries: dict[str, tuple[tuple, list[list[str]]]] = {}
    failed: list[str] = []
    for dsl, recs in _gather(rest[1:], recursive, depth, types, "get", failed):
        for rec in recs:
            if rec.kind not in types or dsl.name(rec.id) in entries:
                continue
            rows = entries.setdefault(dsl.name(rec.id), (_sort_key(dsl, rec), []))[1]
            names = wanted if wanted is not None else \
                dsprops.all_properties(rec.kind, head_type(dsl, rec)) + sorted(
                    set(rec.props) | {k for lv in props_.chain(dsl, rec) for k in lv.local
                                      if dsprops.is_user(k)})
            comp = props_.computed(dsl, rec, [n for n in names if dsprops.is_written(n)])
            chain = props_.chain(dsl, rec)
            for prop in names:
                if prop == "name" and wanted is None:
                    continue
                got = dsprops.get_property(prop, rec.kind, chain, comp,
                                           parsable="-p" in flags,
                                           head_type=head_type(dsl, rec))
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
    rows = [row for _key, got in sorted(entries.values(), key=lambda e: e[0]) for row in got]
    if rows:
        print_table([f.upper() for f in fields], rows, scripted="-H" in flags)
    return 1 if failed else 0


def _source_matches(source: str, wanted: set[str]) -> bool:
    if source.startswith("inherited"):
        return "inherited" in wanted
    if source == "-":
        return "none" in wanted
    return source in wanted


# ---- set and inherit -------------------------------------------------------------------------
def each_dataset(names: list[str], visit: Callable[[Datasets, Record, str], None]) -> int:
    """`visit(dsl, record, name)` each dataset named, on its own: 0, or 1 if one could not be
    opened or `visit` failed on it (reported; the others are still visited)."""
    status = 0
    for name in names:
        try:
            with session(pool_of(name), name) as dsl:
                visit(dsl, need(dsl, name), name)
        except Failed as e:
            error(e.message)
            status = 1
    return status


def cmd_set(args: list[str]) -> int:
    opts, rest = parse(args, "u")
    # zfs_do_set: property=value arguments, then datasets (an argument without '=' starts
    # the datasets, even the first one)
    if not rest:
        raise Usage("missing arguments")
    if len(rest) < 2:
        raise Usage("missing dataset name(s)" if "=" in rest[0] else
                    "missing property=value argument(s)")
    start = next((i for i, a in enumerate(rest) if "=" not in a), None)
    if start is None:
        raise Usage("missing dataset name(s)")
    if any("=" in a for a in rest[start:]):
        raise Usage("invalid argument order")
    targets = rest[start:]
    props: dict[str, str] = {}
    for pair in rest[:start]:
        k, v = pair.split("=", 1)
        if k in props:
            raise Failed(f"property '{k}' specified multiple times", code=255)
        props[k] = v

    def visit(dsl: Datasets, rec: Record, name: str) -> None:
        try:
            set_properties(Handle(dsl.pool), rec, props)
        except DatasetError as e:
            raise Failed(f"cannot set property for '{name}': {e.message}") from None
    return each_dataset(targets, visit)


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

    def visit(dsl: Datasets, rec: Record, name: str) -> None:
        targets = [rec] + (dsl.descendants(rec.id) if "-r" in flags and rec.kind != "snapshot" else [])
        for r in targets:
            try:
                dsprops.check_inherit_type(prop, r.kind)
            except dsprops.PropError as e:
                raise Failed(f"cannot inherit {prop} for '{dsl.name(r.id)}': {e.message}") from None
            props_.inherit(dsl, r, prop, received="-S" in flags)
    return each_dataset(rest[1:], visit)


VERBS = {"create": cmd_create, "destroy": cmd_destroy, "snapshot": cmd_snapshot,
         "snap": cmd_snapshot, "rollback": cmd_rollback, "clone": cmd_clone,
         "promote": cmd_promote, "rename": cmd_rename, "list": cmd_list, "get": cmd_get,
         "set": cmd_set, "inherit": cmd_inherit, "hold": cmd_hold,
         "release": lambda a: cmd_hold(a, release=True), "holds": cmd_holds,
         "bookmark": lambda a: _verb("cli_bookmark", "cmd_bookmark", a),
         "diff": lambda a: _verb("cli_diff", "cmd_diff", a),
         "upgrade": lambda a: _verb("cli_upgrade", "cmd_upgrade", a)}


def _verb(module: str, function: str, args: list[str]) -> int:
    """A verb of a module of its own, imported only when it runs."""
    from importlib import import_module
    return getattr(import_module(f".{module}", __package__), function)(args)


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
