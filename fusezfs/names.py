"""Name rules, as ZFS enforces them (zfs_namecheck.c): pool names here, dataset names later."""
from __future__ import annotations

import re

MAX_NAME_LEN = 255
_POOL_CHARS = re.compile(r"[A-Za-z0-9_.: -]*")
_RESERVED_PREFIXES = ("mirror", "raidz", "draid", "spare")


def pool_name_error(name: str) -> str | None:
    """Why `name` is not a valid pool name, in zpool's words, or None if it is."""
    if not name:
        return "name must begin with a letter"
    if len(name) >= MAX_NAME_LEN:
        return "name is too long"
    if not _POOL_CHARS.fullmatch(name):
        bad = next(c for c in name if not _POOL_CHARS.fullmatch(c))
        return f"invalid character '{bad}' in pool name"
    if not name[0].isalpha():
        return "name must begin with a letter"
    if name == "log" or name.startswith(_RESERVED_PREFIXES):
        return "name is reserved"
    if re.match(r"c[0-9]", name):
        return "pool name is reserved"
    return None
