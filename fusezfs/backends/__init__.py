"""Which ZFS answers: the emulated store (fusezfs itself) or a real ZFS through its own commands.

Two backends stand behind the one `fusezfs`/`zfs`/`zpool` command line and the one library
(`connect()`, library.py):

* **emulated** — fusezfs's own store: pools in files, the CLI of fusezfs/cli.py;
* **passthrough** — a real ZFS (kernel module, or any `zfs`/`zpool` pair such as zfs-fuse's),
  reached only through its own commands, whose arguments, exit codes, messages and standard
  streams pass through untouched (passthrough.py).

The choice (`choose`), in order: `FUSEZFS_BACKEND=emulated|passthrough` forces one; otherwise
passthrough when the ZFS kernel module is loaded (/sys/module/zfs, or the directory
`FUSEZFS_SYS_MODULE_ZFS` names) *and* its commands exist, else emulated. The real commands are
`FUSEZFS_ZFS` and `FUSEZFS_ZPOOL` when set — command lines, split as a shell would, so they may
carry a prefix such as `nsenter -t PID -m /usr/sbin/zfs` for a ZFS living in another mount
namespace — else `zfs`/`zpool` from the system's sbin directories (never fusezfs's own
programs). The two never cross: passthrough refuses a file that holds an emulated pool's
label and a pool name only the emulated registry knows, the emulation refuses a file holding a
real ZFS label, and those refusals name the backend that refused.

This module is imported by every `fusezfs`, `zfs` and `zpool` start-up (`delegate`), so it
imports only the standard library's cheapest modules; the emulated path costs one environment
lookup and one stat. Nothing here changes a pool: it decides, then execs or runs the real
command, or returns None so that fusezfs's own CLI goes on.
"""
from __future__ import annotations

import os
import sys

BACKEND_VARIABLE = "FUSEZFS_BACKEND"
ZFS_VARIABLE = "FUSEZFS_ZFS"
ZPOOL_VARIABLE = "FUSEZFS_ZPOOL"
MODULE_VARIABLE = "FUSEZFS_SYS_MODULE_ZFS"
MOUNT_ROOT_VARIABLE = "FUSEZFS_MOUNT_ROOT"
# set in the environment of a real command fusezfs execs: seeing it again means that the
# "real" command is fusezfs's own program, which would exec itself forever
REENTRY_VARIABLE = "FUSEZFS_PASSTHROUGH_ACTIVE"
BACKENDS = ("emulated", "passthrough")
SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")


class BackendError(Exception):
    """No usable backend as asked; the message says which and why (exit 1)."""


class Choice:
    """The backend chosen and why (a plain class: typing's NamedTuple would cost every
    command start-up the import of typing)."""
    __slots__ = ("name", "why", "zfs", "zpool")

    def __init__(self, name: str, why: str, zfs: list[str] | None,
                 zpool: list[str] | None) -> None:
        self.name = name            # "emulated" or "passthrough"
        self.why = why              # how it was chosen, for `fusezfs backend`
        self.zfs = zfs              # the real commands (passthrough only)
        self.zpool = zpool


def module_loaded() -> bool:
    return os.path.isdir(os.environ.get(MODULE_VARIABLE, "/sys/module/zfs"))


def _is_fusezfs_program(path: str) -> bool:
    """True for fusezfs's own `zfs`/`zpool` (a console script calling fusezfs.cli)."""
    me = sys.argv[0] if sys.argv and sys.argv[0] else ""
    if me and os.path.realpath(path) == os.path.realpath(me):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(2048)
    except OSError:
        return False
    return head.startswith(b"#!") and b"fusezfs.cli" in head


def _find_real(program: str) -> str | None:
    from shutil import which
    for d in SBIN_DIRS:
        cand = os.path.join(d, program)
        if os.path.isfile(cand) and os.access(cand, os.X_OK) and not _is_fusezfs_program(cand):
            return cand
    found = which(program)
    return found if found and not _is_fusezfs_program(found) else None


def real_commands() -> tuple[list[str], list[str]] | None:
    """The real zfs and zpool command lines, or None where there are none. FUSEZFS_ZFS and
    FUSEZFS_ZPOOL win; one of them set names the other's directory and prefix too."""
    import shlex
    from shutil import which
    zfs, zpool = os.environ.get(ZFS_VARIABLE), os.environ.get(ZPOOL_VARIABLE)
    if zfs or zpool:
        zfs_argv = shlex.split(zfs) if zfs else None
        zpool_argv = shlex.split(zpool) if zpool else None
        if zfs_argv is None:
            zfs_argv = zpool_argv[:-1] + [os.path.join(os.path.dirname(zpool_argv[-1]), "zfs")]
        if zpool_argv is None:
            zpool_argv = zfs_argv[:-1] + [os.path.join(os.path.dirname(zfs_argv[-1]), "zpool")]
        if not zfs_argv or not zpool_argv or not which(zfs_argv[0]) or not which(zpool_argv[0]):
            return None                     # named, but not there: no real ZFS to pass to
        return zfs_argv, zpool_argv
    zfs, zpool = _find_real("zfs"), _find_real("zpool")
    if zfs and zpool:
        return [zfs], [zpool]
    return None


def choose() -> Choice:
    """The backend that answers here (BackendError if the one forced cannot)."""
    forced = os.environ.get(BACKEND_VARIABLE, "")
    if forced and forced not in BACKENDS:
        raise BackendError(f"fusezfs: invalid {BACKEND_VARIABLE} '{forced}': must be "
                           f"'emulated' or 'passthrough'")
    if forced == "emulated":
        return Choice("emulated", f"{BACKEND_VARIABLE}=emulated", None, None)
    if forced == "passthrough":
        cmds = real_commands()
        if cmds is None:
            raise BackendError(
                f"fusezfs: passthrough backend: no real zfs and zpool commands found (looked "
                f"in {', '.join(SBIN_DIRS)} and PATH, or {ZFS_VARIABLE}/{ZPOOL_VARIABLE} name "
                f"commands that do not exist); name them with {ZFS_VARIABLE} and "
                f"{ZPOOL_VARIABLE}")
        return Choice("passthrough", f"{BACKEND_VARIABLE}=passthrough", *cmds)
    if not module_loaded():
        return Choice("emulated", "no ZFS kernel module is loaded", None, None)
    cmds = real_commands()
    if cmds is None:
        return Choice("emulated", "a ZFS kernel module is loaded but its zfs and zpool "
                                  "commands were not found", None, None)
    return Choice("passthrough", "a ZFS kernel module is loaded and its commands exist", *cmds)


def delegate(program: str, argv: list[str] | None) -> int | None:
    """The entry-point hook (`fusezfs`, `zfs`, `zpool`): the exit code when the command was
    answered here (the passthrough backend, `fusezfs backend`, a crossing refused), or None
    for fusezfs's own CLI to go on. `argv` None means a real program start: passthrough then
    execs the real command (its streams and exit code are the process's own); with an
    explicit argv (fusezfs called as a library) it runs it and relays its output."""
    args = sys.argv[1:] if argv is None else argv
    forced = os.environ.get(BACKEND_VARIABLE)
    choice = None
    if forced != "emulated" and (forced or module_loaded()):     # else: emulated, no more asked
        try:
            choice = choose()
        except BackendError as e:
            print(str(e), file=sys.stderr)
            return 1
        if choice.name == "passthrough":
            from fusezfs.backends import passthrough
            return passthrough.run_program(program, args, choice, may_exec=argv is None)
    if program == "fusezfs" and args[:1] == ["backend"] or _may_cross(program, args):
        return _answer_emulated(program, args, choice)
    return None


# zpool verbs that write labels onto the files they are given
LABEL_WRITERS = ("create", "add", "attach", "replace", "labelclear")


def _may_cross(program: str, args: list[str]) -> bool:
    """Whether an emulated command writes labels onto files (checked for real ZFS labels)."""
    if program == "fusezfs":
        return args[:1] == ["pool"] and len(args) > 1 and args[1] in LABEL_WRITERS
    return program == "zpool" and bool(args) and args[0] in LABEL_WRITERS


def _answer_emulated(program: str, args: list[str], choice: Choice | None = None) -> int | None:
    from fusezfs.backends import ownership
    if choice is None:
        choice = choose()
    if program == "fusezfs" and args[:1] == ["backend"]:
        return ownership.print_backend(choice, args[1:])
    verb_args = args[1:] if program == "fusezfs" else args
    return ownership.refuse_real_labels(verb_args)


def connect(backend: str | None = None, **options):
    """A library handle on the backend chosen here (or the one named): see library.py."""
    from fusezfs.backends.library import connect as _connect
    return _connect(backend, **options)
