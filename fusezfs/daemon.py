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

Started by `fusezfs mount` as `python -m fusezfs.daemon --ready-fd N ...`: it reports "ok
MOUNTPOINT" or "error MESSAGE" on that descriptor once the mount exists or failed.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys

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


def write_state(pool: str, pid: int, mountpoint: str) -> None:
    path = state_file(pool)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"pid": pid, "mountpoint": mountpoint, "pool": pool}, f)
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
def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n") \
        .replace("\\134", "\\")


def mounts() -> list[tuple[str, str, str]]:
    """(source, mountpoint, fstype) of every mount this process sees."""
    out = []
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                out.append((_unescape(parts[0]), _unescape(parts[1]), parts[2]))
    return out


def is_mounted(path: str) -> str | None:
    """fstype of the mount at `path`, or None."""
    path = os.path.abspath(path)
    found = None
    for _src, mp, fstype in mounts():
        if mp == path:
            found = fstype
    return found


def fusezfs_mount_of(path: str) -> str | None:
    """The fusezfs mount `path` lies in, or None."""
    path = os.path.abspath(path)
    best = None
    for _src, mp, fstype in mounts():
        if path == mp or path.startswith(mp.rstrip("/") + "/"):
            if best is None or len(mp) >= len(best[0]):
                best = (mp, fstype)
    return best[0] if best and best[1] == FSTYPE else None


def fusermount_unmount(path: str, lazy: bool = False) -> tuple[bool, str]:
    args = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [path]
    try:
        r = subprocess.run(args, capture_output=True, text=True)
    except FileNotFoundError:
        args = ["umount"] + (["-l"] if lazy else []) + [path]
        r = subprocess.run(args, capture_output=True, text=True)
    return r.returncode == 0, (r.stderr or r.stdout).strip()


def clean_stale(pool: str) -> None:
    """A daemon of `pool` that died without unmounting: detach its dead mount, forget it."""
    data = read_state(pool)
    if data is None:
        return
    pid = int(data.get("pid", 0))
    if pid > 0 and pid_alive(pid):
        return
    mp = data.get("mountpoint")
    if mp and is_mounted(mp) == FSTYPE:
        log.warning("detaching the dead mount %s left by pid %d", mp, pid)
        fusermount_unmount(mp, lazy=True)
    try:
        os.unlink(state_file(pool))
    except FileNotFoundError:
        pass


# ---- serving ------------------------------------------------------------------------------
OPTION_KEYS = {"allow_other", "entry_timeout", "attr_timeout", "negative_timeout",
               "sync_interval", "mountpoint", "writeback_cache"}


def parse_options(text_list: list[str]) -> dict[str, str]:
    """`-o a,b=c` options: allow_other, entry_timeout=S, attr_timeout=S, negative_timeout=S,
    sync_interval=S, mountpoint=PATH (an override of the mountpoint property),
    writeback_cache=0|1 (the kernel's writeback cache; on by default)."""
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
            out[key] = value if eq else ""
    return out


def default_mountpoint(handle) -> str:
    from .datasets import ROOT_ID
    from .fuse_ops import mountpoint_of
    mp = mountpoint_of(handle.dsl, handle.dsl.record(ROOT_ID))
    if not mp.startswith("/"):
        raise DaemonError(f"cannot mount '{handle.pool.name}': mountpoint is '{mp}'; "
                          "give a mountpoint explicitly")
    return mp


def serve(pool_name: str, mountpoint: str | None, options: dict[str, str],
          report=None) -> int:
    """Open, mount and serve a pool until unmounted or signalled. `report(ok, text)` is told
    once whether the mount exists. Returns the exit code."""
    import pyfuse3
    import trio

    from .api import Handle
    from .cli import Failed
    from .cli_pool import open_pool
    from .control import Server
    from .fuse_ops import Operations

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
        with pool.lock:
            mp = mountpoint or options.get("mountpoint") or default_mountpoint(handle)
        mp = os.path.abspath(mp)
        if not os.path.isdir(mp):
            try:
                os.makedirs(mp, exist_ok=True)
            except OSError as e:
                raise DaemonError(f"cannot mount '{pool_name}': cannot create mountpoint "
                                  f"'{mp}': {e.strerror}") from None
        if is_mounted(mp):
            raise DaemonError(f"cannot mount '{mp}': a filesystem is already mounted there")
        ops = Operations(handle,
                         entry_timeout=float(options.get("entry_timeout", 1.0)),
                         attr_timeout=float(options.get("attr_timeout", 1.0)),
                         negative_timeout=float(options.get("negative_timeout", 1.0)),
                         writeback_cache=options.get("writeback_cache", "1") != "0")
        fuse_opts = set(pyfuse3.default_options)        # default_permissions
        fuse_opts |= {f"fsname={pool_name}", "subtype=fusezfs"}
        if "allow_other" in options:
            fuse_opts.add("allow_other")
        # the control socket (control.py): commands on this pool run here while it is served
        server = Server(pool_name, handle, ops)
        try:
            server.start()
        except OSError as e:
            raise DaemonError(f"cannot mount '{pool_name}': cannot make the control socket "
                              f"{server.path}: {e.strerror}") from None
        try:
            pyfuse3.init(ops, mp, fuse_opts)
        except RuntimeError as e:
            raise DaemonError(f"cannot mount '{pool_name}' at '{mp}': {e}") from None
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
    me = os.getpid()
    write_state(pool_name, me, mp)
    log.info("pool %s mounted at %s (pid %d)", pool_name, mp, me)
    if report:
        report(True, mp)
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
                signalled[0] = True
                pyfuse3.terminate()
                return

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            if interval > 0:
                nursery.start_soon(timer)
            nursery.start_soon(signals)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()

    code = 0
    try:
        trio.run(run)
    except BaseException:
        log.exception("FUSE loop failed")
        code = 1
    finally:
        server.stop()           # no new commands; the one running finishes first
        try:
            ops.close()
        except Exception:
            log.exception("closing filesystems")
            code = 1
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
        opts, rest = getopt.getopt(argv, "o:", ["ready-fd="])
    except getopt.GetoptError as e:
        print(f"fusezfs daemon: {e}", file=sys.stderr)
        return 2
    ready_fd = None
    texts = []
    for o, v in opts:
        if o == "--ready-fd":
            ready_fd = int(v)
        else:
            texts.append(v)
    if not 1 <= len(rest) <= 2:
        print("usage: python -m fusezfs.daemon [--ready-fd N] [-o opts] POOL [MOUNTPOINT]",
              file=sys.stderr)
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
    return serve(rest[0], rest[1] if len(rest) > 1 else None, options, report)


if __name__ == "__main__":
    sys.exit(main())
