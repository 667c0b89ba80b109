"""zpool's device verbs (attach, detach, replace, offline, online, add, clear) and the states
they lead to (DEGRADED, OFFLINE, mirrors made and unmade), run as one scripted session against
zfs-fuse and against `fusezfs pool`, step by step, with the harness of test_zpool_compat.py
(tests/compat.py): exit codes, messages and `status` tables compared."""
from __future__ import annotations

import re

from compat import Result, S, Step, assert_same, exact, run_session, table, work_dirs
from test_zpool_compat import status
from zfsfuse import ZfsFuse, require


def resilvered(r: Result):
    """`status` without the scan line (test_zpool_compat.status) and without zfs-fuse's
    "376K resilvered" after a finished resilver's device: OpenZFS 2.x notes a device only while
    it resilvers ("  (resilvering)", print_status_config), and fusezfs follows it."""
    r = status(r)
    return Result(r.code, re.sub(r"  \S+ resilvered$", "", r.out, flags=re.M), r.err)

FILES = [f"d{i}" for i in range(8)]

SESSION: list[Step] = [
    S("create -m none m mirror {D}/d0 {D}/d1"),
    S("create -m none s {D}/d2"),
    S("status m s", status),
    # -- a single file made a mirror, and back
    S("attach s {D}/d2 {D}/d3"),
    S("status s", resilvered),
    S("list -H -o name,health"),
    S("detach s {D}/d3"),
    S("status s", status),
    S("detach s {D}/d2", exact, "the last side of a plain vdev"),
    S("attach s {D}/nosuch {D}/d3"),
    S("attach s {D}/d2 {D}/nosuch"),
    S("attach nosuch {D}/d2 {D}/d3"),
    S("attach s {D}/d2 {D}/d0", exact, "a side already in another pool"),
    # -- offline and online
    S("offline m {D}/d1"),
    S("status m", status),
    S("list -H -o name,health"),
    S("status -x", status),
    S("offline m {D}/d0", exact, "the last healthy side of the mirror"),
    S("online m {D}/d1"),
    S("status m", resilvered),
    S("offline s {D}/d2", exact, "no other replica"),
    S("offline m {D}/nosuch"),
    S("online m {D}/nosuch"),
    S("offline -t m {D}/d1"),
    S("get health m", table, pending="offline -t lasts while the pool stays imported: with "
      "the service it does; a command run in its own process (FUSEZFS_NO_SERVICE, as here) "
      "imports the pool anew, and a temporary offline is not kept in the labels"),
    S("online m {D}/d1"),
    # -- replace, add, clear
    S("replace m {D}/d0 {D}/d4"),
    S("status m", resilvered, "the new side takes the replaced one's place"),
    S("replace m {D}/nosuch {D}/d5"),
    S("add s {D}/d5"),
    S("status s", status),
    S("add s mirror {D}/d6 {D}/d7", exact, "a mirror beside plain files: -f needed"),
    S("clear m"),
    S("clear nosuch"),
    S("list -H -o name,health"),
    S("destroy m"),
    S("destroy s"),
]


def test_device_session_matches_zfs_fuse(tmp_path, monkeypatch):
    require()
    dirs = work_dirs(tmp_path, monkeypatch, FILES)
    with ZfsFuse(workdir=tmp_path / "zfsfuse-run") as zf:
        failures, pending = run_session(zf, "zpool", ["pool"], SESSION, dirs)
    assert_same(SESSION, failures, pending)
