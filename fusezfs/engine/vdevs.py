"""Virtual devices: leaves (one pool file each) grouped into top-level vdevs (a file or a mirror).

A DVA names (top-level vdev, offset); a mirror writes every child at the same offset, so one
allocation serves all of them, and a read may be satisfied by any child whose bytes match the
checksum. Several top-level vdevs make a stripe: the allocator spreads blocks over them.
Each leaf counts its read, write and checksum errors for `pool status` (in memory, as ZFS does:
the counters restart at import).

A leaf is ONLINE, OFFLINE (taken offline by `zpool offline`; persistent unless -t) or UNAVAIL
(its file is missing or unreadable at import: a `MissingDevice` stands in for it). Only live
leaves are read and written: a mirror with at least one live side keeps serving (DEGRADED),
and a side that comes back (online, attach, replace) is resilvered before it is trusted.
"""
from __future__ import annotations

import errno
from dataclasses import dataclass, field

from fusezfs.engine.devices import Device
from fusezfs.formats import label as fl


class MissingDevice:
    """Stands in for a leaf whose file cannot be opened: it has the size the pool recorded and
    every access fails (nothing reads or writes it: the leaf is not live)."""

    def __init__(self, path: str, size: int) -> None:
        self.path = path
        self.size = size

    def _fail(self, *_args) -> None:
        raise OSError(errno.ENXIO, "device is unavailable", self.path)

    read = write = writev = flush = _fail

    def close(self) -> None:
        pass


@dataclass
class Leaf:
    device: Device
    guid: int
    read_errors: int = 0
    write_errors: int = 0
    cksum_errors: int = 0
    offline: bool = False           # zpool offline
    temporary: bool = False         # -t: not recorded in the labels, gone at the next import
    resilvering: bool = False       # attached or back online: holds nothing trusted until the
                                    # resilver is done (its mismatches are not errors)

    @property
    def path(self) -> str:
        return self.device.path

    @property
    def missing(self) -> bool:
        return isinstance(self.device, MissingDevice)

    @property
    def state(self) -> str:
        return "UNAVAIL" if self.missing else "OFFLINE" if self.offline else "ONLINE"

    @property
    def live(self) -> bool:
        return self.state == "ONLINE"

    # label I/O --------------------------------------------------------------------------------
    def read_configs(self) -> list[tuple[dict, int]]:
        out: list[tuple[dict, int]] = []
        if self.device.size < 2 * fl.LABEL_SIZE:      # too small to hold a label
            return out
        for off in fl.label_offsets(self.device.size):
            got = fl.decode_config(self.device.read(off, fl.CONFIG_SIZE))
            if got is not None:
                out.append(got)
        return out

    def write_config(self, config: dict, generation: int) -> None:
        """Rewrite both labels' config areas, one at a time with a flush between, so that one
        of them is whole whatever moment power fails."""
        raw = fl.encode_config(config, generation)
        for off in fl.label_offsets(self.device.size):
            self.device.write(off, raw)
            self.device.flush()

    def read_uberblocks(self) -> list[fl.Uberblock]:
        out: list[fl.Uberblock] = []
        if self.device.size < 2 * fl.LABEL_SIZE:
            return out
        for off in fl.label_offsets(self.device.size):
            ring = self.device.read(off + fl.RING_OFFSET, fl.UB_SLOTS * fl.UB_SIZE)
            for slot in range(fl.UB_SLOTS):
                ub = fl.decode_uberblock(ring[slot * fl.UB_SIZE:(slot + 1) * fl.UB_SIZE])
                if ub is not None:
                    out.append(ub)
        return out

    def write_uberblock(self, ub: fl.Uberblock) -> None:
        raw = ub.encode()
        slot = ub.txg % fl.UB_SLOTS
        for off in fl.label_offsets(self.device.size):
            self.device.write(off + fl.RING_OFFSET + slot * fl.UB_SIZE, raw)


@dataclass
class TopVdev:
    """A top-level vdev: kind 'file' (one leaf) or 'mirror' (two or more)."""

    id: int
    kind: str
    guid: int
    leaves: list[Leaf] = field(default_factory=list)

    @property
    def start(self) -> int:
        """First allocatable byte: after the front label."""
        return fl.LABEL_SIZE

    @property
    def end(self) -> int:
        """End of the allocatable range: before the back label of the smallest leaf."""
        return min(fl.usable_size(leaf.device.size) for leaf in self.leaves) - fl.LABEL_SIZE

    @property
    def live(self) -> list[Leaf]:
        """The leaves that are read and written: asked by every block read and write, so
        kept until `changed()` says the leaves or their states changed."""
        live = self.__dict__.get("_live")
        if live is None:
            live = self.__dict__["_live"] = [leaf for leaf in self.leaves if leaf.live]
        return live

    def changed(self) -> None:
        """A leaf was attached, detached, taken offline, brought back or reopened."""
        self.__dict__.pop("_live", None)

    @property
    def state(self) -> str:
        live = len(self.live)
        return "ONLINE" if live == len(self.leaves) else "DEGRADED" if live else "UNAVAIL"

    @property
    def size(self) -> int:
        return self.end - self.start

    def describe(self) -> dict:
        return {"id": self.id, "type": self.kind, "guid": self.guid,
                "children": [{"path": leaf.path, "guid": leaf.guid, "size": leaf.device.size,
                              **({"offline": True} if leaf.offline and not leaf.temporary
                                 else {}),
                              **({"resilvering": True} if leaf.resilvering else {})}
                             for leaf in self.leaves]}
