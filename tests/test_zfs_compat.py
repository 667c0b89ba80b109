"""One scripted zfs session, run against zfs-fuse and against fusezfs, step by step.

Both sides get the same pools, made before the session: `tank` and `other`, each on its own
128 MiB sparse file, created with `-m none` so that nothing is mounted (zfs-fuse) and the
mountpoints agree (`none`, inherited from the pool). The steps cover create, set/inherit,
snapshot, clone, promote, rollback, destroy, rename and holds, with `list -H -o name,origin,type`
and `get -H -o name,property,value,source` in between, and a series of deliberate mistakes
whose stderr and exit code must agree.

The comparison is line for line (tests/compat.py) except where a step says why not: where
zfs-fuse (pool version 23, an older zfs command) differs from the OpenZFS manual and fusezfs
follows OpenZFS, the step compares what both must still agree on, or gives zfs-fuse the
equivalent older commands (`alt`). Space values, guids and times are never compared: the steps
ask only for columns that must be equal. Set FUSEZFS_COMPAT_VERBOSE=1 to print both sides of
every step.
"""
from __future__ import annotations

import os

from compat import (Result, S, Step, exact, exit_code, first_err_line, make_files, report,
                    run_fusezfs, run_zfsfuse, sub, usage)
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
# `destroy -v`: the space a destroy would free differs between implementations.
reclaim = sub(r"^(would|will) reclaim .*$", r"\1 reclaim <size>", name="reclaim(size masked)")
# "must be one of '...'" lists the values this zfs knows: OpenZFS 2.2 has more than v23
# (lz4, zstd*, sha512, ...).
one_of = sub(r"must be one of '[^']*'", "must be one of <values>", name="one_of(values masked)")

PROPS = ("compression,atime,readonly,quota,recordsize,mountpoint,canmount,copies,checksum,"
         "snapdir,type,origin,com.example:tag")
GET = f"get -H -o name,property,value,source {PROPS}"
LIST = "list -H -o name,origin,type"


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
    S("list -H -o name,type tank/b tank/a"),
    S(f"{GET} tank/e tank/q", get_rows),
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
    S(f"{GET} -r tank", get_rows),
    S("inherit compression tank/a"),
    S("inherit -r atime tank/b"),
    S("inherit com.example:tag tank/b"),
    S("inherit -r readonly tank/b"),
    S("inherit recordsize tank/a"),
    S("inherit -r snapdir tank"),
    S("set quota=none tank/a"),
    S(f"{GET} -r tank", get_rows),
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
    S("rollback tank/e@e1"),
    S("rollback -r tank/e@e1"),
    S("list -H -o name -t snapshot -r tank/e"),
    S("rollback tank/a@s1"),
    S("rollback -r tank/a@s1"),
    S("snapshot tank/c3@t1"),
    S("snapshot tank/c3@t2"),
    S("snapshot tank/c3@t3"),
    S("clone tank/c3@t2 tank/c4"),
    S("rollback -r tank/c3@t1"),
    S("rollback -R tank/c3@t1"),
    S(f"{LIST} -t all -r tank"),
    # ---- destroy
    S("destroy tank/a@s2"),
    S("destroy tank/b"),
    S("destroy -r tank/a"),
    S("destroy -n -v -r tank/b", reclaim),
    S("destroy -n -v -R tank/a", reclaim),
    S("destroy -n -v tank/a@s1", reclaim),
    S(f"{LIST} -t all -r tank", exact, "the dry runs changed nothing"),
    S("destroy -r tank/b/c"),
    S(f"{LIST} -t all -r tank/b"),
    S("destroy tank/q"),
    S("snapshot tank/e@f1"),
    S("snapshot tank/e@f2"),
    S("snapshot tank/e@f3"),
    S("snapshot tank/e@f4"),
    S("snapshot tank/e@f5"),
    S("snapshot tank/e@f6"),
    S("destroy tank/e@f1,f3"),
    S("destroy tank/e@f4%f5"),
    S("destroy -n -v tank/e@e1%f2", reclaim),
    S("list -H -o name -t snapshot -r tank/e"),
    S("destroy tank/e@f6,nosuch"),
    S("list -H -o name -t snapshot -r tank/e"),
    S("destroy -R tank/a@s2"),
    S(f"{LIST} -t all -r tank"),
    S("destroy tank/x/y"),
    S("destroy -r tank/x"),
    S(f"{LIST} -t all -r tank"),
    # ---- rename: filesystem, -p, snapshot, -r snapshots
    S("rename tank/a tank/a2"),
    S("rename -p tank/a2 tank/n/e/w"),
    S("rename tank/n/e/w@s1 tank/n/e/w@t1"),
    S("rename -r tank/b@r1 tank/b@r2"),
    S("rename tank/c1 tank/b/c1"),
    S(f"{LIST} -t all -r tank"),
    S(f"{GET} -r tank/n tank/b", get_rows),
    # ---- holds
    S("hold keep tank/e@e1"),
    S("holds tank/e@e1", holds),
    S("holds -H tank/e@e1", holds),
    S("hold keep tank/e@e1"),
    S("destroy tank/e@e1"),
    S("release nosuch tank/e@e1"),
    S("hold -r k2 tank/b@r2"),
    S("holds -r -H tank/b@r2", holds),
    S("holds -H tank/e@e1 tank/b@r2", holds),
    S("get -H -o name,property,value userrefs tank/e@e1 tank/b@r2 tank/b/c2@r2"),
    S("release keep tank/e@e1"),
    S("holds tank/e@e1", holds),
    S("release -r k2 tank/b@r2"),
    S("holds -r tank/b@r2", holds),
    S("destroy tank/e@e1"),
    # ---- deliberate mistakes: stderr and exit code
    S("list tank/nosuch"),
    S("list -H -o name tank/b tank/nosuch"),
    S("get -H compression tank/nosuch"),
    S("set atime=on tank/nosuch"),
    S("destroy tank/nosuch"),
    S("destroy tank/nosuch@s"),
    S("destroy tank/e@nosuch"),
    S("destroy tank"),
    S("create tank/nosuch/x"),
    S("create tank/b"),
    S("create tank/b@x"),
    S("create tank//x"),
    S("create tank/bad!name"),
    S("create tank/b/"),
    S("create 1tank/x"),
    S("create nopool/x"),
    S("snapshot tank/nosuch@s"),
    S("snapshot tank/e@f2"),
    S("snapshot tank/e"),
    S("snapshot tank/e@bad!"),
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
    S("inherit quota tank/b", first_err_line,
      "OpenZFS 2.x adds a third line: use 'zfs inherit -S quota' to revert to received value"),
    S("inherit used tank/b"),
    S("inherit canmount tank/b"),
    S("inherit compression tank/e@f2"),
    S("inherit bogus tank/b", usage),
    S("promote tank/b"),
    S("promote tank/nosuch"),
    S("clone tank/e@f2 other/x"),
    S("clone tank/e@nosuch tank/y"),
    S("clone tank/e tank/y"),
    S("clone tank/e@f2 tank/b"),
    S("clone tank/e@f2 tank/nosuch/y"),
    S("rename tank/e other/e"),
    S("rename tank/e tank/b"),
    S("rename tank/b tank/b/x"),
    S("rename tank/e@f2 tank/b@f2"),
    S("rename tank/nosuch tank/z"),
    S("rename tank/e tank/nosuch/z"),
    S("rename -r tank/b tank/z"),
    S("rollback tank/e"),
    S("rollback tank/e@nosuch"),
    S("hold keep tank/e"),
    S("hold keep tank/e@nosuch"),
    S("release keep tank/e@f2"),
    # ---- usage errors: exit 2, first line
    S("create", usage),
    S("create -x tank/y", usage),
    S("create tank/y tank/z", usage),
    S("destroy", usage),
    S("destroy tank/b tank/e", usage),
    S("snapshot", usage),
    S("rollback", usage),
    S("clone tank/e@f2", usage),
    S("promote", usage),
    S("rename tank/e", usage),
    S("list -x", usage),
    S("list -o bogus", usage),
    S("list -t bogus", usage),
    S("get", usage),
    S("get bogus tank", usage),
    S("set", usage),
    S("set atime=on", usage),
    S("set atime tank/b", usage),
    S("inherit", usage),
    S("inherit atime", usage),
    S("hold keep", usage),
    S("release keep", usage),
    S("holds", usage),
    # ---- what is left
    S(f"{LIST} -t all"),
    S(f"{GET} -r tank", get_rows),
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
    dirs = {"zfs-fuse": tmp_path / "zf", "fusezfs": tmp_path / "fz"}
    for d in dirs.values():
        make_files(d, FILES)
    monkeypatch.setenv("FUSEZFS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(dirs["fusezfs"])
    verbose = bool(os.environ.get("FUSEZFS_COMPAT_VERBOSE"))
    mismatches = []
    with ZfsFuse(workdir=tmp_path / "zfsfuse-run") as zf:
        _setup(zf, dirs)
        for i, step in enumerate(SESSION):
            a = run_zfsfuse(zf, "zfs", step, dirs["zfs-fuse"])
            b = run_fusezfs([], step, dirs["fusezfs"])
            if verbose:
                with capsys.disabled():
                    print(f"\n#{i} zfs {' '.join(step.argv)}\n  zfs-fuse: {a}\n  fusezfs:  {b}")
            if step.rule(a) != step.rule(b):
                mismatches.append(report(i, "zfs", step, a, b))
    assert not mismatches, f"{len(mismatches)} of {len(SESSION)} steps differ " \
                           f"(- zfs-fuse, + fusezfs):\n\n" + "\n\n".join(mismatches)
