"""`fusezfs mount`/`unmount` (`zfs mount`/`unmount`) in a process that is not the service.

Mounts are made and owned by the service (host/mount_commands.py runs these verbs there, over
every pool it holds): a command run in its own process (FUSEZFS_NO_SERVICE=1, tests) sends them
to the service, starting an ephemeral one if none runs (host/client.py).
"""
from __future__ import annotations

from fusezfs.errors import Usage
from fusezfs.cli.common import error, parse
from fusezfs.cli.mount_commands import USAGE  # (cli_help lists the verbs by it)


def run(verb: str, args: list[str]) -> int:
    verb = "unmount" if verb == "umount" else verb
    try:
        parse(args, "ao:fOlv" if verb == "mount" else "fau")
    except Usage as e:
        error(e.message)
        error("usage:\n" + USAGE[verb])
        return 2
    from fusezfs.host.client import forward  # mounts are the service's (an ephemeral one)
    return forward([verb] + args, ephemeral=True)


COMMANDS = {verb: (lambda v: lambda args: run(v, args))(verb)
            for verb in ("mount", "unmount", "umount")}
