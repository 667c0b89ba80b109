"""`fusezfs`: OpenZFS's command line. zfs verbs at the top level, zpool verbs under `pool`.

The programs `fusezfs`, `zfs` and `zpool` enter here with no arguments (`main()`,
`zfs_main()`, `zpool_main()`): they are the thin client (host/client.py), which sends the
command to the service that owns every pool (host/service.py). Called with an argument list,
these functions run the command in this process instead: the service runs every command so,
and so do tests and FUSEZFS_NO_SERVICE=1. This module stays cheap to import (the standard
library's getopt and the backends' chooser) because every program start imports it.

Exit codes as zfs/zpool: 0 success, 1 a command that failed, 2 bad usage (with the usage text on
stderr). Messages go to stderr in OpenZFS's words, so scripts that parse them keep working.
"""
from __future__ import annotations

import sys

TYPE_CHECKING = False       # (typing.TYPE_CHECKING without importing typing at start-up)
if TYPE_CHECKING:
    from typing import Callable

from .backends import delegate   # which backend answers (cheap: the standard library only)


class Usage(Exception):
    """Bad usage: `message` (may be empty) then the verb's usage text, exit 2."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message


class Failed(Exception):
    """The command failed; the message was already printed or is carried here. Exit 1."""

    def __init__(self, message: str = "", code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def error(message: str) -> None:
    print(message, file=sys.stderr)


def parse(args: list[str], shortopts: str) -> tuple[list[tuple[str, str]], list[str]]:
    """getopt as glibc's (options may follow operands, as zfs and zpool accept them), with
    zfs's complaints for unknown options and missing arguments."""
    import getopt           # (not at the top: the thin client never needs it)
    try:
        return getopt.gnu_getopt(args, shortopts)
    except getopt.GetoptError as e:
        if "requires argument" in e.msg:
            raise Usage(f"missing argument for '{e.opt}' option") from None
        raise Usage(f"invalid option '{e.opt}'") from None


def nicenum(num: int) -> str:
    """Human-readable size the way zfs prints it: 1024-based, at most 5 characters."""
    units = " KMGTPE"
    n, index = num, 0
    while n >= 1024 and index < 6:
        n //= 1024
        index += 1
    if index == 0:
        return str(num)
    div = 1024 ** index
    if num % div == 0:
        return f"{num // div}{units[index]}"
    for digits in (2, 1, 0):
        text = f"{num / div:.{digits}f}{units[index]}"
        if len(text) <= 5:
            return text
    return text


def print_table(headers: list[str], rows: list[list[str]], *, scripted: bool,
                right: set[int] = frozenset()) -> None:
    """zfs's table style: two spaces between columns; -H: tabs and no header."""
    if scripted:
        for row in rows:
            print("\t".join(row))
        return
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    for row in [headers] + rows:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        print("  ".join(cells).rstrip())


ZFS_VERBS = ("create", "destroy", "snapshot", "snap", "rollback", "clone", "promote", "rename",
             "list", "get", "set", "inherit", "hold", "release", "holds", "bookmark", "diff",
             "send", "receive", "recv", "upgrade")
VERB_MODULES = {"pool": "cli_pool", "cp": "cli_cp", "mount": "cli_mount", "unmount": "cli_mount",
                "umount": "cli_mount", **{v: "cli_zfs" for v in ZFS_VERBS},
                "send": "cli_send", "receive": "cli_send", "recv": "cli_send",
                "image": "images.cli", "container": "images.cli"}


def main(argv: list[str] | None = None) -> int:
    """`fusezfs ARGV`: the program (argv None: the client), or in this process."""
    if (code := delegate("fusezfs", argv)) is not None:    # the passthrough backend answers
        return code
    if argv is None:
        from .host.client import run
        return run("fusezfs", sys.argv[1:])
    from .host.registry import RegistryError
    try:
        return dispatch(argv)
    except (KeyboardInterrupt, BrokenPipeError):
        return 1
    except RegistryError as e:      # one line, never a traceback
        error(str(e))
        return 1


def zfs_main(argv: list[str] | None = None) -> int:
    """The `zfs` program: `zfs VERB ...` is `fusezfs VERB ...`."""
    if (code := delegate("zfs", argv)) is not None:    # the passthrough backend answers
        return code
    if argv is None:
        from .host.client import run
        return run("zfs", sys.argv[1:])
    return _program("zfs", argv, [])


def zpool_main(argv: list[str] | None = None) -> int:
    """The `zpool` program: `zpool VERB ...` is `fusezfs pool VERB ...`."""
    if (code := delegate("zpool", argv)) is not None:    # the passthrough backend answers
        return code
    if argv is None:
        from .host.client import run
        return run("zpool", sys.argv[1:])
    return _program("zpool", argv, ["pool"])


def _program(name: str, argv: list[str], prefix: list[str]) -> int:
    from . import cli_help
    real = cli_help.real_zfs_loaded()
    if real is not None:
        error(f"{name}: a ZFS kernel module is loaded on this host; fusezfs's {name} does not "
              f"stand in for it: run the real command ({real})")
        return 1
    if not argv or argv[0] in ("-?", "-h", "--help"):
        usage = cli_help.zfs_usage() if name == "zfs" else cli_help.zpool_usage()
        print(usage, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] in ("version", "-V", "--version"):
        return _version(argv[1:])
    return main(prefix + argv)


def _version(args: list[str]) -> int:
    if args:
        error(f"invalid option '{args[0]}'" if args[0].startswith("-") else "too many arguments")
        return 2
    from . import cli_help
    print("\n".join(cli_help.version_lines()))
    return 0


def dispatch(argv: list[str]) -> int:
    """Run a command in this process. Only the module of the verb is imported: a command's
    start-up time is mostly imports."""
    from importlib import import_module
    if not argv or argv[0] in ("-h", "--help", "-?"):
        from . import cli_help
        print(cli_help.fusezfs_usage(), file=sys.stderr if not argv else sys.stdout)
        return 2 if not argv else 0
    if argv[0] in ("version", "-V", "--version"):
        return _version(argv[1:])
    if argv[:1] == ["pool"] and argv[1:2] in (["version"], ["-V"], ["--version"]):
        return _version(argv[2:])
    module = VERB_MODULES.get(argv[0])
    if module is None:
        error(f"unrecognized command '{argv[0]}'")
        return 2
    mod = import_module(f".{module}", __package__)
    verb: Callable[[list[str]], int]
    if module == "cli_zfs":
        verb = lambda a: mod.run(argv[0], a)  # noqa: E731
    elif module in ("cli_mount", "cli_send", "images.cli"):
        verb = mod.COMMANDS[argv[0]]
    else:
        verb = mod.main
    try:
        return verb(argv[1:])
    except KeyboardInterrupt:
        return 1
    except BrokenPipeError:
        return 1


if __name__ == "__main__":        # python -m fusezfs.cli: the `fusezfs` program
    sys.exit(main())
