"""The service: one process per state directory that owns every imported pool, as the kernel
module owns every pool of a host.

Theory of operation
-------------------
Started on demand by the first command that finds nobody listening (client.py), as
`python -m fusezfs.host.service`. It takes STATE/service.lock (flock, never waits: a second
service started in the same instant finds it taken, says "busy" and exits, and its client
connects to the first), detaches the mounts a killed predecessor left (mounts.clean_dead), binds
STATE/service.sock (control.py), opens every pool the registry holds as imported and mounts
their filesystems (poolmounts.py), and serves commands until SIGTERM/SIGINT, until its socket
file is removed or replaced (its state directory is gone: a newer service owns the name), or
until it has been idle for FUSEZFS_SERVICE_IDLE seconds (300 by default) with nothing mounted
(an unmounted pool needs no process; the next command starts a service again).

Commands run one at a time (`cmd_lock`), in this process, through cli.dispatch, with
sessions.Context providing the pool Handles the service holds: a command over several pools or
none sees every pool, and concurrent commands wait for each other instead of failing. A pool
whose files cannot be opened is left out (its commands fail with the open error, list and
status show it UNAVAIL) and the others are unharmed. Around a command, the mounted pools'
kernel pages are written (through the prober), their locks held, their POSIX buffers
committed; after it their views and mounts follow what it changed. send and receive run
beside the others (execute_stream) and take their turn only for the steps a mount can see.

Crash safety: every command commits its txg before it answers (sessions.Borrowed.close), and
mounted pools commit every sync_interval; a kill -9 loses only what a txg had not committed,
as a crash of the kernel module would, and the next command's service imports the registry's
pools again (their txgs intact: the pool layer never overwrites live data).
"""
from __future__ import annotations

import fcntl
import io
import logging
import os
import signal
import sys
import threading
import time

from fusezfs import sessions
from fusezfs.host import registry
from fusezfs.host.client import ENV_KEYS
from fusezfs.host.control import Server

log = logging.getLogger("fusezfs.service")

SYNC_INTERVAL = 5.0
READ_ONLY_VERBS = {"list", "get", "holds"}
MOUNT_VERBS = {"mount", "unmount", "umount"}
VDEV_WORDS = {"mirror", "raidz", "raidz1", "raidz2", "raidz3", "log", "cache", "spare",
              "special", "dedup", "draid"}


class Opened:
    """A pool the service holds: its Pool, Handle and mounts."""

    def __init__(self, pool, handle, mounts) -> None:
        self.pool = pool
        self.handle = handle
        self.mounts = mounts


def absolute(argv: list[str], cwd: str) -> list[str]:
    """The client's relative paths made absolute (the service's working directory is /): the
    vdevs of pool create/add/attach/replace/labelclear, import's -d, cp's local sides, the
    paths of mount/unmount and the image commands' archives."""
    def full(p: str) -> str:
        return p if os.path.isabs(p) else os.path.normpath(os.path.join(cwd, p))
    if not argv:
        return argv
    if argv[0] == "cp":
        from fusezfs.cli.cli_cp import split_spec
        out, dashdash = [argv[0]], False
        for t in argv[1:]:
            if t == "--":
                dashdash = True
            elif (dashdash or not t.startswith("-")) and split_spec(t)[0] is None:
                t = full(t)
            out.append(t)
        return out
    if argv[0] in ("image", "container"):
        from fusezfs.images.cli import route_argv
        return route_argv(argv, cwd)
    if argv[0] in MOUNT_VERBS:       # a path, not a dataset name: absolute, or ./ ../ . ..
        return [argv[0]] + [full(a) if a in (".", "..") or a.startswith(("./", "../")) else a
                            for a in argv[1:]]
    if argv[0] == "pool" and len(argv) > 1:
        verb, out, skip = argv[1], argv[:2], False
        positional = 0
        for a in argv[2:]:
            if skip:
                out.append(full(a) if verb == "import" and out[-1] == "-d" else a)
                skip = False
                continue
            if a.startswith("-"):
                skip = a in ("-d", "-o", "-O", "-m", "-R") or (a.startswith("-") and a[-1:] in
                                                                "doOmR" and len(a) == 2)
                out.append(a)
                continue
            positional += 1
            first_device = 3 if verb in ("attach", "replace") else 2
            if verb in ("create", "add", "attach", "replace") and positional >= first_device \
                    and a not in VDEV_WORDS:
                a = full(a)
            elif verb == "labelclear":
                a = full(a)
            out.append(a)
        return out
    return argv


class Service:
    """See the module comment."""

    def __init__(self) -> None:
        from fusezfs.host.fuse_host import FuseHost
        self.cmd_lock = threading.Lock()
        self.pools: dict[str, Opened] = {}
        self.broken: dict[str, str] = {}
        self.host = FuseHost()
        self.server = Server(self)
        self.stopping = False
        self.stop_event = threading.Event()
        self.last_command = time.monotonic()
        self.options: dict[str, dict] = {}      # pool -> mount options (fusezfs mount -o)
        self.streams: set = set()
        self.streams_cond = threading.Condition()
        # started for a FUSEZFS_NO_SERVICE client's mount (client.py): mounts only what it is
        # asked to, and ends as soon as nothing is mounted
        self.ephemeral = os.environ.get("FUSEZFS_SERVICE_EPHEMERAL") == "1"

    # ---- pools ------------------------------------------------------------------------------
    def provide(self, name: str):
        """The Handle of imported pool `name`, opened now if need be (cli.Failed if its files
        cannot be opened)."""
        opened = self.pools.get(name)
        if opened is not None:
            return opened.handle
        from fusezfs.api import Handle
        from fusezfs.errors import Failed
        from fusezfs.cli.cli_pool import open_registered
        from fusezfs.engine import scrub
        from fusezfs.host.poolmounts import PoolMounts
        entry = registry.load().get(name)
        if entry is None or entry.get("state") == "exported":
            return None
        try:
            pool = open_registered(name, entry)
        except Failed as e:
            self.broken[name] = e.message
            raise
        self.broken.pop(name, None)
        handle = Handle(pool)
        pool.pipeline = True        # budget and timer syncs commit on a thread (pool.py)
        scrub.resume(pool)          # a scrub the pool was in when it was last closed
        self.pools[name] = Opened(pool, handle,
                                  PoolMounts(self.host, name, handle, self.options.get(name),
                                             self.ephemeral))
        if self.ephemeral:      # mounted only when asked
            self.pools[name].mounts.unmount_all(False)
        log.info("pool %s opened", name)
        return handle

    def release(self, pool, export: bool, destroy: bool) -> None:
        """sessions.Borrowed.close of export/destroy: the pool leaves the service (its mounts
        were unmounted before the command took the locks)."""
        opened = self.pools.pop(pool.name, None)
        if opened is not None:
            opened.mounts.close(force=True)
        pool.close(export=export, destroy=destroy)
        log.info("pool %s %s", pool.name, "destroyed" if destroy else "exported")

    def forget_unregistered(self) -> None:
        """Close the pools the registry no longer holds as imported (moved aside, edited by
        hand, a lost state directory rebuilt by import): their files are free again."""
        try:
            imported = {n for n, e in registry.load().items() if e.get("state") != "exported"}
        except registry.RegistryError:
            return
        for name in [n for n in self.pools if n not in imported]:
            opened = self.pools.pop(name)
            log.warning("pool %s is no longer in the registry: closing it", name)
            opened.mounts.close(force=True)
            try:
                opened.pool.close()
            except Exception:
                log.exception("closing %s", name)

    def open_all(self, quiet: set[str]) -> list[str]:
        """Open every imported pool not open yet (their mounts made by `reconcile`); pools
        in `quiet` (imported with -N) are left unmounted. Errors of pools that cannot be
        opened are kept for their commands, not reported here."""
        from fusezfs.errors import Failed
        if self.ephemeral:      # it opens a pool when a command needs it, and holds no other
            return []
        try:
            names = [n for n, e in registry.load().items() if e.get("state") != "exported"]
        except registry.RegistryError:
            return []
        new = []
        for name in sorted(names):
            if name in self.pools:
                continue
            try:
                self.provide(name)
            except Failed:
                continue
            except Exception:
                log.exception("opening %s", name)
                continue
            new.append(name)
            if name in quiet:
                self.pools[name].mounts.unmount_all(False)
        return new

    def reconcile(self, errors: list[str], new: list[str]) -> None:
        for name, opened in list(self.pools.items()):
            try:
                opened.mounts.reconcile(errors)
            except Exception as e:
                log.exception("mounting %s", name)
                errors.append(f"cannot mount '{name}': {e}")
        if self.host.reason is not None:
            for name in new:
                errors.append(f"cannot mount '{name}': FUSE is unavailable here "
                              f"({self.host.reason}); its datasets work unmounted")

    def busy(self, ds_id: int, pool: str | None = None) -> str | None:
        """Where a dataset of `pool` is mounted if it is in use there (sessions.busy_path)."""
        for name, opened in self.pools.items():
            ops = opened.mounts.ops
            if ops is not None and pool in (None, name):
                found = ops.busy_path(ds_id)
                if found is not None:
                    return found
        return None

    def mounted(self, dsl, rec) -> bool:
        """The `mounted` property (properties.mounted_hook)."""
        opened = self.pools.get(dsl.pool.name)
        return opened is not None and opened.handle.dsl is dsl and \
            opened.mounts.shown(rec.id) is not None

    # ---- commands ---------------------------------------------------------------------------
    def _env(self, env: dict) -> None:
        for key in ENV_KEYS:
            value = env.get(key)
            if os.environ.get(key) == value:
                continue
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = str(value)
            if key == "TZ":
                time.tzset()

    def context(self, changes: list, caller, cwd: str, **more) -> sessions.Context:
        return sessions.Context(self.provide, changes, caller, self.busy, release=self.release,
                                workdir=cwd, opened=lambda n: n in self.pools, **more)

    def execute(self, argv: list[str], cwd: str, env: dict,
                caller: tuple[int, int] | None = None) -> tuple[int, str, str]:
        """Run one command for the peer `caller` (uid, gid); (exit code, stdout, stderr)."""
        from fusezfs import cli
        out, err = io.StringIO(), io.StringIO()
        with self.cmd_lock:
            self.last_command = time.monotonic()
            if self.stopping:
                return 1, "", "the fusezfs service is stopping\n"
            self._env(env)
            self.server.local.out, self.server.local.err = out, err
            try:
                code = self._run(absolute(argv, cwd), cwd, caller, cli)
            except Exception as e:
                log.exception("command %r", argv)
                err.write(f"internal error: {e!r}\n")
                code = 1
            finally:
                self.server.local.out = self.server.local.err = None
            self.last_command = time.monotonic()
            if self.ephemeral and not self.streams and \
                    not any(o.mounts.ops is not None for o in self.pools.values()):
                log.info("ephemeral, and nothing is mounted: ending")
                self.server.stop()          # the pools are free before the answer goes
                self.close_all()
                self.stopping = True
                self.stop_event.set()
        log.info("command %s -> %d", " ".join(argv), code)
        return code, out.getvalue(), err.getvalue()

    def _run(self, argv: list[str], cwd: str, caller, cli) -> int:
        self.forget_unregistered()
        inside = self._inside_mounts(argv)
        if inside:
            print(inside, file=sys.stderr)
            return 1
        if argv and argv[0] in MOUNT_VERBS:
            from fusezfs.cli.mount_commands import run_mount_command
            self.open_all(set())
            return run_mount_command(self, argv)
        if argv[:1] == ["pool"] and argv[1:2] in (["export"], ["destroy"]):
            code = self._unmount_for(argv)
            if code:
                return code
        mounted = sorted((n, o) for n, o in self.pools.items() if o.mounts.ops is not None)
        verb = argv[0] if argv else ""
        read_only = verb in READ_ONLY_VERBS or argv[:2] in (["pool", "list"], ["pool", "get"],
                                                           ["pool", "status"])
        if not read_only:
            for _n, o in mounted:
                o.mounts.ops.flush_kernel()     # the kernel's dirty pages: they need the lock
        whole = verb != "cp"    # cp's local side may lie in a mount: its calls lock one by one
        held = []
        changes: list = []
        invals = []
        code = 1
        try:
            if whole:
                for _n, o in mounted:
                    o.pool.lock.acquire()
                    held.append(o)
            for _n, o in mounted:
                o.mounts.ops.before_command(argv)
            with sessions.serving(self.context(changes, caller, cwd)):
                try:
                    code = cli.main(argv)
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else 1
        finally:
            for _n, o in mounted:
                if o.mounts.ops is not None:
                    try:
                        invals.append((o, o.mounts.ops.refresh(changes)))
                    except Exception:
                        log.exception("refreshing the mounts of %s", o.pool.name)
            for o in held:
                o.pool.lock.release()
        for o, inval in invals:
            if o.mounts.ops is not None:
                o.mounts.ops.invalidate(inval)
                o.mounts.sessions.apply()
        quiet = set()
        if argv[:2] in (["pool", "create"], ["pool", "import"]) and "-N" in argv:
            quiet = {a for a in argv[2:] if not a.startswith("-")}
        new = self.open_all(quiet) if code == 0 or verb == "pool" else []
        errors: list[str] = []
        self.reconcile(errors, new if verb == "pool" else [])
        for line in errors:
            print(line, file=sys.stderr)
        return code

    @staticmethod
    def _inside_mounts(argv: list[str]) -> str | None:
        """A pool's device (or import's -d directory) inside a fusezfs mount is refused: this
        service would wait on itself reading it (and must never look into its own mounts)."""
        from fusezfs.host.mounts import fusezfs_mount_of
        if argv[:1] != ["pool"] or len(argv) < 3 or argv[1] not in (
                "create", "import", "add", "attach", "replace", "labelclear"):
            return None
        for a in argv[2:]:
            if a.startswith("/"):
                mp = fusezfs_mount_of(a)
                if mp is not None:
                    return (f"cannot {argv[1]}: '{a}' lies inside the fusezfs mount {mp} "
                            f"(the service would wait on itself)")
        return None

    def _unmount_for(self, argv: list[str]) -> int:
        """export/destroy unmount first, before the command takes the pools' locks (the kernel
        writes its pages while it unmounts): 'pool is busy' when a mount is in use, unless -f."""
        force = "-f" in argv[2:]
        for name in [a for a in argv[2:] if not a.startswith("-")]:
            opened = self.pools.get(name)
            if opened is None or opened.mounts.ops is None:
                continue
            errors = opened.mounts.unmount_all(force)
            if errors:
                for line in errors:
                    print(line, file=sys.stderr)
                print(f"cannot {argv[1]} '{name}': pool is busy", file=sys.stderr)
                return 1
        return 0

    def execute_stream(self, conn, argv: list[str], cwd: str, env: dict,
                       caller: tuple[int, int], tty: tuple[bool, bool],
                       compact: bool = False) -> int:
        """send and receive, beside the other commands; their output reaches the client as it
        is written, and their stdin is the client's."""
        from fusezfs import cli
        from fusezfs.host.control_streams import Channel, RemoteStdin, RemoteStdout, RemoteText
        chan = Channel(conn, self.server, compact)
        stdio = sessions.Stdio(RemoteStdin(chan), RemoteStdout(chan), RemoteText(chan, "out"),
                               RemoteText(chan, "err"), tty[0], tty[1])
        with self.cmd_lock:
            self.last_command = time.monotonic()
            if self.stopping:
                stdio.err.write("the fusezfs service is stopping\n")
                return 1
            self._env(env)
            with self.streams_cond:
                self.streams.add(chan)
        ctx = self.context([], caller, cwd, stdio=stdio, critical=self._critical)
        self.server.local.out, self.server.local.err = stdio.out, stdio.err
        code = 1
        try:
            with sessions.serving(ctx):
                code = cli.dispatch(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except Exception as e:
            if chan.lost is None:
                log.exception("command %r", argv)
                try:
                    stdio.err.write(f"internal error: {e!r}\n")
                except OSError:
                    pass
        finally:
            self.server.local.out = self.server.local.err = None
            with self.streams_cond:
                self.streams.discard(chan)
                self.streams_cond.notify_all()
            self.last_command = time.monotonic()
        log.info("command %s -> %d", " ".join(argv), code)
        return code

    def _critical(self, pool, fn, verb: str):
        """sessions.critical here: `fn` in turn with the other commands, the pool's mounts
        committed before it and brought in line after it, as for any command."""
        with self.cmd_lock:
            if self.stopping:
                raise OSError("the fusezfs service is stopping")
            opened = self.pools.get(pool.name)
            ops = opened.mounts.ops if opened is not None else None
            if ops is None:
                with pool.lock:
                    return fn()
            ops.flush_kernel()
            changes: list = []
            inval: list = []
            with ops.lock:
                try:
                    ops.before_command([verb])
                    ctx = self.context(changes, sessions.credentials(), sessions.cwd(),
                                       leave_unmounted=opened.mounts.unmounted.add)
                    with sessions.serving(ctx):
                        result = fn()
                finally:
                    try:
                        inval = ops.refresh(changes)
                    except Exception:
                        log.exception("refreshing the mount after %s", verb)
            ops.invalidate(inval)
            opened.mounts.sessions.apply()
            errors: list[str] = []
            opened.mounts.reconcile(errors)
        return result

    # ---- life ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Listen, then open and mount every imported pool; commands wait until that is done."""
        from fusezfs.dsl import properties
        properties.mounted_hook = self.mounted
        self.cmd_lock.acquire()
        try:
            self.server.start()
        except BaseException:
            self.cmd_lock.release()
            raise

    def startup(self) -> None:
        try:
            new = self.open_all(set())
            errors: list[str] = []
            self.reconcile(errors, [])
            for line in errors:
                log.warning("%s", line)
            log.info("serving %s", ", ".join(new) or "no pools")
        finally:
            self.cmd_lock.release()

    def watch(self) -> None:
        """The service's clock: commit mounted pools every SYNC_INTERVAL, end when the socket
        file is gone or nothing is mounted and no command came for the idle time."""
        idle = float(os.environ.get("FUSEZFS_SERVICE_IDLE", "300"))
        last_sync: dict[str, float] = {}
        while not self.stop_event.wait(0.25):
            if not self.server.still_ours():
                log.info("the socket %s is gone: ending", self.server.path)
                break
            now = time.monotonic()
            for name, opened in list(self.pools.items()):
                ops = opened.mounts.ops
                every = float(opened.mounts.options.get("sync_interval", SYNC_INTERVAL))
                if ops is None or every <= 0:
                    continue
                if now - last_sync.setdefault(name, now) >= every:
                    last_sync[name] = now
                    try:
                        ops.sync()      # (mount -o sync_interval=S: S seconds for this pool)
                    except Exception:
                        log.exception("txg sync of %s failed", name)
            if now - self.last_command > idle and not self.streams and \
                    not any(o.mounts.ops is not None for o in self.pools.values()) and \
                    self.cmd_lock.acquire(blocking=False):
                self.cmd_lock.release()
                log.info("idle for %.0f s with nothing mounted: ending", idle)
                break
        self.stop()

    def close_all(self) -> None:
        """Unmount every pool and close it (each commits its txg). Under cmd_lock."""
        for name, opened in list(self.pools.items()):
            try:
                opened.mounts.close(force=True)
            except Exception:
                log.exception("unmounting %s", name)
            try:
                opened.pool.close()
            except Exception:
                log.exception("closing %s", name)
        self.pools.clear()

    def stop(self) -> None:
        """Stop taking commands, wait for the running one, unmount everything and close every
        pool (each commits its txg)."""
        self.server.stop()
        with self.cmd_lock:
            self.stopping = True
            with self.streams_cond:
                for chan in list(self.streams):
                    chan.cut()
                deadline = time.monotonic() + 60
                while self.streams and time.monotonic() < deadline:
                    self.streams_cond.wait(0.5)
            self.close_all()
        self.host.prober.close()
        self.stop_event.set()
        self.host.finished()


def main(argv: list[str] | None = None) -> int:
    import getopt
    argv = sys.argv[1:] if argv is None else argv
    opts, _rest = getopt.getopt(argv, "", ["ready-fd="])
    ready_fd = next((int(v) for o, v in opts if o == "--ready-fd"), None)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s fusezfs-service[%(process)d] %(levelname)s "
                               "%(message)s")

    def report(text: str) -> None:
        nonlocal ready_fd
        if ready_fd is not None:
            try:
                os.write(ready_fd, (text + "\n").encode())
                os.close(ready_fd)
            except OSError:
                pass
            ready_fd = None

    try:
        state = registry.state_dir()
    except registry.RegistryError as e:
        report(f"error {e}")
        return 1
    lock = open(os.path.join(state, "service.lock"), "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        report("busy")          # another service has it (or is starting): its client waits
        return 0
    os.umask(0o077)
    from fusezfs.host.mounts import clean_dead
    clean_dead()
    service = Service()
    try:
        service.start()
    except OSError as e:
        report(f"error cannot make the control socket {service.server.path}: {e.strerror}")
        return 1
    with open(os.path.join(state, "service.pid"), "w") as f:
        f.write(f"{os.getpid()}\n")
    report("ok")
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: threading.Thread(target=service.stop_event.set,
                                                          daemon=True).start())
    service.host.run(service)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
