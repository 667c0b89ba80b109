"""`zfs create -V SIZE [-b BLOCKSIZE] [-s] [-p] [-o property=value]... VOLUME`.

The checks come in zfs_do_create's and zfs_create's order, with their words: the options
(bad sizes), the operands, the pool, the properties as a volume's (zfs_valid_proplist: those
that do not apply to volumes, such as mountpoint, are refused), the volblocksize warnings, the
size rounded up to a multiple of the block size, the refreservation (unless -s or given), the
ancestors (-p), then the name, parent and existence, and last the geometry (volumes.py). The
volume is made in one txg by volumes.create_volume.
"""
from __future__ import annotations

import sys

from fusezfs.dsl import dsprops
from fusezfs.api import Handle
from fusezfs.errors import Failed
from fusezfs.cli.cli_pool import imported_names
from fusezfs.cli.cli_zfs import (
    check_name,
    dserr,
    one_argument,
    parse_props,
    planned_create,
    pool_of,
    ready_to_create,
    session,
)
from fusezfs.dsl.datasets import DatasetError
from fusezfs.zpl.volumes import volsize_to_reservation


def _size(text: str, what: str) -> int:
    try:
        return dsprops.parse_size(text)
    except dsprops.PropError as e:
        raise Failed(f"bad volume {what} '{text}': {e.message}") from None


def _warn_blocksize(blocksize: int) -> None:
    """default_volblocksize's warning: fusezfs's vdevs allocate 512-byte sectors, so the
    recommended size is always the default."""
    default = dsprops.DEFAULT_VOLBLOCKSIZE
    if blocksize < default:
        print(f"Warning: volblocksize ({blocksize}) is less than the default minimum block "
              f"size ({default}).\nTo reduce wasted space a volblocksize of {default} is "
              f"recommended.", file=sys.stderr)


def create_volume(opts: list[tuple[str, str]], rest: list[str]) -> int:
    volsize = 0
    typed: dict[str, str] = {}
    for opt, val in opts:
        if opt == "-V":
            volsize = _size(val, "size")
        elif opt == "-b":
            typed["volblocksize"] = str(_size(val, "block size"))
    props = parse_props(opts)
    for key, val in typed.items():
        if key in props:
            raise Failed(f"property '{key}' specified multiple times")
        props[key] = val
    if "volsize" in props:
        raise Failed("property 'volsize' specified multiple times")
    sparse = ("-s", "") in opts
    parents = ("-p", "") in opts
    name = one_argument(rest, "volume")
    pool = pool_of(name)
    if pool not in imported_names():
        raise Failed(f"cannot open '{pool}': no such pool")
    dry = ("-n", "") in opts
    try:
        raw = dsprops.validate_props(dict(props, volsize=str(volsize)), dsprops.VOLUME,
                                     creating=True)
    except dsprops.PropError as e:
        raise Failed(f"cannot {'verify' if dry else 'create'} '{name}': {e.message}") from None
    del raw["volsize"]
    blocksize = int(raw.get("volblocksize", dsprops.DEFAULT_VOLBLOCKSIZE))
    if "volblocksize" in raw:
        _warn_blocksize(blocksize)
    raw["volblocksize"] = blocksize
    volsize = -(-volsize // blocksize) * blocksize       # rounded up, as zfs_do_create
    shown = [("volsize", str(volsize)), *props.items()]  # -v/-P: as zfs_do_create lists them
    if not sparse and "refreservation" not in props:
        shown.append(("refreservation", str(volsize_to_reservation(
            volsize, blocksize, int(raw.get("copies", 1))))))
    if planned_create(name, shown, opts):
        return 0
    check_name(name, "create")
    if "/" not in name:
        raise Failed(f"cannot create '{name}': missing dataset name")
    with session(pool, name) as dsl:
        if not ready_to_create(dsl, name, parents):
            return 0
        from fusezfs.zpl.volumes import create_volume as make
        try:
            make(Handle(dsl.pool), name, volsize, raw, sparse=sparse)
        except DatasetError as e:
            raise dserr("create", name, e) from None
    return 0

