"""`zfs diff [-FHth] SNAPSHOT [SNAPSHOT|FILESYSTEM]`: zfs_do_diff and libzfs's zfs_show_diffs
(names, checks and messages as OpenZFS 2.1.11 has them); the diff itself is fusezfs/send/diff.py.

Where OpenZFS takes a just-in-time snapshot of a filesystem given as the later side, fusezfs
commits the pool and reads the filesystem's tree itself: the same state, and nothing to clean
up. OpenZFS prints paths under the mountpoint the dataset is mounted at and refuses a dataset
that is not mounted; fusezfs works on pools that may not be mounted at all, so it prints them
under the `mountpoint` property and refuses only a filesystem that would not be mounted there
(mountpoint legacy or none, canmount off).
"""
from __future__ import annotations

import os
import sys

from fusezfs.dsl import dsprops
from fusezfs.dsl import properties as props_
from fusezfs.errors import Failed, Usage
from fusezfs.cli.common import error, parse
from fusezfs.cli.cli_pool import imported_names
from fusezfs.cli.cli_zfs import pool_of, session
from fusezfs.dsl.datasets import Datasets, Record
from fusezfs.send.diff import Differ, Flags, Side, changed
from fusezfs.dsl.names import dataset_name_error

NOT_EARLIER = "Not an earlier snapshot from the same fs"
UNMOUNTED = "Cannot diff an unmounted snapshot: operation not applicable to datasets of this type"


def _write(data: bytes) -> None:
    """Bytes to stdout as they are (names need not be UTF-8); through a text stream that has
    no buffer (the daemon's capture) as surrogate-escaped text, which the client turns back
    into the same bytes."""
    buf = getattr(sys.stdout, "buffer", None)
    if buf is None:
        sys.stdout.write(data.decode("utf-8", "surrogateescape"))
    else:
        sys.stdout.flush()
        buf.write(data)


def _open_filesystem(name: str) -> None:
    """zfs_open(NAME, ZFS_TYPE_FILESYSTEM)'s checks and messages."""
    why = dataset_name_error(name)
    if why:
        raise Failed(f"cannot open '{name}': {why}")
    with session(pool_of(name), name) as dsl:
        rec = dsl.lookup(name)
        if rec is None:
            raise Failed(f"cannot open '{name}': dataset does not exist")


def _names(dsl: Datasets, fromsnap: str, tosnap: str | None) -> tuple[str, str, str | None]:
    """get_snapshot_names: (the later side's filesystem, the earlier snapshot's full name, the
    later snapshot's full name or None for the filesystem itself)."""
    if tosnap is None:
        why = dataset_name_error(fromsnap, snapshot=True)
        if why:
            raise Failed(f"Badly formed snapshot name {fromsnap}: {why}")
        return fromsnap.partition("@")[0], fromsnap, None
    fds, fat, fsn = fromsnap.partition("@")
    tds, tat, tsn = tosnap.partition("@")
    fsnlen, tsnlen = len(fat + fsn), len(tat + tsn)
    if fsnlen <= 1 or tsnlen == 1 or (not fds and not tds):
        raise Failed("Unable to determine which snapshots to compare: invalid name")
    if fds and tds and fds != tds:
        # not the same filesystem: may be fine if the later one is a clone of it. libzfs
        # compares only the first fsnlen characters of each origin, and opens an origin that
        # does not match as a filesystem (which its '@' makes fail); the kernel's check
        # (is_before) decides for the rest.
        head = dsl.lookup(tds) if pool_of(tds) == dsl.pool.name else None
        if head is None or head.kind != "filesystem":
            error(f"cannot open '{tds}': dataset does not exist")
        while head is not None:
            if not head.origin:
                head = None
                break
            origin = dsl.name(head.origin)
            if origin[:fsnlen] == fromsnap[:fsnlen]:
                break
            error(f"cannot open '{origin}': snapshot delimiter '@' is not expected here")
            head = None
        if head is None:
            raise Failed(f"{NOT_EARLIER}: invalid name")
        return tds, fromsnap, tosnap if tsnlen else None
    ds = fds or tds
    return ds, ds + fat + fsn, ds + tat + tsn if tsnlen else None


def _mountpoint(dsl: Datasets, rec: Record) -> bytes:
    """get_mountpoint: where the filesystem's paths are shown ("" for "/", as OpenZFS avoids
    a double slash)."""
    chain = props_.chain(dsl, rec)
    mount = dsprops.get_property("mountpoint", "filesystem", chain)[0]
    canmount = dsprops.resolve("canmount", chain).value
    if not mount.startswith("/") or canmount == "off":
        raise Failed(UNMOUNTED)
    return b"" if mount == "/" else os.fsencode(mount)


def cmd_diff(args: list[str]) -> int:
    opts, rest = parse(args, "FHth")
    given = {o for o, _ in opts}
    flags = Flags(classify="-F" in given, scripted="-H" in given, timestamped="-t" in given,
                  no_mangle="-h" in given)
    if not rest:
        raise Usage("must provide at least one snapshot name")
    if len(rest) > 2:
        raise Usage("too many arguments")
    fromsnap, tosnap = rest[0], (rest[1] if len(rest) == 2 else None)
    if not fromsnap.startswith("@"):
        copy = fromsnap
    elif tosnap is not None:
        copy = tosnap
    else:
        raise Usage()
    _open_filesystem(copy.partition("@")[0])
    fds, tds = fromsnap.partition("@")[0], (tosnap or "").partition("@")[0]
    target = tds if fds and tds and fds != tds else copy.partition("@")[0]
    if pool_of(target) not in imported_names():         # (the clone case of _names)
        error(f"cannot open '{target}': dataset does not exist")
        raise Failed(f"{NOT_EARLIER}: invalid name")
    with session(pool_of(target), target) as dsl:
        ds, from_name, to_name = _names(dsl, fromsnap, tosnap)
        head = dsl.lookup(ds)
        if head is None or head.kind != "filesystem":
            raise Failed(f"cannot open '{ds}': dataset does not exist")
        mount = _mountpoint(dsl, head)
        from_fs = from_name.partition("@")[0]
        if from_fs != ds:                    # a clone's origin filesystem must be mounted too
            origin_fs = dsl.lookup(from_fs) if pool_of(from_fs) == dsl.pool.name else None
            if origin_fs is None or origin_fs.kind != "filesystem":
                raise Failed(UNMOUNTED)
            _mountpoint(dsl, origin_fs)
        # ZFS_IOC_DIFF: both snapshots held, then the earlier must be before the later
        later = head if to_name is None else dsl.lookup(to_name)
        earlier = dsl.lookup(from_name) if pool_of(from_name) == dsl.pool.name else None
        if later is None or earlier is None:
            raise Failed("Unable to obtain diffs: No such file or directory")
        if not dsl.is_before(later, earlier.parent, earlier.createtxg):
            raise Failed(f"Unable to obtain diffs: \n   {NOT_EARLIER}")
        if to_name is None:
            dsl.pool.sync()                      # the filesystem's tree as it is now
            to_name = f"{ds}@zfs-diff-{os.getpid()}"      # what OpenZFS's messages name
        old = Side(dsl.tree(earlier), from_name)
        new = Side(dsl.tree(later), to_name)
        differ = Differ(old, new, mount, flags, _write, error)
        code = differ.run(changed(old.tree, new.tree, earlier.createtxg))
        sys.stdout.flush()
    return code
