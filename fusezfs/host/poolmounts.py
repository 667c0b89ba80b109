"""The mounts of one pool in the service (see mounts.py for the theory of operation).

`PoolMounts` holds the pool's fuse_ops.Operations (`HostOperations`: the tree laid out only
while the root is mounted, the kernel's dirty pages flushed through the prober) and its
fuse_sessions.Sessions, and answers `zfs mount`, `zfs unmount`, `zfs get mounted` and the
reconciling after each command. Everything here runs on the service's command threads with
the service's command lock held; the pool lock is taken for the steps that read datasets.
"""
from __future__ import annotations

import json
import logging
import os
import time

from fusezfs.dsl.datasets import ROOT_ID
from fusezfs.fuse.fuse_ops import Operations, mountpoint_of
from fusezfs.dsl import properties
from fusezfs.fuse import fuse_sessions
from fusezfs.host import registry
from fusezfs.host.mounts import (
    BUSY,
    FUSE_TASKS,
    MountError,
    SESSION_END_TIMEOUT,
    busy_text,
    mount_at,
    prepare_mountpoint,
    state_file,
)

log = logging.getLogger("fusezfs.mounts")


class HostOperations(Operations):
    """fuse_ops.Operations as the service runs it: children are laid out in the tree only
    while the root is mounted (`tree_on`), and the kernel's dirty pages are written by the
    prober process (a thread of the service must never open its own mounts)."""

    tree_on = False
    prober = None

    def _layout(self, root, inval: list) -> None:
        if self.tree_on:
            super()._layout(root, inval)
            for v in self.views:    # a covered child answers through the tree's session
                if v.parent is not None and not v.own and not v.dead:
                    v.mod = root.mod
            return
        for v in list(self.views):
            if v.parent is not None and not v.dead:
                self._unmount(v, inval)

    def flush_kernel(self) -> None:
        assert not self.lock._is_owned(), "flush_kernel would wait for its own lock"
        self.syncing.add(self.prober.pid())     # its directory handles are not a user's
        paths = ([self.mountpoint] if self.tree_on else []) + \
            [v.path for v in list(self.views) if v.own and v.dev and v.mod and not v.dead]
        for p in dict.fromkeys(p for p in paths if p):
            try:
                self.prober.call("syncfs", p)
            except OSError as e:
                log.warning("syncfs %s: %s", p, e.strerror)


def canmount(dsl, rec) -> str:
    return str(properties.value(dsl, rec, "canmount"))


class PoolMounts:
    """The mounts of one pool (see the module comment)."""

    def __init__(self, host, name: str, handle, options: dict[str, str] | None = None,
                 ephemeral: bool = False) -> None:
        self.host = host
        self.name = name
        self.handle = handle
        self.options = options or {}
        self.override = self.options.get("mountpoint")      # fusezfs mount POOL PATH
        self.unmounted: set[int] = set()    # zfs unmount'ed: left so until mounted again
        self.explicit: set[int] = set()     # canmount=noauto datasets zfs mount named
        self.ops: HostOperations | None = None
        self.sessions = None
        self.tree_mp: str | None = None     # where the tree is mounted, while it is
        self.singles: dict[int, object] = {}    # ds id -> bound view mounted at its mountpoint
        self.manual: list = []              # views mounted by `fusezfs mount DATASET PATH`
        self.recorded = None
        # an ephemeral service (client.py) mounts only what it is asked to: its pools' trees
        # and their children, never other filesystems by themselves
        self.singles_auto = not ephemeral
        self.volumes = None                 # volume_mount.VolumeFiles: each volume a file

    # ---- what should be mounted -----------------------------------------------------------
    def _auto(self, rec) -> bool:
        c = canmount(self.handle.dsl, rec)
        return rec.id not in self.unmounted and (c == "on" or (c == "noauto" and
                                                               rec.id in self.explicit))

    def wanted(self) -> tuple[str | None, dict[int, str]]:
        """(the tree's mountpoint or None, {dataset id: mountpoint} of the singles). Under
        the pool lock."""
        dsl = self.handle.dsl
        root = dsl.record(ROOT_ID)
        root_mp = mountpoint_of(dsl, root)
        tree = None
        if self._auto(root) and (self.override or root_mp.startswith("/")):
            tree = self.override or root_mp
        base = (root_mp if root_mp.startswith("/") else "/" + self.name).rstrip("/")
        singles = {}
        for rec in dsl.descendants(ROOT_ID):
            if rec.kind != "filesystem" or not self._auto(rec):
                continue
            mp = mountpoint_of(dsl, rec)
            if not mp.startswith("/"):
                continue
            if tree is not None and canmount(dsl, rec) == "on" and \
                    mp.startswith(base + "/"):
                continue            # laid out in the tree
            if not self.singles_auto and rec.id not in self.explicit:
                continue
            singles[rec.id] = os.path.normpath(mp)
        return tree, singles

    # ---- making it so -----------------------------------------------------------------------
    def _build(self) -> None:
        o = self.options
        ops = HostOperations.__new__(HostOperations)
        ops.prober = self.host.prober
        Operations.__init__(ops, self.handle,
                            entry_timeout=float(o.get("entry_timeout", 1.0)),
                            attr_timeout=float(o.get("attr_timeout", 1.0)),
                            negative_timeout=float(o.get("negative_timeout", 1.0)),
                            writeback_cache=o.get("writeback_cache", "1") != "0",
                            separate_mounts=os.geteuid() == 0 or "allow_other" in o)
        ops.unmounted = self.unmounted
        fuse_opts = {"default_permissions", "subtype=fusezfs"}
        if "allow_other" in o:
            fuse_opts.add("allow_other")
        sessions = fuse_sessions.Sessions(ops, fuse_opts, int(o.get("fuse_tasks", FUSE_TASKS)))
        sessions.nursery, sessions.token = self.host.nursery, self.host.token
        sessions.prober = self.host.prober
        self.ops, self.sessions = ops, sessions

    def reconcile(self, errors: list[str]) -> None:
        """Mount, move and unmount so the mounts follow the datasets (see mounts.py); what
        could not be done goes to `errors` in zfs's words."""
        if self.host.reason is not None:
            return
        self._volumes(errors)
        with self.handle.pool.lock:
            tree, singles = self.wanted()
        if self.ops is not None:
            self._forget_gone()
            root = self.ops.views[0]
            tree_alive = self.tree_mp is not None and not root.dead
            if self.tree_mp is not None and (not tree_alive or tree != self.tree_mp):
                if not self.teardown(False, errors):
                    return
        if self.ops is None and tree is None and not singles and not self.manual:
            return
        if self.ops is None:
            self._build()
        if tree is not None and self.tree_mp is None:
            self._mount_tree(tree, errors)
        if self.tree_mp is not None:
            inval = self.ops.refresh()
            self.ops.invalidate(inval)
            self.sessions.apply()
        self._singles(singles, errors)
        self.save()

    def _volumes(self, errors: list[str]) -> None:
        """Every volume of the pool served as a file (volume_mount.py), made, renamed and
        removed as the volumes are."""
        from fusezfs.host import volume_mount
        try:
            if self.volumes is None:
                self.volumes = volume_mount.VolumeFiles(
                    self.handle, volume_mount.default_root(), self.host.nursery,
                    self.host.token, fuse_sessions.instance, fuse_sessions.release)
            errors.extend(self.volumes.refresh())
        except Exception as e:
            log.exception("serving the volumes of %s", self.name)
            errors.append(f"cannot serve the volumes of '{self.name}': {e}")

    def _mount_tree(self, mp: str, errors: list[str]) -> None:
        ops = self.ops
        root = ops.views[0]
        try:
            prepare_mountpoint(self.host.prober, self.name, mp)
        except MountError as e:
            errors.append(str(e))
            self.unmounted.add(ROOT_ID)
            return
        root.own = True
        ops.mountpoint = mp
        err = self.sessions.mount(root, mp)
        if err is not None:
            errors.append(f"cannot mount '{self.name}' at '{mp}': {err}")
            root.own = False
            ops.mountpoint = None
            self.unmounted.add(ROOT_ID)
            return
        with ops.lock:
            ops.tree_on = True
        self.tree_mp = mp

    def _forget_gone(self) -> None:
        """Singles unmounted from outside (umount, fusermount3 -u) stay unmounted."""
        for ds_id, view in list(self.singles.items()):
            if view.dead or view.mod is None:
                del self.singles[ds_id]
                self.unmounted.add(ds_id)
        self.manual = [v for v in self.manual if not v.dead and v.mod is not None]

    def _singles(self, wanted: dict[int, str], errors: list[str]) -> None:
        for ds_id, view in list(self.singles.items()):
            if wanted.get(ds_id) != view.path:
                err = self.sessions._unmount(view, lazy=False)
                if err:
                    errors.append(err)
                    continue
                view.dead = True
                del self.singles[ds_id]
        for ds_id, path in sorted(wanted.items(), key=lambda x: x[1]):
            if ds_id in self.singles:
                continue
            with self.ops.lock:
                rec = self.handle.dsl.record(ds_id)
                name = self.handle.dsl.name(ds_id)
            try:
                self.mount_view(rec, name, path)
            except MountError as e:
                errors.append(str(e))
                self.unmounted.add(ds_id)

    def mount_view(self, rec, name: str, path: str, manual: bool = False):
        """Mount dataset `rec` alone at `path` (MountError in zfs's words)."""
        prepare_mountpoint(self.host.prober, name, path)
        with self.ops.lock:
            view = self.ops.standalone(rec)
        err = self.sessions.mount(view, path)
        if err is not None:
            with self.ops.lock:
                view.dead = True
            raise MountError(f"cannot mount '{name}' at '{path}': {err}")
        if manual:
            self.manual.append(view)
        else:
            self.singles[rec.id] = view
        return view

    def teardown(self, force: bool, errors: list[str]) -> bool:
        """Unmount everything of this pool and drop its Operations; False (and why in
        `errors`) if a mount is busy."""
        if self.ops is None:
            return True
        failed = self.sessions.end_all(force)
        if failed:
            errors.extend(failed)
            return False
        deadline = time.monotonic() + SESSION_END_TIMEOUT
        while any(v.mod is not None and v.mod in fuse_sessions.live for v in self.ops.views
                  if v.own) and time.monotonic() < deadline:
            time.sleep(0.02)
        for v in self.ops.views:    # still served: another mount namespace holds a copy
            if v.own and v.dev and v.mod is not None and v.mod in fuse_sessions.live:
                log.warning("%s: its session outlived the unmount (another mount namespace "
                            "holds a copy?): aborting the connection", v.name)
                try:        # the connection's number is the mount's minor device number
                    with open(f"/sys/fs/fuse/connections/{v.dev.split(':')[1]}/abort",
                              "w") as f:
                        f.write("1")
                except OSError as e:
                    log.warning("cannot abort the connection of %s: %s", v.name, e.strerror)
        with self.ops.lock:
            self.ops.tree_on = False
        try:
            self.ops.close()
        except Exception:
            log.exception("closing the views of %s", self.name)
        with self.handle.pool.lock:
            self.handle.pool.sync()     # what the kernel wrote while unmounting: durable
        self.ops = self.sessions = None
        self.tree_mp = None
        self.singles.clear()
        self.manual = []
        self.save()
        return True

    # ---- around commands ----------------------------------------------------------------------
    def shown(self, ds_id: int) -> str | None:
        """Where dataset `ds_id` is mounted, or None."""
        if self.ops is None:
            return None
        view = self.singles.get(ds_id)
        if view is not None and not view.dead:
            return view.path
        for v in self.manual:
            if v.rec.id == ds_id and not v.dead:
                return v.path
        if self.tree_mp is None or self.ops.views[0].dead:
            return None
        rel = self.ops.shown_at(ds_id)
        if rel is None:
            return None
        return os.path.join(self.tree_mp, rel) if rel else self.tree_mp

    def listing(self) -> list[tuple[str, str]]:
        """(dataset, mountpoint) of every mount, as `zfs mount` lists them."""
        if self.ops is None:
            return []
        out = []
        with self.ops.lock:
            for rec in [self.handle.dsl.record(ROOT_ID)] + list(
                    self.handle.dsl.descendants(ROOT_ID)):
                where = self.shown(rec.id)
                if where is not None:
                    out.append((self.handle.dsl.name(rec.id), where))
            out += [(v.name, v.path) for v in self.manual
                    if not v.dead and (v.name, v.path) not in out]
        return out

    def mount(self, rec, name: str) -> None:
        """`zfs mount NAME` (MountError in zfs's words)."""
        dsl = self.handle.dsl
        with self.handle.pool.lock:
            mp = mountpoint_of(dsl, rec)
            c = canmount(dsl, rec)
        if self.shown(rec.id) is not None:
            raise MountError(f"cannot mount '{name}': filesystem already mounted")
        if mp == "legacy":
            raise MountError(f"cannot mount '{name}': legacy mountpoint\n"
                             f"use mount(8) to mount this filesystem")
        if mp == "none":
            raise MountError(f"cannot mount '{name}': no mountpoint set")
        if c == "off":
            raise MountError(f"cannot mount '{name}': 'canmount' property is set to 'off'")
        if self.host.reason is not None:
            raise MountError(f"cannot mount '{name}': FUSE is unavailable: {self.host.reason}")
        self.unmounted.discard(rec.id)
        if c == "noauto":
            self.explicit.add(rec.id)
        errors: list[str] = []
        self.reconcile(errors)
        if errors:
            raise MountError("\n".join(errors))
        if self.shown(rec.id) is None:
            raise MountError(f"cannot mount '{name}': its mountpoint is covered by another "
                             f"mount")

    def unmount(self, rec, name: str, force: bool) -> None:
        """`zfs unmount NAME|PATH` of a dataset of this pool (MountError in zfs's words):
        the root takes its whole tree with it."""
        where = self.shown(rec.id)
        if where is None:
            raise MountError(f"cannot unmount '{name}': not currently mounted")
        errors: list[str] = []
        manual = [v for v in self.manual if v.rec.id == rec.id and not v.dead]
        if manual or rec.id in self.singles:
            for view in manual or [self.singles[rec.id]]:
                err = self.sessions._unmount(view, lazy=force)
                if err:
                    raise MountError(err)
                view.dead = True
            self.singles.pop(rec.id, None)
            self.manual = [v for v in self.manual if not v.dead]
        elif rec.id == ROOT_ID:     # its tree's children go with it (they would be busy)
            with self.ops.lock:
                children = {v.rec.id for v in self.ops.views
                            if v.parent is not None and not v.dead}
            if not self.teardown(force, errors):
                raise MountError("\n".join(errors))
            self.unmounted.update(children)
        else:
            err = self.sessions.unmount_child(rec.id, force)
            if err:
                raise MountError(err)
            with self.ops.lock:
                self.unmounted.add(rec.id)
            self.ops.invalidate(self.ops.refresh())
        self.unmounted.add(rec.id)
        self.explicit.discard(rec.id)
        self.handle.pool.sync()         # what the kernel wrote while unmounting is durable
        self.reconcile(errors)
        self.save()

    def unmount_all(self, force: bool) -> list[str]:
        """`zfs unmount -a`, export and destroy: every mount of the pool; the errors."""
        errors: list[str] = []
        with self.handle.pool.lock:
            self.unmounted.update(r.id for r in [self.handle.dsl.record(ROOT_ID)] +
                                  list(self.handle.dsl.descendants(ROOT_ID)))
        self.teardown(force, errors)
        return errors

    def mount_all(self, errors: list[str]) -> None:
        """`zfs mount -a` and import: every dataset with canmount=on, again."""
        self.unmounted.clear()
        self.reconcile(errors)

    def save(self) -> None:
        """Name every mount (path and device) in STATE/mount-POOL.json, for the next service
        after a crash (mounts.clean_dead) and for tools that look for the service's pid."""
        items = []
        if self.ops is not None:
            views = [v for v in self.ops.views if v.own and v.dev and not v.dead]
            items = [{"path": v.path, "dev": v.dev, "dataset": v.name} for v in views]
        state = (self.tree_mp, items)
        if state == self.recorded:
            return
        path = state_file(self.name)
        if not items:
            try:
                os.unlink(path)
            except OSError:
                pass
        else:
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"pid": os.getpid(), "pool": self.name,
                           "mountpoint": self.tree_mp, "mounts": items}, f)
            os.replace(tmp, path)
        self.recorded = state

    def close(self, force: bool = True) -> list[str]:
        """The pool leaves the service (export, destroy, the service's end)."""
        errors = self.unmount_all(force)
        if self.volumes is not None:
            try:
                errors += self.volumes.close()
            except Exception as e:
                log.exception("unmounting the volumes of %s", self.name)
                errors.append(f"cannot unmount the volumes of '{self.name}': {e}")
            self.volumes = None
        return errors
