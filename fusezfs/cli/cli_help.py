"""What the `zfs`, `zpool` and `fusezfs` programs say about themselves: the verb lists of their
bare usage and `-?`, and `version`.

The verb lists follow the order and grouping of OpenZFS 2.1.11's command tables (zfs_main.c,
zpool_main.c), because scripts and people read them the way OpenZFS prints them, but they list
only verbs fusezfs implements: a verb appears when its module's USAGE table has it, so a verb
added later shows up here by itself and no usage text ever names a verb fusezfs lacks.

The version is OpenZFS's form, `zfs-2.1.11-...` and `zfs-kmod-2.1.11-...`: tools gate features
on the major.minor they parse from it, and the command line follows OpenZFS 2.1.11. The suffix
says that fusezfs (and which release of it) answers, not a kernel module.
"""
from __future__ import annotations

import os
import shutil
import sys
from importlib.metadata import PackageNotFoundError, version as package_version

OPENZFS_VERSION = "2.1.11"

# OpenZFS's command tables, in order; None separates the groups (a blank line in the usage)
ZFS_TABLE = ["version", None, "create", "destroy", None, "snapshot", "rollback", "clone",
             "promote", "rename", "bookmark", "program", None, "list", None, "set", "get",
             "inherit", "upgrade", None, "userspace", "groupspace", "projectspace", None,
             "project", None, "mount", "unmount", "share", "unshare", None, "send", "receive",
             None, "allow", None, "unallow", None, "hold", "holds", "release", "diff",
             "load-key", "unload-key", "change-key", "redact", "wait"]
ZPOOL_TABLE = ["version", None, "create", "destroy", None, "add", "remove", None, "labelclear",
               None, "checkpoint", None, "list", "iostat", "status", None, "online", "offline",
               "clear", "reopen", None, "attach", "detach", "replace", "split", None,
               "initialize", "resilver", "scrub", "trim", None, "import", "export", "upgrade",
               "reguid", None, "history", "events", None, "get", "set", "sync", None, "wait"]
VERSION_USAGE = "\tversion"


def fusezfs_version() -> str:
    try:
        return package_version("fusezfs")
    except PackageNotFoundError:         # run from a source tree that was never installed
        return "unknown"


def version_lines() -> list[str]:
    """`zfs version`: the userland line, then the 'kernel' line (here: the emulated store)."""
    tag = f"{OPENZFS_VERSION}-fusezfs-{fusezfs_version()}"
    return [f"zfs-{tag}", f"zfs-kmod-{tag}"]


def zfs_usages() -> dict[str, str]:
    from fusezfs.cli import cli_mount, cli_send, cli_zfs
    return {"version": VERSION_USAGE, **cli_zfs.USAGE, **cli_mount.USAGE, **cli_send.USAGE}


def zpool_usages() -> dict[str, str]:
    from fusezfs.cli import cli_devices, cli_pool
    return {"version": VERSION_USAGE, **cli_pool.USAGE, **cli_devices.USAGE}


def listing(table: list[str | None], usages: dict[str, str]) -> str:
    """The usage lines of every implemented verb, grouped as OpenZFS groups them; verbs of
    fusezfs's own that OpenZFS lacks (`pool verify`) close the list."""
    groups: list[list[str]] = [[]]
    for verb in table:
        if verb is None:
            groups.append([])
        elif verb in usages:
            groups[-1].append(usages[verb])
    extra = [text for verb, text in usages.items() if verb not in table]
    groups.append(extra)
    return "\n\n".join("\n".join(g) for g in groups if g)


def zfs_usage() -> str:
    return ("usage: zfs command args ...\nwhere 'command' is one of the following:\n\n"
            + listing(ZFS_TABLE, zfs_usages())
            + "\n\nEach dataset is of the form: pool/[dataset/]*dataset[@name]\n"
            "\nFor the property list, run: zfs set|get")


def zpool_usage() -> str:
    return ("usage: zpool command args ...\nwhere 'command' is one of the following:\n\n"
            + listing(ZPOOL_TABLE, zpool_usages())
            + "\n\nFor the property list, run: zpool get")


def fusezfs_usage() -> str:
    return ("usage: fusezfs command args ...\n"
            "zfs commands: fusezfs <command> ..., where 'command' is one of the following:\n\n"
            + listing(ZFS_TABLE, {**zfs_usages(), "cp": "\tcp [-a] [-r] <source> ... <dest>"})
            + "\n\nzpool commands: fusezfs pool <command> ..., where 'command' is one of the "
            "following:\n\n" + listing(ZPOOL_TABLE, zpool_usages())
            + "\n\nimages and containers (Docker's ZFS graph layout): fusezfs image|container "
            "<command> ...\n\n" + _images_usage()
            + "\n\nEach dataset is of the form: pool/[dataset/]*dataset[@name]")


def _images_usage() -> str:
    from fusezfs.cli.image_usage import USAGE
    return USAGE["image"] + "\n" + USAGE["container"]


def real_zfs_loaded() -> str | None:
    """The real command to use when a ZFS kernel module is loaded here, else None. The zfs and
    zpool programs of fusezfs must not stand in for a real ZFS silently; FUSEZFS_BACKEND=emulated
    is the user's choice to have them do so (fusezfs/backends)."""
    if os.environ.get("FUSEZFS_BACKEND") == "emulated":
        return None
    if not os.path.isdir(os.environ.get("FUSEZFS_SYS_MODULE_ZFS", "/sys/module/zfs")):
        return None
    me = os.path.realpath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "zfs"
    for d in ("/usr/sbin", "/sbin", "/usr/local/sbin"):
        cand = os.path.join(d, prog)
        if os.path.exists(cand) and os.path.realpath(cand) != me:
            return cand
    found = shutil.which(prog)
    return found if found and os.path.realpath(found) != me else prog
