"""`fusezfs mount` and `fusezfs unmount`: start and stop the daemon that serves a pool, and
mount single datasets at paths of their own.

    fusezfs mount                                   list what fusezfs daemons have mounted
    fusezfs mount [-f] [-o opt,...] POOL [MOUNTPOINT]
    fusezfs mount [-o opt,...] DATASET PATH          a snapshot is mounted read-only
    fusezfs mount FILESYSTEM                         again, after unmount FILESYSTEM
    fusezfs unmount [-f] POOL|DATASET|PATH

`mount` starts the daemon (daemon.py) detached, waits until the mount answers, and returns;
with -f the daemon runs in this process, in the foreground, logging to stderr, until unmounted.
A detached daemon logs to POOL.log in the state directory. MOUNTPOINT (or -o mountpoint=PATH)
overrides the root dataset's mountpoint property for this mount.

`mount DATASET PATH` is mount(8) of a legacy mountpoint: for a dataset the pool's tree does
not show (mountpoint=legacy or none, canmount off or noauto, or a mountpoint outside the
tree). PATH must be a directory nothing is mounted at. The pool's daemon mounts the dataset
there as a FUSE session of its own (daemon.SingleMounts; an ordinary user's through
fusermount3); a pool not served yet is served first (its tree at the root's mountpoint, or at a private
directory when the root has none to use), and stopped again if the mount fails. A dataset
is mounted at one path at a time, as with `zfs mount`.

`mount FILESYSTEM` and `unmount FILESYSTEM` of a child of a served pool's tree are `zfs mount`
and `zfs unmount`: unmounted, it stays so until mounted again (or the pool is mounted anew).

`unmount` unmounts through fusermount3 (-f: lazily, even while busy) and waits for the daemon
to exit: the daemon syncs and closes the pool after its session ends, so when `unmount`
returns everything written is durable and the pool's files are free for other commands. A
pool's single-dataset mounts and children are unmounted first. `unmount DATASET` unmounts
each single-dataset mount of the dataset, `unmount PATH` the one at PATH, then commits a txg;
a daemon serving a private tree exits with its last such mount, and `unmount` waits for that.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

from .host import control, daemon, registry
from .cli import Failed, Usage, error, parse

USAGE = {
    "mount": "\tmount\n\tmount [-f] [-o opts] <pool> [mountpoint]\n"
             "\tmount [-o opts] <filesystem | snapshot> <path>\n\tmount <filesystem>",
    "unmount": "\tunmount [-f] <pool | filesystem | mountpoint>",
}
READY_TIMEOUT = 60.0
EXIT_TIMEOUT = 120.0


def _package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(daemon.__file__)))


def cmd_mount(args: list[str]) -> int:
    opts, rest = parse(args, "fo:")
    foreground = ("-f", "") in opts
    texts = [v for o, v in opts if o == "-o"]
    if not rest:
        if texts or foreground:
            raise Usage("missing pool name")
        for st in daemon.all_states():
            if daemon.pid_alive(int(st.get("pid", 0))):
                print(f"{st.get('pool')}\t{st.get('mountpoint')}")
                for dataset, path in daemon.recorded_singles(st):
                    print(f"{dataset}\t{path}")
        return 0
    if len(rest) > 2:
        raise Usage("too many arguments")
    pool = rest[0]
    try:
        daemon.parse_options(texts)
    except daemon.DaemonError as e:
        raise Failed(str(e)) from None
    if "/" in pool or "@" in pool:
        return _mount_dataset(pool, rest[1] if len(rest) > 1 else None, texts, foreground)
    if foreground:
        import logging
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s fusezfs[%(process)d] %(levelname)s %(message)s")
        return daemon.serve(pool, rest[1] if len(rest) > 1 else None,
                            daemon.parse_options(texts))
    return _spawn(pool, rest[1] if len(rest) > 1 else None, texts)


def _mount_dataset(dataset: str, path: str | None, texts: list[str], foreground: bool) -> int:
    if path is None:        # zfs mount DATASET: again at its mountpoint in the served tree
        pool = control.pool_of(dataset)
        if foreground or texts or daemon.serving_pid(pool) is None:
            raise Usage("missing mountpoint (a dataset is mounted at its mountpoint with its "
                        "pool; elsewhere, give a path)")
        return _forward(pool, ["mount", dataset])
    if foreground:
        raise Usage("-f serves a pool in the foreground: mount the pool with -f, then the "
                    "dataset")
    pool = control.pool_of(dataset)
    path = os.path.abspath(path)
    argv = ["mount", dataset, path]
    if daemon.serving_pid(pool) is not None:
        if texts:
            raise Failed(f"cannot mount '{dataset}': pool '{pool}' is served already; mount "
                         "options apply when its daemon starts")
        return _forward(pool, argv)
    try:
        daemon.check_mount_path(dataset, path)
    except daemon.DaemonError as e:
        raise Failed(str(e)) from None
    _spawn(pool, None, texts, for_dataset=dataset)
    try:
        return _forward(pool, argv)
    except BaseException:       # leave nothing behind: stop the daemon this command started
        st = daemon.read_state(pool) or {}
        try:
            _unmount_pool(pool, st.get("mountpoint"), int(st.get("pid", 0)), force=False)
        except Failed as e:
            if e.message:
                error(e.message)
        raise


def _forward(pool: str, argv: list[str]) -> int:
    """Run a mount or unmount of single datasets in the pool's daemon; Failed if it fails."""
    code = control.forward(pool, argv)
    if code is None and argv[0] == "unmount":
        return 0                # the daemon exited meanwhile: its mounts went with it
    if code is None:
        raise Failed(f"cannot mount '{argv[1]}': the fusezfs daemon serving '{pool}' exited")
    if code:
        raise Failed("", code)  # the daemon's message is printed
    return 0


def _spawn(pool: str, mountpoint: str | None, texts: list[str],
           for_dataset: str | None = None) -> int:
    r, w = os.pipe()
    cmd = [sys.executable, "-m", "fusezfs.host.daemon", "--ready-fd", str(w)]
    if for_dataset is not None:
        cmd += ["--for-dataset", for_dataset]
    for t in texts:
        cmd += ["-o", t]
    cmd.append(pool)
    if mountpoint:
        cmd.append(os.path.abspath(mountpoint))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_package_root(), env.get("PYTHONPATH")) if p)
    env["FUSEZFS_STATE_DIR"] = registry.state_dir()
    logpath = os.path.join(registry.state_dir(), f"{pool}.log")
    with open(logpath, "ab") as logf, open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(cmd, stdin=devnull, stdout=logf, stderr=logf, pass_fds=(w,),
                                start_new_session=True, env=env, cwd="/")
    os.close(w)
    chunks = []
    with os.fdopen(r, "rb") as f:
        while True:
            b = f.read(4096)
            if not b:
                break
            chunks.append(b)
    line = b"".join(chunks).decode(errors="replace").strip()
    if not line.startswith("ok "):
        proc.wait()
        if line.startswith("error "):
            raise Failed(line[6:])
        raise Failed(f"cannot mount '{pool}': the daemon exited (code {proc.returncode}); "
                     f"see {logpath}")
    mp = line[3:]
    # the mount exists; wait until it answers (the daemon's loop is running)
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        try:
            os.stat(mp)
            break
        except OSError as e:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise Failed(f"cannot mount '{pool}': the mount does not answer: "
                             f"{e.strerror}; see {logpath}") from None
            time.sleep(0.05)
    return 0


def _find(target: str) -> tuple[str | None, str | None, int | None, str | None]:
    """(pool, mountpoint of its tree, daemon pid, single) named by a pool or dataset name or a
    path; `single` is the dataset or path whose mounts go, None for the whole pool."""
    if not target.startswith("/"):
        pool = control.pool_of(target)
        st = daemon.read_state(pool)
        if st is not None:
            return pool, st.get("mountpoint"), int(st.get("pid", 0)), \
                None if target == pool else target
    path = os.path.abspath(target)
    for st in daemon.all_states():
        pid = int(st.get("pid", 0))
        if st.get("mountpoint") == path:
            return st.get("pool"), path, pid, None
        if any(p == path for _d, p in daemon.recorded_singles(st)):
            return st.get("pool"), st.get("mountpoint"), pid, path
    if daemon.is_mounted(path) == daemon.FSTYPE:
        return None, path, None, None
    return None, None, None, None


def cmd_unmount(args: list[str]) -> int:
    opts, rest = parse(args, "f")
    force = ("-f", "") in opts
    if len(rest) != 1:
        raise Usage("missing pool name or mountpoint" if not rest else "too many arguments")
    target = rest[0]
    pool, mp, pid, single = _find(target)
    if mp is None:
        raise Failed(f"cannot unmount '{target}': not currently mounted")
    if single is None:
        _unmount_pool(pool, mp, pid, force)
        return 0
    if not (pid and pid > 0 and daemon.pid_alive(pid)):
        daemon.clean_stale(pool)            # detaches the dead mounts it left, singles too
        if not single.startswith("/"):
            raise Failed(f"cannot unmount '{target}': not currently mounted")
        return 0
    _forward(pool, ["unmount"] + (["-f"] if force else []) + [single])
    if daemon.is_mounted(mp) != daemon.FSTYPE:
        _wait_exit(pid, mp)                 # a private tree went with its last single mount
    return 0


def _unmount_pool(pool: str | None, mp: str | None, pid: int | None, force: bool) -> None:
    """Unmount a pool's single-dataset mounts and children, then its tree, and wait for its
    daemon to exit."""
    alive = pid is not None and pid > 0 and daemon.pid_alive(pid)
    if alive:       # its other mounts first: the children are on top of the tree
        _forward(pool, ["unmount"] + (["-f"] if force else []) + ["-a"])
    if mp and daemon.is_mounted(mp) == daemon.FSTYPE:
        ok, msg = daemon.fusermount_unmount(mp, lazy=force or not alive)
        if not ok and daemon.is_mounted(mp) == daemon.FSTYPE:
            raise Failed(f"cannot unmount '{mp}': {msg or 'unmount failed'}")
    if alive:
        _wait_exit(pid, mp)
    elif pool is not None:
        daemon.clean_stale(pool)


def _wait_exit(pid: int, mp: str | None) -> None:
    deadline = time.monotonic() + EXIT_TIMEOUT
    while daemon.pid_alive(pid):
        if time.monotonic() > deadline:
            raise Failed(f"cannot unmount '{mp}': daemon (pid {pid}) did not exit")
        time.sleep(0.05)


VERBS = {"mount": cmd_mount, "unmount": cmd_unmount, "umount": cmd_unmount}


def run(verb: str, args: list[str]) -> int:
    try:
        return VERBS[verb](args)
    except Usage as e:
        if e.message:
            error(e.message)
        error("usage:\n" + USAGE["unmount" if verb == "umount" else verb])
        return 2
    except Failed as e:
        if e.message:
            error(e.message)
        return e.code


COMMANDS = {verb: (lambda v: lambda args: run(v, args))(verb) for verb in VERBS}
