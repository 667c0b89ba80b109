"""`zfs bookmark SNAPSHOT|BOOKMARK NEWBOOKMARK` and `zfs destroy FS#BOOKMARK`, as OpenZFS 2.1.11
says them: zfs_main.c's zfs_do_bookmark and the bookmark branch of zfs_do_destroy, with the
kernel's checks in dsl_bookmark.c's order (the name, the filesystem, an existing bookmark,
the source's pool, the source in the filesystem's timeline).

A bookmark is what the dataset layer keeps of a snapshot (Datasets.create_bookmark): it costs
no space and outlives the snapshot, as the source of an incremental send.
"""
from __future__ import annotations

import sys

from fusezfs.errors import Failed, Usage
from fusezfs.cli.common import error, parse
from fusezfs.cli.cli_pool import imported_names
from fusezfs.cli.cli_zfs import pool_of, session
from fusezfs.dsl.datasets import Datasets, Record
from fusezfs.dsl.names import dataset_name_error


def _delim(name: str) -> int:
    """strpbrk(name, "@#"): where the first delimiter is (len(name) if none)."""
    return min((i for i in (name.find("@"), name.find("#")) if i >= 0), default=len(name))


def _open_source(dsl: Datasets, source: str) -> Record:
    """zfs_open of the source as a snapshot or a bookmark (a failure is a usage error: zfs
    prints zfs_open's message, then the usage)."""
    if source[_delim(source)] == "@":
        rec = dsl.lookup(source)
        if rec is None:
            raise Usage(f"cannot open '{source}': dataset does not exist")
        return rec
    rec = dsl.lookup_bookmark(source)
    if rec is None:
        fs = dsl.lookup(source.partition("#")[0])
        raise Usage(f"cannot open '{source}': "
                    + ("no such pool or dataset" if fs is not None else "dataset does not exist"))
    return rec


def _create(dsl: Datasets, bookmark: str, source: Record, source_pool: str) -> str | None:
    """dsl_bookmark_create_check and _sync: None, or the reason zfs_do_bookmark prints."""
    fs = bookmark.partition("#")[0]
    head = dsl.lookup(fs)
    if head is None or head.kind not in ("filesystem", "volume"):
        return "dataset does not exist"                       # ENOENT
    if dsl.lookup_bookmark(bookmark) is not None:
        return "bookmark exists"                              # EEXIST
    if source_pool != dsl.pool.name:
        return "bookmark is in a different pool"              # EXDEV
    if not dsl.is_before(head, source.parent, source.createtxg):
        return "source is not an ancestor of the new bookmark's dataset"
    dsl.create_bookmark(bookmark, source)
    return None


def cmd_bookmark(args: list[str]) -> int:
    _opts, rest = parse(args, "")
    if not rest:
        raise Usage("missing source argument")
    if len(rest) < 2:
        raise Usage("missing bookmark argument")
    source, bookmark = rest[0], rest[1]
    if "@" not in source and "#" not in source:
        raise Usage(f"invalid source name '{source}': must contain a '@' or '#'")
    if "#" not in bookmark:
        raise Usage(f"invalid bookmark name '{bookmark}': must contain a '#'")
    # one of them may be short (@snap, #bm): it takes the other's filesystem
    source_short, bookmark_short = _delim(source) == 0, _delim(bookmark) == 0
    if source_short and bookmark_short:
        sys.stderr.write("either source or bookmark must be specified as full dataset paths")
        raise Usage()
    if bookmark_short:
        bookmark = source[:_delim(source)] + bookmark
    elif source_short:
        source = bookmark[:_delim(bookmark)] + source
    is_snap = source[_delim(source)] == "@"
    why = dataset_name_error(source, snapshot=is_snap, bookmark=not is_snap)
    if why:
        raise Usage(f"cannot open '{source}': {why}")
    if pool_of(source) not in imported_names():
        raise Usage(f"cannot open '{source}': dataset does not exist")
    with session(pool_of(source), source) as dsl:
        src = _open_source(dsl, source)
        # lzc_bookmark goes to the new bookmark's pool; the name is checked first (EINVAL)
        if dataset_name_error(bookmark, bookmark=True):
            why = "invalid argument"
        elif pool_of(bookmark) != dsl.pool.name:
            why = None
        else:
            why = _create(dsl, bookmark, src, dsl.pool.name)
    if why is None and pool_of(bookmark) != pool_of(source):
        if pool_of(bookmark) not in imported_names():
            why = "dataset does not exist"
        else:
            with session(pool_of(bookmark), bookmark) as other:
                why = _create(other, bookmark, src, pool_of(source))
    if why:
        raise Failed(f"cannot create bookmark '{bookmark}': {why}")
    return 0


def destroy_bookmark(name: str, flags: set[str]) -> int:
    """zfs destroy FS#BOOKMARK (zfs_do_destroy): -n, -d, -r and -R are refused (exit 255, no
    usage), -v and -p say nothing; a bookmark that does not exist is an error of its own."""
    for flag, what in (("-n", "dryrun"), ("-d", "defer destroy")):
        if flag in flags:
            error(f"{what} is not supported with bookmark")
            return 255
    if flags & {"-r", "-R"}:
        error("recursive is not supported with bookmark")
        return 255
    rec = None
    if pool_of(name) in imported_names():
        with session(pool_of(name), name) as dsl:
            rec = dsl.lookup_bookmark(name)
            if rec is not None:
                dsl.destroy_bookmark(rec)
    if rec is None:
        error(f"bookmark '{name}' does not exist.")
        return 1
    return 0
