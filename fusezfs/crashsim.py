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


# ---- the datasets workload: filesystems, files, snapshots, clones, destroys, rollbacks ------
def dataset_workload(pool: Pool, seed: int, steps: int, committing: dict[int, State]) -> None:
    """Files written and removed through the POSIX layer in several filesystems, with
    snapshots, clones, snapshot destruction and rollbacks between them. Every sync (including
    the ones dataset operations make inside) records the content it commits."""
    from .api import Handle          # the workload sits on top of every layer
    from .datasets import ROOT_ID

    rng = random.Random(seed)
    h = Handle(pool)
    dsl = h.dsl
    root = dsl.record(ROOT_ID)
    if root.props.get("atime") != "off":     # reads must not change what they read
        root.props["atime"] = "off"
        dsl.touch(root)
    pool.sync_hooks.append(lambda p: committing.__setitem__(p.txg, dataset_content(h)))
    heads = [r for r in (dsl.lookup("crash/fs"),) if r is not None]
    if not heads:
        # small records, so files fill whole records: full uncompressed records are written
        # early, on worker threads (BlockIO.prepare_ahead), and compressed ones in "crash/z"
        heads = [dsl.create("crash/fs", {"recordsize": "4096", "compression": "off"}),
                 dsl.create("crash/z", {"recordsize": "8192", "compression": "zstd"})]
    heads = [dsl.name(r.id) for r in dsl.descendants(ROOT_ID)]
    for step in range(steps):
        head = rng.choice(heads)
        fs = h.filesystem(head)
        snaps = [s for r in heads for s in dsl.snapshots(dsl.get(r).id)]
        r = rng.random()
        if r < 0.45:
            fs.write_file(f"/f{rng.randrange(5)}", _text(rng, rng.randrange(1, 30000)))
        elif r < 0.55:
            name = f"f{rng.randrange(5)}"
            if name.encode() in fs.listdir("/"):
                fs.unlink(1, name)
        elif r < 0.67:
            dsl.snapshot([f"{head}@s{seed}_{step}"])
        elif r < 0.75 and snaps and len(heads) < 4:
            dsl.clone(dsl.name(rng.choice(snaps).id), f"crash/c{seed}_{step}")
            heads.append(f"crash/c{seed}_{step}")
        elif r < 0.85 and snaps:
            victim = rng.choice(snaps)
            if not victim.clones:
                dsl.destroy_snapshot(victim)
        elif r < 0.93:
            rec = dsl.get(head)
            if rec.prev_snap:
                h.forget(head)
                dsl.rollback(rec)
        else:
            pool.sync()
        if step % 4 == 3:
            pool.sync()
    pool.sync()


def pipelined_workload(pool: Pool, seed: int, steps: int, committing: dict[int, State]) -> None:
    """The datasets workload with the FUSE daemon's pipelined commits and a tiny dirty budget:
    most txgs are committed by a writer filling the budget, their flushes and uberblock on the
    commit thread while the next txg fills (a cut may land on either thread)."""
    pool.pipeline = True
    pool.dirty_max = 24 << 10
    dataset_workload(pool, seed, steps, committing)


def dataset_content(h) -> State:
    """name/path -> bytes for every file in every filesystem and snapshot, plus the names."""
    from .datasets import ROOT_ID

    dsl = h.dsl
    out: State = {}
    for rec in dsl.descendants(ROOT_ID):
        for r in [rec] + dsl.snapshots(rec.id):
            name = dsl.name(r.id)
            out[name.encode()] = b"dataset"
            fs = h.filesystem(name)
            for f in fs.listdir("/"):
                out[name.encode() + b":/" + f] = fs.read_file(b"/" + f)
    return out


def dataset_check(pool: Pool) -> tuple[State, list[str]]:
    from .api import Handle
    h = Handle(pool)
    return dataset_content(h), h.dsl.check()


WORKLOADS = {
    "objects": (workload, lambda pool: (content(pool), [])),
    "datasets": (dataset_workload, dataset_check),
    "pipelined": (pipelined_workload, dataset_check),
}


def count_writes(kind: str, seed: int, steps: int, load: str = "objects") -> int:
    """Writes the workload issues (after pool creation) when nothing fails."""
    power = Power()
    topo, _devs = topology(kind, power)
    pool = Pool.create("crash", topo)
    start = power.writes
    WORKLOADS[load][0](pool, seed, steps, {})
    return power.writes - start


def run_cut(kind: str, seed: int, steps: int, cut: int, mode: str,
            load: str = "objects") -> Outcome:
    run_workload, inspect = WORKLOADS[load]
    power = Power()
    topo, devs = topology(kind, power)
    pool = Pool.create("crash", topo)
    created_txg = pool.synced_txg
    committing: dict[int, State] = {created_txg: {}}
    power.cut_after(cut)
    try:
        run_workload(pool, seed, steps, committing)
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
        got, faults = inspect(recovered)
        report = verify(recovered)
        if not report.ok or faults:
            return Outcome(cut, mode, False, "verify: " + "; ".join((report.faults + faults)[:3]))
        if got != committing[txg]:
            diff = sorted(set(got.items()) ^ set(committing[txg].items()))[:2]
            return Outcome(cut, mode, False, f"content of txg {txg} differs from what it "
                                             f"committed: {[k for k, _v in diff]}")
        # the recovered pool must keep working: its allocator must not hand out live blocks
        more: dict[int, State] = {}
        run_workload(recovered, seed + 1, 4, more)
        report = verify(recovered)
        if not report.ok:
            return Outcome(cut, mode, False, "after recovery: " + "; ".join(report.faults[:3]))
        return Outcome(cut, mode, True)
    except Exception as e:  # noqa: BLE001
        return Outcome(cut, mode, False, f"after import: {e!r}")
    finally:
        recovered.close()


def run(kinds: list[str], modes: list[str], seed: int, steps: int, stride: int = 1,
        progress=None, load: str = "objects") -> Summary:
    summary = Summary()
    for kind in kinds:
        total = count_writes(kind, seed, steps, load)
        for mode in modes:
            for cut in range(0, total + 1, stride):
                outcome = run_cut(kind, seed, steps, cut, mode, load)
                summary.cuts += 1
                if outcome.clean:
                    summary.clean += 1
                else:
                    summary.damaged.append(outcome)
                if progress:
                    progress(kind, outcome)
    return summary
