"""`fusezfs pool VERB`: the zpool command line over pool files.

Each verb checks everything it can before it changes anything (a cheap check), then applies the
change in one go; a failed check leaves every pool file untouched.
"""
from __future__ import annotations

import os
import stat
import sys
import time
from typing import Callable

from fusezfs.dsl import dsprops
from fusezfs.engine import poolprops
from fusezfs import sessions
from fusezfs.host import registry
from fusezfs.api import Handle, format_filesystem
from fusezfs.dsl.datasets import Datasets
from fusezfs.errors import Failed, Usage
from fusezfs.cli.common import error, nicenum, parse, print_table
from fusezfs.engine.devices import FileDevice
from fusezfs.dsl.names import pool_name_error
from fusezfs.engine.allocator import REWIND_TXGS
from fusezfs.formats.label import UB_SLOTS
from fusezfs.engine.pool import (
    MIN_DEVICE_SIZE,
    Pool,
    PoolError,
    open_files,
    read_label,
    rewind_exclaim,
)
from fusezfs.engine.verify import verify

USAGE = {
    "create": "\tcreate [-f] [-m mountpoint] [-o property=value] ...\n"
              "\t    [-O file-system-property=value] ... <pool> <vdev> ...",
    "destroy": "\tdestroy [-f] <pool>",
    "export": "\texport [-f] <pool> ...",
    "import": "\timport [-d dir] [-D] [-f]\n\timport [-d dir] [-D] [-f] [-F [-n] [-X]] "
              "[-o property=value] ... <pool | id> [newpool]",
    "list": "\tlist [-Hp] [-o property[,...]] [pool] ...",
    "status": "\tstatus [-vxD] [pool] ...",
    "get": "\tget [-Hp] [-o \"all\" | field[,...]] <\"all\" | property[,...]> <pool> ...",
    "set": "\tset <property=value> <pool>",
    "sync": "\tsync [pool] ...",
    "clear": "\tclear <pool>",
    "scrub": "\tscrub [-s | -p] [-w] <pool> ...",
    "verify": "\tverify <pool>",
}

LIST_COLUMNS = ["name", "size", "alloc", "free", "ckpoint", "expandsz", "frag", "cap", "dedup",
                "health", "altroot"]
NUMERIC = {"size", "allocated", "free", "capacity", "dedupratio", "fragmentation", "freeing",
           "leaked", "expandsize", "checkpoint", "guid", "load_guid", "ashift", "version"}


DEVICE_VERBS = ("add", "attach", "detach", "replace", "offline", "online",
                "iostat")                                                  # cli_devices.py


def usage_text(verb: str | None) -> str:
    if verb in DEVICE_VERBS:
        from fusezfs.cli.cli_devices import USAGE as device_usage
        return "usage:\n" + device_usage[verb]
    if verb in USAGE:
        return "usage:\n" + USAGE[verb]
    from fusezfs.cli.cli_help import zpool_usage  # zpool's usage(): every verb, grouped
    return zpool_usage()


# ---- opening pools --------------------------------------------------------------------------
def open_pool(name: str) -> Pool:
    entry = registry.load().get(name)
    if entry is None or entry.get("state") == "exported":
        raise Failed(f"cannot open '{name}': no such pool")
    provided = sessions.handle(name)
    if provided is not None:            # inside the service, which owns `name` (sessions.py)
        return sessions.Borrowed(provided.pool)
    return open_registered(name, entry)


def open_registered(name: str, entry: dict) -> Pool:
    """Open the files of the imported pool `name` (the service's way of opening a pool, and
    a command's own under FUSEZFS_NO_SERVICE); Failed in zpool's words."""
    devices, first_error = [], None
    for path in entry["devices"]:       # a missing mirror side leaves the pool DEGRADED
        try:
            devices += open_files([path])
        except OSError as e:
            first_error = first_error or e
    if not devices:
        raise Failed(f"cannot open '{name}': {first_error.strerror}: {first_error.filename}")
    try:
        pool = Pool.open(devices)
    except PoolError as e:
        for d in devices:
            d.close()
        raise Failed(str(e)) from None
    if pool.guid != entry["guid"]:
        pool.close()
        raise Failed(f"cannot open '{name}': pool guid changed on its devices")
    return pool


def imported_names() -> list[str]:
    return sorted(n for n, e in registry.load().items() if e.get("state") != "exported")


def each_pool(names: list[str]):
    """Open the named pools (all imported ones if none named), one at a time."""
    for name in names or imported_names():
        pool = open_pool(name)
        try:
            yield pool
        finally:
            pool.close()


# ---- property values ------------------------------------------------------------------------
def prop_value(pool: Pool, prop: str, parsable: bool) -> tuple[str, str]:
    """(value, source) of a pool property, as `zpool get` prints them."""
    size, alloc, free = pool.size, pool.allocated, pool.free
    num = {"size": size, "allocated": alloc, "free": free, "freeing": 0, "leaked": 0}
    if prop in num:
        return (str(num[prop]) if parsable else nicenum(num[prop])), "-"
    if prop == "capacity":
        cap = alloc * 100 // size if size else 0
        return (str(cap) if parsable else f"{cap}%"), "-"
    if prop == "dedupratio":           # "%llu.%02llux" of the table's ratio, truncated
        return dsprops.format_ratio(pool.blocks.ddt.ratio_percent(), parsable), "-"
    if prop == "health":
        return pool_health(pool), "-"
    if prop in ("guid", "load_guid"):
        return str(pool.guid), "-"
    if prop == "version":
        return "-", "default"
    if prop in ("expandsize", "fragmentation", "checkpoint"):
        return "-", "-"
    if prop == "name":
        return pool.name, "-"
    definition = poolprops.PROPS[prop]
    value = pool.get_prop(prop)
    # as spa_prop_get: a stored value equal to the default reads as `default` again
    stored = pool.mos.get(b"prop\0" + prop.encode()) is not None and value != definition.default
    return value, ("local" if stored else ("-" if not definition.settable else "default"))


def pool_health(pool: Pool) -> str:
    """ONLINE, or DEGRADED while some leaf is offline or missing (an import needs a live leaf
    in every top-level vdev, so an open pool is never worse)."""
    return "ONLINE" if all(t.state == "ONLINE" for t in pool.tops.values()) else "DEGRADED"


# ---- verbs ----------------------------------------------------------------------------------
def cmd_create(args: list[str]) -> int:
    opts, rest = parse(args, "fnm:o:O:")
    force = ("-f", "") in opts
    props: dict[str, str] = {}
    fsprops: dict[str, str] = {}
    for opt, val in opts:
        if opt == "-m":
            fsprops["mountpoint"] = val
        elif opt in ("-o", "-O"):
            if "=" not in val:
                raise Failed(f"missing '=' for {opt} option")
            k, v = val.split("=", 1)
            if opt == "-o":
                if poolprops.canonical(k) is None:
                    raise Failed(f"property '{k}' is not a valid pool property")
                props[poolprops.canonical(k)] = v
            else:
                fsprops[k] = v
    if not rest:
        raise Usage("missing pool name argument")
    name, specs = rest[0], rest[1:]
    if not specs:
        raise Usage("missing vdev specification")
    if "/" in name:
        raise Failed(f"cannot create '{name}': invalid character '/' in pool name\n"
                     f"use 'zfs create' to create a dataset")
    topology = parse_vdevs(name, specs)
    paths = check_devices(name, topology, force)
    # as zpool does, the name and property values are judged after the devices
    why = pool_name_error(name)
    if why:
        raise Failed(f"cannot create '{name}': {why}\npool name may have been omitted")
    for k, v in props.items():
        why = poolprops.check(k, v, creating=True)
        if why:
            raise Failed(f"cannot create '{name}': {why}")
    if "mountpoint" in fsprops and not (fsprops["mountpoint"].startswith("/")
                                        or fsprops["mountpoint"] in ("legacy", "none")):
        raise Failed(f"invalid mountpoint '{fsprops['mountpoint']}': must be an absolute path, "
                     f"'legacy', or 'none'")
    try:
        dsprops.validate_props(fsprops, creating=True)
    except dsprops.PropError as e:
        raise Failed(f"cannot create '{name}': {e.message}") from None
    if name in imported_names():
        raise Failed(f"cannot create '{name}': pool already exists")
    devices = []
    try:
        for kind, ps in topology:
            devices.append((kind, open_files(ps)))
        pool = Pool.create(name, devices, props, fsprops)
    except PoolError as e:
        raise Failed(str(e)) from None
    dsl = Handle(pool).dsl
    format_filesystem(dsl, dsl.get(name))   # the root filesystem's root directory, the creator's
    registry.add(name, pool.guid, paths)
    pool.close()
    for path in paths:
        private(path)
    return 0


def private(path: str) -> None:
    """A pool file holds every file of the pool, whatever their modes: only its owner may read
    it. zpool create takes the files it is given as its own (group and other bits cleared)."""
    try:
        st = os.stat(path)
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
            os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o077)
    except OSError as e:
        error(f"warning: cannot make pool file '{path}' private: {e.strerror}")


def warn_if_readable(paths: list[str]) -> None:
    """zpool import leaves modes alone but says when others could read the pool's contents."""
    for path in paths:
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except OSError:
            continue
        if mode & 0o044:
            error(f"warning: pool file '{path}' can be read by other users (mode {mode:04o}); "
                  f"'chmod 600' it to keep the pool's files private")


def parse_vdevs(name: str, specs: list[str]) -> list[tuple[str, list[str]]]:
    """`FILE ... | mirror FILE FILE ...` -> [(kind, [path, ...]), ...]."""
    topology: list[tuple[str, list[str]]] = []
    current: list[str] | None = None
    for word in specs:
        if word == "mirror":
            current = []
            topology.append(("mirror", current))
        elif word in ("raidz", "raidz1", "raidz2", "raidz3", "draid", "spare", "log", "cache",
                      "special", "dedup"):
            raise Failed(f"invalid vdev specification: '{word}' vdevs are not supported by fusezfs")
        elif current is not None:
            current.append(word)
        else:
            topology.append(("file", [word]))
    for kind, paths in topology:
        if kind == "mirror" and len(paths) < 2:
            raise Failed("invalid vdev specification: mirror requires at least 2 devices")
    return topology


def check_devices(name: str, topology: list[tuple[str, list[str]]], force: bool) -> list[str]:
    """zpool's checks of the files given to create; returns their paths."""
    paths = [p for _, ps in topology for p in ps]
    problems, fatal = [], []
    for path in paths:
        if not os.path.isabs(path):
            raise Failed(f"cannot open '{path}': no such device in /dev\n"
                         f"must be a full path or shorthand device name")
        if not os.path.exists(path):
            raise Failed(f"cannot open '{path}': No such file or directory")
        if not os.path.isfile(path):
            raise Failed(f"cannot use '{path}': must be a block device or regular file")
        dev = FileDevice(path, readonly=True)
        try:
            config = read_label(dev)
        finally:
            dev.close()
        if config and config.get("state") == "active":
            fatal.append(f"{path} is part of active pool '{config['name']}'")
        elif config and config.get("state") == "exported":
            problems.append(f"{path} is part of exported pool '{config['name']}'")
    if fatal or (problems and not force):
        header = "the following errors must be manually repaired:" if force else \
            "use '-f' to override the following errors:"
        raise Failed("invalid vdev specification\n" + header + "\n" + "\n".join(fatal + problems))
    from fusezfs.cli.cli_replication import check_create
    check_create(topology, force)               # after the in-use checks, as make_root_vdev
    if len(set(map(os.path.realpath, paths))) != len(paths):
        raise Failed(f"cannot create '{name}': one or more vdevs refer to the same device")
    if any(os.path.getsize(p) < MIN_DEVICE_SIZE for p in paths):
        raise Failed(f"cannot create '{name}': one or more devices is less than the minimum "
                     f"size (64M)")
    return paths


def for_each_pool(names: list[str], visit: Callable[[Pool], None],
                  unavailable: Callable[[str], None] | None = None) -> int:
    """Open the pools `names` one by one and `visit` each (then close it): 0, or 1 if a pool
    could not be opened (its error is reported and the others are still visited). An imported
    pool that cannot be opened (its files gone or unreadable) goes to `unavailable` instead,
    where the caller shows it as UNAVAIL."""
    status = 0
    imported = set(imported_names())
    for name in names:
        try:
            pool = open_pool(name)
        except Failed as e:
            if unavailable is not None and name in imported:
                unavailable(name)
                continue
            error(e.message)
            status = 1
            continue
        try:
            visit(pool)
        finally:
            pool.close()
    return status


def cmd_list(args: list[str]) -> int:
    opts, names = parse(args, "Hpo:")
    scripted = ("-H", "") in opts
    parsable = ("-p", "") in opts
    columns = LIST_COLUMNS
    for opt, val in opts:
        if opt == "-o":
            columns = val.split(",")
    props = []
    for col in columns:
        prop = "name" if col == "name" else poolprops.canonical(col)
        if prop is None:
            raise Usage(f"bad property list: invalid property '{col}'")
        props.append(prop)
    rows: list[list[str]] = []
    status = for_each_pool(names or imported_names(),
                           lambda pool: rows.append([prop_value(pool, p, parsable)[0]
                                                     for p in props]),
                           lambda name: rows.append([name if p == "name" else "UNAVAIL"
                                                     if p == "health" else "-" for p in props]))
    if not rows and not names:
        if not scripted:
            print("no pools available")
        return 0
    if rows:
        right = {i for i, p in enumerate(props) if p in NUMERIC}
        print_table([c.upper() for c in columns], rows, scripted=scripted, right=right)
    return status


def cmd_get(args: list[str]) -> int:
    opts, rest = parse(args, "Hpo:")
    scripted = ("-H", "") in opts
    parsable = ("-p", "") in opts
    fields = ["name", "property", "value", "source"]
    for opt, val in opts:
        if opt == "-o":
            fields = ["name", "property", "value", "source"] if val == "all" else val.split(",")
            for f in fields:
                if f not in ("name", "property", "value", "source"):
                    raise Usage(f"invalid field '{f}'")
    if not rest:
        raise Usage("missing property argument")
    from fusezfs.dsl import features
    if rest[0] == "all":
        wanted = list(poolprops.PROPS) + [f"feature@{f}" for f in features.ALL]
    else:
        wanted = []
        for p in rest[0].split(","):
            c = poolprops.canonical(p) if p != "name" else "name"
            if c is None and p.startswith("feature@"):
                c = p                       # any name: one OpenZFS lacks prints nothing
            if c is None:
                raise Usage(f"bad property list: invalid property '{p}'")
            wanted.append(c)
    rows: list[list[str]] = []

    def visit(pool: Pool) -> None:
        for prop in wanted:
            if prop.startswith("feature@"):
                from fusezfs.dsl.datasets import Datasets
                value = features.state(Datasets(pool), prop.partition("@")[2])
                if value is None:
                    continue
                source = "local"
            else:
                value, source = prop_value(pool, prop, parsable)
            row = {"name": pool.name, "property": prop, "value": value, "source": source}
            rows.append([row[f] for f in fields])
    status = for_each_pool(rest[1:] or imported_names(), visit)
    if rows:
        print_table([f.upper() for f in fields], rows, scripted=scripted)
    return status


def cmd_set(args: list[str]) -> int:
    opts, rest = parse(args, "")
    if not rest:
        raise Usage("missing property=value argument")
    if len(rest) < 2:
        raise Usage("missing pool name")
    if len(rest) > 2:
        raise Usage("too many pool names")
    if "=" not in rest[0]:
        raise Usage("missing value in property=value argument")
    k, v = rest[0].split("=", 1)
    name = poolprops.canonical(k) or k
    pool = open_pool(rest[1])
    why = poolprops.check(name, v) or (_bootfs_error(pool, v) if name == "bootfs" else None)
    if why:
        pool.close()
        raise Failed(f"cannot set property for '{rest[1]}': {why}")
    try:
        pool.set_prop(name, v)
    finally:
        pool.close()
    return 0


def _bootfs_error(pool: Pool, value: str) -> str | None:
    """bootfs names a filesystem of this pool (libzfs's bootfs_name_valid, then the kernel's
    hold of it: ENOENT, ENOTSUP for a volume); empty unsets it."""
    if not value:
        return None
    from fusezfs.dsl.names import dataset_name_error
    if dataset_name_error(value, snapshot=None) or not (
            value == pool.name or value.startswith(pool.name + "/")):
        return f"'{value}' is an invalid name"
    rec = Handle(pool).dsl.lookup(value)
    if rec is None:
        return "no such pool or dataset"
    if rec.kind != "filesystem":
        return "operation not supported on this type of pool"
    return None


def cmd_status(args: list[str]) -> int:
    opts, names = parse(args, "vxD")
    verbose = ("-v", "") in opts
    dedup_stats = ("-D", "") in opts
    only_bad = ("-x", "") in opts
    if not names and not imported_names():
        error("no pools available")   # stderr, as OpenZFS 2.x (zfs-fuse: stdout)
        return 0
    texts: list[str] = []

    def show(pool: Pool) -> None:
        errors = sum(leaf.read_errors + leaf.write_errors + leaf.cksum_errors
                     for leaf in pool.leaves())
        if not only_bad or errors or pool.blocks.permanent_errors or \
                pool_health(pool) != "ONLINE":
            texts.append(format_status(pool, verbose)
                         + (dedup_stats_text(pool) if dedup_stats else ""))
    status = for_each_pool(names or imported_names(), show,
                           lambda name: texts.append(format_unavailable(name)))
    if texts:
        print("\n\n".join(texts))
    shown = len(texts)
    if only_bad and not shown:
        print("all pools are healthy" if not names else f"pool '{names[0]}' is healthy")
    return status


def format_unavailable(name: str) -> str:
    """zpool status of an imported pool none of whose files can be opened or read."""
    paths = registry.load()[name]["devices"]
    rows = [(name, "UNAVAIL", "insufficient replicas")] + [
        (p, "UNAVAIL" if not os.path.exists(p) else "FAULTED",
         "cannot open" if not os.path.exists(p) else "corrupted data") for p in paths]
    width = max(len("NAME"), *(len(n) + 2 for n, _s, _a in rows))
    out = [f"  pool: {name}", " state: UNAVAIL",
           "status: One or more devices could not be opened.  There are insufficient",
           "\treplicas for the pool to continue functioning.",
           "action: Attach the missing device and online it using 'zpool online'.",
           "   see: https://openzfs.github.io/openzfs-docs/msg/ZFS-8000-3C", "config:", "",
           f"\t{'NAME':<{width}}  STATE     READ WRITE CKSUM"]
    for i, (n, state, aux) in enumerate(rows):
        label = ("  " if i else "") + n
        out.append(f"\t{label:<{width}}  {state:<8}     0     0     0  {aux}")
    return "\n".join(out + ["", "errors: No known data errors"])


def format_status(pool: Pool, verbose: bool) -> str:
    """zpool status for one open pool."""
    leaves = pool.leaves()
    errors = sum(leaf.read_errors + leaf.write_errors + leaf.cksum_errors for leaf in leaves)
    permanent = pool.blocks.permanent_errors
    out = [f"  pool: {pool.name}", f" state: {pool_health(pool)}"]
    if any(leaf.missing for leaf in leaves):
        out += ["status: One or more devices could not be opened.  Sufficient replicas exist for",
                "\tthe pool to continue functioning in a degraded state.",
                "action: Attach the missing device and online it using 'zpool online'.",
                "   see: https://openzfs.github.io/openzfs-docs/msg/ZFS-8000-2Q"]
    elif any(leaf.offline for leaf in leaves):
        out += ["status: One or more devices has been taken offline by the administrator.",
                "\tSufficient replicas exist for the pool to continue functioning in a",
                "\tdegraded state.",
                "action: Online the device using 'zpool online' or replace the device with",
                "\t'zpool replace'."]
    elif permanent:
        out += ["status: One or more devices has experienced an error resulting in data",
                "\tcorruption.  Applications may be affected.",
                "action: Restore the file in question if possible.  Otherwise restore the",
                "\tentire pool from backup.",
                "   see: https://openzfs.github.io/openzfs-docs/msg/ZFS-8000-8A"]
    elif errors:
        out += ["status: One or more devices has experienced an unrecoverable error.  An",
                "\tattempt was made to correct the error.  Applications are unaffected.",
                "action: Determine if the device needs to be replaced, and clear the errors",
                "\tusing 'zpool clear' or replace the device with 'zpool replace'.",
                "   see: https://openzfs.github.io/openzfs-docs/msg/ZFS-8000-9P"]
    scan = scan_line(pool)
    if scan:
        out.append(scan)
    out += ["config:", ""]
    rows = [(pool.name, 0, pool_health(pool), None)]
    for top in pool.tops.values():
        if top.kind == "mirror":
            rows.append((f"mirror-{top.id}", 1, top.state, None))
            rows += [(leaf.path, 2, leaf.state, leaf) for leaf in top.leaves]
        else:
            rows += [(leaf.path, 1, leaf.state, leaf) for leaf in top.leaves]
    width = max(len("NAME"), *(len(n) + 2 * depth for n, depth, _, _ in rows))
    out.append(f"\t{'NAME':<{width}}  STATE     READ WRITE CKSUM")
    for name, depth, state, leaf in rows:
        counts = (leaf.read_errors, leaf.write_errors, leaf.cksum_errors) if leaf else (
            (0, 0, 0) if depth else (0, 0, len(permanent) and sum(permanent.values())))
        label = "  " * depth + name
        aux = "  cannot open" if leaf is not None and leaf.missing else \
            "  (resilvering)" if leaf is not None and leaf.resilvering else ""
        out.append(f"\t{label:<{width}}  {state:<8} {counts[0]:>5} {counts[1]:>5} {counts[2]:>5}"
                   + aux)
    out.append("")
    if not permanent:
        out.append("errors: No known data errors")
    elif not verbose:
        out.append(f"errors: {len(permanent)} data errors, use '-v' for a list")
    else:
        out.append("errors: Permanent errors have been detected in the following files:")
        out.append("")
        out += [f"        {what}" for what in sorted(permanent)]
    return "\n".join(out)


def dedup_stats_text(pool: Pool) -> str:
    """What `zpool status -D` adds after the errors line (print_dedup_stats, zpool_dump_ddt):
    the table's entry count with its size per entry on disk and in core, then the histogram
    of entries by refcount, allocated and referenced, and the totals."""
    from fusezfs.dsl.dsprops import nicebytes, nicenum
    ddt = pool.blocks.ddt
    count, on_disk, in_core = ddt.object_stats()
    if not count:
        return "\n\n dedup: no DDT entries"
    row = "%6s   %6s   %5s   %5s   %5s   %6s   %5s   %5s   %5s"
    out = ["", "", f" dedup: DDT entries {count}, size {nicebytes(on_disk)} on disk, "
                   f"{nicebytes(in_core)} in core", "",
           "bucket              allocated                       referenced          ",
           "______   ______________________________   ______________________________",
           row % ("refcnt", "blocks", "LSIZE", "PSIZE", "DSIZE",
                  "blocks", "LSIZE", "PSIZE", "DSIZE"),
           row % ("------", "------", "-----", "-----", "-----",
                  "------", "-----", "-----", "-----")]

    def line(label: str, st: list[int]) -> str:
        return row % (label, nicenum(st[0]), nicebytes(st[1]), nicebytes(st[2]), nicebytes(st[3]),
                      nicenum(st[4]), nicebytes(st[5]), nicebytes(st[6]), nicebytes(st[7]))
    stats = ddt.stats()
    out += [line(nicenum(1 << h), stats[h]) for h in sorted(stats)]
    out += [line("Total", ddt.totals()), ""]
    return "\n".join(out)


def scan_line(pool: Pool) -> str | None:
    """The `scan:` lines of zpool status (print_scan_scrub_resilver_status), or None if the
    pool was never scrubbed."""
    from fusezfs.engine import scrub as scrubbing
    from fusezfs.dsl.dsprops import nicebytes
    st = scrubbing.load(pool)
    if st is None:
        return None
    if st.state == "finished":
        done = "scrub repaired" if st.func == "scrub" else "resilvered"
        return (f"  scan: {done} {nicebytes(st.repaired)} in {dhms(st.end - st.start)} "
                f"with {st.errors} errors on {time.ctime(st.end)}")
    if st.state == "canceled":
        return f"  scan: {st.func} canceled on {time.ctime(st.end)}"
    if st.paused:
        lines = [f"  scan: scrub paused since {time.ctime(st.paused)}",
                 f"\tscrub started on {time.ctime(st.start)}",
                 f"\t{nicebytes(st.examined)} scanned, {nicebytes(st.examined)} issued, "
                 f"{nicebytes(st.to_examine)} total"]
    else:
        elapsed = max(1, int(time.time() - st.pass_start)) if st.pass_start else 1
        rate = st.pass_examined // elapsed
        lines = [f"  scan: {st.func} in progress since {time.ctime(st.start)}",
                 f"\t{nicebytes(st.examined)} scanned at {nicebytes(rate)}/s, "
                 f"{nicebytes(st.examined)} issued at {nicebytes(rate)}/s, "
                 f"{nicebytes(st.to_examine)} total"]
    done = 100 * st.examined / st.to_examine if st.to_examine else 0.0
    tail = (f"\t{nicebytes(st.repaired)} {'repaired' if st.func == 'scrub' else 'resilvered'}, "
            f"{min(done, 100.0):.2f}% done")
    if not st.paused:
        left = (st.to_examine - st.examined) // rate if rate and st.to_examine >= st.examined \
            else None
        tail += f", {dhms(left)} to go" if left is not None and rate >= 10 << 20 else \
            ", no estimated completion time"
    return "\n".join(lines + [tail])


def dhms(secs: int) -> str:
    """secs_to_dhms: 00:00:05, or 2 days 01:00:00."""
    days, rest = divmod(int(secs), 86400)
    h, rest = divmod(rest, 3600)
    m, sec = divmod(rest, 60)
    return (f"{days} days " if days else "") + f"{h:02d}:{m:02d}:{sec:02d}"


def cmd_export(args: list[str]) -> int:
    opts, names = parse(args, "f")
    if not names:
        raise Usage("missing pool argument")
    for name in names:
        try:
            pool = open_pool(name)
        except Failed:
            if ("-f", "") not in opts or name not in imported_names():
                raise
            pool = None         # its files are gone: -f forgets it (nothing to write)
        entry = registry.load()[name]
        if pool is not None:
            pool.close(export=True)
        with registry.editing() as reg:
            reg[name] = dict(entry, state="exported")
    return 0


def cmd_destroy(args: list[str]) -> int:
    opts, names = parse(args, "f")
    if not names:
        raise Usage("missing pool argument")
    if len(names) > 1:
        raise Usage("too many arguments")
    try:
        pool = open_pool(names[0])
    except Failed:
        if ("-f", "") not in opts or names[0] not in imported_names():
            raise
        registry.remove(names[0])      # its files are gone: -f forgets it
        return 0
    pool.close(destroy=True)
    registry.remove(names[0])
    return 0


def _scan(dirs: list[str], states: tuple[str, ...] = ("exported", "active")) -> dict[int, dict]:
    """Pools in `states` found in the files of `dirs` — by default exported pools, and active
    ones this host has not imported (a lost state directory, another system's pool): guid ->
    {"config": newest label config, "paths": [files]}. Without -d, the directories holding
    the pool files the registry knows are scanned, and the working directory."""
    mine = {e["guid"] for e in registry.load().values() if e.get("state") != "exported"}
    if not dirs:
        dirs = list(dict.fromkeys([os.path.dirname(p) for e in registry.load().values()
                                   for p in e["devices"]] + [sessions.cwd()]))
        if sessions.in_service():       # never a directory of its own mounts (host/prober.py)
            from fusezfs.host.mounts import fusezfs_mount_of
            dirs = [d for d in dirs if fusezfs_mount_of(d) is None]
        quiet = True
    else:
        quiet = False
    candidates: list[str] = []
    for d in dirs:
        try:
            names = sorted(os.listdir(d))
        except OSError as e:
            if quiet:
                continue
            raise Failed(f"cannot open '{d}': {e.strerror}") from None
        candidates += [os.path.join(os.path.abspath(d), n) for n in names]
    found: dict[int, dict] = {}
    for path in candidates:
        if not os.path.isfile(path):
            continue
        try:
            dev = FileDevice(path, readonly=True)
        except OSError:
            continue
        try:
            config = read_label(dev)
        finally:
            dev.close()
        if not config or config.get("state") not in states or \
                (config.get("state") == "active" and config["pool_guid"] in mine):
            continue
        slot = found.setdefault(config["pool_guid"], {"config": config, "paths": []})
        if path not in slot["paths"]:
            slot["paths"].append(path)
    return found


def _last_txg_time(paths: list[str]) -> int:
    """When the pool last committed a txg, from its newest uberblock."""
    from fusezfs.engine.vdevs import Leaf
    newest = 0
    for path in paths:
        try:
            dev = FileDevice(path, readonly=True)
        except OSError:
            continue
        try:
            newest = max([newest] + [ub.timestamp for ub in Leaf(dev, 0).read_uberblocks()])
        finally:
            dev.close()
    return newest


def cmd_import(args: list[str]) -> int:
    opts, rest = parse(args, "d:fo:aNFnXDs")    # -s: scan (fusezfs always scans the files)
    dirs = [v for o, v in opts if o == "-d"]
    flags = {o for o, _ in opts}
    if flags & {"-n", "-X"} and "-F" not in flags:
        raise Usage("-n or -X only meaningful with -F")
    if "-a" in flags and rest:
        raise Usage("too many arguments")
    if "-F" in flags and rest and _rewind_imported(rest[0], flags):
        return 0
    # -D: only destroyed pools (their labels say so until a pool is made over them)
    found = _scan(dirs, ("destroyed",)) if "-D" in flags else _scan(dirs)
    if not rest and ("-a", "") not in opts:
        if not found:
            error("no pools available to import")
            return 0
        for i, (guid, slot) in enumerate(found.items()):
            if i:
                print()
            c = slot["config"]
            if c.get("state") == "active":      # not exported: another system, or lost state
                print(f"  pool: {c['name']}\n    id: {guid}\n state: ONLINE\nstatus: The pool "
                      f"was last accessed by another system.\naction: The pool can be imported "
                      f"using its name or numeric identifier and\n\tthe '-f' flag.\n   see: "
                      f"https://openzfs.github.io/openzfs-docs/msg/ZFS-8000-EY\nconfig:\n")
            else:
                gone = " (DESTROYED)" if c.get("state") == "destroyed" else ""
                print(f"  pool: {c['name']}\n    id: {guid}\n state: ONLINE{gone}\naction: The "
                      f"pool can be imported using its name or numeric identifier.\nconfig:\n")
            rows = [(c["name"], 0)]
            for top in c["vdev_tree"]:
                if top["type"] == "mirror":
                    rows.append((f"mirror-{top['id']}", 1))
                rows += [(child["path"], 2 if top["type"] == "mirror" else 1)
                         for child in top["children"]]
            width = max(len(n) + 2 * depth for n, depth in rows)
            for n, depth in rows:
                print(f"\t{'  ' * depth + n:<{width}}  ONLINE")
        return 0
    targets = list(found.values()) if ("-a", "") in opts else None
    if targets is None:
        want = rest[0]
        targets = [s for g, s in found.items() if s["config"]["name"] == want or str(g) == want]
        exists = any(e.get("state") != "exported" and want in (n, str(e["guid"]))
                     for n, e in registry.load().items())
        # as zpool: labels of the name (destroyed ones too) make "already exists" the answer
        seen = exists and (targets or any(
            s["config"]["name"] == want or str(g) == want
            for g, s in _scan(dirs, ("exported", "destroyed")).items()))
        if seen and rest[1:] in ([], [want]):
            raise Failed(f"cannot import '{want}': a pool with that name already exists\n"
                         f"use the form 'zpool import <pool | id> <newpool>' to give it a new name")
        if exists and not seen:
            raise Failed(f"cannot import '{want}': a pool with that name is already "
                         f"created/imported,\nand no additional pools with that name were found")
        if not targets:
            raise Failed(f"cannot import '{want}': no such pool available")
        if len(targets) > 1:
            raise Failed(f"cannot import '{want}': more than one matching pool\n"
                         f"import by numeric ID instead")
    newname = rest[1] if len(rest) > 1 else None
    for slot in targets:
        c = slot["config"]
        if c.get("state") == "active" and "-f" not in flags:
            raise Failed(f"cannot import '{c['name']}': pool was previously in use from another "
                         f"system.\nLast accessed by {c.get('hostname', 'unknown')} (hostid=0) "
                         f"at {time.ctime(_last_txg_time(slot['paths']))}\nThe pool can be "
                         f"imported, use 'zpool import -f' to import the pool.")
    for slot in targets:
        name = newname or slot["config"]["name"]
        why = pool_name_error(name)
        if why:
            raise Failed(f"cannot import '{name}': {why}")
        current = registry.load().get(name)
        if current and current.get("state") != "exported":
            raise Failed(f"cannot import '{slot['config']['name']}': a pool with that name is "
                         f"already created/imported,\nand no additional pools with that name "
                         f"were found")
        try:
            pool = Pool.open(open_files(slot["paths"]), name=name, **_rewind_policy(flags))
        except PoolError as e:
            raise Failed(str(e)) from None
        if "-n" in flags:
            print(rewind_exclaim(name, pool, True), end="")
            pool.abandon()
            continue
        registry.add(name, pool.guid, [leaf.path for leaf in pool.leaves()])
        print(rewind_exclaim(name, pool, False), end="")
        warn_if_readable([leaf.path for leaf in pool.leaves()])
        pool.close()
    return 0


def _rewind_policy(flags: set[str]) -> dict:
    """Pool.open's arguments for -F (the txgs frees never reused), -X (every uberblock the
    ring holds) and -n (find out only)."""
    if "-F" not in flags:
        return {}
    return {"rewind": UB_SLOTS if "-X" in flags else REWIND_TXGS, "dry_run": "-n" in flags}


def _rewind_imported(name: str, flags: set[str]) -> bool:
    """zpool import -F of a pool the registry holds as imported but that cannot be opened at
    its newest txg (the state a damaged pool is found in): rewind it in place. False when the
    name is no such pool (the ordinary import goes on and says what it says)."""
    entry = registry.load().get(name)
    if entry is None or entry.get("state") == "exported" or sessions.handle_open(name):
        return False
    def attempt(**policy) -> Pool | PoolError:
        try:
            devices = open_files(entry["devices"])
        except OSError as e:
            raise Failed(f"cannot import '{name}': {e.strerror}") from None
        try:
            return Pool.open(devices, **policy)
        except PoolError as e:
            for d in devices:
                d.close()
            return e
    pool = attempt()
    if isinstance(pool, Pool):
        pool.close()
        raise Failed(f"cannot import '{name}': a pool with that name already exists\n"
                     f"use the form 'zpool import <pool | id> <newpool>' to give it a new name")
    pool = attempt(**_rewind_policy(flags))
    if isinstance(pool, PoolError):
        raise Failed(str(pool))
    print(rewind_exclaim(name, pool, "-n" in flags), end="")
    pool.abandon() if "-n" in flags else pool.close()
    return True


def cmd_sync(args: list[str]) -> int:
    opts, names = parse(args, "")
    for pool in each_pool(names):
        pool.sync()
    return 0


def cmd_clear(args: list[str]) -> int:
    opts, names = parse(args, "")
    if not names:
        raise Usage("missing pool name")
    pool = open_pool(names[0])
    try:
        pool.clear_errors()
    finally:
        pool.close()
    return 0


def cmd_scrub(args: list[str]) -> int:
    """zpool scrub: start (or resume) a scrub, pause it (-p), cancel it (-s), wait (-w). The
    owner of the pool runs it: the daemon serving it on a thread of its own, or, for a pool no
    daemon serves, this command to the end before it returns."""
    from fusezfs.engine import scrub as scrubbing
    opts, names = parse(args, "spw")
    flags = {o for o, _ in opts}
    if {"-s", "-p"} <= flags:
        raise Usage("invalid option combination: -s and -p are mutually exclusive")
    if "-w" in flags and flags & {"-s", "-p"}:
        raise Usage("invalid option combination: -w cannot be used with -p or -s")
    if not names:
        raise Usage("missing pool name argument")
    code = 0
    for name in names:
        pool = open_pool(name)
        try:
            scrubber = scrubbing.Scrubber(pool)
            st = scrubbing.load(pool)
            active = st is not None and st.state == "scanning"
            if "-s" in flags or "-p" in flags:
                verb = "cancel" if "-s" in flags else "pause"
                if not active:
                    error(f"cannot {verb} scrubbing {name}: there is no active scrub")
                    code = 1
                elif verb == "pause" and st.paused:
                    error(f"cannot pause scrubbing {name}: scrub is paused; use 'zpool scrub' "
                          f"to resume")
                    code = 1
                else:
                    scrubber.cancel() if verb == "cancel" else scrubber.pause()
                continue
            if active and st.func == "resilver":
                error(f"cannot scrub {name}: currently resilvering")
                code = 1
                continue
            if scrubber.running:
                error(f"cannot scrub {name}: currently scrubbing; use 'zpool scrub -s' to "
                      f"cancel current scrub")
                code = 1
                continue
            scrubber.start()
            if sessions.handle(name) is not None and "-w" not in flags:
                scrubber.in_background()
            else:
                scrubber.run(commit_each=sessions.handle(name) is None)
        finally:
            pool.close()
    return code


def cmd_verify(args: list[str]) -> int:
    opts, names = parse(args, "")
    if len(names) != 1:
        raise Usage("missing pool name" if not names else "too many arguments")
    pool = open_pool(names[0])
    try:
        report = verify(pool)
        if report.ok:   # space accounting of every dataset, recounted from the trees
            report.faults += Datasets(pool).check()
        print(report.text(pool.name))
    finally:
        pool.close()
    return 0 if report.ok else 1


VERBS = {"create": cmd_create, "list": cmd_list, "get": cmd_get, "set": cmd_set,
         "status": cmd_status, "export": cmd_export, "import": cmd_import,
         "destroy": cmd_destroy, "sync": cmd_sync, "clear": cmd_clear, "verify": cmd_verify,
         "scrub": cmd_scrub}


def main(argv: list[str]) -> int:
    if not argv:
        error("missing command")
        error(usage_text(None))
        return 2
    verb = VERBS.get(argv[0])
    if verb is None and argv[0] in DEVICE_VERBS:
        from fusezfs.cli.cli_devices import VERBS as device_verbs  # (it imports this module)
        verb = device_verbs[argv[0]]
    if verb is None:
        error(f"unrecognized command '{argv[0]}'")
        error(usage_text(None))
        return 2
    try:
        return verb(argv[1:])
    except Usage as e:
        if e.message:
            error(e.message)
        error(usage_text(argv[0]))
        return 2
    except Failed as e:
        if e.message:
            error(e.message)
        return e.code
    except PoolError as e:
        error(str(e))
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
