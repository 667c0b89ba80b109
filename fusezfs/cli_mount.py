"""`fusezfs mount` and `fusezfs unmount`: start and stop the daemon that serves a pool.

    fusezfs mount                                   list what fusezfs daemons have mounted
    fusezfs mount [-f] [-o opt,...] POOL [MOUNTPOINT]
    fusezfs unmount [-f] POOL|MOUNTPOINT

`mount` starts the daemon (daemon.py) detached, waits until the mount answers, and returns;
with -f the daemon runs in this process, in the foreground, logging to stderr, until unmounted.
A detached daemon logs to POOL.log in the state directory. MOUNTPOINT (or -o mountpoint=PATH)
overrides the root dataset's mountpoint property for this mount.

`unmount` unmounts through fusermount3 (-f: lazily, even while busy) and waits for the daemon
to exit: the daemon syncs and closes the pool after its session ends, so when `unmount`
returns everything written is durable and the pool's files are free for other commands.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

from . import daemon, registry
from .cli import Failed, Usage, error, parse

USAGE = {
    "mount": "\tmount\n\tmount [-f] [-o opts] <pool> [mountpoint]",
    "unmount": "\tunmount [-f] <pool | mountpoint>",
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
        return 0
    if len(rest) > 2:
        raise Usage("too many arguments")
    pool = rest[0]
    if "/" in pool or "@" in pool:
        raise Failed(f"cannot mount '{pool}': mounting a single dataset is not supported; "
                     "mount its pool")
    try:
        daemon.parse_options(texts)
    except daemon.DaemonError as e:
        raise Failed(str(e)) from None
    if foreground:
        import logging
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s fusezfs[%(process)d] %(levelname)s %(message)s")
        return daemon.serve(pool, rest[1] if len(rest) > 1 else None,
                            daemon.parse_options(texts))
    return _spawn(pool, rest[1] if len(rest) > 1 else None, texts)


def _spawn(pool: str, mountpoint: str | None, texts: list[str]) -> int:
    r, w = os.pipe()
    cmd = [sys.executable, "-m", "fusezfs.daemon", "--ready-fd", str(w)]
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


def _find(target: str) -> tuple[str | None, str | None, int | None]:
    """(pool, mountpoint, daemon pid) named by a pool name or a mountpoint path."""
    if "/" not in target and daemon.read_state(target) is not None:
        st = daemon.read_state(target)
        pid = int(st.get("pid", 0))
        return target, st.get("mountpoint"), pid
    path = os.path.abspath(target)
    for st in daemon.all_states():
        if st.get("mountpoint") == path:
            return st.get("pool"), path, int(st.get("pid", 0))
    if daemon.is_mounted(path) == daemon.FSTYPE:
        return None, path, None
    return None, None, None


def cmd_unmount(args: list[str]) -> int:
    opts, rest = parse(args, "f")
    force = ("-f", "") in opts
    if len(rest) != 1:
        raise Usage("missing pool name or mountpoint" if not rest else "too many arguments")
    target = rest[0]
    pool, mp, pid = _find(target)
    if mp is None:
        raise Failed(f"cannot unmount '{target}': not currently mounted")
    alive = pid is not None and pid > 0 and daemon.pid_alive(pid)
    if daemon.is_mounted(mp) == daemon.FSTYPE:
        ok, msg = daemon.fusermount_unmount(mp, lazy=force or not alive)
        if not ok:
            raise Failed(f"cannot unmount '{mp}': {msg or 'unmount failed'}")
    if alive:
        deadline = time.monotonic() + EXIT_TIMEOUT
        while daemon.pid_alive(pid):
            if time.monotonic() > deadline:
                raise Failed(f"cannot unmount '{mp}': daemon (pid {pid}) did not exit")
            time.sleep(0.05)
    elif pool is not None:
        daemon.clean_stale(pool)
    return 0


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
