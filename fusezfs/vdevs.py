"""Virtual devices: leaves (one pool file each) grouped into top-level vdevs (a file or a mirror).

A DVA names (top-level vdev, offset); a mirror writes every child at the same offset, so one
allocation serves all of them, and a read may be satisfied by any child whose bytes match the
checksum. Several top-level vdevs make a stripe: the allocator spreads blocks over them.
Each leaf counts its read, write and checksum errors for `pool status` (in memory, as ZFS does:
the counters restart at import).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .devices import Device
from .formats import label as fl


@dataclass
class Leaf:
    device: Device
    guid: int
    read_errors: int = 0
    write_errors: int = 0
    cksum_errors: int = 0

    @property
    def path(self) -> str:
        return self.device.path

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
    def size(self) -> int:
        return self.end - self.start

    def describe(self) -> dict:
        return {"id": self.id, "type": self.kind, "guid": self.guid,
                "children": [{"path": leaf.path, "guid": leaf.guid} for leaf in self.leaves]}
