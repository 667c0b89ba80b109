"""Devices: the files a pool lives in, and a fault-injecting stand-in for tests.

Theory of operation. A device is a flat byte range with positional reads and writes and a
`flush` barrier. The pool's crash safety rests on one promise only: every write issued before
`flush()` returned is durable; writes after the last flush may be lost, torn or reordered.
`FileDevice` keeps that promise with fsync. `FaultyDevice` breaks everything else on purpose,
so the crash tests can show the pool needs nothing more:

* `cut_after(n)`: power fails at the n-th write from now. That write is torn: only a prefix of
  whole sectors (possibly none) reaches the volatile cache, as when power fails part-way
  through a write; every later write is lost, and the device raises `PowerCut` so the workload
  stops where it was. (`Power(tear=False)` loses the triggering write whole.)
* `crash_image(mode)`: the bytes that would be on the platter after the cut. Writes not yet
  flushed survive whole ("keep"), vanish ("drop"), or an arbitrary subset survives in any order,
  some of them torn at a sector boundary ("reorder").
* `flip_bit(offset, bit)`: silent corruption of stored bytes.
"""
from __future__ import annotations

import os
import random
import threading
from typing import Protocol

SECTOR = 512
IOV_MAX = 1024


class PowerCut(Exception):
    """Raised by FaultyDevice when the simulated power fails."""


class Device(Protocol):
    path: str
    size: int

    def read(self, offset: int, length: int) -> bytes: ...
    def write(self, offset: int, data: bytes | memoryview) -> None: ...
    def writev(self, offset: int, bufs: list) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class FileDevice:
    """A pool file (or block device) opened for positional I/O."""

    def __init__(self, path: str, *, readonly: bool = False) -> None:
        self.path = os.path.abspath(path)
        self.fd = os.open(self.path, os.O_RDONLY if readonly else os.O_RDWR)
        self.size = os.lseek(self.fd, 0, os.SEEK_END)
        self._ahead = (0, 0)            # the window prefetch last asked for

    def prefetch(self, offset: int, length: int) -> None:
        """Start reading [offset, offset + length) into the page cache without waiting
        (devices that cannot read ahead simply lack this method). A reader moving through
        a window asked for already only tops it up once it has used half of it, so each
        call asks for new ground, in large pieces."""
        end = min(offset + length, self.size)
        lo, hi = self._ahead
        if lo <= offset < hi:
            if end - hi < length // 2:
                return
            offset = hi
        if end <= offset:       # (a length of 0 would mean: to the end of the file)
            return
        try:
            os.posix_fadvise(self.fd, offset, end - offset, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        self._ahead = (min(lo, offset) if lo <= offset <= hi else offset, end)

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        if len(data) < length:  # beyond EOF of a file that shrank: read as zeros
            data += bytes(length - len(data))
        return data

    def write(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, offset)
            view = view[n:]
            offset += n

    def writev(self, offset: int, bufs: list) -> None:
        """Write consecutive buffers with as few system calls as the kernel allows."""
        bufs = [memoryview(b) for b in bufs]
        while bufs:
            n = os.pwritev(self.fd, bufs[:IOV_MAX], offset)
            offset += n
            while bufs and n >= len(bufs[0]):
                n -= len(bufs[0])
                bufs.pop(0)
            if n:
                bufs[0] = bufs[0][n:]

    def flush(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def fileno(self) -> int:
        return self.fd


class MemoryDevice:
    """A device in RAM: the durable medium underneath a FaultyDevice."""

    def __init__(self, size: int, path: str = "mem", data: bytes | None = None) -> None:
        self.path = path
        self.size = size
        self.data = bytearray(data) if data is not None else bytearray(size)
        assert len(self.data) == size

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.data[offset:offset + length])

    def write(self, offset: int, data: bytes | memoryview) -> None:
        if offset < 0 or offset + len(data) > self.size:
            raise OSError(f"write beyond end of device {self.path}")
        self.data[offset:offset + len(data)] = data

    def writev(self, offset: int, bufs: list) -> None:
        self.write(offset, b"".join(bufs))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class Power:
    """The power supply several FaultyDevices share: one write counter, one cut."""

    def __init__(self, tear: bool = True) -> None:
        self.writes = 0          # writes issued so far, on all devices
        self.cut_at: int | None = None
        self.dead = False
        self.tear = tear         # the write the power fails in lands as a prefix of sectors
        self.lock = threading.Lock()     # worker threads write too (early writes)

    def torn_length(self, length: int) -> int:
        """How much of the write that meets the cut reaches the cache: a whole number of
        sectors short of the full write, chosen by the cut's position so that a sweep over
        every write sees tears of every size, none included."""
        sectors = (length - 1) // SECTOR if self.tear else 0
        if sectors <= 0:
            return 0
        return (self.cut_at * 2654435761 % (sectors + 1)) * SECTOR

    def cut_after(self, n: int) -> None:
        """Fail power at the n-th write from now (n=0: the very next write is lost)."""
        self.cut_at = self.writes + n


class FaultyDevice:
    """A MemoryDevice whose unflushed writes sit in a volatile cache until flush().

    Reads see the cache (as the OS page cache would), so a running pool behaves normally;
    only `crash_image` tells what survives a power cut.
    """

    def __init__(self, medium: MemoryDevice, power: Power | None = None) -> None:
        self.medium = medium
        self.path = medium.path
        self.size = medium.size
        self.pending: list[tuple[int, bytes]] = []
        self.power = power or Power()

    def cut_after(self, n: int) -> None:
        self.power.cut_after(n)

    @property
    def dead(self) -> bool:
        return self.power.dead

    def read(self, offset: int, length: int) -> bytes:
        with self.power.lock:
            if self.dead:
                raise PowerCut("device lost power")
            buf = bytearray(self.medium.read(offset, length))
            for off, data in self.pending:
                lo, hi = max(off, offset), min(off + len(data), offset + length)
                if lo < hi:
                    buf[lo - offset:hi - offset] = data[lo - off:hi - off]
            return bytes(buf)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        with self.power.lock:
            if self.dead:
                raise PowerCut("device lost power")
            power = self.power
            if offset < 0 or offset + len(data) > self.size:
                raise OSError(f"write beyond end of device {self.path}")
            if power.cut_at is not None and power.writes >= power.cut_at:
                power.dead = True
                torn = power.torn_length(len(data))
                if torn:
                    self.pending.append((offset, bytes(data[:torn])))
                raise PowerCut(f"power cut at write {power.writes}"
                               + (f" ({torn} of {len(data)} bytes written)" if torn else ""))
            power.writes += 1
            self.pending.append((offset, bytes(data)))

    def writev(self, offset: int, bufs: list) -> None:
        self.write(offset, b"".join(bufs))

    def flush(self) -> None:
        with self.power.lock:
            if self.dead:
                raise PowerCut("device lost power")
            for off, data in self.pending:
                self.medium.write(off, data)
            self.pending.clear()

    def close(self) -> None:
        pass

    def flip_bit(self, offset: int, bit: int) -> None:
        """Corrupt one stored bit (in the cache if the byte is there, else on the medium)."""
        self.flush()
        self.medium.data[offset] ^= 1 << bit

    def crash_image(self, mode: str = "keep", rng: random.Random | None = None) -> MemoryDevice:
        """The medium as it would be found after the power cut.

        keep: every unflushed write landed; drop: none did; reorder: a random subset landed,
        applied in random order, and a write may be torn after any whole sector.
        """
        image = MemoryDevice(self.size, self.path, bytes(self.medium.data))
        if mode == "keep":
            survivors = list(self.pending)
        elif mode == "drop":
            survivors = []
        elif mode == "reorder":
            rng = rng or random.Random(0)
            survivors = [w for w in self.pending if rng.random() < 0.5]
            rng.shuffle(survivors)
            torn = []
            for off, data in survivors:
                if len(data) > SECTOR and rng.random() < 0.25:
                    keep = rng.randrange(1, (len(data) + SECTOR - 1) // SECTOR) * SECTOR
                    data = data[:keep]
                torn.append((off, data))
            survivors = torn
        else:
            raise ValueError(f"unknown crash mode {mode!r}")
        for off, data in survivors:
            image.write(off, data)
        return image
