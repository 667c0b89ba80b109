"""Power-cut simulation: run a scripted workload on fault-injecting devices, cut the power at a
chosen write, and check what import finds.

Used by tests/test_crash.py and tools/crashtest. A cut is *clean* when the pool imports, `verify`
finds nothing wrong, the imported txg is one the workload committed or was committing, the
content equals the state that txg committed, and the pool keeps working (more writes, another
sync, another clean verify) after the recovery.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from .blocks import Policy
from .devices import FaultyDevice, MemoryDevice, Power, PowerCut
from .formats.bp import BT_DATA, CKSUM_SHA256, CKSUM_XXH3_128, COMP_GZIP, COMP_OFF, COMP_ZSTD
from .formats.bp import decode_bp, encode_bp
from .pool import Pool
from .tree import REF_BLOCK
from .verify import verify

DEVICE_SIZE = 8 << 20
WORDS = b"alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi".split()

State = dict[bytes, bytes]


def _text(rng: random.Random, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        out += rng.choice(WORDS) + b" "
        if rng.random() < 0.05:
            out += rng.randbytes(8)
    return bytes(out[:n])


def topology(kind: str, power: Power) -> tuple[list[tuple[str, list]], list[FaultyDevice]]:
    def dev(i: int) -> FaultyDevice:
        return FaultyDevice(MemoryDevice(DEVICE_SIZE, f"mem{i}"), power)
    if kind == "file":
        devs = [dev(0)]
        return [("file", devs)], devs
    if kind == "mirror":
        devs = [dev(0), dev(1)]
        return [("mirror", devs)], devs
    if kind == "stripe":
        devs = [dev(0), dev(1)]
        return [("file", [devs[0]]), ("file", [devs[1]])], devs
    raise ValueError(kind)


def workload(pool: Pool, seed: int, steps: int, committing: dict[int, State]) -> None:
    """Random puts, block writes and deletes in one object tree, syncing every few steps.
    Before each sync, records the state that sync commits under the txg it will have."""
    rng = random.Random(seed)
    tree = pool.objset(b"work")
    model: State = {}
    policies = [Policy(COMP_OFF, 0, CKSUM_XXH3_128, 1), Policy(COMP_ZSTD, 3, CKSUM_XXH3_128, 1),
                Policy(COMP_GZIP, 6, CKSUM_SHA256, 2)]
    for step in range(steps):
        for _ in range(rng.randint(1, 5)):
            key = b"key%03d" % rng.randrange(40)
            r = rng.random()
            if r < 0.4:
                value = _text(rng, rng.randrange(0, 300))
                tree.put(key, value)
                model[key] = value
            elif r < 0.8:
                data = _text(rng, rng.randrange(1, 12000))
                bp = pool.blocks.write(data, BT_DATA, rng.choice(policies))
                tree.put(key, encode_bp(bp), REF_BLOCK)
                model[key] = b"BLOCK:" + data
            else:
                tree.delete(key)
                model.pop(key, None)
        if step % 3 == 2 or step == steps - 1:
            committing[pool.txg] = dict(model)
            pool.sync()


def content(pool: Pool) -> State:
    tree = pool.objset(b"work")
    out: State = {}
    for key, value, ref in tree.scan_items():
        out[key] = b"BLOCK:" + pool.blocks.read(decode_bp(value)) if ref == REF_BLOCK else value
    return out


@dataclass
class Outcome:
    cut: int
    mode: str
    clean: bool
    detail: str = ""


@dataclass
class Summary:
    cuts: int = 0
    clean: int = 0
    damaged: list[Outcome] = field(default_factory=list)

    def line(self) -> str:
        return f"{self.cuts} cuts, {self.clean} clean, {len(self.damaged)} damaged"


def count_writes(kind: str, seed: int, steps: int) -> int:
    """Writes the workload issues (after pool creation) when nothing fails."""
    power = Power()
    topo, _devs = topology(kind, power)
    pool = Pool.create("crash", topo)
    start = power.writes
    workload(pool, seed, steps, {})
    return power.writes - start


def run_cut(kind: str, seed: int, steps: int, cut: int, mode: str) -> Outcome:
    power = Power()
    topo, devs = topology(kind, power)
    pool = Pool.create("crash", topo)
    created_txg = pool.synced_txg
    committing: dict[int, State] = {created_txg: {}}
    power.cut_after(cut)
    try:
        workload(pool, seed, steps, committing)
    except PowerCut:
        pass
    rng = random.Random(cut * 7919 + seed)
    images = [d.crash_image(mode, rng) for d in devs]
    try:
        recovered = Pool.open(images)
    except Exception as e:  # noqa: BLE001 - any failure to import is damage
        return Outcome(cut, mode, False, f"import failed: {e!r}")
    try:
        txg = recovered.synced_txg
        if txg not in committing:
            return Outcome(cut, mode, False, f"imported txg {txg} was never committed")
        report = verify(recovered)
        if not report.ok:
            return Outcome(cut, mode, False, "verify: " + "; ".join(report.faults[:3]))
        got = content(recovered)
        if got != committing[txg]:
            return Outcome(cut, mode, False, f"content of txg {txg} differs from what it committed")
        # the recovered pool must keep working: its allocator must not hand out live blocks
        more: dict[int, State] = {}
        workload(recovered, seed + 1, 4, more)
        report = verify(recovered)
        if not report.ok:
            return Outcome(cut, mode, False, "after recovery: " + "; ".join(report.faults[:3]))
        return Outcome(cut, mode, True)
    except Exception as e:  # noqa: BLE001
        return Outcome(cut, mode, False, f"after import: {e!r}")
    finally:
        recovered.close()


def run(kinds: list[str], modes: list[str], seed: int, steps: int, stride: int = 1,
        progress=None) -> Summary:
    summary = Summary()
    for kind in kinds:
        total = count_writes(kind, seed, steps)
        for mode in modes:
            for cut in range(0, total + 1, stride):
                outcome = run_cut(kind, seed, steps, cut, mode)
                summary.cuts += 1
                if outcome.clean:
                    summary.clean += 1
                else:
                    summary.damaged.append(outcome)
                if progress:
                    progress(kind, outcome)
    return summary
