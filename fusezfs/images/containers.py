"""Containers: `container create`, `rm`, `ls` and `commit`, as Docker's ZFS driver makes them.

Theory of operation
-------------------
Docker gives every container two layers above its image (daemon/create.go, the graph driver's
Create): `<id>-init`, a clone of the image's top layer into which the daemon writes the few
files every container needs (daemon/initlayer: /dev/pts, /dev/shm, /proc, /sys, /.dockerenv,
/etc/resolv.conf, /etc/hosts, /etc/hostname, /dev/console, and /etc/mtab -> /proc/mounts;
each only if the image lacks it), and `<id>`, a clone of the init layer's snapshot: the
container's writable root filesystem. Both are clones, O(1) whatever the image's size, and
share every block with the image until the container writes. The container's dataset is
mounted with the pool (canmount=on) at `<graph>/<id>`, with the mountpoint the store gives it
(Store.container_props: its own `<graph directory>/<id>` when the store has one, Docker's
/var/lib/docker/zfs/graph for one, else inherited from the store); the init layer, as every
layer, has mountpoint=legacy and canmount=noauto: never mounted by path (Docker unmounts it
once written).

Creating one costs two txg commits: the init layer's files (before its snapshot), then the
snapshot, the clone and the record together.

`rm` destroys both (the container's dataset first: it is the init snapshot's clone). A
container's dataset that a mount has files open in is not destroyed (zfs destroy's rule)
unless forced.

`commit` turns the container's changes into a new image layer: a snapshot of the container,
the changes between the init layer's snapshot and it (layerdiff.py: what the container itself
changed, not the init files), written as a layer tar, which is applied to a clone of the
image's top layer exactly as an imported layer would be (importer.build_layer: the same
applier, the same digest checks), so the new layer is an ordinary one: its chain id is the
image's top chain id and the tar's diff id, and an export gives back the same tar. The new
image's config is the old one with that diff id appended to rootfs.diff_ids and a history
entry; its id is the config's digest. The temporary snapshot is destroyed.
"""
from __future__ import annotations

import errno
import json
import re
import secrets
import tempfile
import time

from fusezfs import sessions
from fusezfs.dsl.datasets import DatasetError
from fusezfs.images.archive import familiar, sha256
from fusezfs.images.exporter import layer_changes, write_layer
from fusezfs.images.importer import build_layer
from fusezfs.images.store import (
    LAYER_SNAP,
    LEGACY,
    P_CIMAGE,
    P_CNAME,
    Container,
    Image,
    LayerRef,
    Store,
    StoreError,
    chain_id,
)

NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
INIT_DIRS = ("dev/pts", "dev/shm", "proc", "sys")
INIT_FILES = (".dockerenv", "etc/resolv.conf", "etc/hosts", "etc/hostname", "dev/console")
INIT_LINKS = (("etc/mtab", "/proc/mounts"),)
COMMIT_SNAP = "commit"


def names(store: Store, c: Container) -> tuple[str, str]:
    """(the container's dataset, its init layer's)."""
    return f"{store.name}/{c.id}", f"{store.name}/{c.id}-init"


def _init_layer(fs) -> None:
    """Docker's initlayer.Setup: each path only if the image lacks it (symlinks followed)."""
    for path in INIT_DIRS + INIT_FILES + tuple(p for p, _t in INIT_LINKS):
        try:
            fs.stat(path)
            continue
        except OSError:
            pass
        parent = path.rpartition("/")[0]
        if parent:
            fs.makedirs(parent, 0o755, 0, 0)
        if path in INIT_DIRS:
            fs.makedirs(path, 0o755, 0, 0)
        elif path in INIT_FILES:
            d, name = fs.parent_of(path)
            try:
                fs.mknod(d, name, 0o100755, 0, 0, 0)
            except OSError as e:
                if e.errno != errno.EEXIST:     # a dangling symlink: Docker leaves it too
                    raise
        else:
            d, name = fs.parent_of(path)
            try:
                fs.symlink(d, name, dict(INIT_LINKS)[path], 0, 0)
            except OSError as e:
                if e.errno != errno.EEXIST:
                    raise


def create(store: Store, image_ref: str, name: str) -> Container:
    if not NAME_RE.fullmatch(name) or len(name) > 128:
        raise StoreError(f"invalid container name '{name}': only [a-zA-Z0-9][a-zA-Z0-9_.-] "
                         "are allowed")
    if store.container(name) is not None:
        raise StoreError(f"container name '{name}' is already in use")
    image = store.find(image_ref)
    dsl, h = store.dsl, store.h
    c = Container(name, secrets.token_hex(32), image.id, store.now(), image.top)
    ds, init = names(store, c)
    made = []
    try:
        rec = dsl.clone(store.layer_snap(image.top), init,
                        store._props({**LEGACY, P_CNAME: name + "-init"}))
        made.append(rec)
        fs = h.filesystem_of(rec)
        _init_layer(fs)
        h.forget(rec.id)
        # the snapshot's records, the container's clone and its record: one txg, committed
        # here before anyone can write into the clone (Datasets.snapshot's `commit`)
        made += dsl.snapshot([f"{init}@{LAYER_SNAP}"], commit=False)
        made.append(dsl.clone(f"{init}@{LAYER_SNAP}", ds,
                              store._props({**store.container_props(c.id), P_CNAME: name,
                                            P_CIMAGE: image.id})))
        store.save_container(c)
        dsl.pool.sync()
    except BaseException:
        for rec in reversed(made):
            _destroy(store, rec)
        raise
    return c


def _destroy(store: Store, rec) -> None:
    dsl = store.dsl
    if dsl.destroyed(rec):
        return
    if rec.kind == "snapshot":
        dsl.destroy_snapshot(rec)
    else:
        store.h.drop(rec.id)
        for snap in reversed(dsl.snapshots(rec.id)):
            dsl.destroy_snapshot(snap)
        dsl.destroy_filesystem(rec)


def remove(store: Store, name: str, force: bool = False) -> Container:
    c = store.container(name)
    if c is None:
        raise StoreError(f"no such container: {name}")
    ds, init = names(store, c)
    dsl = store.dsl
    rec = dsl.lookup(ds)
    if rec is not None and not force:
        where = sessions.busy_path(rec.id, dsl.pool.name)
        if where:
            raise StoreError(f"cannot unmount '{where}': pool or dataset is busy")
    for n in (ds, init):
        r = dsl.lookup(n)
        if r is not None:
            try:
                _destroy(store, r)
            except DatasetError as e:
                raise StoreError(f"cannot destroy '{n}': {e.message}" +
                                 "".join("\n" + d for d in e.detail)) from None
    store.delete_container(c)
    try:
        store.find(c.image)
    except StoreError:                      # its image was removed with -f: its layers now
        from fusezfs.images.gc import collect  # go unless something else needs them
        collect(store, c.top)
    return c


def space(store: Store, c: Container) -> tuple[int, int]:
    """(bytes the container uses: its dataset and its init layer, bytes it references)."""
    ds, init = names(store, c)
    return store.used(ds) + store.used(init), store.referenced(ds)


def commit(store: Store, name: str, ref: str, comment: str = "") -> Image:
    c = store.container(name)
    if c is None:
        raise StoreError(f"no such container: {name}")
    try:
        base = store.find(c.image)
    except StoreError:
        raise StoreError(f"container '{name}': its image {c.image} was removed; "
                         "nothing to commit onto") from None
    ds, init = names(store, c)
    dsl = store.dsl
    snap = f"{ds}@{COMMIT_SNAP}"
    stale = dsl.lookup(snap)
    if stale is not None:
        dsl.destroy_snapshot(stale)
    dsl.snapshot([snap])
    try:
        with tempfile.TemporaryFile() as tmp:
            chs, child = layer_changes(store, f"{init}@{LAYER_SNAP}", snap)
            diff_id, size = write_layer(chs, child, tmp)
            chain = chain_id(base.top, diff_id)
            if not store.layer_done(chain):
                tmp.seek(0)
                build_layer(store, tmp, f"commit of {name}", None, chain, base.top, diff_id,
                            lambda _n: None)
    finally:
        store.h.drop(dsl.get(snap).id)
        dsl.destroy_snapshot(dsl.get(snap))
    cfg = json.loads(store.config(base))
    cfg["rootfs"]["diff_ids"] = list(cfg["rootfs"]["diff_ids"]) + [diff_id]
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    cfg["created"] = now
    cfg.setdefault("history", []).append(
        {"created": now, "created_by": f"fusezfs container commit {name}",
         **({"comment": comment} if comment else {})})
    config = json.dumps(cfg, separators=(",", ":"), ensure_ascii=False).encode()
    image = Image(sha256(config), base.layers + [LayerRef(diff_id, chain, size)], now,
                  store.now(), {"committed_from": name})
    store.save_image(image, config, [familiar(ref)] if ref else [])
    return image

