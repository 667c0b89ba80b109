"""What every verb of the command line shares: messages on stderr, getopt as zfs parses,
numbers as zfs prints them, tables with zfs's columns."""
from __future__ import annotations

import sys

from fusezfs.errors import Usage


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
