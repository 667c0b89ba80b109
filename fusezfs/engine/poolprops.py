"""Pool properties (zpoolprops(7)): which exist, which can be set, and how values are checked.

Settable values live in the MOS as items `prop\\0NAME` -> value text; read-only ones are
computed from the open pool by the command line (size, free, health, ...).
"""
from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class PoolProp:
    name: str
    default: str
    values: tuple[str, ...] | None = None   # allowed values; None: free text (checked elsewhere)
    settable: bool = True
    create_only: bool = False               # may be given to create/import, not to set


_ONOFF = ("on", "off")

# The order is `zpool get all`'s order.
_ALL = [
    PoolProp("size", "-", settable=False),
    PoolProp("capacity", "-", settable=False),
    PoolProp("altroot", "-", create_only=True),
    PoolProp("health", "-", settable=False),
    PoolProp("guid", "-", settable=False),
    PoolProp("version", "-"),
    PoolProp("bootfs", "-"),
    PoolProp("delegation", "on", _ONOFF),
    PoolProp("autoreplace", "off", _ONOFF),
    PoolProp("cachefile", "-"),
    PoolProp("failmode", "wait", ("wait", "continue", "panic")),
    PoolProp("listsnapshots", "off", _ONOFF),
    PoolProp("autoexpand", "off", _ONOFF),
    PoolProp("dedupratio", "-", settable=False),
    PoolProp("free", "-", settable=False),
    PoolProp("allocated", "-", settable=False),
    PoolProp("readonly", "off", _ONOFF, settable=False),
    PoolProp("ashift", "0"),                 # 0: the default (vdevs use 512-byte sectors)
    PoolProp("comment", "-"),
    PoolProp("expandsize", "-", settable=False),
    PoolProp("freeing", "-", settable=False),
    PoolProp("fragmentation", "-", settable=False),
    PoolProp("leaked", "-", settable=False),
    PoolProp("multihost", "off", _ONOFF),
    PoolProp("checkpoint", "-", settable=False),
    PoolProp("load_guid", "-", settable=False),
    PoolProp("autotrim", "off", _ONOFF),
]
PROPS: dict[str, PoolProp] = {p.name: p for p in _ALL}
ALIASES = {"cap": "capacity", "alloc": "allocated", "frag": "fragmentation",
           "dedup": "dedupratio", "expandsz": "expandsize", "ckpoint": "checkpoint"}


def canonical(name: str) -> str | None:
    name = ALIASES.get(name, name)
    return name if name in PROPS else None


def check(name: str, value: str, *, creating: bool = False) -> str | None:
    """Why `name=value` cannot be set, in zpool's words, or None if it can."""
    prop = PROPS.get(name)
    if prop is None:
        return f"invalid property '{name}'"
    if not prop.settable:
        return f"'{name}' is readonly"
    if prop.create_only and not creating:
        return f"property '{name}' can only be set during pool creation or import"
    if prop.values is not None and value not in prop.values:
        return f"'{name}' must be one of '{' | '.join(prop.values)}'"
    if name == "version":
        # pools here have feature flags (version 5000): no version number can be set
        if not value.isdigit():
            return f"'{name}' must be a number"
        return f"property '{name}' number {value} is invalid."
    if name == "comment":
        if len(value) > 32 or any(not c.isprintable() for c in value):
            return "comment may only have printable characters"
    if name == "ashift" and value not in ("0", "9"):
        # The allocator works in 512-byte sectors; larger sectors are not built yet.
        return "property 'ashift' number " + value + " is invalid: only 9 is supported."
    if name == "altroot" and not value.startswith("/"):
        return f"bad alternate root '{value}'"
    return None


def encode_json(values: dict[str, str]) -> bytes:
    return json.dumps(values, sort_keys=True).encode()
