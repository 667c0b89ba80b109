"""One scripted zpool session, run against zfs-fuse and against `fusezfs pool`, step by step.

Every step runs on both sides (tests/compat.py), each on its own sparse files (same names, in
directories whose paths have the same length, so tables line up) and its own state: zfs-fuse in
a private daemon (tests/zfsfuse.py), fusezfs in-process with its own FUSEZFS_STATE_DIR. The
work directory is written `{D}` in the steps and in the compared output.

Each step names a comparison rule. The default compares exit code, stdout and stderr exactly;
other rules compare only what must agree between implementations (sizes differ, and so do the
parts where fusezfs deliberately follows OpenZFS rather than zfs-fuse's pool version 23: see
docs/reference/zpool.md, "zfs-fuse compared with current OpenZFS"). zfs-fuse's
"Defaulting to 4K blocksize" stderr noise is always dropped.

All mismatches are collected and reported together. To extend the session, add `Step`s to
SESSION; to compare a new kind of output, add a rule (a function from a Result to anything
comparable with ==): here if only zpool's output needs it, in tests/compat.py otherwise.
"""
from __future__ import annotations

import re
from typing import Callable

from compat import (Result, S, Step, assert_same, exact, exit_code, merged, run_session,
                    stdout_only, table, usage, work_dirs)
from zfsfuse import ZfsFuse, require

FILES = [f"d{i}" for i in range(8)]   # 128 MiB sparse files in each side's work directory
EMPTY = "e"                           # an empty directory beside them


# ---- rules specific to zpool ----------------------------------------------------------------
def get_rows(*props: str) -> Callable[[Result], object]:
    """`zpool get` output restricted to the rows of `props` (both implementations have them)."""
    def rule(r: Result):
        rows = [line.split() for line in r.out.splitlines()]
        return (r.code, rows[:1] + [row for row in rows[1:] if row[1] in props], r.err)
    rule.__name__ = f"get_rows{props}"
    return rule


def status(r: Result):
    """`zpool status` without the scan line (` scrub: none requested` in zfs-fuse; OpenZFS 2.x
    prints nothing before the first scan and fusezfs follows it)."""
    out = "".join(line for line in r.out.splitlines(True)
                  if not re.match(r"\s*(scrub|scan): ", line))
    return Result(r.code, out, r.err)


def import_listing(r: Result):
    """`zpool import -d DIR` listing: pool ids are random."""
    return Result(r.code, re.sub(r"(?m)^(    id: )\d+$", r"\1<id>", r.out), r.err)


SETTABLE = ("altroot", "bootfs", "delegation", "autoreplace", "cachefile", "failmode",
            "listsnapshots", "autoexpand", "ashift")
# Not compared: size/free/allocated (implementations differ), guid (random; its source is
# `default` in zfs-fuse, `-` in OpenZFS), version (23 in zfs-fuse, `-` with feature flags in
# OpenZFS), dedupditto (gone from OpenZFS).
COMMON_GET_ALL = SETTABLE + ("capacity", "health", "dedupratio")

SESSION: list[Step] = [
    # -- creating pools: plain, mirror, stripe, with a pool property
    S("create -m none tank {D}/d0"),
    S("create -m none mpool mirror {D}/d1 {D}/d2"),
    S("create -m none spool {D}/d3 {D}/d4"),
    S("create -m none -o autoexpand=on apool {D}/d5"),
    S("list -H -o name,health"),
    S("list -H -o name,cap,dedup,health"),
    S("list -H -o name tank nosuch"),
    S("status mpool spool", status),
    S("status -x"),
    S("status -x tank"),
    # -- properties; zfs-fuse's get has no -H, so its table is compared cell by cell
    S("get " + ",".join(SETTABLE) + " tank", table),
    S("get autoexpand,failmode apool", table),
    S("get health,capacity,dedupratio tank", table),
    # fusezfs's `get all` has OpenZFS's longer list (no dedupditto, version "-", ...):
    # compare the rows both have, in their common order.
    S("get all tank", get_rows(*COMMON_GET_ALL)),
    S("set autoexpand=on tank"),
    S("get autoexpand tank", table),
    S("set autoexpand=off tank"),
    S("get autoexpand tank", table, "back to the default value: source is `default` again"),
    S("set failmode=panic tank"),
    S("set listsnapshots=on tank"),
    S("get failmode,listsnapshots tank", table),
    S("set ashift=9 tank"),
    S("get ashift tank", table),
    S("set autoexpand=maybe tank"),
    S("set failmode=bad tank"),
    S("set size=1G tank"),
    S("set health=x tank"),
    S("set guid=1 tank"),
    S("set bogus=1 tank"),
    S("set altroot=/x tank"),
    S("set version=22 tank"),
    S("get bogus tank", usage),
    S("list -o bogus", usage),
    S("get", exit_code, "OpenZFS prints 'missing property argument' first; zfs-fuse only usage"),
    S("set autoexpand tank", usage),
    S("set autoexpand=on", usage),
    S("set autoexpand=on tank apool", usage),
    # -- unknown pools
    S("list nosuch"),
    S("status nosuch"),
    S("get autoexpand nosuch"),
    S("get autoexpand tank nosuch", table),
    S("set autoexpand=on nosuch"),
    S("export nosuch"),
    S("destroy nosuch"),
    # -- create mistakes (d6 is a fresh file; every attempt must leave it untouched)
    S("create -m none x {D}/nosuch"),
    S("create -m none x nosuch"),
    S("create -m none x {D}"),
    S("create -m none 1tank {D}/d6"),
    S("create -m none ta@nk {D}/d6"),
    S("create -m none ta/nk {D}/d6"),
    S("create -m none mirror {D}/d6"),
    S("create -m none raidz {D}/d6"),
    S("create -m none tank {D}/d6"),
    S("create -m none x {D}/d0"),
    S("create -f -m none x {D}/d0"),
    S("create -m none x {D}/d6 {D}/d6"),
    S("create -m none x mirror {D}/d6"),
    S("create -o bogus=1 -m none x {D}/d6"),
    S("create -o autoexpand=maybe -m none x {D}/d6"),
    S("create -o size=1G -m none x {D}/d6"),
    S("create -o autoexpand -m none x {D}/d6"),
    S("create -m relative x {D}/d6"),
    S("create -m none fresh {D}/d6", exact, "none of the mistakes above touched d6"),
    S("destroy fresh"),
    S("create", usage),
    S("create tank", usage),
    S("create -x tank {D}/d6", usage),
    S("export", usage),
    S("destroy", usage),
    S("destroy tank apool", usage),
    S("list -H -o name"),
    # -- export, reuse of an exported pool's file, import
    S("export apool"),
    S("create -m none x {D}/d5"),
    S("create -f -m none reuse {D}/d5"),
    S("list -H -o name,health"),
    S("destroy reuse"),
    S("export tank"),
    S("list tank"),
    S("get autoexpand tank"),
    S("import -d {D}", import_listing),
    S("import -d {D} nosuch"),
    S("import -d {D} tank"),
    S("import -d {D} tank", exact, "imported already, and no other label of that name"),
    S("export tank"),
    S("create -m none tank {D}/d7"),
    S("import -d {D} tank", exact, "an exported pool whose name is taken"),
    S("destroy tank"),
    S("import -d {D} tank"),
    S("import -d {D} tank", exact, "imported already; a destroyed pool of that name counts"),
    S("list -H -o name,health"),
    S("get failmode,listsnapshots,autoexpand,ashift tank", table),
    S("import -d {D}", exact, "only destroyed pools' files: nothing to import, exit 0"),
    S("import -d {D}/" + EMPTY, stdout_only,
      "no label at all: zfs-fuse (and older libzutil, whose get_configs() returned NULL then) "
      "is silent and exits 1; current OpenZFS says 'no pools available to import' on stderr "
      "and exits 0, and so does fusezfs"),
    # -- destroy
    S("destroy tank"),
    S("destroy mpool"),
    S("destroy spool"),
    S("list"),
    S("list -H"),
    S("status", merged, "no pools: zfs-fuse prints on stdout, OpenZFS 2.x on stderr (fusezfs)"),
    S("status -x", merged, "as `status`"),
]


def test_zpool_session_matches_zfs_fuse(tmp_path, monkeypatch):
    require()
    # Same-length directory names: paths, and so the columns of status tables, line up.
    dirs = work_dirs(tmp_path, monkeypatch, FILES, EMPTY)
    with ZfsFuse(workdir=tmp_path / "zfsfuse-run") as zf:
        failures, pending = run_session(zf, "zpool", ["pool"], SESSION, dirs)
    assert_same(SESSION, failures, pending)
