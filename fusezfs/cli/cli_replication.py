"""The replication checks `zpool create` and `zpool add` make before they use any device
(zpool_vdev.c: get_replication and check_replication), in zpool's words.

A pool's top-level vdevs should all protect data alike: a spec that mixes plain files with
mirrors, mirrors of different widths, or mirror sides whose sizes differ by more than 16 MiB
(ZPOOL_FUZZ) is refused, and so is an `add` whose new vdevs protect data differently from the
pool's last one. `-f` skips these checks (only these: a device in use is refused whatever).
Nothing is opened for writing here: the checks read the files' sizes and the pool's layout.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from fusezfs.errors import Failed

ZPOOL_FUZZ = 16 << 20


@dataclass(frozen=True)
class Replication:
    """What a top-level vdev is: its type (file or mirror) and how many children it has."""
    kind: str
    children: int


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0                            # unknown: left out of the size comparison


def spec_errors(topology: list[tuple[str, list[str]]]) -> tuple[Replication | None, list[str]]:
    """get_replication(fatal) over a new spec: the last top-level vdev's replication and the
    complaints about the spec itself."""
    errors: list[str] = []
    last: Replication | None = None
    for kind, paths in topology:
        rep = Replication(kind, len(paths) if kind == "mirror" else 1)
        if kind == "mirror":
            sizes = [s for s in map(_size, paths) if s]
            if sizes and max(sizes) - min(sizes) > ZPOOL_FUZZ:
                errors.append("mirror contains devices of different sizes")
        if last is not None:
            if last.kind != rep.kind:
                errors.append(f"mismatched replication level: both {last.kind} and {rep.kind} "
                              f"vdevs are present")
            elif last.children != rep.children:
                errors.append(f"mismatched replication level: both {last.children}-way and "
                              f"{rep.children}-way {rep.kind} vdevs are present")
        last = rep
    return last, errors


def pool_replication(tops: list[tuple[str, int]]) -> Replication | None:
    """get_replication(not fatal) over a pool's (kind, children) top-level vdevs: the last
    one's, or None when they disagree among themselves (then add checks nothing more)."""
    reps = [Replication(kind, children if kind == "mirror" else 1) for kind, children in tops]
    if not reps or any(r != reps[0] for r in reps):
        return None
    return reps[-1]


def add_errors(current: Replication | None, new: Replication | None) -> list[str]:
    """check_replication: the pool's replication against the new vdevs'."""
    if current is None or new is None:
        return []
    if current.kind != new.kind:
        return [f"mismatched replication level: pool uses {current.kind} and new vdev is "
                f"{new.kind}"]
    if current.children != new.children:
        return [f"mismatched replication level: pool uses {current.children}-way "
                f"{current.kind} and new vdev uses {new.children}-way {new.kind}"]
    return []


def refuse(errors: list[str]) -> None:
    """vdev_error's report, exit 1, when there is anything to report."""
    if errors:
        raise Failed("invalid vdev specification\nuse '-f' to override the following "
                     "errors:\n" + "\n".join(errors))


def check_create(topology: list[tuple[str, list[str]]], force: bool) -> None:
    if not force:
        refuse(spec_errors(topology)[1])


def check_add(tops: list[tuple[str, int]], topology: list[tuple[str, list[str]]],
              force: bool) -> None:
    if not force:
        new, errors = spec_errors(topology)
        refuse(errors + add_errors(pool_replication(tops), new))
