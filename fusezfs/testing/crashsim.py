"""Power-cut simulation: run a scripted workload on fault-injecting devices, cut the power at a
chosen write, and check what import finds.

Used by tests/test_crash.py and tools/crashtest. A cut is *clean* when:

* the pool imports and `verify` finds nothing wrong;
* the imported txg is exactly the last one whose commit had returned (its uberblock flushed),
  or the one whose uberblock was being written at the cut: never older (a lost commit) and
  never one that was not committed;
* its content equals what an oracle kept outside fusezfs says that txg must hold: a plain
  dictionary for the objects workload, a model of every filesystem, snapshot and clone for the
  datasets workloads (`DatasetModel`), never fusezfs's own view of itself;
* and the pool keeps working after the recovery: more writes, another sync, the content the
  model expects, and another clean verify.

The write the power fails in is torn (devices.Power.tear): a prefix of its sectors lands.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from fusezfs.engine.blocks import Policy
from fusezfs.engine.devices import FaultyDevice, MemoryDevice, Power, PowerCut
from fusezfs.formats.bp import BT_DATA, CKSUM_SHA256, CKSUM_XXH3_128, COMP_GZIP, COMP_OFF, COMP_ZSTD
from fusezfs.formats.bp import decode_bp, encode_bp
from fusezfs.engine.allocator import NoSpace
from fusezfs.engine.pool import Pool
from fusezfs.dsl.properties import SLOP_SHIFT
from fusezfs.engine.tree import REF_BLOCK
from fusezfs.engine.verify import verify

# Small devices, nearly filled before the workload starts (`fill`): with little free space the
# next-fit allocator comes back around within a short workload, so blocks freed by the workload
# are soon allocated again. Only then can a sweep see a free that was reused too early. (Each
# workload leaves what it needs at its peak: datasets also keep ZFS's slop space free.)
DEVICE_SIZE = 2 << 20
BALLAST = b"ballast"
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


def fill(pool: Pool, leave: int) -> None:
    """Take all but about `leave` bytes of the pool's free space with live ballast blocks (an
    object tree of their own, committed before the workload starts)."""
    tree = pool.objset(BALLAST)
    policy = Policy(COMP_OFF, 0, CKSUM_XXH3_128, 1)
    rng = random.Random(0)
    size, n = 128 << 10, 0
    while size >= 4096 and pool.free - leave >= 4096:
        size = min(size, (pool.free - leave) // 4096 * 4096)
        try:
            bp = pool.blocks.write(rng.randbytes(size), BT_DATA, policy)
        except NoSpace:         # no extent that large left on any vdev
            size //= 2
            continue
        tree.put(b"b%04d" % n, encode_bp(bp), REF_BLOCK)
        n += 1
    pool.sync()


def workload(pool: Pool, seed: int, steps: int, committing: dict[int, "Expect"],
             model: State | None = None) -> None:
    """Random puts, block writes and deletes in one object tree, syncing every few steps.
    Before each sync, records the state that sync commits under the txg it will have (a plain
    dictionary of what was put: the oracle)."""
    rng = random.Random(seed)
    tree = pool.objset(b"work")
    model = dict(model or {})        # a recovered pool goes on from its checked content
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
        if model:       # a read in the running pool (its caches warm) must see what was put
            key = rng.choice(sorted(model))
            check_read(key, item(pool, *tree.get_item(key)), model[key])
        if step % 3 == 2 or step == steps - 1:
            committing[pool.txg] = Expect.exactly(model, dict(model))
            pool.sync()


class WrongData(Exception):
    """A read in the running workload returned what the oracle says is not there."""


def check_read(what, got: bytes, want: bytes) -> None:
    if got != want:
        raise WrongData(f"{what!r}: read {len(got)} bytes that differ from the {len(want)} "
                        f"written")


def item(pool: Pool, value: bytes, ref: int) -> bytes:
    return b"BLOCK:" + pool.blocks.read(decode_bp(value)) if ref == REF_BLOCK else value


def content(pool: Pool) -> State:
    return {key: item(pool, value, ref) for key, value, ref in pool.objset(b"work").scan_items()}


@dataclass
class Expect:
    """What a txg committed while one step of a workload ran may hold: the state before the
    step or the state after it; with `partial` = (key, new content), that key (a file being
    written when a full dirty budget forced a commit) may also hold any prefix of its new
    content."""
    before: State
    after: State
    partial: tuple[bytes, bytes] | None = None
    models: tuple = (None, None)    # the workload's oracle objects behind `before` and `after`

    def model_for(self, got: State):
        """The oracle object to go on from, once `got` matched (a partial write matches the
        before-state in everything but the file's bytes)."""
        return self.models[1] if got == self.after else self.models[0]

    @classmethod
    def exactly(cls, state: State, model=None) -> "Expect":
        return cls(dict(state), dict(state), None, (model, model))

    def matches(self, got: State) -> bool:
        if got == self.after or got == self.before:
            return True
        if self.partial is None:
            return False
        key, new = self.partial
        if {k: v for k, v in got.items() if k != key} != \
                {k: v for k, v in self.after.items() if k != key}:
            return False
        value = got.get(key)
        return value == self.before.get(key) or (value is not None and new.startswith(value))

    def differences(self, got: State) -> list[bytes]:
        """Keys where `got` differs from the after-state (for the report)."""
        return sorted({k for k in set(got) | set(self.after) if got.get(k) != self.after.get(k)})


class Commits:
    """The oracle of durability: which txg the pool has made durable, seen from outside. The
    pool's uberblock write (steps 4-6 of a sync: flush, uberblocks, flush) is wrapped, so the
    last txg whose commit returned and the one being committed at the cut are known without
    asking the pool what it believes."""

    def __init__(self, pool: Pool) -> None:
        self.durable = pool.synced_txg
        self.in_flight: int | None = None
        write = pool._write_uberblock

        def tracked(ub) -> None:
            self.in_flight = ub.txg
            write(ub)
            self.durable, self.in_flight = ub.txg, None
        pool._write_uberblock = tracked

    def acceptable(self) -> list[int]:
        return [self.durable] + ([self.in_flight] if self.in_flight is not None else [])


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
class DatasetModel:
    """What every filesystem and snapshot must contain, kept apart from fusezfs: full name ->
    {file name: bytes}; snapshots in creation order per filesystem; each clone's origin. It is
    the oracle the datasets workload is checked against, in the shape `dataset_content` reads
    from a pool."""

    def __init__(self) -> None:
        self.files: dict[str, dict[bytes, bytes]] = {}
        self.snaps: dict[str, list[str]] = {}       # filesystem -> its snapshots, oldest first
        self.origin: dict[str, str] = {}            # clone -> snapshot

    def copy(self) -> "DatasetModel":
        other = DatasetModel()
        other.files = {name: dict(files) for name, files in self.files.items()}
        other.snaps = {name: list(snaps) for name, snaps in self.snaps.items()}
        other.origin = dict(self.origin)
        return other

    def with_content(self, state: State) -> "DatasetModel":
        """This model with the file contents of `state` (a recovered pool's content, already
        checked against the model, where a write in progress may have left a prefix)."""
        other = self.copy()
        for name, files in other.files.items():
            prefix = name.encode() + b":/"
            files.clear()
            files.update((k[len(prefix):], v) for k, v in state.items() if k.startswith(prefix))
        return other

    def heads(self) -> list[str]:
        return sorted(self.snaps)

    def state(self) -> State:
        out: State = {}
        for name, files in self.files.items():
            out[name.encode()] = b"dataset"
            for path, data in files.items():
                out[name.encode() + b":/" + path] = data
        return out

    def all_snapshots(self) -> list[str]:
        return [s for head in self.heads() for s in self.snaps[head]]

    # operations, each as ZFS defines it
    def write(self, head: str, path: bytes, data: bytes) -> None:
        self.files[head][path] = data

    def unlink(self, head: str, path: bytes) -> None:
        del self.files[head][path]

    def create(self, name: str) -> None:
        self.files[name], self.snaps[name] = {}, []

    def snapshot(self, name: str) -> None:
        head = name.partition("@")[0]
        self.files[name] = dict(self.files[head])
        self.snaps[head].append(name)

    def clone(self, snap: str, name: str) -> None:
        self.create(name)
        self.files[name] = dict(self.files[snap])
        self.origin[name] = snap

    def destroy_snapshot(self, name: str) -> None:
        assert name not in self.origin.values(), "a snapshot with clones is not destroyed"
        del self.files[name]
        self.snaps[name.partition("@")[0]].remove(name)

    def rollback(self, head: str) -> None:
        self.files[head] = dict(self.files[self.snaps[head][-1]])


def dataset_workload(pool: Pool, seed: int, steps: int, committing: dict[int, Expect],
                     model: DatasetModel | None = None, *, dedup: bool = False) -> None:
    """Files written and removed through the POSIX layer in several filesystems, with
    snapshots, clones, snapshot destruction and rollbacks between them, each step applied to
    the pool and to a DatasetModel. Every txg committed during a step (dataset operations sync
    inside; a full dirty budget syncs in the middle of a write) is recorded with the model's
    state before and after that step. With `dedup` the filesystems deduplicate (on and
    verify) and files are made of a few records repeated (`_repeated`)."""
    from fusezfs.api import Handle  # the workload sits on top of every layer
    from fusezfs.dsl.datasets import ROOT_ID

    rng = random.Random(seed)
    h = Handle(pool)
    dsl = h.dsl
    root = dsl.record(ROOT_ID)
    if root.props.get("atime") != "off":     # reads must not change what they read
        root.props["atime"] = "off"
        dsl.touch(root)
    # a recovered pool goes on from the oracle's model of the txg it came back at
    model = model.copy() if model is not None else DatasetModel()
    step_expect = [Expect.exactly(model.state(), model.copy())]
    pool.sync_hooks.append(lambda p: committing.__setitem__(p.txg, step_expect[0]))

    def step(apply_pool, apply_model, partial: tuple[bytes, bytes] | None = None) -> None:
        before, before_model = model.state(), model.copy()
        apply_model()
        step_expect[0] = Expect(before, model.state(), partial, (before_model, model.copy()))
        apply_pool()

    if not model.heads():
        # small records, so files fill whole records: full uncompressed records are written
        # early, on worker threads (BlockIO.prepare_ahead), and compressed ones in "crash/z"
        more = ({"dedup": "on"}, {"dedup": "verify"}) if dedup else ({}, {})
        step(lambda: dsl.create("crash/fs", {"recordsize": "4096", "compression": "off",
                                             **more[0]}),
             lambda: model.create("crash/fs"))
        step(lambda: dsl.create("crash/z", {"recordsize": "8192", "compression": "zstd",
                                            **more[1]}),
             lambda: model.create("crash/z"))
    text = _repeated if dedup else _text
    for n in range(steps):
        heads = model.heads()
        head = rng.choice(heads)
        fs = h.filesystem(head)
        snaps = model.all_snapshots()
        r = rng.random()
        if r < 0.45:
            path, data = f"f{rng.randrange(5)}".encode(), text(rng, rng.randrange(1, 30000))
            step(lambda: fs.write_file(b"/" + path, data), lambda: model.write(head, path, data),
                 (head.encode() + b":/" + path, data))
        elif r < 0.55:
            path = f"f{rng.randrange(5)}".encode()
            if path in model.files[head]:
                step(lambda: fs.unlink(1, path), lambda: model.unlink(head, path))
        elif r < 0.67:
            name = f"{head}@s{seed}_{n}"
            step(lambda: dsl.snapshot([name]), lambda: model.snapshot(name))
        elif r < 0.75 and snaps and len(heads) < 4:
            snap, name = rng.choice(snaps), f"crash/c{seed}_{n}"
            step(lambda: dsl.clone(snap, name), lambda: model.clone(snap, name))
        elif r < 0.85 and snaps:
            victim = rng.choice(snaps)
            if victim not in model.origin.values():
                step(lambda: dsl.destroy_snapshot(dsl.get(victim)),
                     lambda: model.destroy_snapshot(victim))
        elif r < 0.93:
            if model.snaps[head]:
                def rollback() -> None:
                    h.forget(head)
                    dsl.rollback(dsl.get(head))
                step(rollback, lambda: model.rollback(head))
        else:
            step(pool.sync, lambda: None)
        if n % 2:       # a read in the running pool (its caches warm) must see the model
            name = rng.choice(sorted(model.files))
            if model.files[name]:
                path = rng.choice(sorted(model.files[name]))
                check_read(f"{name}:/{path.decode()}",
                           h.filesystem(name).read_file(b"/" + path), model.files[name][path])
        if n % 4 == 3:
            step(pool.sync, lambda: None)
    step(pool.sync, lambda: None)


def _repeated(rng: random.Random, n: int) -> bytes:
    """About `n` bytes of whole 4 KiB pieces drawn from two fixed ones (a short tail now and
    then): records that repeat within and across files, filesystems, snapshots and clones
    (the dedup workload)."""
    pieces = [_text(random.Random(i), 4096) for i in range(2)]
    data = b"".join(rng.choice(pieces) for _ in range(-(-n // 4096)))
    return data if rng.random() < 0.7 else data[:n]


def dedup_workload(pool: Pool, seed: int, steps: int, committing: dict[int, Expect],
                   model: DatasetModel | None = None) -> None:
    """The datasets workload on deduplicating filesystems (dedup=on, dedup=verify): every
    write, unlink, snapshot, clone, destroy and rollback moves reference counts, and the
    oracle adds the dedup table's counts against the references the trees hold
    (Datasets.check) to the contents."""
    dataset_workload(pool, seed, steps, committing, model, dedup=True)


def scrubbing_workload(pool: Pool, seed: int, steps: int, committing: dict[int, Expect],
                       model: DatasetModel | None = None) -> None:
    """The datasets workload with a scrub going on: one object tree scanned after each step
    (its progress in the MOS commits with the txgs), restarted whenever it finishes."""
    from fusezfs.engine.scrub import Scrubber
    scrubber = Scrubber(pool)
    scrubber.start()

    def scrub_a_little(p: Pool) -> None:       # (a sync hook: step never syncs itself here)
        if scrubber.step():                 # finished: scrub again
            scrubber.start()
    pool.sync_hooks.append(scrub_a_little)
    dataset_workload(pool, seed, steps, committing, model)


def resilver_workload(pool: Pool, seed: int, steps: int, committing: dict[int, Expect],
                      model: DatasetModel | None = None) -> None:
    """The datasets workload on one device; a third of the way in, a second device (on the
    same power supply) is attached and resilvered one object tree per sync while the files,
    snapshots and clones go on changing."""
    from fusezfs.engine import topology
    from fusezfs.engine.scrub import Scrubber
    scrubber = Scrubber(pool)
    if len(pool.leaves()) == 1:             # (a recovered pool has its side already)
        first = pool.leaves()[0]
        power = getattr(first.device, "power", None)     # (a recovered pool's: plain memory)
        spare = MemoryDevice(first.device.size, "spare")
        spare = FaultyDevice(spare, power) if power is not None else spare

        def attach_once(p: Pool) -> None:
            if p.txg >= attach_at and len(p.leaves()) == 1:
                p.sync_hooks.remove(attach_once)
                topology.attach(p, first.path, spare)
        attach_at = pool.txg + max(2, steps // 3)
        pool.sync_hooks.append(attach_once)

    def resilver_a_little(p: Pool) -> None:     # (a sync hook: step never syncs itself here)
        scrubber.step()
    pool.sync_hooks.append(resilver_a_little)
    dataset_workload(pool, seed, steps, committing, model)


def resilver_check(pool: Pool) -> tuple[State, list[str]]:
    """The datasets check; then the resilver, if the pool has the new side, resumed to the
    end: afterwards every copy on every side must be whole (a scrub repairs nothing)."""
    from fusezfs.engine.scrub import Scrubber, resume
    got, faults = dataset_check(pool)
    resume(pool, background=False)
    scrubber = Scrubber(pool)
    if any(leaf.resilvering for leaf in pool.leaves()):
        faults.append("the resumed resilver left a side marked resilvering")
    scrubber.start()
    st = scrubber.run()
    if st is not None and (st.repaired or st.errors):
        faults.append(f"after the resilver a scrub repaired {st.repaired} bytes, "
                      f"{st.errors} errors")
    return got, faults


def scrubbing_check(pool: Pool) -> tuple[State, list[str]]:
    """The datasets check, then the interrupted scrub resumed to the end: it must find
    nothing to repair and no error (a crash left every copy whole)."""
    from fusezfs.engine.scrub import Scrubber
    got, faults = dataset_check(pool)
    scrubber = Scrubber(pool)
    scrubber.start()
    st = scrubber.run()
    if st.state != "finished" or st.repaired or st.errors:
        faults.append(f"the resumed scrub ended {st.state} with {st.repaired} bytes repaired "
                      f"and {st.errors} errors")
    return got, faults


def pipelined_workload(pool: Pool, seed: int, steps: int, committing: dict[int, Expect],
                       model: DatasetModel | None = None) -> None:
    """The datasets workload with the FUSE daemon's pipelined commits and a tiny dirty budget:
    most txgs are committed by a writer filling the budget, their flushes and uberblock on the
    commit thread while the next txg fills (a cut may land on either thread)."""
    pool.pipeline = True
    pool.dirty_max = 24 << 10
    dataset_workload(pool, seed, steps, committing, model)


def dataset_content(h) -> State:
    """name/path -> bytes for every file in every filesystem and snapshot, plus the names."""
    from fusezfs.dsl.datasets import ROOT_ID

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
    from fusezfs.api import Handle
    h = Handle(pool)
    return dataset_content(h), h.dsl.check()


@dataclass(frozen=True)
class Workload:
    run: object                 # (pool, seed, steps, committing, model=None) -> None
    inspect: object             # pool -> (content, faults found by the layer's own check)
    free_after_fill: int        # bytes `fill` leaves free before the workload starts
    slop: bool = False          # and the slop space datasets may not use, on top

    def fill(self, pool: Pool) -> None:
        fill(pool, self.free_after_fill + (pool.size >> SLOP_SHIFT if self.slop else 0))


WORKLOADS = {
    "objects": Workload(workload, lambda pool: (content(pool), []), 128 << 10),
    "datasets": Workload(dataset_workload, dataset_check, 192 << 10, slop=True),
    "pipelined": Workload(pipelined_workload, dataset_check, 192 << 10, slop=True),
    "scrubbing": Workload(scrubbing_workload, scrubbing_check, 192 << 10, slop=True),
    "resilver": Workload(resilver_workload, resilver_check, 192 << 10, slop=True),
    "dedup": Workload(dedup_workload, dataset_check, 192 << 10, slop=True),
}


def count_writes(kind: str, seed: int, steps: int, load: str = "objects") -> int:
    """Writes the workload issues (after pool creation) when nothing fails."""
    power = Power()
    topo, _devs = topology(kind, power)
    pool = Pool.create("crash", topo)
    WORKLOADS[load].fill(pool)
    start = power.writes
    WORKLOADS[load].run(pool, seed, steps, {})
    return power.writes - start


def run_cut(kind: str, seed: int, steps: int, cut: int, mode: str,
            load: str = "objects") -> Outcome:
    run_workload, inspect = WORKLOADS[load].run, WORKLOADS[load].inspect
    power = Power()
    topo, devs = topology(kind, power)
    pool = Pool.create("crash", topo)
    WORKLOADS[load].fill(pool)
    commits = Commits(pool)
    committing: dict[int, Expect] = {pool.synced_txg: Expect.exactly({})}
    power.cut_after(cut)
    try:
        run_workload(pool, seed, steps, committing)
    except PowerCut:
        pass
    except WrongData as e:
        return Outcome(cut, mode, False, f"before the cut: {e}")
    pool._stop_committer()          # a commit thread still running meets the dead power too
    acceptable = commits.acceptable()
    rng = random.Random(cut * 7919 + seed)
    # every device the pool had at the cut (a workload may have attached one)
    devs = list(dict.fromkeys(devs + [leaf.device for leaf in pool.leaves()]))
    images = [d.crash_image(mode, rng) for d in devs]
    try:
        recovered = Pool.open(images)
    except Exception as e:  # noqa: BLE001 - any failure to import is damage
        return Outcome(cut, mode, False, f"import failed: {e!r}")
    try:
        txg = recovered.synced_txg
        if txg not in acceptable:
            return Outcome(cut, mode, False,
                           f"imported txg {txg}, but txg {commits.durable} was durable"
                           + (f" and txg {commits.in_flight} in flight" if len(acceptable) > 1
                              else "") + (" (a lost commit)" if txg < commits.durable else ""))
        expect = committing.get(txg)
        if expect is None:
            return Outcome(cut, mode, False, f"imported txg {txg} was never committed")
        got, faults = inspect(recovered)
        report = verify(recovered)
        if not report.ok or faults:
            return Outcome(cut, mode, False, "verify: " + "; ".join((report.faults + faults)[:3]))
        if not expect.matches(got):
            return Outcome(cut, mode, False, f"content of txg {txg} differs from the oracle's: "
                                             f"{expect.differences(got)[:3]}")
        # the recovered pool must keep working: its allocator must not hand out live blocks,
        # and what it commits next must again be what the oracle says
        resume = expect.model_for(got)
        if isinstance(resume, DatasetModel):
            resume = resume.with_content(got)
        more: dict[int, Expect] = {}
        run_workload(recovered, seed + 1, 4, more, resume)
        got, faults = inspect(recovered)
        report = verify(recovered)
        if not report.ok or faults:
            return Outcome(cut, mode, False, "after recovery: "
                           + "; ".join((report.faults + faults)[:3]))
        last = more[max(more)]
        if got != last.after:
            return Outcome(cut, mode, False, f"after recovery the content differs from the "
                                             f"oracle's: {last.differences(got)[:3]}")
        return Outcome(cut, mode, True)
    except Exception as e:  # noqa: BLE001
        return Outcome(cut, mode, False, f"after import: {e!r}")
    finally:
        recovered.close()


def run(kinds: list[str], modes: list[str], seed: int, steps: int, progress=None,
        load: str = "objects") -> Summary:
    """Cut at every write of the workload (and once after the last), in every crash mode."""
    summary = Summary()
    for kind in kinds:
        total = count_writes(kind, seed, steps, load)
        for mode in modes:
            for cut in range(total + 1):
                outcome = run_cut(kind, seed, steps, cut, mode, load)
                summary.cuts += 1
                if outcome.clean:
                    summary.clean += 1
                else:
                    summary.damaged.append(outcome)
                if progress:
                    progress(kind, outcome)
    return summary


from fusezfs.testing.crashsim_fsync import WORKLOAD as _FSYNC  # noqa: E402 (it builds on this module)
WORKLOADS["fsync"] = _FSYNC
