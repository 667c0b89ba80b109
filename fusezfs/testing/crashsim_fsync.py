"""The `fsync` crash workload: random writes, truncates, creates, renames and removes in four
filesystems (sync=standard with logbias latency and throughput, sync=always, sync=disabled),
fsync'ed one file at a time, with directory fsyncs and txg commits now and then. The oracle
(`FsyncModel`) records, outside fusezfs, what every operation did and what each returned fsync
promised, and checks a recovered pool against those promises only (never against how the
intent log works):

* the names of each filesystem are those of one instant between the last promise that covers
  names (a returned fsync of any of its files, a directory fsync, every operation under
  sync=always; or the recovered txg's own point) and the cut;
* every file there holds what it held at some instant between its own last promise (a returned
  fsync of it, or the txg's point) and the cut: an fsync'ed file never loses what its fsync
  returned for, and never shows bytes it did not have at some moment since.

run_cut (crashsim.py) imports each crash image, checks the txg it finds against the durability
oracle (`Commits`), then opens the filesystems (which replays the log) and asks `FsyncExpect`.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

from fusezfs.testing.crashsim import State, Workload, _text, check_read
from fusezfs.engine.pool import Pool

DIR = b"<directory>"
# name, properties: one filesystem per way the intent log behaves
FILESYSTEMS = {
    "crash/log": {"recordsize": "4096", "compression": "off"},
    "crash/tp": {"recordsize": "8192", "compression": "zstd", "logbias": "throughput"},
    "crash/always": {"recordsize": "4096", "compression": "off", "sync": "always"},
    "crash/off": {"recordsize": "4096", "compression": "off", "sync": "disabled"},
}
PATHS = [b"f0", b"f1", b"f2", b"d/f3", b"d/f4"]
MAX_FILE = 24 << 10         # bytes a file of the workload holds at most


@dataclass
class Point:
    """Everything after one operation: per filesystem its names (path -> file id or DIR),
    and every file's bytes by id."""
    names: dict[str, dict[bytes, object]]
    content: dict[int, bytes]


@dataclass
class FsyncModel:
    """The oracle (module comment). `points[i]` is the state after i operations; `begun`
    operations were started on the pool, `done` returned."""
    points: list[Point] = field(default_factory=list)
    begun: int = 0
    done: int = 0
    names_promised: dict[str, int] = field(default_factory=dict)
    file_promised: dict[int, int] = field(default_factory=dict)
    next_id: int = 1

    @classmethod
    def fresh(cls) -> "FsyncModel":
        return cls([Point({ds: {} for ds in FILESYSTEMS}, {})])

    @classmethod
    def from_state(cls, got: State) -> "FsyncModel":
        """A model whose start is a recovered pool's content (already checked)."""
        m = cls.fresh()
        now = m.points[0]
        for key, value in sorted(got.items()):
            ds, _, path = key.decode().partition(":/")
            if value == DIR:
                now.names[ds][path.encode()] = DIR
            else:
                now.names[ds][path.encode()] = m.next_id
                now.content[m.next_id] = value
                m.next_id += 1
        return m

    @property
    def now(self) -> Point:
        return self.points[-1]

    def apply(self, ds: str, op: str, *args) -> None:
        """Record an operation before the pool runs it (its point exists from then on)."""
        names = {d: dict(n) for d, n in self.now.names.items()}
        content = dict(self.now.content)
        mine = names[ds]
        if op == "write":
            path, offset, data = args
            fid = mine.get(path)
            if fid is None:
                fid = mine[path] = self.next_id
                self.next_id += 1
                content[fid] = b""
            old = content[fid]
            if len(old) < offset:
                old += bytes(offset - len(old))
            content[fid] = old[:offset] + data + old[offset + len(data):]
        elif op == "truncate":
            path, size = args
            fid = mine[path]
            old = content[fid]
            content[fid] = old[:size] + bytes(max(0, size - len(old)))
        elif op == "unlink":
            del content[mine.pop(args[0])]
        elif op == "rename":
            src, dst = args
            if mine.get(dst) not in (None, DIR):
                del content[mine[dst]]
            mine[dst] = mine.pop(src)
        elif op == "mkdir":
            mine[args[0]] = DIR
        self.points.append(Point(names, content))
        self.begun += 1

    def returned(self) -> None:
        self.done = self.begun

    def promise(self, ds: str, path: bytes | None) -> None:
        """An fsync of `path` (None: of the directory, all of `ds`) returned now."""
        self.names_promised[ds] = self.done
        mine = self.now.names[ds]
        for p, fid in mine.items():
            if fid != DIR and (path is None or p == path):
                self.file_promised[fid] = self.done

    def state(self, at: int) -> State:
        point = self.points[at]
        out: State = {}
        for ds, names in point.names.items():
            for path, fid in names.items():
                out[ds.encode() + b":/" + path] = DIR if fid == DIR else point.content[fid]
        return out


class FsyncExpect:
    """What a recovered pool may hold, given the txg it came back at (crashsim.Expect's
    interface: matches, differences, model_for, after)."""

    def __init__(self, model: FsyncModel, txg_point: int) -> None:
        self.model = model
        self.point = txg_point          # operations the txg holds (at least)

    @property
    def after(self) -> State:
        return self.model.state(self.point)

    def _allowed(self, fid: int, last: int) -> set[bytes]:
        lo = max(self.point, self.model.file_promised.get(fid, 0))
        return {p.content[fid] for p in self.model.points[lo:last + 1] if fid in p.content}

    def _fits(self, ds: str, got: dict[bytes, bytes], at: int, last: int) -> bool:
        names = self.model.points[at].names[ds]
        if set(names) != set(got):
            return False
        return all(got[p] == DIR if fid == DIR else got[p] in self._allowed(fid, last)
                   for p, fid in names.items())

    def _per_ds(self, got: State) -> dict[str, dict[bytes, bytes]]:
        out: dict[str, dict[bytes, bytes]] = {ds: {} for ds in FILESYSTEMS}
        for key, value in got.items():
            ds, _, path = key.decode().partition(":/")
            out.setdefault(ds, {})[path.encode()] = value
        return out

    def matches(self, got: State) -> bool:
        return not self.differences(got)

    def differences(self, got: State) -> list[str]:
        last = self.model.begun
        out = []
        for ds, mine in self._per_ds(got).items():
            if ds not in FILESYSTEMS:
                out.append(f"unexpected filesystem {ds}")
                continue
            lo = max(self.point, self.model.names_promised.get(ds, 0))
            if not any(self._fits(ds, mine, i, last) for i in range(lo, last + 1)):
                want = self.model.points[lo].names[ds]
                out.append(f"{ds}: no instant in ops {lo}..{last} has these names and "
                           f"contents (got {sorted(mine)}, at {lo}: {sorted(want)})")
        return out

    def model_for(self, got: State) -> FsyncModel:
        return FsyncModel.from_state(got)


def fsync_workload(pool: Pool, seed: int, steps: int, committing: dict,
                   model: FsyncModel | None = None) -> None:
    """The workload (module comment). Each operation is recorded in the model before it runs
    and marked done when it returns; every txg commit records how many had returned."""
    from fusezfs.api import Handle
    from fusezfs.dsl.datasets import ROOT_ID

    rng = random.Random(seed)
    h = Handle(pool)
    dsl = h.dsl
    model = model or FsyncModel.fresh()
    pool.sync_hooks.append(lambda p: committing.__setitem__(p.txg, FsyncExpect(model,
                                                                                model.done)))
    committing[pool.synced_txg] = FsyncExpect(model, model.done)
    root = dsl.record(ROOT_ID)
    if root.props.get("atime") != "off":
        root.props["atime"] = "off"
        dsl.touch(root)
    for name, props in [("crash", {})] + list(FILESYSTEMS.items()):
        if dsl.lookup(name) is None:    # (a pool recovered from a cut in here goes on)
            dsl.create(name, dict(props))
    pool.sync()

    def run(ds: str, op: str, args: tuple, fn) -> None:
        model.apply(ds, op, *args)
        fn()
        model.returned()
        if FILESYSTEMS[ds].get("sync") == "always":
            model.promise(ds, args[0] if op in ("write", "truncate") else b"")

    for _step in range(steps):
        ds = rng.choice(sorted(FILESYSTEMS))
        fs = h.filesystem(ds)
        names = model.now.names[ds]
        files = sorted(p for p, fid in names.items() if fid != DIR)
        r = rng.random()
        if r < 0.40 or not files:
            path = rng.choice(PATHS)
            if path.startswith(b"d/") and b"d" not in names:
                run(ds, "mkdir", (b"d",), lambda: fs.mkdir(1, b"d"))
            if names.get(path) == DIR:
                continue
            size = len(model.now.content[names[path]]) if path in names else 0
            data = _text(rng, rng.choice([10, 700, 5000, 9000, 17000]))
            room = MAX_FILE - len(data)         # files stay small: the pool is nearly full
            offset = min(room, rng.choice([0, rng.randrange(0, size + 1), size,
                                           rng.randrange(0, 20000)]))

            if path not in names:           # a create is an operation of its own
                def create(path=path) -> None:
                    parent = fs.resolve(b"/" + path.rpartition(b"/")[0])
                    fs.release(fs.create(parent, path.rpartition(b"/")[2])[0])
                run(ds, "write", (path, 0, b""), create)

            def write(path=path, offset=offset, data=data) -> None:
                fh = fs.open(fs.resolve(b"/" + path), os.O_RDWR)
                try:
                    fs.write(fh, offset, data)
                finally:
                    fs.release(fh)
            run(ds, "write", (path, offset, data), write)
        elif r < 0.50:
            path = rng.choice(files)
            size = rng.choice([0, 100, 4096, 6000, MAX_FILE])
            run(ds, "truncate", (path, size),
                lambda: fs.setattr(fs.resolve(b"/" + path), size=size))
        elif r < 0.56:
            src, dst = rng.choice(files), rng.choice(PATHS)
            if src == dst or names.get(dst) == DIR or (dst.startswith(b"d/")
                                                       and b"d" not in names):
                continue
            run(ds, "rename", (src, dst), lambda: fs.rename(
                fs.resolve(b"/" + src.rpartition(b"/")[0]), src.rpartition(b"/")[2],
                fs.resolve(b"/" + dst.rpartition(b"/")[0]), dst.rpartition(b"/")[2]))
        elif r < 0.60:
            path = rng.choice(files)
            run(ds, "unlink", (path,), lambda: fs.unlink(
                fs.resolve(b"/" + path.rpartition(b"/")[0]), path.rpartition(b"/")[2]))
        elif r < 0.90:
            path = rng.choice(files)
            fh = fs.open(fs.resolve(b"/" + path))
            try:
                fs.fsync(fh)
            finally:
                fs.release(fh)
            if FILESYSTEMS[ds].get("sync") != "disabled":
                model.promise(ds, path)
        elif r < 0.95:
            fs.fsync_all()
            if FILESYSTEMS[ds].get("sync") != "disabled":
                model.promise(ds, None)
        else:
            pool.sync()
        if files and rng.random() < 0.3:    # the running pool reads what the model says
            path = rng.choice(sorted(p for p, f in model.now.names[ds].items() if f != DIR)
                              or [None])
            if path is not None:
                check_read(f"{ds}:/{path.decode()}", fs.read_file(b"/" + path),
                           model.now.content[model.now.names[ds][path]])
    pool.sync()


def fsync_content(h) -> State:
    """ds:/path -> bytes (DIR for a directory) of the workload's filesystems."""
    out: State = {}
    for ds in FILESYSTEMS:
        if h.dsl.lookup(ds) is None:        # a cut before the workload made it
            continue
        fs = h.filesystem(ds)
        for top in fs.listdir("/"):
            ino = fs.resolve(b"/" + top)
            if fs.getattr(ino).st_mode & 0o170000 == 0o040000:
                out[ds.encode() + b":/" + top] = DIR
                for f in fs.listdir(b"/" + top):
                    out[ds.encode() + b":/" + top + b"/" + f] = fs.read_file(b"/" + top + b"/" + f)
            else:
                out[ds.encode() + b":/" + top] = fs.read_file(b"/" + top)
    return out


def fsync_check(pool: Pool) -> tuple[State, list[str]]:
    """Open the filesystems (the intent log is replayed then) and read them."""
    from fusezfs.api import Handle
    h = Handle(pool)
    return fsync_content(h), h.dsl.check()


WORKLOAD = Workload(fsync_workload, fsync_check, 640 << 10, slop=True)

__all__ = ["FsyncModel", "FsyncExpect", "WORKLOAD"]
