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


MAX_NESTING = 50        # zfs_max_dataset_nesting


def nesting_error(name: str) -> str | None:
    """dataset_nestcheck: a dataset may sit at most MAX_NESTING - 1 levels below its pool."""
    depth = name.split("@")[0].split("#")[0].count("/")
    return "maximum name nesting depth exceeded" if depth >= MAX_NESTING else None


def _valid_char(c: str) -> bool:
    return c.isascii() and (c.isalnum() or c in "-_.: ")


def dataset_name_error(name: str, *, snapshot: bool | None = False,
                       bookmark: bool | None = False) -> str | None:
    """Why `name` is not a valid dataset name (zfs_validate_name's words), or None.

    snapshot: True requires `fs@snap`, False forbids '@', None accepts either; bookmark the
    same for `fs#bookmark` ('#' and '@' are both delimiters: at most one of them).
    """
    if len(name) >= MAX_NAME_LEN + 1:
        return "name is too long"
    if name.startswith("/"):
        return "leading slash in name"
    if name.endswith("/"):
        return "trailing slash in name"
    if name.count("@") + name.count("#") > 1:
        return "multiple '@' and/or '#' delimiters in name"
    if "@" in name and snapshot is False:
        return "snapshot delimiter '@' is not expected here"
    if "@" not in name and snapshot is True:
        return "missing '@' delimiter in snapshot name"
    if "#" in name and bookmark is False:
        return "bookmark delimiter '#' is not expected here"
    if "#" not in name and bookmark is True:
        return "missing '#' delimiter in bookmark name"
    delim = "@" if "@" in name else "#"
    fs, at, snap = name.partition(delim)
    parts = fs.split("/")
    if any(p == "" for p in parts) or (at and snap == ""):
        return "empty component or misplaced '@' or '#' delimiter in name"
    for part in parts + ([snap] if snap else []):
        if part == ".":
            return "self reference, '.' is found in name"
        if part == "..":
            return "parent reference, '..' is found in name"
        for c in part:
            if not _valid_char(c):
                return f"invalid character '{c}' in name"
    return None   # pool-name rules are not applied: a bad pool part is "no such pool"
