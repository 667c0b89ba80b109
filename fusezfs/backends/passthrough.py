"""The passthrough backend: a real ZFS answers, through its own `zfs` and `zpool` commands.

What it guarantees:

* every `zfs` and `zpool` verb and flag reaches the real command unchanged, and its exit code,
  messages and standard streams reach the caller unchanged: a program start execs the real
  command (nothing of fusezfs stays in the process), an in-process call (the library, tests)
  runs it and relays its output byte for byte;
* fusezfs's own verbs map onto what the real ZFS offers: `fusezfs VERB` is `zfs VERB`,
  `fusezfs pool VERB` is `zpool VERB` (file operands of `pool create` and `pool import -d`
  made absolute, as the emulation takes them); `fusezfs cp` copies through the mountpoints
  (`DATASET@SNAP:/path` through `MOUNTPOINT/.zfs/snapshot/SNAP`) with GNU cp, run where the
  real ZFS's mounts are (the command prefix of FUSEZFS_ZFS, e.g. `nsenter -t PID -m`);
  `pool verify` is a scrub that waits (`zpool scrub`, then `zpool status` until the scan is
  done: zfs-fuse and OpenZFS before 2.0 have no `scrub -w`); `mount` and `unmount` are
  ZFS's own (`zfs mount`; `zfs unmount`, of a pool's mounted filesystems children first, as
  the emulation unmounts a pool's tree; `mount -t zfs` for a dataset at a path); `zfs version` is the real one's, or, where the real zfs predates the verb,
  `zfs-unknown-passthrough` lines, so a script parsing it sees no fusezfs version;
* the passthrough never touches the emulated backend's pools (ownership.py) and says so when
  it refuses. fusezfs-only verbs with no ZFS counterpart (`image`, `container`) are refused
  with the backend named.

Nothing here keeps state: each command is one or a few real commands run in sequence.
"""
from __future__ import annotations

import getopt
import os
import re
import shlex
import subprocess
import sys
import threading
import time

from fusezfs.backends import LABEL_WRITERS, REENTRY_VARIABLE, Choice, ownership
from fusezfs.host.paths import state_dir_path

SCRUB_POLL = 0.2
SCAN_RUNNING = re.compile(r"(scrub|resilver) in progress")
VDEV_KEYWORDS = {"mirror", "raidz", "raidz1", "raidz2", "raidz3", "spare", "log", "cache",
                 "special", "dedup"}
CREATE_ARG_OPTIONS = "moORt"          # zpool create's options that take a value


class Failed(Exception):
    """A mapped verb failed: `message` (may be empty: already printed) and the exit code."""

    def __init__(self, message: str = "", code: int = 1) -> None:
        super().__init__(message)
        self.message, self.code = message, code


def run_program(program: str, args: list[str], choice: Choice, may_exec: bool) -> int:
    if os.environ.get(REENTRY_VARIABLE) == "1":
        print(f"fusezfs: passthrough backend: the real {program} command "
              f"({shlex.join(choice.zfs if program != 'zpool' else choice.zpool)}) is fusezfs's "
              f"own program; name the real ZFS's commands with FUSEZFS_ZFS and FUSEZFS_ZPOOL",
              file=sys.stderr)
        return 1
    px = Passthrough(choice, may_exec)
    try:
        if program == "zfs":
            return px.zfs_program(args)
        if program == "zpool":
            return px.zpool_program(args)
        return px.fusezfs_program(args)
    except Failed as e:
        if e.message:
            print(e.message, file=sys.stderr)
        return e.code


class Passthrough:
    def __init__(self, choice: Choice, may_exec: bool = False) -> None:
        self.zfs, self.zpool = choice.zfs, choice.zpool
        self.prefix = self.zfs[:-1]     # how to run other programs where the real ZFS runs
        self.may_exec = may_exec

    # ---- running the real commands ------------------------------------------------------
    def real(self, argv: list[str]) -> int:
        """Run argv with this process's standard streams; the last command of a verb may be
        exec'ed (a program start), so nothing of fusezfs stays around it."""
        env = dict(os.environ, **{REENTRY_VARIABLE: "1"})
        try:
            if self.may_exec:
                sys.stdout.flush()
                sys.stderr.flush()
                os.execvpe(argv[0], argv, env)
            return relay(argv, env)
        except OSError as e:
            print(f"fusezfs: passthrough backend: cannot run '{argv[0]}': {e.strerror}",
                  file=sys.stderr)
            return 127

    def capture(self, argv: list[str]) -> subprocess.CompletedProcess:
        env = dict(os.environ, **{REENTRY_VARIABLE: "1"})
        try:
            return subprocess.run(argv, capture_output=True, text=True, env=env,
                                  stdin=subprocess.DEVNULL)
        except OSError as e:
            raise Failed(f"fusezfs: passthrough backend: cannot run '{argv[0]}': "
                         f"{e.strerror}", 127) from None

    def checked(self, argv: list[str], said_by: str = "") -> str:
        """stdout of a command that must succeed; else Failed with its exit code and its
        stderr as it is, after `said_by` (`cp: `: the words of the verb that asked)."""
        r = self.capture(argv)
        if r.returncode != 0:
            raise Failed(said_by + r.stderr.rstrip("\n"), r.returncode)
        return r.stdout

    # ---- the three programs --------------------------------------------------------------
    def zfs_program(self, args: list[str]) -> int:
        if args[:1] in (["version"], ["-V"], ["--version"]):
            return self.version(args[1:])
        self.refuse_emulated_names(args)
        return self.real(self.zfs + args)

    def zpool_program(self, args: list[str]) -> int:
        if args[:1] in (["version"], ["-V"], ["--version"]):
            return self.version(args[1:])
        if args[:1] and args[0] in LABEL_WRITERS:
            code = ownership.refuse_emulated_labels(args)
            if code is not None:
                return code
        if args[:1] not in (["create"], ["import"]):
            self.refuse_emulated_names(args)
        return self.real(self.zpool + args)

    def fusezfs_program(self, args: list[str]) -> int:
        verb = args[0] if args else ""
        if verb == "backend":
            from fusezfs.backends import choose
            return ownership.print_backend(choose(), args[1:])
        if verb == "pool":
            sub = args[1:]
            if sub[:1] == ["verify"]:
                return self.verify(sub[1:])
            if sub[:1] == ["create"]:
                sub = ["create"] + absolute_vdevs(sub[1:])
            elif sub[:1] == ["import"]:
                sub = ["import"] + absolute_dirs(sub[1:])
            return self.zpool_program(sub)
        if verb == "cp":
            return self.cp(args[1:])
        if verb == "mount":
            return self.mount(args[1:])
        if verb in ("unmount", "umount"):
            return self.unmount(args[1:])
        if verb in ("image", "container"):
            raise Failed(f"fusezfs {verb}: not available on the passthrough backend (real ZFS: "
                         f"{shlex.join(self.zfs)}); container images are built by the "
                         f"emulated backend (FUSEZFS_BACKEND=emulated)")
        return self.zfs_program(args)

    # ---- mapped verbs --------------------------------------------------------------------
    def version(self, args: list[str]) -> int:
        r = self.capture(self.zfs + ["version"] + args)
        if r.returncode != 0 and not args and "unrecognized command" in r.stderr:
            print("zfs-unknown-passthrough\nzfs-kmod-unknown-passthrough")
            return 0
        sys.stdout.write(r.stdout)
        sys.stderr.write(r.stderr)
        return r.returncode

    def refuse_emulated_names(self, args: list[str]) -> None:
        """Failed if an operand names a pool only the emulated registry holds."""
        emulated = ownership.emulated_pool_names()
        if not emulated:
            return
        named = {re.split(r"[/@#:]", a, maxsplit=1)[0] for a in args
                 if a and not a.startswith("-") and "=" not in a}
        hits = named & emulated
        if not hits:
            return
        real = set(self.capture(self.zpool + ["list", "-H", "-o", "name"]).stdout.split())
        for name in sorted(hits - real):
            raise Failed(f"cannot open '{name}': pool '{name}' belongs to the emulated backend "
                         f"(fusezfs, state {state_dir_path()}); the passthrough "
                         f"backend (real ZFS) does not touch it (FUSEZFS_BACKEND=emulated "
                         f"reaches it)")

    def mountpoint(self, filesystem: str) -> str:
        """Where a mounted filesystem is (Failed, with zfs's message after `cp: ` as fusezfs
        cp says it, if it does not exist)."""
        mp, mounted = self.checked(self.zfs + ["get", "-H", "-o", "value", "mountpoint,mounted",
                                               filesystem], "cp: ").split("\n")[:2]
        if mounted != "yes" or not mp.startswith("/"):
            raise Failed(f"cp: cannot copy: '{filesystem}' is not mounted (the passthrough backend "
                         f"copies through the mountpoint)")
        return mp

    def dataset_path(self, dataset: str, path: str) -> str:
        """`DATASET[@SNAP]` and a path in it -> the path under the real mountpoint."""
        fs, _, snap = dataset.partition("@")
        base = self.mountpoint(fs)
        if snap:
            base = os.path.join(base, ".zfs", "snapshot", snap)
            if self.capture(self.prefix + ["test", "-d", base]).returncode != 0:
                self.checked(self.zfs + ["list", "-H", "-o", "name", dataset], "cp: ")
                raise Failed(f"cp: cannot open '{dataset}': {base} does not exist (this ZFS has no "
                             f".zfs/snapshot directory; passthrough backend)")
        return os.path.join(base, path.lstrip("/")) if path.strip("/") else base + "/"

    def cp(self, args: list[str]) -> int:
        from fusezfs.cli.cli_cp import USAGE, split_spec
        try:
            opts, rest = getopt.gnu_getopt(args, "adHLPprR")
        except getopt.GetoptError as e:
            raise Failed(f"cp: invalid option '{e.opt}'\n{USAGE}", 2) from None
        if len(rest) < 2:
            raise Failed((f"cp: missing destination file operand after '{rest[0]}'"
                          if rest else "cp: missing file operand") + "\n" + USAGE, 2)
        self.refuse_emulated_names(rest)
        paths = []
        for operand in rest:
            dataset, path = split_spec(operand)
            if dataset is None:
                keep = "/" if path.endswith("/") and path != "/" else ""
                paths.append(os.path.abspath(path) + keep)
            else:
                paths.append(self.dataset_path(dataset, path))
        return self.real(self.prefix + ["cp"] + [o for o, _ in opts] + ["--"] + paths)

    def verify(self, args: list[str]) -> int:
        if len(args) != 1 or args[0].startswith("-"):
            why = ("missing pool name" if not args else f"invalid option '{args[0]}'"
                   if args[0].startswith("-") else "too many arguments")
            raise Failed(f"{why}\nusage:\n\tverify <pool>", 2)
        pool = args[0]
        self.refuse_emulated_names(args)
        self.checked(self.zpool + ["scrub", pool])
        while True:
            status = self.checked(self.zpool + ["status", pool])
            if not SCAN_RUNNING.search(status):
                break
            time.sleep(SCRUB_POLL)
        sys.stdout.write(status)
        clean = "errors: No known data errors" in status and re.search(r"with 0 errors", status)
        return 0 if clean else 1

    def filesystems(self, pool: str) -> list[tuple[str, str, str, str]]:
        out = self.checked(self.zfs + ["list", "-H", "-o", "name,canmount,mountpoint,mounted",
                                       "-r", "-t", "filesystem", pool])
        return [tuple(line.split("\t")) for line in out.splitlines() if line]

    def mount(self, args: list[str]) -> int:
        """`zfs mount` as it is, but for the two forms with a path: a dataset at PATH is
        mount(8) of a legacy mountpoint; a pool at another PATH is refused (the emulation's
        override of the root's mountpoint has no ZFS counterpart but a property change)."""
        try:
            opts, rest = getopt.gnu_getopt(args, "ao:fOlv")
        except getopt.GetoptError:
            return self.real(self.zfs + ["mount"] + args)       # zfs's own complaint
        if len(rest) != 2:
            return self.real(self.zfs + ["mount"] + args)
        target, path = rest[0], os.path.abspath(rest[1])
        if "/" not in target and "@" not in target:
            raise Failed(f"cannot mount '{target}' at '{rest[1]}': the passthrough backend "
                         f"mounts a pool at its mountpoint property (zfs set "
                         f"mountpoint={path} {target})")
        texts = [x for o, v in opts if o == "-o" for x in ("-o", v)]
        return self.real(self.prefix + ["mount", "-t", "zfs"] + texts + [target, path])

    def unmount(self, args: list[str]) -> int:
        """`zfs unmount` as it is, but a pool's name unmounts its mounted filesystems,
        children first, as the emulation unmounts a pool's tree."""
        try:
            opts, rest = getopt.gnu_getopt(args, "fau")
        except getopt.GetoptError:
            return self.real(self.zfs + ["unmount"] + args)
        if len(rest) != 1 or opts and any(o != "-f" for o, _ in opts) or \
                rest[0].startswith("/") or "/" in rest[0] or "@" in rest[0]:
            return self.real(self.zfs + ["unmount"] + args)
        pool, force = rest[0], ["-f"] if opts else []
        mounted = [name for name, _c, _mp, m in self.filesystems(pool) if m == "yes"]
        if not mounted:
            raise Failed(f"cannot unmount '{pool}': not currently mounted")
        for name in sorted(mounted, key=lambda n: -n.count("/")):   # children first
            code = self.real_step(self.zfs + ["unmount"] + force + [name])
            if code:
                return code
        return 0

    def real_step(self, argv: list[str]) -> int:
        """One of several commands of a verb: never exec'ed (more follow)."""
        keep, self.may_exec = self.may_exec, False
        try:
            return self.real(argv)
        finally:
            self.may_exec = keep


def relay(argv: list[str], env: dict) -> int:
    """Run argv; its output goes to this process's sys.stdout/sys.stderr, which callers may
    have replaced (pytest's capture, a library caller): the real file descriptors are
    inherited when the streams are the process's own, else the output is copied as bytes."""
    own = sys.stdout is sys.__stdout__ and sys.stderr is sys.__stderr__
    try:
        stdin = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):
        stdin = subprocess.DEVNULL
    if own:
        return subprocess.run(argv, env=env, stdin=stdin).returncode
    proc = subprocess.Popen(argv, env=env, stdin=stdin, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    copiers = [threading.Thread(target=_copy, args=(proc.stdout, sys.stdout)),
               threading.Thread(target=_copy, args=(proc.stderr, sys.stderr))]
    for t in copiers:
        t.start()
    for t in copiers:
        t.join()
    return proc.wait()


def _copy(src, dst) -> None:
    binary = getattr(dst, "buffer", None)
    while True:
        chunk = src.read1(1 << 16) if hasattr(src, "read1") else src.read(1 << 16)
        if not chunk:
            break
        if binary is not None:
            dst.flush()
            binary.write(chunk)
            binary.flush()
        else:
            dst.write(chunk.decode(errors="surrogateescape"))
    src.close()


def absolute_vdevs(args: list[str]) -> list[str]:
    """zpool create's arguments with the vdev files made absolute (the emulation takes
    relative ones; the real zpool would look for them in /dev)."""
    out, i = [], 0
    while i < len(args) and args[i].startswith("-"):
        out.append(args[i])
        if args[i][-1] in CREATE_ARG_OPTIONS and len(args[i]) == 2 and i + 1 < len(args):
            out.append(args[i + 1])
            i += 1
        i += 1
    if i < len(args):
        out.append(args[i])                         # the pool name
        i += 1
    for word in args[i:]:
        absolute = word not in VDEV_KEYWORDS and not word.startswith("/") and (
            os.path.exists(word) or "/" in word)
        out.append(os.path.abspath(word) if absolute else word)
    return out


def absolute_dirs(args: list[str]) -> list[str]:
    """zpool import's -d directories made absolute."""
    out = list(args)
    for i, word in enumerate(out):
        if word == "-d" and i + 1 < len(out):
            out[i + 1] = os.path.abspath(out[i + 1])
        elif word.startswith("-d") and len(word) > 2:
            out[i] = "-d" + os.path.abspath(word[2:])
    return out
