"""The daemon: the one process that owns an imported pool while it is mounted.

It opens the pool (taking the device locks), mounts the pool's root filesystem with pyfuse3 at
its mountpoint (children inside it, see fuse_ops.py), runs the trio loop, commits a txg every
`sync_interval` seconds on a worker thread, and on SIGTERM/SIGINT syncs, ends the session and
unmounts. When the mount goes away from outside (`fusermount3 -u`, `fusezfs unmount`, umount),
the loop ends and the daemon drops its handles, syncs and closes the pool before exiting, so
whoever waits for the daemon's exit finds everything durable.

While it runs, `mount-POOL.json` in the state directory names its pid and mountpoint: `fusezfs
unmount POOL` finds the mount through it, and other commands can tell the pool is served
(`serving_pid`). A daemon killed with SIGKILL leaves the file and a dead FUSE mount behind;
the next mount of the pool notices (the pid is gone), detaches the dead mount and goes on.

While it serves, `POOL.sock` in the state directory is its control socket (control.py): every
fusezfs command naming the pool is sent there and runs in this process on the one Handle, so
the mount shows its effect at once; `pool export` unmounts first, which ends this process.

Every mounted dataset is a FUSE session of its own (fuse_sessions.py), all served by this
process's one trio loop: the tree's root, its children (fuse_ops.py), and single datasets
(`fusezfs mount DATASET PATH`, `SingleMounts`) mounted at a path of their own. The kernel's
unmount of a child or single dataset writes its dirty pages through its session; when the
tree's own mount goes away from outside, the daemon unmounts the others the same way before
it ends. A daemon started for a dataset whose pool's root has no mountpoint to use mounts
its tree at `POOL.root` in the state directory, and ends when its last single-dataset mount
goes.

Started by `fusezfs mount` as `python -m fusezfs.daemon --ready-fd N ...`: it reports "ok
MOUNTPOINT" or "error MESSAGE" on that descriptor once the mount exists or failed.
"""
from __future__ import annotations

import errno
import gc
import json
import logging
import os
import re
import signal
import stat
import subprocess
import sys
import threading
from typing import NamedTuple

from . import registry

log = logging.getLogger("fusezfs.daemon")

FSTYPE = "fuse.fusezfs"


class DaemonError(Exception):
    pass


# ---- the state file -------------------------------------------------------------------------
def state_file(pool: str) -> str:
    return os.path.join(registry.state_dir(), f"mount-{pool}.json")


def read_state(pool: str) -> dict | None:
    try:
        with open(state_file(pool)) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def write_state(pool: str, pid: int, mountpoint: str, **extra) -> None:
    """`extra`: singles ([{dataset, path, dev}]: the single-dataset mounts)."""
    path = state_file(pool)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"pid": pid, "mountpoint": mountpoint, "pool": pool, **extra}, f)
    os.replace(tmp, path)


def remove_state(pool: str, pid: int) -> None:
    data = read_state(pool)
    if data is not None and data.get("pid") == pid:
        try:
            os.unlink(state_file(pool))
        except FileNotFoundError:
            pass


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:        # a zombie (our own child not reaped yet) is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def all_states() -> list[dict]:
    out = []
    d = registry.state_dir()
    for name in sorted(os.listdir(d)):
        if name.startswith("mount-") and name.endswith(".json"):
            data = read_state(name[6:-5])
            if data is not None:
                out.append(data)
    return out


def serving_pid(pool: str) -> int | None:
    """The pid of the live daemon serving `pool`, or None."""
    data = read_state(pool)
    if data is None:
        return None
    pid = int(data.get("pid", 0))
    return pid if pid > 0 and pid_alive(pid) else None


# ---- mounts ---------------------------------------------------------------------------------
class Mount(NamedTuple):
    dev: str            # "MAJOR:MINOR" of its file system
    mountpoint: str
    fstype: str


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts() -> list[Mount]:
    """Every mount this process sees, in /proc/self/mountinfo's order (the later of two at
    one path is on top)."""
    out = []
    with open("/proc/self/mountinfo", errors="surrogateescape") as f:
        for line in f:
            left, sep, right = line.partition(" - ")
            head, tail = left.split(), right.split()
            if sep and len(head) >= 5 and len(tail) >= 2:
                out.append(Mount(head[2], _unescape(head[4]), tail[0]))
    return out


def mount_at(path: str) -> Mount | None:
    """The mount on top at `path`, or None."""
    path = os.path.abspath(path)
    found = None
    for m in mounts():
        if m.mountpoint == path:
            found = m
    return found


def is_mounted(path: str) -> str | None:
    """fstype of the mount at `path`, or None."""
    m = mount_at(path)
    return m.fstype if m else None


def fusezfs_mount_of(path: str) -> str | None:
    """The fusezfs mount `path` lies in, or None."""
    path = os.path.abspath(path)
    best = None
    for m in mounts():
        mp = m.mountpoint
        if path == mp or path.startswith(mp.rstrip("/") + "/"):
            if best is None or len(mp) >= len(best[0]):
                best = (mp, m.fstype)
    return best[0] if best and best[1] == FSTYPE else None


def live_fusezfs() -> set[tuple[str, str]]:
    """(mountpoint, device) of every fusezfs mount: a mount recorded with its device is still
    the same one only if both match (another may have been made at the path since)."""
    return {(m.mountpoint, m.dev) for m in mounts() if m.fstype == FSTYPE}


def recorded_singles(state: dict) -> list[tuple[str, str]]:
    """(dataset, path) of the single-dataset mounts a daemon's state file names that are still
    there."""
    live = live_fusezfs()
    return [(b.get("dataset", "?"), b["path"]) for b in state.get("singles", [])
            if (b.get("path"), b.get("dev")) in live]


def fusermount_unmount(path: str, lazy: bool = False) -> tuple[bool, str]:
    args = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [path]
    try:
        r = subprocess.run(args, capture_output=True, text=True)
    except FileNotFoundError:
        args = ["umount"] + (["-l"] if lazy else []) + [path]
        r = subprocess.run(args, capture_output=True, text=True)
    return r.returncode == 0, (r.stderr or r.stdout).strip()


def clean_stale(pool: str) -> None:
    """A daemon of `pool` that died without unmounting: detach its dead mounts, forget it."""
    data = read_state(pool)
    if data is None:
        return
    pid = int(data.get("pid", 0))
    if pid > 0 and pid_alive(pid):
        return
    mp = data.get("mountpoint")
    for _dataset, path in recorded_singles(data):
        log.warning("detaching the dead mount %s left by pid %d", path, pid)
        fusermount_unmount(path, lazy=True)
    if mp and is_mounted(mp) == FSTYPE:
        log.warning("detaching the dead mount %s left by pid %d", mp, pid)
        fusermount_unmount(mp, lazy=True)       # and the children mounted inside it
    try:
        os.unlink(state_file(pool))
    except FileNotFoundError:
        pass


# ---- single datasets ------------------------------------------------------------------------
BUSY = "pool or dataset is busy"        # zfs's words for EBUSY
WATCH_INTERVAL = 0.5


def check_mount_path(dataset: str, path: str) -> None:
    """PATH must be a directory nothing is mounted at (mount(8)'s rules: it is not made)."""
    try:
        st = os.stat(path)
    except OSError as e:
        why = "does not exist" if e.errno == errno.ENOENT else f"cannot be used: {e.strerror}"
        raise DaemonError(f"cannot mount '{dataset}': mountpoint '{path}' {why}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise DaemonError(f"cannot mount '{dataset}': '{path}' is not a directory")
    if is_mounted(path):
        raise DaemonError(f"cannot mount '{dataset}': '{path}' is already a mount point")


class SingleMounts:
    """The single datasets one daemon mounted at paths of their own (see the module comment):
    each a standalone view of fuse_ops with a FUSE session of its own (fuse_sessions). Which
    are still mounted is read from /proc/self/mountinfo (its path, with the device its session
    got), so one removed by umount or fusermount3 -u counts at once; the state file names them
    for other processes. `lock` orders them; mounts and unmounts run without the pool lock:
    the kernel writes its dirty pages through the session while it unmounts."""

    def __init__(self, pool_name: str, ops, mountpoint: str, private: bool) -> None:
        self.pool_name = pool_name
        self.ops = ops
        self.mountpoint = mountpoint
        self.private = private          # the tree is at private_mountpoint: only these show
        self.lock = threading.Lock()
        self.recorded: list[tuple[str, str, str | None]] = []   # what the state file says
        self.had = False                # a dataset was mounted
        self.ending = False             # the private tree is being unmounted
        self.others = None              # fuse_sessions.Sessions: every session but the tree's

    @property
    def active(self) -> bool:
        """There are mounts, or were: settle has something to look at."""
        return self.had or bool(self.recorded)

    def _live(self) -> list:
        live = live_fusezfs()
        with self.ops.lock:
            views = self.ops.standalones()
        return [v for v in views if (v.path, v.dev) in live]

    def current(self) -> list[tuple[int, str]]:
        """(dataset id, path) of each single-dataset mount still there."""
        return [(v.rec.id, v.path) for v in self._live()]

    def target(self, dataset: str):
        """The record of a dataset that may be mounted alone; DaemonError in zfs's words."""
        with self.ops.lock:
            rec = self.ops.dsl.lookup(dataset)
            if rec is None:
                raise DaemonError(f"cannot open '{dataset}': dataset does not exist")
            if rec.kind not in ("filesystem", "snapshot"):
                raise DaemonError(f"cannot mount '{dataset}': not a filesystem")
            rel = None if self.private else self.ops.shown_at(rec.id)
        if rel is not None:
            raise DaemonError(f"cannot mount '{dataset}': filesystem already mounted at "
                              f"{os.path.join(self.mountpoint, rel)} (in the mount of pool "
                              f"'{self.pool_name}'); set mountpoint=legacy to mount it elsewhere")
        return rec

    def mount(self, dataset: str, path: str) -> None:
        with self.lock:
            rec = self.target(dataset)
            # once only, as zfs mount: a second session would keep a cache of its own
            for i, p in self.current():
                if i == rec.id:
                    raise DaemonError(f"cannot mount '{dataset}': filesystem already "
                                      f"mounted at {p}")
            check_mount_path(dataset, path)
            with self.ops.lock:
                view = self.ops.standalone(rec)
            err = self.others.mount(view, path)
            if err is not None:
                with self.ops.lock:
                    view.dead = True
                raise DaemonError(f"cannot mount '{dataset}' at '{path}': {err}")
            self.had = True
            self._save()

    def _child(self, dataset: str, verb: str):
        """The record of a filesystem the tree mounts, for `zfs mount`/`zfs unmount` of it;
        DaemonError in zfs's words."""
        from ..fuse_ops import mountpoint_of
        with self.ops.lock:
            rec = self.ops.dsl.lookup(dataset)
            if rec is None:
                raise DaemonError(f"cannot open '{dataset}': dataset does not exist")
            if rec.kind != "filesystem":
                raise DaemonError(f"cannot {verb} '{dataset}': not a filesystem")
            mp = mountpoint_of(self.ops.dsl, rec)
        if mp == "legacy":
            raise DaemonError(f"cannot {verb} '{dataset}': legacy mountpoint\n"
                              f"use fusezfs {verb} {dataset} PATH")
        if self.private or not self.ops.separate:
            raise DaemonError(f"cannot {verb} '{dataset}': it is {verb}ed with its pool "
                              f"'{self.pool_name}'")
        return rec

    def mount_child(self, dataset: str) -> None:
        """`zfs mount DATASET` of a filesystem unmounted from the tree: mounted again."""
        with self.lock:
            rec = self._child(dataset, "mount")
            with self.ops.lock:
                if rec.id not in self.ops.unmounted:
                    shown = self.ops.shown_at(rec.id)
                    raise DaemonError(f"cannot mount '{dataset}': " + (
                        "filesystem already mounted" if shown is not None else
                        "its mountpoint is not in the pool's tree (canmount, mountpoint)"))
                self.ops.unmounted.discard(rec.id)
            self.ops.invalidate(self.ops.refresh())
            self.others.apply()
            if self.ops.shown_at(rec.id) is None:
                raise DaemonError(f"cannot mount '{dataset}': see the daemon's log")

    def unmount(self, target: str | None, force: bool = False, end: bool = True) -> None:
        """Unmount the mounts of a dataset (by name), the one at a path, or all (None), and
        commit what was written through them (the kernel writes its dirty pages while it
        unmounts); lazily with `force`, even while busy. `end`: a private tree left with
        nothing mounted is unmounted too (the daemon then exits)."""
        from .fuse_sessions import unmount
        with self.lock:
            cur = self.current()
            victims = cur if target is None else self._named(target, cur)
            if isinstance(victims, int):        # a child of the tree: zfs unmount of it
                err = self.others.unmount_child(victims, False)
                if err:
                    raise DaemonError(err)
                victims = []
                self.ops.pool.sync()    # the kernel wrote its pages while it unmounted
            failed = []
            for _ds_id, path in victims:
                ok, msg = unmount(path, lazy=force)
                if ok:
                    log.info("unmounted %s", path)
                else:
                    failed.append(f"cannot unmount '{path}': "
                                  f"{BUSY if 'busy' in msg.lower() else msg}")
            if victims:
                self.ops.pool.sync()        # and waits: durable before the unmount answers
            left = self._save()
            ending = end and self._end_private(left)
        if ending:
            self._unmount_tree()
        if failed:
            raise DaemonError("\n".join(failed))

    def _named(self, target: str, cur: list[tuple[int, str]]) -> list[tuple[int, str]] | int:
        """The single-dataset mounts `target` names, or the dataset id of the tree's child it
        names; DaemonError in zfs's words if neither."""
        if target.startswith("/"):
            found = [(i, p) for i, p in cur if p == target]
            if not found:
                raise DaemonError(f"cannot unmount '{target}': not a dataset mounted by the "
                                  f"fusezfs daemon serving '{self.pool_name}'")
            return found
        with self.ops.lock:
            rec = self.ops.dsl.lookup(target)
            rel = None if rec is None or self.private else self.ops.shown_at(rec.id)
        if rec is None:
            raise DaemonError(f"cannot open '{target}': dataset does not exist")
        found = [(i, p) for i, p in cur if i == rec.id]
        if found:
            return found
        if rel is not None and rel != "":
            self._child(target, "unmount")
            return rec.id
        if rel is not None:
            raise DaemonError(f"cannot unmount '{target}': it is the root of pool "
                              f"'{self.pool_name}'; unmount the pool")
        raise DaemonError(f"cannot unmount '{target}': not currently mounted")

    def settle(self, watching: bool = False) -> None:
        """After a command or on the daemon's watch timer: name the mounts in the state file
        (renamed datasets, mounts gone by umount; those of destroyed datasets were unmounted
        by the command's refresh). `watching`: a private tree with nothing left mounted is
        unmounted, which ends the daemon."""
        if not self.active:
            return
        try:
            with self.lock:
                left = self._save()
                ending = watching and self._end_private(left)
            if ending:
                self._unmount_tree()
        except Exception:
            log.exception("settling the single-dataset mounts")

    def _save(self) -> list[tuple[int, str]]:
        """Name the mounts in the state file and return them. Under self.lock."""
        live = self._live()
        with self.ops.lock:
            named = [(self.ops.dsl.name(v.rec.id) if self.ops._exists(v.rec.id)
                      else f"#{v.rec.id}", v.path, v.dev) for v in live]
        if named != self.recorded:
            write_state(self.pool_name, os.getpid(), self.mountpoint,
                        singles=[{"dataset": d, "path": p, "dev": dev} for d, p, dev in named])
            self.recorded = named
        return [(v.rec.id, v.path) for v in live]

    def _end_private(self, left: list) -> bool:
        if self.private and self.had and not left and not self.ending:
            self.ending = True
            return True
        return False

    def _unmount_tree(self) -> None:
        log.info("no single-dataset mount is left: unmounting the private tree %s",
                 self.mountpoint)
        ok, msg = fusermount_unmount(self.mountpoint)
        if not ok:
            log.warning("cannot unmount %s: %s", self.mountpoint, msg)

    def command(self, argv: list[str]) -> tuple[int, str, str]:
        """`mount DATASET PATH` and `unmount [-f] DATASET|PATH|-a` as cli_mount sends them
        over the control socket: (exit code, stdout, stderr)."""
        try:
            if argv[0] == "mount" and len(argv) == 3:
                self.mount(argv[1], argv[2])
            elif argv[0] == "mount" and len(argv) == 2:
                self.mount_child(argv[1])
            elif argv[0] == "unmount" and len(argv) >= 2:
                force = "-f" in argv[1:-1]
                if argv[-1] == "-a" and self.others is not None:
                    failed = self.others.end_all(force)       # before the tree goes
                    if failed:
                        raise DaemonError("\n".join(failed))
                self.unmount(None if argv[-1] == "-a" else argv[-1], force)
            else:
                return 2, "", f"the fusezfs daemon does not run '{' '.join(argv)}'\n"
        except DaemonError as e:
            return 1, "", f"{e}\n"
        except Exception as e:
            log.exception("%s", " ".join(argv))
            return 1, "", f"internal error: {e!r}\n"
        return 0, "", ""

    def mounted(self, dsl, rec) -> bool:
        """The `mounted` property while this daemon serves (properties.mounted_hook)."""
        if dsl is not self.ops.dsl:
            return False
        if any(i == rec.id for i, _p in self.current()):
            return True
        return not self.private and self.ops.shown_at(rec.id) is not None


# ---- serving ------------------------------------------------------------------------------
OPTION_KEYS = {"allow_other", "entry_timeout", "attr_timeout", "negative_timeout",
               "sync_interval", "mountpoint", "writeback_cache", "fuse_tasks"}
FUSE_TASKS = 99         # pyfuse3's default; see parse_options


def parse_options(text_list: list[str]) -> dict[str, str]:
    """`-o a,b=c` options: allow_other, entry_timeout=S, attr_timeout=S, negative_timeout=S,
    sync_interval=S, mountpoint=PATH (an override of the mountpoint property),
    writeback_cache=0|1 (the kernel's writeback cache; on by default), fuse_tasks=N (the
    most trio tasks reading each session's requests; 99, pyfuse3's default, by default. One
    task spares the floor's task switches (~10-15% of a metadata request there) but gained
    fusezfs nothing measurable on the metadata workloads and cost ~25% of sequential write
    throughput (the writeback cache's concurrent writes wait in line), and a request waiting
    for its txg, such as fsync, then holds up the other requests of its dataset)."""
    out: dict[str, str] = {}
    for text in text_list:
        for item in text.split(","):
            if not item:
                continue
            key, eq, value = item.partition("=")
            if key not in OPTION_KEYS:
                raise DaemonError(f"unknown mount option '{key}'")
            if key in ("entry_timeout", "attr_timeout", "negative_timeout", "sync_interval"):
                try:
                    if float(value) < 0:
                        raise ValueError
                except ValueError:
                    raise DaemonError(f"bad value for mount option '{key}': '{value}'") from None
            if key == "writeback_cache" and value not in ("0", "1", ""):
                raise DaemonError(f"bad value for mount option '{key}': '{value}'")
            if key == "fuse_tasks" and not (value.isdigit() and int(value) >= 1):
                raise DaemonError(f"bad value for mount option '{key}': '{value}'")
            out[key] = value if eq else ""
    return out


def private_mountpoint(pool: str) -> str:
    return os.path.join(registry.state_dir(), f"{pool}.root")


def default_mountpoint(handle, private: bool = False) -> str:
    """The root dataset's mountpoint. `private` (a daemon started to mount a dataset alone):
    a root with none to use (none, legacy, canmount=off or noauto) is mounted at
    private_mountpoint, in the state directory (mode 0700)."""
    from .. import properties
    from ..datasets import ROOT_ID
    from ..fuse_ops import mountpoint_of
    root = handle.dsl.record(ROOT_ID)
    mp = mountpoint_of(handle.dsl, root)
    if private and (not mp.startswith("/") or
                    str(properties.value(handle.dsl, root, "canmount")) != "on"):
        return private_mountpoint(handle.pool.name)
    if not mp.startswith("/"):
        raise DaemonError(f"cannot mount '{handle.pool.name}': mountpoint is '{mp}'; "
                          "give a mountpoint explicitly")
    return mp


READAHEAD_KB = 1024


def raise_readahead(mp: str, kb: int = READAHEAD_KB) -> None:
    """Let the kernel read ahead `kb` KiB on this mount instead of its 128 KiB default, so a
    sequential reader's FUSE reads come as 1 MiB requests (each request costs the daemon a
    fixed toll; fewer, larger ones stream faster). The knob is the mount's backing-device
    entry in sysfs, writable by root only; the kernel overwrites it while it answers FUSE's
    INIT, so this runs once the mount has answered (stat goes through the mount). Called on
    a worker thread: the stat needs the FUSE loop."""
    try:
        dev = os.stat(mp).st_dev
        with open(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb", "w") as f:
            f.write(str(kb))
    except OSError as e:
        log.info("read-ahead of %s left at the kernel's default: %s", mp, e.strerror)


def serve(pool_name: str, mountpoint: str | None, options: dict[str, str],
          report=None, for_dataset: str | None = None) -> int:
    """Open, mount and serve a pool until unmounted or signalled. `report(ok, text)` is told
    once whether the mount exists. `for_dataset`: started to mount this dataset alone (refused
    here, before anything is mounted, if it cannot be; its root may go to the private
    mountpoint). Returns the exit code."""
    import pyfuse3
    import trio

    from .. import properties
    from .. import scrub
    from ..api import Handle
    from ..cli import Failed
    from ..cli_pool import open_pool
    from . import fuse_sessions
    from .control import Server
    from ..fuse_ops import Operations

    def fail(msg: str) -> int:
        log.error("%s", msg)
        if report:
            report(False, msg)
        return 1

    pid = serving_pid(pool_name)
    if pid is not None:
        data = read_state(pool_name) or {}
        return fail(f"cannot mount '{pool_name}': pool is already mounted at "
                    f"{data.get('mountpoint')} by fusezfs daemon (pid {pid})")
    clean_stale(pool_name)
    entry = registry.load().get(pool_name)
    if entry is not None:
        for dev in entry.get("devices", []):
            inside = fusezfs_mount_of(dev)
            if inside:
                return fail(f"cannot mount '{pool_name}': its device {dev} lies inside the "
                            f"fusezfs mount {inside} (the daemon would wait on itself)")
    try:
        pool = open_pool(pool_name)
    except Failed as e:
        return fail(e.message or f"cannot open '{pool_name}'")
    server = None
    try:
        handle = Handle(pool)
        pool.pipeline = True        # budget and timer syncs commit on a thread (pool.py)
        scrub.resume(pool)          # a scrub the pool was in when it was last closed
        with pool.lock:
            mp = mountpoint or options.get("mountpoint") or \
                default_mountpoint(handle, private=for_dataset is not None)
        mp = os.path.abspath(mp)
        ops = Operations(handle,
                         entry_timeout=float(options.get("entry_timeout", 1.0)),
                         attr_timeout=float(options.get("attr_timeout", 1.0)),
                         negative_timeout=float(options.get("negative_timeout", 1.0)),
                         writeback_cache=options.get("writeback_cache", "1") != "0",
                         separate_mounts=os.geteuid() == 0 or "allow_other" in options)
        singles = SingleMounts(pool_name, ops, mp, private=mp == private_mountpoint(pool_name))
        if for_dataset is not None:
            singles.target(for_dataset)
        if not os.path.isdir(mp):
            try:
                os.makedirs(mp, exist_ok=True)
            except OSError as e:
                raise DaemonError(f"cannot mount '{pool_name}': cannot create mountpoint "
                                  f"'{mp}': {e.strerror}") from None
        if is_mounted(mp):
            raise DaemonError(f"cannot mount '{mp}': a filesystem is already mounted there")
        fuse_opts = set(pyfuse3.default_options)        # default_permissions
        fuse_opts |= {f"fsname={pool_name}", "subtype=fusezfs"}
        if "allow_other" in options:
            fuse_opts.add("allow_other")
        # the control socket (control.py): commands on this pool run here while it is served
        server = Server(pool_name, handle, ops)
        server.singles = singles
        try:
            server.start()
        except OSError as e:
            raise DaemonError(f"cannot mount '{pool_name}': cannot make the control socket "
                              f"{server.path}: {e.strerror}") from None
        try:
            pyfuse3.init(ops, mp, fuse_opts)
        except RuntimeError as e:
            raise DaemonError(f"cannot mount '{pool_name}' at '{mp}': {e}") from None
        from ..fuse_extra import install
        install(pyfuse3, ops)           # fallocate and SEEK_DATA/SEEK_HOLE (pyfuse3 lacks them)
    except DaemonError as e:
        if server is not None:
            server.stop()
        pool.close()
        return fail(str(e))
    except Exception as e:
        log.exception("mount failed")
        if server is not None:
            server.stop()
        pool.close()
        return fail(f"cannot mount '{pool_name}': {e}")

    ops.mountpoint = mp
    with fuse_sessions.lock:
        fuse_sessions.live.add(pyfuse3)
    tasks = int(options.get("fuse_tasks", FUSE_TASKS))
    others = fuse_sessions.Sessions(ops, fuse_opts, tasks)
    server.others = singles.others = others
    properties.mounted_hook = singles.mounted
    me = os.getpid()
    write_state(pool_name, me, mp)
    log.info("pool %s mounted at %s (pid %d)", pool_name, mp, me)
    # what is allocated by now (modules, the pool, its caches' skeletons) lives as long as
    # the daemon: keep it out of the collector's full passes (15-35 ms each, ~1% of busy time)
    gc.freeze()
    interval = float(options.get("sync_interval", 5.0))
    signalled = [False]

    async def timer() -> None:
        while True:
            await trio.sleep(interval)
            try:
                await trio.to_thread.run_sync(ops.sync)
            except Exception:
                log.exception("txg sync failed")

    async def signals() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as rx:
            async for signum in rx:
                log.info("signal %d: syncing and unmounting", signum)
                try:
                    # the kernel's dirty pages first, while the loop still serves their writes
                    await trio.to_thread.run_sync(ops.flush_kernel)
                    await trio.to_thread.run_sync(ops.sync)
                except Exception:
                    log.exception("txg sync failed")
                try:        # the other sessions would outlive the tree's, dead
                    others.stopping = True
                    await trio.to_thread.run_sync(others.end_all, True)
                except Exception:
                    log.exception("detaching the other mounts")
                signalled[0] = True
                pyfuse3.terminate()
                return

    async def watch() -> None:
        while True:
            await trio.sleep(WATCH_INTERVAL)
            if singles.active:
                await trio.to_thread.run_sync(singles.settle, True)

    async def start() -> None:
        """Mount the children once the tree answers, then tell the caller all is there."""
        await trio.to_thread.run_sync(raise_readahead, mp)
        await trio.to_thread.run_sync(others.apply)
        if report:
            report(True, mp)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            others.start(nursery)
            if interval > 0:
                nursery.start_soon(timer)
            nursery.start_soon(signals)
            nursery.start_soon(watch)
            nursery.start_soon(start)
            await pyfuse3.main(max_tasks=tasks)
            # the tree's mount went away: the other sessions go too, unmounted while they
            # still serve, so the kernel writes their dirty pages first
            await trio.to_thread.run_sync(others.end_all, False)
            others.stopping = True
            nursery.cancel_scope.cancel()

    code = 0
    try:
        trio.run(run)
    except BaseException:
        log.exception("FUSE loop failed")
        code = 1
    finally:
        server.stop()           # no new commands; the one running finishes first
        properties.mounted_hook = None
        try:
            ops.close()
        except Exception:
            log.exception("closing filesystems")
            code = 1
        with fuse_sessions.lock:
            fuse_sessions.live.discard(pyfuse3)
        try:
            pyfuse3.close(unmount=signalled[0] or code != 0)
        except Exception:
            log.exception("unmounting")
        try:
            pool.close()
        except Exception:
            log.exception("closing the pool")
            code = 1
        remove_state(pool_name, me)
        log.info("pool %s unmounted from %s", pool_name, mp)
    return code


def main(argv: list[str] | None = None) -> int:
    import getopt
    argv = sys.argv[1:] if argv is None else argv
    try:
        opts, rest = getopt.getopt(argv, "o:", ["ready-fd=", "for-dataset="])
    except getopt.GetoptError as e:
        print(f"fusezfs daemon: {e}", file=sys.stderr)
        return 2
    ready_fd = None
    for_dataset = None
    texts = []
    for o, v in opts:
        if o == "--ready-fd":
            ready_fd = int(v)
        elif o == "--for-dataset":
            for_dataset = v
        else:
            texts.append(v)
    if not 1 <= len(rest) <= 2:
        print("usage: python -m fusezfs.daemon [--ready-fd N] [--for-dataset DATASET] "
              "[-o opts] POOL [MOUNTPOINT]", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s fusezfs[%(process)d] %(levelname)s %(message)s")

    def report(ok: bool, text: str) -> None:
        nonlocal ready_fd
        if ready_fd is None:
            return
        try:
            os.write(ready_fd, (("ok " if ok else "error ") + text + "\n").encode())
            os.close(ready_fd)
        except OSError:
            pass
        ready_fd = None

    try:
        options = parse_options(texts)
    except DaemonError as e:
        report(False, str(e))
        print(str(e), file=sys.stderr)
        return 1
    return serve(rest[0], rest[1] if len(rest) > 1 else None, options, report, for_dataset)


if __name__ == "__main__":
    sys.exit(main())
