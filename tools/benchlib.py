"""Workloads of tools/bench, run as a separate process on each target:

    python tools/benchlib.py ACTION JSON-ARGS

prints one JSON object (seconds taken, and what was done). tools/bench starts it directly for
fusezfs and the native directory and inside zfs-fuse's private mount namespace for zfs-fuse, so
the timings are taken the same way on every target and never include process start-up or
nsenter. Nothing here checks timings; it only measures.

Actions (ROOT is a directory on the target):
  seqwrite  {path, size, corpus}    write SIZE bytes of the text corpus in 1 MiB writes, fsync
  seqread   {path}                  read the file in 1 MiB reads (the caller made caches cold)
  randprep  {path, size}            a preallocated file of SIZE incompressible bytes, fsync'ed
  randwrite {path, size, count}     COUNT 4 KiB pwrites at random aligned offsets, then fsync
  meta      {root, files, drop[, pid]}  create FILES x 4 KiB files (10 directories), stat them
                                    all, delete them all; with drop, caches are dropped between
                                    phases; with pid, also that daemon's CPU time per phase
  tree      {root, src, drop[, pid]}  read SRC once (warm), `cp -a SRC ROOT/tree`, then
                                    `rm -rf ROOT/tree` (pid: as for meta)
  fsynclat  {path, size, counts}    into the preallocated file: N random 4 KiB pwrites, then
                                    fsync, for each N of COUNTS (timed: the fsync alone; the
                                    median of several tries for small N)
  sqlite    {path, n, mode}         SQLite (Python's sqlite3), journal_mode MODE (wal|delete),
                                    synchronous=FULL: N single-row INSERT transactions
  populate  {root, files, corpus}   FILES files of 1-4 KiB, 100 per directory (untimed setup)
  zfssnap   {ds, reps[, zfs]}       a real ZFS: `zfs snapshot DS@N` and `zfs clone` REPS times
                                    (ZFS: the zfs command; default: zfs on PATH or in sbin)
  fzsnap    {ds, reps, repo}        fusezfs on an unmounted pool: `python -m fusezfs.cli
                                    snapshot/clone` (wall time) and the library calls
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time

MIB = 1 << 20
BLOCK = 4096


def drop_caches() -> bool:
    """Write back and drop the kernel's page, dentry and inode caches (root only)."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def _load(path: str) -> memoryview:
    with open(path, "rb") as f:
        return memoryview(f.read())


def seqwrite(a: dict) -> dict:
    data = _load(a["corpus"])
    size, n = a["size"], len(data)
    t0 = time.perf_counter()
    fd = os.open(a["path"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        pos, k = 0, 0
        while pos < size:
            start = (k * 7 * MIB) % n                  # real text, never one block repeated
            piece = data[start:start + min(MIB, size - pos, n - start)]
            pos += os.write(fd, piece)
            k += 1
        os.fsync(fd)
    finally:
        os.close(fd)
    return {"s": time.perf_counter() - t0, "bytes": size}


def seqread(a: dict) -> dict:
    t0 = time.perf_counter()
    total = 0
    fd = os.open(a["path"], os.O_RDONLY)
    try:
        while True:
            b = os.read(fd, MIB)
            if not b:
                break
            total += len(b)
    finally:
        os.close(fd)
    return {"s": time.perf_counter() - t0, "bytes": total}


def randprep(a: dict) -> dict:
    t0 = time.perf_counter()
    rnd = random.Random(1)
    with open(a["path"], "wb", buffering=0) as f:
        left = a["size"]
        while left:
            n = min(MIB, left)
            f.write(rnd.randbytes(n))
            left -= n
        os.fsync(f.fileno())
    return {"s": time.perf_counter() - t0}


def randwrite(a: dict) -> dict:
    rnd = random.Random(2)
    blocks = [rnd.randbytes(BLOCK) for _ in range(64)]      # incompressible, as fio writes
    nblk = a["size"] // BLOCK
    offs = [rnd.randrange(nblk) * BLOCK for _ in range(a["count"])]
    fd = os.open(a["path"], os.O_WRONLY)
    try:
        t0 = time.perf_counter()
        for i, off in enumerate(offs):
            os.pwrite(fd, blocks[i & 63], off)
        t1 = time.perf_counter()
        os.fsync(fd)
        t2 = time.perf_counter()
    finally:
        os.close(fd)
    return {"s": t2 - t0, "write_s": t1 - t0, "fsync_s": t2 - t1, "count": a["count"]}


def fsynclat(a: dict) -> dict:
    """fsync latency after N random 4 KiB writes (the writes are not timed)."""
    rnd = random.Random(3)
    blocks = [rnd.randbytes(BLOCK) for _ in range(64)]
    nblk = a["size"] // BLOCK
    out = {}
    fd = os.open(a["path"], os.O_WRONLY)
    try:
        os.fsync(fd)
        for n in a["counts"]:
            tries = max(1, min(15, 3000 // n))
            took = []
            for _ in range(tries):
                for i in range(n):
                    os.pwrite(fd, blocks[i & 63], rnd.randrange(nblk) * BLOCK)
                t0 = time.perf_counter()
                os.fsync(fd)
                took.append(time.perf_counter() - t0)
            took.sort()
            out[str(n)] = took[len(took) // 2]
    finally:
        os.close(fd)
    return {"fsync_s": out}


def sqlite(a: dict) -> dict:
    """Single-row insert transactions, each durable (synchronous=FULL) before the next."""
    import sqlite3
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            os.unlink(a["path"] + suffix)
        except FileNotFoundError:
            pass
    db = sqlite3.connect(a["path"], isolation_level=None)   # autocommit: a txn per INSERT
    try:
        db.execute(f"PRAGMA journal_mode={a['mode']}")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        row = "x" * 100
        t0 = time.perf_counter()
        for i in range(a["n"]):
            db.execute("INSERT INTO t (v) VALUES (?)", (row,))
        took = time.perf_counter() - t0
        count = db.execute("SELECT count(*) FROM t").fetchone()[0]
    finally:
        db.close()
    return {"s": took, "tps": a["n"] / took, "rows": count}


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of process PID (the daemon serving the target), or None."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class Phases:
    """Wall time of each phase into OUT[NAME_s], and with a daemon's PID its CPU time into
    OUT[NAME_cpu]: on a machine shared with other work the daemon's CPU time per operation
    moves much less than the wall time does."""

    def __init__(self, out: dict, pid: int | None) -> None:
        self.out, self.pid = out, pid

    def start(self) -> None:
        self.c0 = cpu_seconds(self.pid)
        self.t0 = time.perf_counter()

    def stop(self, name: str) -> None:
        self.out[f"{name}_s"] = time.perf_counter() - self.t0
        c1 = cpu_seconds(self.pid)
        if c1 is not None and self.c0 is not None:
            self.out[f"{name}_cpu"] = c1 - self.c0


def meta(a: dict) -> dict:
    root, n, drop = os.path.join(a["root"], "meta"), a["files"], a["drop"]
    payload = (b"fusezfs metadata benchmark: 4 KiB of text per file.\n" * 80)[:BLOCK]
    dirs = [os.path.join(root, f"d{j}") for j in range(10)]
    paths = [os.path.join(dirs[i % 10], f"f{i:06d}") for i in range(n)]
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    out = {}
    ph = Phases(out, a.get("pid"))
    ph.start()
    os.mkdir(root)
    for d in dirs:
        os.mkdir(d)
    for p in paths:
        fd = os.open(p, flags, 0o644)
        os.write(fd, payload)
        os.close(fd)
    ph.stop("create")
    out["dropped"] = drop and drop_caches()
    order = paths[:]
    random.Random(3).shuffle(order)
    ph.start()
    for p in order:
        os.stat(p)
    ph.stop("stat")
    if drop:
        drop_caches()
    ph.start()
    for p in paths:
        os.unlink(p)
    for d in dirs:
        os.rmdir(d)
    os.rmdir(root)
    ph.stop("delete")
    out["files"] = n
    return out


def tree(a: dict) -> dict:
    dst = os.path.join(a["root"], "tree")
    for dirpath, _dirs, files in os.walk(a["src"]):        # the source in the page cache
        for f in files:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                with open(p, "rb") as fh:
                    while fh.read(MIB):
                        pass
    out: dict = {}
    ph = Phases(out, a.get("pid"))
    ph.start()
    subprocess.run(["cp", "-a", a["src"], dst], check=True, timeout=3600)
    ph.stop("cp")
    if a["drop"]:
        drop_caches()
    ph.start()
    subprocess.run(["rm", "-rf", dst], check=True, timeout=3600)
    ph.stop("rm")
    if os.path.exists(dst):
        raise RuntimeError(f"rm -rf left {dst}")
    return out


def populate(a: dict) -> dict:
    data = _load(a["corpus"])
    root = os.path.join(a["root"], "files")
    t0 = time.perf_counter()
    for i in range(a["files"]):
        d = os.path.join(root, f"d{i // 100:03d}")
        if i % 100 == 0:
            os.makedirs(d, exist_ok=True)
        off = (i * 104729) % (len(data) - BLOCK)
        with open(os.path.join(d, f"f{i % 100:03d}.txt"), "wb") as f:
            f.write(data[off:off + 1024 + (i * 7919) % 3073])
    return {"s": time.perf_counter() - t0}


def _timed(argv: list[str], env: dict | None = None) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300,
                       stdin=subprocess.DEVNULL)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} -> exit {r.returncode}: {r.stderr.strip()}")
    return dt


def zfssnap(a: dict) -> dict:
    zfs = a.get("zfs") or shutil.which("zfs", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") \
        or "zfs"
    ds = a["ds"]
    _timed([zfs, "snapshot", f"{ds}@warm"])             # commits whatever population left
    snap, clone = [], []
    for i in range(a["reps"]):
        snap.append(_timed([zfs, "snapshot", f"{ds}@s{i}"]))
        clone.append(_timed([zfs, "clone", f"{ds}@s{i}", f"{ds}_c{i}"]))
    return {"snapshot": snap, "clone": clone}


def fzsnap(a: dict) -> dict:
    ds, reps = a["ds"], a["reps"]
    env = dict(os.environ)
    cli = [sys.executable, "-m", "fusezfs.cli"]
    _timed(cli + ["snapshot", f"{ds}@warm"], env)
    snap, clone = [], []
    for i in range(reps):
        snap.append(_timed(cli + ["snapshot", f"{ds}@s{i}"], env))
        clone.append(_timed(cli + ["clone", f"{ds}@s{i}", f"{ds}_c{i}"], env))
    sys.path.insert(0, a["repo"])
    from fusezfs.cli.cli_pool import open_pool
    from fusezfs.dsl.datasets import Datasets
    lsnap, lclone = [], []
    pool = open_pool(ds.split("/")[0])
    try:
        with pool.lock:
            dsl = Datasets(pool)
            for i in range(reps):
                t0 = time.perf_counter()
                dsl.snapshot([f"{ds}@l{i}"])
                t1 = time.perf_counter()
                dsl.clone(f"{ds}@l{i}", f"{ds}_l{i}")
                pool.sync()                           # the commit `fusezfs clone` makes
                t2 = time.perf_counter()
                lsnap.append(t1 - t0)
                lclone.append(t2 - t1)
    finally:
        pool.close()
    return {"snapshot": snap, "clone": clone, "lib_snapshot": lsnap, "lib_clone": lclone}


ACTIONS = {f.__name__: f for f in (seqwrite, seqread, randprep, randwrite, fsynclat, sqlite,
                                   meta, tree, populate, zfssnap, fzsnap)}


def main() -> int:
    action, arg = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps(ACTIONS[action](arg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
