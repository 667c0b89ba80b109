"""Changing a pool's devices: attach, detach, replace, offline, online, add.

Theory of operation. The pool's topology lives in the label config of every leaf (a generation
number orders them; import takes the newest config any present leaf carries). A change is
applied to the open pool in memory, then written to every live leaf's labels (each label is
rewritten whole, one at a time with a flush between: one of the two is whole whatever moment
power fails), then the txg is committed. So a crash leaves either the old or the new config as
the newest one found, and both describe devices that hold everything the committed txg needs:

* attach adds a side to a mirror (a single-file vdev becomes one). The new side holds nothing
  yet: it is marked `resilvering` (recorded in the config, so an interrupted resilver resumes
  after import) and only written to, never trusted, until the resilver — a scrub that rewrites
  every copy the new side lacks, without counting those as errors — is done. New writes reach
  it from the moment it is attached.
* detach removes a side (never the last live one) and clears that file's labels, so it is not
  found as part of the pool again.
* replace is attach, a resilver to the end, then detach of the old side.
* offline stops reading and writing a side (never the last live one); online brings it back
  (reopening its file if it was missing) and resilvers it, since it missed every write between.
* add makes new top-level vdevs: the allocator gains their space, nothing moves.
"""
from __future__ import annotations

import os

from fusezfs.engine.devices import Device, FileDevice
from fusezfs.formats import label as fl
from fusezfs.engine.pool import Pool, PoolError, lock_device, new_guid, read_label
from fusezfs.engine.scrub import Scrubber
from fusezfs.engine.vdevs import Leaf, TopVdev


class TopologyError(PoolError):
    """A device change refused; the message is zpool's."""


def find_leaf(pool: Pool, name: str) -> tuple[TopVdev, Leaf]:
    """The leaf a zpool command names: its path (as given or absolute), its basename, or guid."""
    for top in pool.tops.values():
        for leaf in top.leaves:
            if leaf.path in (name, os.path.abspath(name)) or name == str(leaf.guid) or \
                    os.path.basename(leaf.path) == name:
                return top, leaf
    raise TopologyError("no such device in pool")


def open_new_device(path: str, force: bool, at_least: int, what: str) -> FileDevice:
    """A file to add to the pool: it must exist, be large enough and belong to no pool (unless
    forced)."""
    try:
        dev = FileDevice(path)
    except OSError as e:
        raise TopologyError(f"cannot open '{path}': {e.strerror}") from None
    try:
        if dev.size < at_least:
            raise TopologyError(f"{what}: device is too small")
        config = read_label(dev)
        if config is not None and config.get("state") != "destroyed" and not force:
            # make_root_vdev's words (zpool create, add, attach and replace alike)
            kind = "exported" if config.get("state") == "exported" else "active"
            raise TopologyError(f"invalid vdev specification\nuse '-f' to override the "
                                f"following errors:\n{dev.path} is part of {kind} pool "
                                f"'{config.get('name')}'")
        lock_device(dev)
    except BaseException:
        dev.close()
        raise
    return dev


def clear_labels(dev) -> None:
    """Zero both config areas: the file no longer reads as a member of the pool."""
    for off in fl.label_offsets(dev.size):
        dev.write(off, bytes(fl.CONFIG_SIZE))
    dev.flush()


def commit(pool: Pool) -> None:
    with pool.lock:
        pool.write_labels()
        pool.sync(force=True)


# ---- the changes ---------------------------------------------------------------------------
def attach(pool: Pool, existing: str, new: str | Device, force: bool = False,
           replacing: bool = False) -> Leaf:
    """Attach the file `new` (or a device already open: the crash tests' spare) as a new
    side of `existing`'s vdev; the caller runs the resilver this starts."""
    top, leaf = find_leaf(pool, existing)
    if isinstance(new, str):
        what = f"cannot attach {new} to {existing}"
        dev = open_new_device(new, force, top.end + fl.LABEL_SIZE, what)
    else:
        dev = new
    side = Leaf(dev, new_guid(), resilvering=True)
    with pool.lock:
        # a replacement takes the place of the side it replaces (zpool status lists it there)
        top.leaves.insert(top.leaves.index(leaf) + 1 if replacing else len(top.leaves), side)
        top.kind = "mirror"
        top.changed()
        commit(pool)
    Scrubber(pool).start("resilver")
    return side


def detach(pool: Pool, name: str) -> None:
    top, leaf = find_leaf(pool, name)
    if top.kind != "mirror" or len(top.leaves) < 2:
        raise TopologyError(f"cannot detach {name}: only applicable to mirror and replacing vdevs")
    if leaf.live and len(top.live) == 1:
        raise TopologyError(f"cannot detach {name}: no valid replicas")
    with pool.lock:
        top.leaves.remove(leaf)
        top.changed()
        if len(top.leaves) == 1:
            top.kind = "file"
        commit(pool)
    if not leaf.missing:
        clear_labels(leaf.device)
        leaf.device.close()


def offline(pool: Pool, name: str, temporary: bool = False) -> None:
    top, leaf = find_leaf(pool, name)
    if leaf.live and len(top.live) == 1:
        raise TopologyError(f"cannot offline {name}: no valid replicas")
    with pool.lock:
        leaf.offline, leaf.temporary = True, temporary
        top.changed()
        commit(pool)


def online(pool: Pool, name: str) -> str | None:
    """Bring a leaf back and resilver it; a warning if its file still cannot be opened."""
    top, leaf = find_leaf(pool, name)
    with pool.lock:
        if leaf.missing:
            try:
                dev = FileDevice(leaf.path)
                lock_device(dev, pool.name)
            except (OSError, PoolError):
                return (f"warning: device '{name}' onlined, but remains in faulted state\n"
                        f"use 'zpool replace' to replace devices that are no longer present")
            leaf.device = dev
        leaf.offline = leaf.temporary = False
        leaf.resilvering = True
        top.changed()
        commit(pool)
    Scrubber(pool).start("resilver")
    return None


def add(pool: Pool, topology: list[tuple[str, list[str]]], force: bool = False) -> None:
    """New top-level vdevs, one per (kind, paths)."""
    tops = []
    try:
        for kind, paths in topology:
            devs = [open_new_device(p, force, 2 << 20, f"cannot add to '{pool.name}'")
                    for p in paths]
            tops.append((kind, devs))
    except BaseException:
        for _k, devs in tops:
            for d in devs:
                d.close()
        raise
    with pool.lock:
        for kind, devs in tops:
            vid = max(pool.tops) + 1
            top = TopVdev(vid, kind, new_guid(), [Leaf(d, new_guid()) for d in devs])
            pool.tops[vid] = top
            pool.allocator.add_vdev(vid, top.start, top.end)
        commit(pool)
