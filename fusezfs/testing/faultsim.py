"""Random damage to pool files, and what the pool makes of it: shared by tools/faultstorm and
tests/test_faultstorm.py.

A trial takes a pristine pool (files, snapshots, several txgs of history), damages it once —
bit flips within one 1 MiB window, a run of random bytes, or a zeroed run from 512 bytes to
1 MiB, anywhere in one pool file — then imports it as a user would (with `-F`'s rewind when the import offers it),
reads every file back, scrubs, and scrubs again. What it counts, per layout:

* wrong: files that read back with bytes other than those written. The first promise: must
  be 0, whatever the damage (an unreadable file is EIO, never wrong bytes).
* lost: pools that would not import even with rewind. Goal 0 for one damaged region of up to
  1 MiB: metadata has two copies an eighth of the device apart, labels sit at both ends.
* unreadable: files that gave EIO (expected only where data had one copy).
* found / repaired: bad copies the first scrub met and rewrote; `clean`: trials whose second
  scrub found nothing. On a mirror and under copies=2 every damaged copy must be repaired.

Layouts: `file` (one pool file, data in one copy), `mirror` (two files, one side damaged),
`copies2` (one file, a dataset with copies=2).
"""
from __future__ import annotations

import os
import random
import shutil
import tempfile
from dataclasses import dataclass, field

from fusezfs.api import Handle
from fusezfs.engine.allocator import REWIND_TXGS
from fusezfs.engine.devices import FileDevice
from fusezfs.engine.pool import Pool, PoolError
from fusezfs.engine.scrub import Scrubber

MiB = 1 << 20
POOL_SIZE = 64 * MiB
LAYOUTS = ("file", "mirror", "copies2")


@dataclass
class Tally:
    layout: str
    trials: int = 0
    wrong: int = 0
    lost: int = 0
    rewound: int = 0
    unreadable: int = 0
    found: int = 0
    repaired: int = 0
    clean: int = 0
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"{self.layout:8} trials={self.trials} wrong={self.wrong} lost={self.lost} "
                f"rewound={self.rewound} unreadable={self.unreadable} found={self.found} "
                f"repaired={self.repaired} second-scrub-clean={self.clean}/{self.trials - self.lost}")


def build(workdir: str, layout: str, seed: int) -> tuple[list[str], dict[str, bytes]]:
    """A pristine pool: a few hundred KiB to a few MiB of files in two filesystems, written
    over several txgs with a snapshot between. Returns its files and what each file holds."""
    paths = [os.path.join(workdir, f"disk{i}") for i in range(2 if layout == "mirror" else 1)]
    for p in paths:
        with open(p, "wb") as f:
            f.truncate(POOL_SIZE)
    devs = [FileDevice(p) for p in paths]
    pool = Pool.create("storm", [("mirror" if layout == "mirror" else "file", devs)])
    h = Handle(pool)
    props = {"copies": "2"} if layout == "copies2" else {}
    h.dsl.create("storm/a", dict(props, compression="zstd"))
    h.dsl.create("storm/b", dict(props, recordsize="16384"))
    rng = random.Random(seed)
    want: dict[str, bytes] = {}
    for round_ in range(3):
        for fs in ("storm/a", "storm/b"):
            view = h.filesystem(fs)
            for i in range(6):
                size = rng.choice([100, 4000, 70_000, 300_000, 1_000_000])
                data = rng.randbytes(size // 2) + bytes(size // 4) + rng.randbytes(size // 4)
                view.write_file(f"/f{i}", data)
                want[f"{fs}:/f{i}"] = data
        pool.sync()
        if round_ == 0:
            h.dsl.snapshot(["storm/a@s", "storm/b@s"])
    pool.close()
    return paths, want


def damage(path: str, rng: random.Random) -> str:
    """Damage one region of one file; returns what was done."""
    size = os.path.getsize(path)
    kind = rng.choice(["flips", "bytes", "zeros"])
    length = rng.choice([512, 4096, 65536, 262144, MiB]) if kind != "flips" else 0
    off = rng.randrange(0, size - max(length, 1))
    with open(path, "r+b") as f:
        if kind == "flips":         # scattered over one window of 1 MiB: one region
            n = rng.randrange(1, 64)
            window = rng.randrange(0, size - MiB)
            for _ in range(n):
                pos = window + rng.randrange(0, MiB)
                f.seek(pos)
                b = f.read(1)
                f.seek(pos)
                f.write(bytes([b[0] ^ (1 << rng.randrange(8))]))
            return f"{n} bit flips in [{window:#x}, +1M) of {os.path.basename(path)}"
        f.seek(off)
        f.write(bytes(length) if kind == "zeros" else rng.randbytes(length))
    return f"{kind} [{off:#x}, +{length:#x}) in {os.path.basename(path)}"


def trial(pristine: list[str], want: dict[str, bytes], layout: str, seed: int,
          tally: Tally) -> None:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="fzstorm-") as tmp:
        paths = []
        for p in pristine:
            paths.append(os.path.join(tmp, os.path.basename(p)))
            shutil.copyfile(p, paths[-1])
        what = damage(paths[0], rng)         # one side of a mirror; the one file otherwise
        tally.trials += 1
        devs = [FileDevice(p) for p in paths]
        try:
            try:
                pool = Pool.open(devs)
            except PoolError:
                for d in devs:
                    d.close()
                devs = [FileDevice(p) for p in paths]
                pool = Pool.open(devs, rewind=REWIND_TXGS)
                tally.rewound += 1
        except PoolError as e:
            for d in devs:
                d.close()
            tally.lost += 1
            tally.notes.append(f"seed {seed}: {what}: pool lost: {e}".splitlines()[0])
            return
        try:
            h = Handle(pool)
            for key, data in want.items():
                fs, _, path = key.partition(":")
                try:
                    got = h.filesystem(fs).read_file(path)
                except OSError:
                    tally.unreadable += 1
                    continue
                if got != data and not pool.rewound:
                    tally.wrong += 1
                    tally.notes.append(f"seed {seed}: {what}: WRONG BYTES in {key}")
            scrubber = Scrubber(pool)
            before = sum(leaf.cksum_errors + leaf.read_errors for leaf in pool.leaves())
            repairs = pool.blocks.repairs
            scrubber.start()
            scrubber.run()
            tally.found += sum(leaf.cksum_errors + leaf.read_errors
                               for leaf in pool.leaves()) - before
            tally.repaired += pool.blocks.repairs - repairs
            pool.clear_errors()
            scrubber.start()
            second = scrubber.run()
            if second.repaired == 0 and not any(leaf.cksum_errors for leaf in pool.leaves()) \
                    and second.errors == len(pool.blocks.permanent_errors) == 0:
                tally.clean += 1
            elif layout != "file":
                tally.notes.append(f"seed {seed}: {what}: second scrub not clean")
        finally:
            pool.close()


def storm(layout: str, trials: int, seed: int = 0) -> Tally:
    tally = Tally(layout)
    with tempfile.TemporaryDirectory(prefix="fzstorm-pristine-") as work:
        pristine, want = build(work, layout, seed)
        for t in range(trials):
            trial(pristine, want, layout, seed * 100_003 + t, tally)
    return tally
