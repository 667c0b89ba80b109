"""`zfs mount` and `zfs unmount` (also `fusezfs mount`/`unmount`) as the service runs them, over
the mounts of every pool it holds (poolmounts.PoolMounts).

    mount                                   every mounted dataset and where, as zfs lists them
    mount -a                                every filesystem with canmount=on, of every pool
    mount [-o opts] FILESYSTEM              at its mountpoint (canmount=noauto too)
    mount [-o opts] POOL PATH               the pool's tree at PATH (an override of the root's
                                            mountpoint, as -o mountpoint=PATH)
    mount DATASET PATH                      mount(8) of a legacy mountpoint, or a snapshot
                                            (read-only), at PATH
    unmount [-f] -a | FILESYSTEM | PATH     -f: lazily, even while busy

Options (-o) of a pool's mounts: mounts.parse_options; given, the pool's mounts are made anew
with them.
"""
from __future__ import annotations

import os
import sys

from fusezfs.errors import Failed, Usage
from fusezfs.cli.common import parse
from fusezfs.dsl.datasets import ROOT_ID
from fusezfs.host.mounts import MountError, fusermount_unmount, is_mounted, FSTYPE, parse_options

USAGE = {
    "mount": "\tmount\n\tmount [-o opts] <-a | filesystem>\n"
             "\tmount [-o opts] <pool | filesystem | snapshot> <path>",
    "unmount": "\tunmount [-f] <-a | filesystem|mountpoint>",
}


def pool_of(name: str) -> str:
    return name.split("/")[0].split("@")[0]


def run_mount_command(service, argv: list[str]) -> int:
    verb = "unmount" if argv[0] in ("unmount", "umount") else "mount"
    try:
        return (_mount if verb == "mount" else _unmount)(service, argv[1:])
    except Usage as e:
        if e.message:
            print(e.message, file=sys.stderr)
        print("usage:\n" + USAGE[verb], file=sys.stderr)
        return 2
    except (Failed, MountError) as e:
        text = getattr(e, "message", None) if isinstance(e, Failed) else str(e)
        if text:
            print(text, file=sys.stderr)
        return getattr(e, "code", 1)


def _opened(service, name: str, verb: str):
    """(PoolMounts, record) of dataset `name`; Failed in zfs's words."""
    pool = pool_of(name)
    try:
        handle = service.provide(pool)
    except Failed:
        handle = None
    rec = None
    if handle is not None:
        with handle.pool.lock:
            rec = handle.dsl.lookup(name)
    if rec is None:
        raise Failed(f"cannot open '{name}': dataset does not exist")
    return service.pools[pool].mounts, rec


def _mount(service, args: list[str]) -> int:
    opts, rest = parse(args, "ao:fOlv")
    texts = [v for o, v in opts if o == "-o"]
    try:
        options = parse_options(texts)
    except MountError as e:
        raise Failed(str(e)) from None
    if ("-a", "") in opts:
        if rest:
            raise Usage("too many arguments")
        errors: list[str] = []
        for name in sorted(service.pools):
            service.pools[name].mounts.mount_all(errors)
        for line in errors:
            print(line, file=sys.stderr)
        return 1 if errors else 0
    if not rest:
        if texts:
            raise Usage("missing filesystem argument")
        for name in sorted(service.pools):
            for dataset, path in service.pools[name].mounts.listing():
                print(f"{dataset:<30}  {path}")
        return 0
    if len(rest) > 2:
        raise Usage("too many arguments")
    name = rest[0]
    pm, rec = _opened(service, name, "mount")
    if len(rest) == 2 and rec.id == ROOT_ID:
        options["mountpoint"] = os.path.abspath(rest[1])
    if options and rec.id != ROOT_ID:
        raise Failed(f"cannot mount '{name}': mount options apply to a pool's mounts "
                     f"(mount -o OPTIONS POOL [PATH])")
    if options:
        return _remount(service, pm, name, options)
    if service.host.reason is not None:
        raise Failed(f"cannot mount '{name}': FUSE is unavailable here: {service.host.reason}")
    if len(rest) == 2:
        return _mount_at(pm, rec, name, os.path.abspath(rest[1]))
    pm.mount(rec, name)
    return 0


def _remount(service, pm, name: str, options: dict[str, str]) -> int:
    """The pool's mounts made anew with `options` (a mountpoint override among them)."""
    if service.host.reason is not None:
        raise Failed(f"cannot mount '{name}': FUSE is unavailable here: {service.host.reason}")
    if pm.tree_mp is not None and pm.tree_mp == options.get("mountpoint") and \
            pm.options == options:
        return 0                # mounted so already
    errors: list[str] = []
    if not pm.teardown(False, errors):
        raise Failed("\n".join(errors))
    service.options[pm.name] = options
    pm.options = options
    pm.override = options.get("mountpoint")
    pm.unmounted.clear()
    pm.reconcile(errors)
    if errors:
        raise Failed("\n".join(errors))
    return 0


def _mount_at(pm, rec, name: str, path: str) -> int:
    """mount(8) of a dataset at a path of its own (a legacy mountpoint, a snapshot)."""
    if rec.kind not in ("filesystem", "snapshot"):
        raise Failed(f"cannot mount '{name}': not a filesystem")
    where = pm.shown(rec.id)
    if where is not None:
        raise Failed(f"cannot mount '{name}': filesystem already mounted at {where}")
    if pm.ops is None:
        pm._build()
    pm.mount_view(rec, name, path, manual=True)
    pm.save()
    return 0


def _unmount(service, args: list[str]) -> int:
    opts, rest = parse(args, "fau")
    force = ("-f", "") in opts
    if ("-a", "") in opts:
        if rest:
            raise Usage("too many arguments")
        errors: list[str] = []
        for name in sorted(service.pools):
            errors += service.pools[name].mounts.unmount_all(force)
        for line in errors:
            print(line, file=sys.stderr)
        return 1 if errors else 0
    if len(rest) != 1:
        raise Usage("missing filesystem argument" if not rest else "too many arguments")
    target = rest[0]
    if target.startswith("/"):
        path = os.path.normpath(target)
        for pname in sorted(service.pools):
            pm = service.pools[pname].mounts
            for dataset, where in pm.listing():
                if where == path:
                    pm_, rec = _opened(service, dataset, "unmount")
                    pm.unmount(rec, dataset, force)
                    return 0
        if is_mounted(path) == FSTYPE:      # a dead mount a crashed service left behind
            ok, msg = fusermount_unmount(path, lazy=True)
            if ok:
                return 0
            raise Failed(f"cannot unmount '{path}': {msg}")
        raise Failed(f"cannot unmount '{target}': not currently mounted")
    pm, rec = _opened(service, target, "unmount")
    pm.unmount(rec, target, force)
    return 0
