"""`zfs upgrade`: the filesystem (ZPL) versions, which filesystems are out of date, and
upgrading them, in OpenZFS 2.1.11's words (zfs_main.c, zfs_do_upgrade).

Every fusezfs filesystem is at the current version (dsprops.ZPL_VERSION, 5): creating one at an
older version is refused, so the listing finds none out of date, an upgrade counts each
filesystem as already at the version, and asking for an older one is a downgrade, refused per
filesystem as OpenZFS refuses it. The versions are read from each filesystem's `version`
property, so a filesystem at another version would be listed and counted as OpenZFS does.
Nothing is written: upgrading to the version a filesystem has changes nothing.
"""
from __future__ import annotations

from fusezfs.dsl import dsprops
from fusezfs.dsl import properties as props_
from fusezfs.errors import Failed, Usage
from fusezfs.cli.common import error, parse
from fusezfs.cli.cli_pool import imported_names
from fusezfs.cli.cli_zfs import pool_of, session
from fusezfs.dsl.datasets import ROOT_ID, Datasets, Record

VERSIONS = [(1, "Initial ZFS filesystem version"), (2, "Enhanced directory entries"),
            (3, "Case insensitive and filesystem user identifier (FUID)"),
            (4, "userquota, groupquota properties"), (5, "System attributes")]
OUT_OF_DATE = ("The following filesystems are out of date, and can be upgraded.  After being\n"
               "upgraded, these filesystems (and any 'zfs send' streams generated from\n"
               "subsequent snapshots) will no longer be accessible by older software versions.\n")
NEWER = ("The following filesystems are formatted using a newer software version and\n"
         "cannot be accessed on the current system.\n")


def _version(dsl: Datasets, rec: Record) -> int:
    raw = props_.value(dsl, rec, "version")
    return dsprops.ZPL_VERSION if raw in (None, "", "current") else int(raw)


def _filesystems(dsl: Datasets, rec: Record, recursive: bool) -> list[Record]:
    found = [rec] + (dsl.descendants(rec.id) if recursive else [])
    return [r for r in found if r.kind == "filesystem"]


def _open_filesystem(dsl: Datasets, name: str) -> Record:
    """zfs_open(name, ZFS_TYPE_FILESYSTEM) as zfs_for_each does it, with its complaints."""
    if "@" in name:
        raise Failed(f"cannot open '{name}': snapshot delimiter '@' is not expected here")
    if "#" in name:
        raise Failed(f"cannot open '{name}': bookmark delimiter '#' is not expected here")
    rec = dsl.lookup(name)
    if rec is None:
        raise Failed(f"cannot open '{name}': dataset does not exist")
    if rec.kind != "filesystem":
        raise Failed(f"cannot open '{name}': operation not applicable to datasets of this type")
    return rec


def cmd_upgrade(args: list[str]) -> int:
    opts, rest = parse(args, "rvV:a")
    flags = {o for o, _ in opts}
    target = 0
    for o, v in opts:
        if o == "-V":
            number = dict(dsprops._VERSION).get(v)   # the values `version` takes
            if number is None:
                raise Usage(f"invalid version {v}")
            target = number
    recursive, show, every = "-r" in flags, "-v" in flags, "-a" in flags
    if (not every and not rest) and (recursive or target):
        raise Usage()
    if show and (recursive or every or target or rest):
        raise Usage()
    if every and rest:
        raise Usage()
    if show:
        print("The following filesystem versions are supported:\n")
        print("VER  DESCRIPTION\n---  " + "-" * 56)
        for number, what in VERSIONS:
            print(f"{number:2d}   {what}")
        print("\nFor more information on a particular version, including supported releases,\n"
              "see the ZFS Administration Guide.\n")
        return 0
    if every or rest:
        return _upgrade(rest, every, recursive, target or dsprops.ZPL_VERSION)
    return _list_out_of_date()


def _upgrade(names: list[str], every: bool, recursive: bool, target: int) -> int:
    upgraded = same = failed = 0
    status = 0
    todo: list[tuple[str, str]] = [(p, p) for p in imported_names()] if every else \
        [(pool_of(n), n) for n in names]
    for pool, name in todo:
        try:
            with session(pool, name) as dsl:
                top = dsl.record(ROOT_ID) if every else _open_filesystem(dsl, name)
                for rec in _filesystems(dsl, top, recursive or every):
                    have = _version(dsl, rec)
                    if have > target:
                        print(f"{dsl.name(rec.id)}: can not be downgraded; it is already at "
                              f"version {have}")
                        failed += 1
                    elif have < target:            # dsprops refuses any other version
                        props_.set_props(dsl, rec, {"version": str(target)})
                        upgraded += 1
                    else:
                        same += 1
        except Failed as e:
            error(e.message)
            status = 1
    print(f"{upgraded} filesystems upgraded")
    if same:
        print(f"{same} filesystems already at this version")
    return 1 if failed or status else 0


def _list_out_of_date() -> int:
    print(f"This system is currently running ZFS filesystem version {dsprops.ZPL_VERSION}.\n")
    found: dict[bool, list[tuple[int, str]]] = {False: [], True: []}
    for pool in imported_names():
        with session(pool, pool) as dsl:
            for rec in _filesystems(dsl, dsl.record(ROOT_ID), True):
                have = _version(dsl, rec)
                if have != dsprops.ZPL_VERSION:
                    found[have > dsprops.ZPL_VERSION].append((have, dsl.name(rec.id)))
    for newer, header in ((False, OUT_OF_DATE), (True, NEWER)):
        if found[newer]:
            print(header)
            print("VER  FILESYSTEM\n---  ------------")
            for have, name in found[newer]:
                print(f"{have:2d}   {name}")
    if not found[False] and not found[True]:
        print("All filesystems are formatted with the current version.")
    return 0
