"""One scripted zfs session, run against zfs-fuse and against fusezfs, step by step.

Both sides get the same pools, made before the session: `tank` and `other`, each on its own
128 MiB sparse file, created with `-m none` so that nothing is mounted (zfs-fuse) and the
mountpoints agree (`none`, inherited from the pool). The steps cover create, set/inherit,
snapshot, clone, promote, rollback, destroy (with its dry runs), rename and holds, with
`list -H -o name,origin,type` and `get -H -o name,property,value,source` in between, and a
series of deliberate mistakes whose stderr and exit code must agree.

The comparison is line for line (tests/compat.py) except where a step says why not. zfs-fuse
is the reference where it agrees with OpenZFS's manual and sources. Where it is older (pool
version 23, Solaris-era libzfs) fusezfs follows current OpenZFS (docs/DESIGN.md), and the step
says so: `words(...)` rewrites zfs-fuse's older wording into OpenZFS's and compares the rest;
`alt` gives zfs-fuse the older equivalent commands where it lacks a syntax; `expect` gives the
answer from OpenZFS's sources (cmd/zfs/zfs_main.c, lib/libzfs/libzfs_dataset.c) where zfs-fuse
has no such feature (`destroy -n/-v`, `zfs holds`) or behaves differently. Space values,
guids and times are never compared. Set FUSEZFS_COMPAT_VERBOSE=1 to print both sides of every
step.
"""
from __future__ import annotations

import os

from compat import (R, S, Step, assert_same, exact, exit_code, first_err_line, head, run_session,
                    sorted_lists, sub, usage, words, work_dirs)
from fusezfs import cli
from zfsfuse import ZfsFuse, require

FILES = ["d0", "d1"]
POOLS = [("tank", "d0"), ("other", "d1")]

# ---- rules specific to zfs ------------------------------------------------------------------
# OpenZFS 2.2 turned compression on by default (zfs-fuse: off); fusezfs follows OpenZFS
# (docs/reference/zfs-props.md, "Decisions"). Only the default's value differs; the source must
# still say `default`.
get_rows = sub(r"^([^\t\n]+\tcompression\t)(?:on|off)(\tdefault)$", r"\1<default>\2",
               name="get(compression default masked)")
# `zfs holds`: the time a hold was taken.
holds = sub(r"[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d [ \d]\d:\d\d \d{4}", "<time>",
            name="holds(time masked)")
# `destroy -v/-p`: the space a destroy would free differs between implementations.
reclaim = sub(r"^((?:would |will )?reclaim)[ \t].*$", r"\1 <size>", name="reclaim(size masked)")
# "must be one of '...'" lists the values this zfs knows: OpenZFS 2.2 has more than v23
# (lz4, zstd*, sha512, ...).
one_of = sub(r"must be one of '[^']*'", "must be one of <values>", name="one_of(values masked)")

# zfs-fuse's older words -> OpenZFS 2.2's (libzfs_dataset.c, zfs_main.c)
ROLLBACK_WORDS = words(
    (r"more recent snapshots exist$", "more recent snapshots or bookmarks exist"),
    (r"following snapshots:$", "following snapshots and bookmarks:"),
    base=sorted_lists, name="rollback(OpenZFS words, lists sorted)")
HOLD_WORDS = words((r"^cannot hold '", "cannot hold snapshot '"), name="hold(OpenZFS words)")
RELEASE_WORDS = words((r"^cannot release '[^']*' from '", "cannot release hold from snapshot '"),
                      name="release(OpenZFS words)")
BUSY_WORDS = words((r"^cannot destroy '([^']*@[^']*)': dataset is busy",
                    r"cannot destroy snapshot \1: dataset is busy"), name="busy(OpenZFS words)")
# zfs_open validates a name against the types it accepts (OpenZFS 0.8+); v23 opened the dataset
# and then complained about its type.
OPEN_TYPE_WORDS = words(("operation not applicable to datasets of this type",
                         "missing '@' delimiter in snapshot name"), name="open(OpenZFS words)")

PROPS = ("compression,atime,readonly,quota,recordsize,mountpoint,canmount,copies,checksum,"
         "snapdir,type,origin,com.example:tag")
GET = f"get -H -o name,property,value,source {PROPS}"
GET_R = f"get -r -H -o name,property,value,source {PROPS}"
LIST = "list -H -o name,origin,type"
LISTING = "lists of dependents sorted: ZFS walks siblings in hash order"


def OZ(cmd: str, alt: list[str], why: str, rule=exact) -> Step:
    """A step using an OpenZFS feature zfs-fuse lacks: zfs-fuse runs `alt` instead."""
    return S(cmd, rule, "OpenZFS: " + why, alt=alt)


SESSION: list[Step] = [
    # ---- create: plain, -p, -o, -p on an existing dataset
    S("create tank/a"),
    S("create -p tank/b/c/d"),
    S("create -o compression=gzip -o atime=off -o com.example:tag=hello tank/e"),
    S("create -o quota=64M -o recordsize=16K tank/q"),
    S("create -p tank/a", exact, "exists already: with -p that is a success"),
    S("create -p -o copies=2 tank/b/c2"),
    S(LIST),
    S(f"{LIST} -r tank/b"),
    S("list -H -o name -d 1 tank"),
    S("list -H -o name -d 0 tank"),
    S("list -H -o name,type tank/b tank/a", exact, "named datasets come sorted"),
    S("list -H -o name tank/a tank/a", exact,
      "OpenZFS: named twice, listed once (zfs_callback's uu_avl_find); v23 lists it twice",
      expect=R(0, "tank/a")),
    S(f"{GET} tank/e tank/q", get_rows),
    S("get -H -o name,value type tank/q tank/e tank/a", exact, "sorted, as list"),
    # ---- set and inherit
    S("set compression=gzip-9 tank/a"),
    OZ("set compression=on atime=off tank/b", ["set compression=on tank/b", "set atime=off tank/b"],
       "`zfs set` takes several property=value pairs (zfs-fuse: one)"),
    S("set readonly=on tank/b/c"),
    S("set quota=100M tank/a"),
    S("set recordsize=32K tank/a"),
    S("set com.example:tag=top tank"),
    S("set com.example:tag=mid tank/b"),
    S("set snapdir=visible tank/b/c"),
    S("set copies=3 tank/b/c/d"),
    S(f"{GET_R} tank", get_rows),
    S("inherit compression tank/a"),
    S("inherit -r atime tank/b"),
    S("inherit com.example:tag tank/b"),
    S("inherit -r readonly tank/b"),
    S("inherit recordsize tank/a"),
    S("inherit -r snapdir tank"),
    S("set quota=none tank/a"),
    S(f"{GET_R} tank", get_rows),
    # ---- snapshots: one, several at once, recursive
    S("snapshot tank/a@s1"),
    OZ("snapshot tank/a@s2 tank/e@e1", ["snapshot tank/a@s2", "snapshot tank/e@e1"],
       "`zfs snapshot` takes several snapshots at once (zfs-fuse: one)"),
    S("snapshot -r tank/b@r1"),
    S("snapshot tank/a@s3"),
    S("snapshot tank/e@e2"),
    S("snapshot tank/e@e3"),
    S(f"{LIST} -t all"),
    S("list -H -o name,type -t snapshot -r tank/b"),
    S("list -H -o name -t snapshot,filesystem -d 1 tank/b"),
    S("list -H -o name,type tank/a@s2 tank/b@r1"),
    S("list -H -o name -t snapshot tank/e", exact,
      "OpenZFS 0.7+: -t snapshot with a filesystem lists its snapshots",
      expect=R(0, "tank/e@e1\ntank/e@e2\ntank/e@e3")),
    S(f"{GET} tank/a@s1 tank/b/c@r1", get_rows),
    S("set com.example:tag=snap tank/a@s1"),
    S("get -H -o name,property,value,source com.example:tag tank/a@s1 tank/a@s2"),
    # ---- clones and promote
    S("clone tank/a@s2 tank/c1"),
    S("snapshot tank/c1@k1"),
    S("clone -p tank/c1@k1 tank/x/y/c2"),
    S("clone -o compression=gzip-1 tank/a@s1 tank/c3"),
    S(f"{LIST} -t all -r tank"),
    S(f"{GET} tank/c1 tank/c3 tank/x/y/c2", get_rows),
    S("promote tank/c1"),
    S(f"{LIST} -t all -r tank"),
    S("promote tank/a"),
    S(f"{LIST} -t all -r tank"),
    S("promote tank/x/y/c2"),
    S(f"{LIST} -t all -r tank"),
    S("promote tank/c1"),
    S(f"{LIST} -t all -r tank"),
    # ---- rollback: to the latest, past later snapshots, past clones
    S("rollback tank/e@e3"),
    S("rollback tank/e@e1", ROLLBACK_WORDS, "OpenZFS 0.8+ words (bookmarks); " + LISTING),
    S("rollback -r tank/e@e1"),
    S("list -H -o name -t snapshot -r tank/e"),
    S("rollback tank/a@s1", ROLLBACK_WORDS, "OpenZFS words; " + LISTING),
    S("rollback -r tank/a@s1", sorted_lists, LISTING),
    S("snapshot tank/c3@t1"),
    S("snapshot tank/c3@t2"),
    S("snapshot tank/c3@t3"),
    S("clone tank/c3@t2 tank/c4"),
    S("rollback -r tank/c3@t1", sorted_lists, LISTING),
    S("rollback -R tank/c3@t1"),
    S(f"{LIST} -t all -r tank"),
    # ---- destroy: refusals (lists of dependents), then fs, -r, snapshots, a,b and a%b forms
    S("destroy tank/a@s2", sorted_lists, LISTING),
    S("destroy tank/b", sorted_lists, LISTING),
    S("destroy -r tank/a", sorted_lists, LISTING),
    S(f"{LIST} -t all -r tank", exact, "the refusals changed nothing"),
    S("destroy -r tank/b/c"),
    S(f"{LIST} -t all -r tank/b"),
    S("destroy tank/q"),
    S("snapshot tank/e@f1"),
    S("snapshot tank/e@f2"),
    S("snapshot tank/e@f3"),
    S("snapshot tank/e@f4"),
    S("snapshot tank/e@f5"),
    S("snapshot tank/e@f6"),
    OZ("destroy tank/e@f1,f3", ["destroy tank/e@f1", "destroy tank/e@f3"], "snapshot lists"),
    OZ("destroy tank/e@f4%f5", ["destroy tank/e@f4", "destroy tank/e@f5"], "snapshot ranges"),
    S("list -H -o name -t snapshot -r tank/e"),
    OZ("destroy tank/e@f6,nosuch", ["destroy tank/e@f6"],
       "names in a list that do not exist are skipped (zfs_iter_snapspec)"),
    S("list -H -o name -t snapshot -r tank/e"),
    S("destroy -R tank/a@s2"),
    S(f"{LIST} -t all -r tank"),
    S("destroy tank/x/y"),
    S("destroy -r tank/x"),
    S(f"{LIST} -t all -r tank"),
    # ---- destroy: dry runs and verbose forms (zfs-fuse has neither -n nor -v nor -p:
    # the expected output is what zfs_do_destroy prints)
    S("create -p tank/d/k1"),
    S("create tank/d/k2"),
    S("snapshot -r tank/d@n1"),
    S("snapshot tank/d/k1@n2"),
    S("clone tank/d/k1@n1 tank/dc"),
    S("snapshot tank/dc@m1"),
    S("destroy -r tank/d", sorted_lists, LISTING),
    S("destroy tank/d/k1@n1", sorted_lists, LISTING),
    S("destroy -r tank/d@n1", sorted_lists, "OpenZFS 0.6.4+: gather_snapshots checks each "
      "snapshot's dependents (v23: 'snapshot is cloned', 'no snapshots destroyed')",
      expect=R(1, "", "cannot destroy 'tank/d/k1@n1': snapshot has dependent clones\n"
                      "use '-R' to destroy the following datasets:\ntank/dc@m1\ntank/dc")),
    S("destroy -nv -R tank/d", exact, "post-order: what depends on a dataset comes first",
      expect=R(0, "would destroy tank/dc@m1\nwould destroy tank/dc\nwould destroy tank/d/k1@n1\n"
                  "would destroy tank/d/k1@n2\nwould destroy tank/d/k1\n"
                  "would destroy tank/d/k2@n1\nwould destroy tank/d/k2\n"
                  "would destroy tank/d@n1\nwould destroy tank/d")),
    S("destroy -nv -r tank/d/k2", expect=R(0, "would destroy tank/d/k2@n1\nwould destroy tank/d/k2")),
    S("destroy -nv tank/d/k1@n1", reclaim, "the snapshots are listed before the check fails",
      expect=R(1, "would destroy tank/d/k1@n1",
               "cannot destroy 'tank/d/k1@n1': snapshot has dependent clones\n"
               "use '-R' to destroy the following datasets:\ntank/dc@m1\ntank/dc")),
    S("destroy -nv -R tank/d/k1@n1", reclaim,
      expect=R(0, "would destroy tank/d/k1@n1\nwould reclaim 0B")),
    S("destroy -nv -r tank/d@n1", reclaim,
      expect=R(1, "would destroy tank/d@n1\nwould destroy tank/d/k1@n1\nwould destroy tank/d/k2@n1",
               "cannot destroy 'tank/d/k1@n1': snapshot has dependent clones\n"
               "use '-R' to destroy the following datasets:\ntank/dc@m1\ntank/dc")),
    S("destroy -np tank/d/k1@n2", reclaim, expect=R(0, "destroy\ttank/d/k1@n2\nreclaim\t0")),
    S(f"{LIST} -t all -r tank/d", exact, "the dry runs changed nothing"),
    S("destroy -v tank/d/k2@n1", reclaim, alt=["destroy tank/d/k2@n1"],
      expect=R(0, "will destroy tank/d/k2@n1\nwill reclaim 0B")),
    S("destroy -Rv tank/d/k1@n1", reclaim, "the clones are destroyed after the snapshots' reclaim",
      alt=["destroy -R tank/d/k1@n1"],
      expect=R(0, "will destroy tank/d/k1@n1\nwill reclaim 0B\nwill destroy tank/dc@m1\n"
                  "will destroy tank/dc")),
    S(f"{LIST} -t all -r tank"),
    S("destroy -rv tank/d", alt=["destroy -r tank/d"],
      expect=R(0, "will destroy tank/d/k1@n2\nwill destroy tank/d/k1\nwill destroy tank/d/k2\n"
                  "will destroy tank/d@n1\nwill destroy tank/d")),
    S(f"{LIST} -t all -r tank"),
    # ---- rename: filesystem, -p, snapshot (full and short target), -r snapshots
    S("rename tank/a tank/a2"),
    S("rename -p tank/a2 tank/n/e/w"),
    S("rename tank/n/e/w@s1 tank/n/e/w@t1"),
    S("rename tank/n/e/w@t1 t0", exact, "a snapshot's new name may be given alone"),
    S("rename tank/n/e/w@t0 @t1"),
    S("rename -r tank/b@r1 tank/b@r2"),
    S("rename tank/c1 tank/b/c1"),
    S(f"{LIST} -t all -r tank"),
    S(f"{GET_R} tank/n tank/b", get_rows),
    # ---- holds (zfs-fuse has hold and release but no `zfs holds`: that one is expected from
    # zfs_do_holds, whose NAME and TAG columns are as wide as their longest value)
    S("hold keep tank/e@e1"),
    S("holds tank/e@e1", holds, expect=R(0, "NAME       TAG   TIMESTAMP\ntank/e@e1  keep  <time>")),
    S("holds -H tank/e@e1", holds, expect=R(0, "tank/e@e1\tkeep\t<time>")),
    S("hold keep tank/e@e1", HOLD_WORDS, "OpenZFS words"),
    S("destroy tank/e@e1", BUSY_WORDS, "OpenZFS words (zfs_destroy_snaps_nvl)"),
    S("release nosuch tank/e@e1", RELEASE_WORDS, "OpenZFS words"),
    S("hold -r k2 tank/b@r2"),
    S("holds -r -H tank/b@r2", holds, expect=R(0, "tank/b@r2\tk2\t<time>\ntank/b/c2@r2\tk2\t<time>")),
    S("holds -H tank/e@e1 tank/b@r2", holds,
      expect=R(0, "tank/e@e1\tkeep\t<time>\ntank/b@r2\tk2\t<time>")),
    S("holds tank/e@nosuch", expect=R(1, "NAME  TAG  TIMESTAMP",
                                      "cannot open 'tank/e@nosuch': dataset does not exist\n"
                                      "no datasets available")),
    S("holds tank/e", expect=R(1, "NAME  TAG  TIMESTAMP",
                               "'tank/e' is not a snapshot\nno datasets available")),
    S("get -H -o name,property,value userrefs tank/e@e1 tank/b@r2 tank/b/c2@r2"),
    S("release keep tank/e@e1"),
    S("holds tank/e@e1", holds, expect=R(0, "NAME       TAG  TIMESTAMP")),
    S("release -r k2 tank/b@r2"),
    S("holds -r tank/b@r2", holds, expect=R(0, "NAME          TAG  TIMESTAMP")),
    S("destroy tank/e@e1"),
    S("hold .x tank/e@f2", exact, "the whole usage text: zfs-fuse's and OpenZFS's are the same"),
    # ---- deliberate mistakes: stderr and exit code
    S("list tank/nosuch"),
    S("list -H -o name tank/b tank/nosuch"),
    S("get -H compression tank/nosuch"),
    S("set atime=on tank/nosuch"),
    S("destroy tank/nosuch"),
    S("destroy tank/nosuch@s", exact, "OpenZFS opens the filesystem first",
      expect=R(1, "", "cannot open 'tank/nosuch': dataset does not exist")),
    S("destroy tank/e@nosuch", exact, "OpenZFS: gather_snapshots found nothing",
      expect=R(1, "", "could not find any snapshots to destroy; check snapshot names.")),
    S("destroy -d tank/e", exact, "-d opens the argument as a snapshot",
      expect=R(1, "", "cannot open 'tank/e': missing '@' delimiter in snapshot name")),
    S("destroy tank"),
    S("create tank/nosuch/x"),
    S("create tank/b"),
    S("create -o bogus=1 tank/b", exact, "existence is checked before properties"),
    S("create -o atime tank/y", words(("missing '=' for -o option",
                                       "missing '=' for property=value argument")),
      "OpenZFS words (parseprop)"),
    S("create tank/b@x", words(("snapshot delimiter '@' in filesystem name",
                                "snapshot delimiter '@' is not expected here")), "OpenZFS words"),
    S("create tank//x", words(("empty component in name",
                               "empty component or misplaced '@' or '#' delimiter in name")),
      "OpenZFS words"),
    S("create tank/bad!name"),
    S("create tank/b/"),
    S("create 1tank/x", exact, "only pool names must begin with a letter"),
    S("create nopool/x"),
    S("snapshot tank/nosuch@s", head(2), "zfs_do_snapshot: usage after zfs_open's message",
      expect=R(2, "", "cannot open 'tank/nosuch': dataset does not exist\nusage:")),
    S("snapshot tank/e@f2"),
    S("snapshot tank/e@f2 tank/b@f9", exact, "OpenZFS: several snapshots at once, none made",
      expect=R(1, "", "cannot create snapshot 'tank/e@f2': dataset already exists\n"
                      "no snapshots were created")),
    S("snapshot tank/e", head(1), "zfs_do_snapshot: no '@' is a usage error",
      expect=R(2, "", "usage:")),
    S("snapshot 'tank/e@bad!'", words((r"^cannot snapshot '", "cannot create snapshot '")),
      "OpenZFS words (zfs_snapshot_nvl)"),
    S("snapshot -o compression=on tank/e@x",
      words((r"^cannot snapshot '[^']*': this", "cannot create snapshots : this")),
      "OpenZFS words (zfs_snapshot_nvl's errbuf, space included)"),
    S("set bogus=1 tank/b"),
    S("set compression=maybe tank/b", one_of),
    S("set atime=maybe tank/b"),
    S("set quota=abc tank/b"),
    S("set quota=1Q tank/b"),
    S("set recordsize=3K tank/b", exit_code,
      "OpenZFS: 'must be power of 2 from 512B to 1M'; v23: 'from 512 to 128k'"),
    S("set used=1 tank/b"),
    S("set mountpoint=relative tank/b"),
    S("set compression=on tank/e@f2"),
    S("set copies=2 tank/nosuch"),
    S("set atime tank/b", exact, "zfs_do_set: the datasets start at the first argument without '='",
      expect=R(1, "", "cannot open 'atime': dataset does not exist")),
    S("set atime=on tank/b compression=on", head(1), expect=R(2, "", "invalid argument order")),
    S("inherit quota tank/b", first_err_line,
      "OpenZFS 2.x adds a third line: use 'zfs inherit -S quota' to revert to received value"),
    S("inherit used tank/b"),
    S("inherit canmount tank/b"),
    S("inherit compression tank/e@f2"),
    S("inherit bogus tank/b", usage),
    S("promote tank/b"),
    S("promote tank/nosuch"),
    S("promote tank/e@f2", exact, "zfs_open(FS|VOL) refuses a snapshot's name",
      expect=R(1, "", "cannot open 'tank/e@f2': snapshot delimiter '@' is not expected here")),
    S("clone tank/e@f2 other/x"),
    S("clone tank/e@nosuch tank/y"),
    S("clone tank/e tank/y", OPEN_TYPE_WORDS, "OpenZFS words"),
    S("clone tank/e@f2 tank/b"),
    S("clone tank/e@f2 tank/nosuch/y"),
    S("rename tank/e other/e"),
    S("rename tank/e tank/b"),
    S("rename tank/b tank/b/x"),
    S("rename tank/e@f2 tank/b@f2"),
    S("rename tank/nosuch tank/z"),
    S("rename tank/e tank/nosuch/z"),
    S("rename -r tank/b tank/z", usage),
    S("rollback tank/e", OPEN_TYPE_WORDS, "OpenZFS words"),
    S("rollback tank/e@nosuch"),
    S("hold keep tank/e"),
    S("hold keep tank/e@nosuch", HOLD_WORDS, "OpenZFS words"),
    S("release keep tank/e@f2", RELEASE_WORDS, "OpenZFS words"),
    S("list tank/b -H -o name", exact, "glibc's getopt takes options after operands"),
    # ---- usage errors: exit 2; the first line, or all where the usage texts are the same
    S("create", usage),
    S("create -x tank/y", usage),
    S("create tank/y tank/z", usage),
    S("destroy", words(("missing path argument", "missing dataset argument"), base=usage),
      "OpenZFS words"),
    S("destroy tank/b tank/e", usage),
    S("snapshot", usage),
    S("rollback"),
    S("clone tank/e@f2"),
    S("promote"),
    S("rename tank/e", usage),
    S("list -x", usage),
    S("list -o bogus", usage),
    S("list -t bogus", usage),
    S("get", usage),
    S("get bogus tank", usage),
    S("set", head(1), "OpenZFS 0.8+ words (several properties)",
      expect=R(2, "", "missing arguments")),
    S("set atime=on", head(1), "OpenZFS words", expect=R(2, "", "missing dataset name(s)")),
    S("inherit", usage),
    S("inherit atime", usage),
    S("hold keep"),
    S("release keep"),
    S("holds", head(1), "zfs_do_holds: the usage alone", expect=R(2, "", "usage:")),
    # ---- what is left
    S(f"{LIST} -t all"),
    S(f"{GET_R} tank", get_rows),
    S("list -H -o name,type,com.example:tag -t all -r tank"),
]


def _setup(zf: ZfsFuse, dirs: dict) -> None:
    for pool, dev in POOLS:
        argv = ["create", "-m", "none", pool]
        r = zf.zpool(*argv, dirs["zfs-fuse"] / dev, busy_retries=10)
        assert r.returncode == 0, r.stderr
        code = cli.main(["pool", *argv, str(dirs["fusezfs"] / dev)])
        assert code == 0


def test_zfs_session_matches_zfs_fuse(tmp_path, monkeypatch, capsys):
    require()
    dirs = work_dirs(tmp_path, monkeypatch, FILES)
    verbose = bool(os.environ.get("FUSEZFS_COMPAT_VERBOSE"))
    with ZfsFuse(workdir=tmp_path / "zfsfuse-run") as zf:
        _setup(zf, dirs)
        with capsys.disabled():
            failures, pending = run_session(zf, "zfs", [], SESSION, dirs, verbose)
    assert_same(SESSION, failures, pending)
