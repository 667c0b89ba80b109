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

from fusezfs.backends import delegate  # which backend answers (cheap: the standard library only)
from fusezfs.cli.common import error
from fusezfs.errors import Failed, Usage  # noqa: F401 (cli.Failed, cli.Usage, as before errors.py)



ZFS_VERBS = ("create", "destroy", "snapshot", "snap", "rollback", "clone", "promote", "rename",
             "list", "get", "set", "inherit", "hold", "release", "holds", "bookmark", "diff",
             "send", "receive", "recv", "upgrade")
VERB_MODULES = {"pool": "cli_pool", "cp": "cli_cp", "mount": "cli_mount", "unmount": "cli_mount",
                "umount": "cli_mount", **{v: "cli_zfs" for v in ZFS_VERBS},
                "send": "cli_send", "receive": "cli_send", "recv": "cli_send",
                "image": "fusezfs.images.cli", "container": "fusezfs.images.cli"}


def main(argv: list[str] | None = None) -> int:
    """`fusezfs ARGV`: the program (argv None: the client), or in this process."""
    if (code := delegate("fusezfs", argv)) is not None:    # the passthrough backend answers
        return code
    if argv is None:
        from fusezfs.host.client import run
        return run("fusezfs", sys.argv[1:], main)
    from fusezfs.host.registry import RegistryError
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
        from fusezfs.host.client import run
        return run("zfs", sys.argv[1:], zfs_main)
    return _program("zfs", argv, [])


def zpool_main(argv: list[str] | None = None) -> int:
    """The `zpool` program: `zpool VERB ...` is `fusezfs pool VERB ...`."""
    if (code := delegate("zpool", argv)) is not None:    # the passthrough backend answers
        return code
    if argv is None:
        from fusezfs.host.client import run
        return run("zpool", sys.argv[1:], zpool_main)
    return _program("zpool", argv, ["pool"])


def _program(name: str, argv: list[str], prefix: list[str]) -> int:
    from fusezfs.cli import cli_help
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
    from fusezfs.cli import cli_help
    print("\n".join(cli_help.version_lines()))
    return 0


def dispatch(argv: list[str]) -> int:
    """Run a command in this process. Only the module of the verb is imported: a command's
    start-up time is mostly imports."""
    from importlib import import_module
    if not argv or argv[0] in ("-h", "--help", "-?"):
        from fusezfs.cli import cli_help
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
    mod = import_module(module if "." in module else f".{module}", __package__)
    verb: Callable[[list[str]], int]
    if module == "cli_zfs":
        verb = lambda a: mod.run(argv[0], a)  # noqa: E731
    elif module in ("cli_mount", "cli_send", "fusezfs.images.cli"):
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
