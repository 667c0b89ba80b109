"""zpool attach, detach, replace, offline, online and add: the command line over topology.py.

Messages and exit codes are zpool's. A resilver the change starts runs where the pool's owner
is: on the serving daemon's thread (the command returns at once, `zpool status` follows it), or
to the end in this command when the command owns the pool itself (`-w` waits in both cases).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from fusezfs import sessions
from fusezfs.engine import topology
from fusezfs.host import registry
from fusezfs.errors import Failed, Usage
from fusezfs.cli.common import error, parse
from fusezfs.cli.cli_pool import open_pool, parse_vdevs
from fusezfs.cli.cli_replication import check_add
from fusezfs.engine.pool import Pool, PoolError
from fusezfs.engine.scrub import Scrubber

USAGE = {
    "add": "\tadd [-f] <pool> <vdev> ...",
    "attach": "\tattach [-fw] <pool> <device> <new-device>",
    "detach": "\tdetach <pool> <device>",
    "replace": "\treplace [-fw] <pool> <device> <new-device>",
    "offline": "\toffline [-t] <pool> <device> ...",
    "online": "\tonline <pool> <device> ...",
    "iostat": "\tiostat [-Hpv] [pool] ...",
}


def _remember(pool: Pool, name: str) -> None:
    """The registry lists the pool's files, so that the next command opens all of them."""
    registry.add(name, pool.guid, [leaf.path for leaf in pool.leaves()])


def _resilver(pool: Pool, name: str, wait: bool) -> None:
    scrubber = Scrubber(pool)
    if sessions.handle(name) is not None and not wait:
        scrubber.in_background()
    else:
        scrubber.run(commit_each=sessions.handle(name) is None)


def _pool_and_rest(args: list[str], shortopts: str, missing: list[str]):
    """Options, the pool's name and the operands after it; `missing[i]` is zpool's complaint
    when only i operands follow the pool name."""
    opts, rest = parse(args, shortopts)
    if not rest:
        raise Usage("missing pool name argument")
    if len(rest) - 1 < len(missing):
        raise Usage(missing[len(rest) - 1])
    return {o for o, _ in opts}, rest[0], rest[1:]


@contextmanager
def _refused_as(what: str) -> Iterator[None]:
    """zpool's words and exit for a failed attach, replace or detach (`what`: "cannot attach X
    to Y"): the vdev specification refused (make_root_vdev) exits 1; the operation refused by
    the pool (zpool_vdev_attach/detach return -1) exits 255."""
    try:
        yield
    except PoolError as e:
        msg = str(e)
        if msg.startswith(("invalid vdev specification", "cannot open '")):
            raise Failed(msg) from None
        raise Failed(msg if msg.startswith("cannot ") else f"{what}: {msg}", code=255) from None


def cmd_attach(args: list[str]) -> int:
    flags, name, rest = _pool_and_rest(args, "fw", ["missing <device> specification",
                                                    "missing <new_device> specification"])
    if len(rest) > 2:
        raise Usage("too many arguments")
    device, new = rest
    pool = open_pool(name)
    try:
        with _refused_as(f"cannot attach {new} to {device}"):
            topology.attach(pool, device, new, force="-f" in flags)
            _remember(pool, name)
        _resilver(pool, name, "-w" in flags)
    finally:
        pool.close()
    return 0


def cmd_replace(args: list[str]) -> int:
    flags, name, rest = _pool_and_rest(args, "fw", ["missing <device> specification"])
    if len(rest) > 2:
        raise Usage("too many arguments")
    old = rest[0]
    new = rest[1] if len(rest) > 1 else rest[0]
    if new == old:
        raise Failed(f"cannot replace {old} with {new}: a device cannot replace itself here; "
                     f"name a new device")
    pool = open_pool(name)
    try:
        with _refused_as(f"cannot replace {old} with {new}"):
            topology.find_leaf(pool, old)
            topology.attach(pool, old, new, force="-f" in flags, replacing=True)
            Scrubber(pool).run(commit_each=True)         # a replace resilvers to the end
            topology.detach(pool, old)
            _remember(pool, name)
    finally:
        pool.close()
    return 0


def cmd_detach(args: list[str]) -> int:
    flags, name, rest = _pool_and_rest(args, "", ["missing <device> specification"])
    if len(rest) > 1:
        raise Usage("too many arguments")
    pool = open_pool(name)
    try:
        with _refused_as(f"cannot detach {rest[0]}"):
            topology.detach(pool, rest[0])
            _remember(pool, name)
    finally:
        pool.close()
    return 0


def cmd_offline(args: list[str]) -> int:
    flags, name, rest = _pool_and_rest(args, "t", ["missing device name"])
    pool = open_pool(name)
    code = 0
    try:
        for dev in rest:
            try:
                topology.offline(pool, dev, temporary="-t" in flags)
            except PoolError as e:
                msg = str(e)
                error(msg if msg.startswith("cannot ") else f"cannot offline {dev}: {msg}")
                code = 1
    finally:
        pool.close()
    return code


def cmd_online(args: list[str]) -> int:
    flags, name, rest = _pool_and_rest(args, "", ["missing device name"])
    pool = open_pool(name)
    code = 0
    try:
        started = False
        for dev in rest:
            try:
                warning = topology.online(pool, dev)
            except PoolError as e:
                error(f"cannot online {dev}: {e}")
                code = 1
                continue
            if warning:
                error(warning)
            else:
                started = True
        if started:
            _resilver(pool, name, False)
    finally:
        pool.close()
    return code


def cmd_add(args: list[str]) -> int:
    flags, name, rest = _pool_and_rest(args, "f", ["missing vdev specification"])
    pool = open_pool(name)
    try:
        try:
            spec = parse_vdevs(name, rest)
            check_add([(t.kind, len(t.leaves)) for _, t in sorted(pool.tops.items())], spec,
                      "-f" in flags)
            topology.add(pool, spec, force="-f" in flags)
            _remember(pool, name)
        except PoolError as e:
            msg = str(e)
            raise Failed(msg if msg.startswith("cannot ") else
                         f"cannot add to '{name}': {msg}") from None
    finally:
        pool.close()
    return 0


def cmd_iostat(args: list[str]) -> int:
    from fusezfs.cli.cli_iostat import cmd_iostat as iostat
    return iostat(args)


VERBS = {"add": cmd_add, "attach": cmd_attach, "detach": cmd_detach, "replace": cmd_replace,
         "offline": cmd_offline, "online": cmd_online, "iostat": cmd_iostat}
