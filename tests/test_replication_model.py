"""A replication model test: random file trees and random changes (writes, truncates, renames,
links, deletes, xattrs, chmod, chown, symlinks, directories) with snapshots between them,
replicated by a chain of incremental streams, and once with -R over a tree of filesystems with
a clone; after every receive each received snapshot equals the source's byte for byte and
metadata for metadata (modes, owners, sizes, link counts and hard-link groups, mtime and ctime
to the nanosecond, symlink targets, xattrs), guids equal, and the pools check clean.

Fixed seeds and small sizes keep it to a few seconds; FUSEZFS_MODEL_ROUNDS=N (default 1) runs
N times as many seeds and steps."""
from __future__ import annotations

import hashlib
import os
import random
import stat

from test_send_cli import Cli
from test_send_receive import check, new_handle, recv, send

ROOT = 1
ROUNDS = int(os.environ.get("FUSEZFS_MODEL_ROUNDS", "1"))


def entries(fs) -> list[tuple[int, bytes, int, int]]:
    """(parent, name, ino, mode) of every name in the tree."""
    out = []
    stack = [ROOT]
    while stack:
        d = stack.pop()
        for e in fs.readdir(d):
            if e.name in (b".", b".."):
                continue
            mode = fs.getattr(e.ino).st_mode
            out.append((d, e.name, e.ino, mode))
            if stat.S_ISDIR(mode):
                stack.append(e.ino)
    return out


def random_change(fs, rng: random.Random, serial: list[int]) -> None:
    """One random change to filesystem `fs` (errors a real program would get are fine)."""
    names = entries(fs)
    dirs = [ROOT] + [i for _p, _n, i, m in names if stat.S_ISDIR(m)]
    files = [(p, n, i) for p, n, i, m in names if stat.S_ISREG(m)]
    anything = [(p, n, i) for p, n, i, _m in names]
    serial[0] += 1
    new = b"n%d" % serial[0]
    op = rng.choice(["create", "create", "write", "write", "truncate", "rename", "link",
                     "unlink", "mkdir", "rmdir", "symlink", "xattr", "rmxattr", "chmod",
                     "chown"])
    try:
        if op == "create" or (not files and op in ("write", "truncate", "link")):
            fh, _ = fs.create(rng.choice(dirs), new)
            fs.write(fh, 0, rng.randbytes(rng.choice([0, 10, 700, 5000, 140_000])))
            fs.release(fh)
        elif op == "write":
            _p, _n, ino = rng.choice(files)
            fh = fs.open(ino, os.O_RDWR)
            size = fs.getattr(ino).st_size
            fs.write(fh, rng.randrange(size + 200_000), rng.randbytes(rng.randrange(1, 70_000)))
            fs.release(fh)
        elif op == "truncate":
            _p, _n, ino = rng.choice(files)
            size = fs.getattr(ino).st_size
            fs.setattr(ino, size=rng.choice([0, size // 2, size + 100_000, 3]))
        elif op == "rename" and anything:
            p, n, _i = rng.choice(anything)
            fs.rename(p, n, rng.choice(dirs), rng.choice([new, n]))
        elif op == "link" and files:
            _p, _n, ino = rng.choice(files)
            fs.link(ino, rng.choice(dirs), new)
        elif op == "unlink" and files:
            p, n, _i = rng.choice(files)
            fs.unlink(p, n)
        elif op == "mkdir":
            fs.mkdir(rng.choice(dirs), new)
        elif op == "rmdir" and len(dirs) > 1:
            empty = [(p, n) for p, n, i, m in names if stat.S_ISDIR(m) and
                     len(fs.readdir(i)) <= 2]
            if empty:
                fs.rmdir(*rng.choice(empty))
        elif op == "symlink":
            fs.symlink(rng.choice(dirs), new, b"t" * rng.choice([1, 40, 300]))
        elif op == "xattr" and anything:
            _p, _n, ino = rng.choice(anything)
            fs.setxattr(ino, rng.choice([b"user.a", b"user.b", b"trusted.c"]),
                        rng.randbytes(rng.choice([0, 5, 4000])))
        elif op == "rmxattr" and anything:
            _p, _n, ino = rng.choice(anything)
            names_x = fs.listxattr(ino)
            if names_x:
                fs.removexattr(ino, rng.choice(names_x))
        elif op == "chmod" and anything:
            _p, _n, ino = rng.choice(anything)
            fs.setattr(ino, mode=rng.choice([0o600, 0o755, 0o4711, 0o1777, 0o640]))
        elif op == "chown" and anything:
            _p, _n, ino = rng.choice(anything)
            fs.setattr(ino, uid=rng.randrange(3000), gid=rng.randrange(3000))
    except OSError:
        pass


def snapshot_image(h, name: str) -> dict:
    """Everything compared of a snapshot: path -> metadata, data hash, target, xattrs, and
    which paths share an inode."""
    fs = h.filesystem(name)
    out: dict = {}
    groups: dict[int, list[str]] = {}

    def visit(ino: int, path: str) -> None:
        a = fs.getattr(ino)
        item = dict(mode=a.st_mode, uid=a.st_uid, gid=a.st_gid, size=a.st_size,
                    nlink=a.st_nlink, mtime=a.st_mtime_ns, ctime=a.st_ctime_ns,
                    xattrs={n: fs.getxattr(ino, n) for n in fs.listxattr(ino)})
        if stat.S_ISREG(a.st_mode):
            fh = fs.open(ino)
            item["sha"] = hashlib.sha256(fs.read(fh, 0, a.st_size + 1)).hexdigest()
            fs.release(fh)
        elif stat.S_ISLNK(a.st_mode):
            item["target"] = fs.readlink(ino)
        out[path or "/"] = item
        groups.setdefault(ino, []).append(path)
        if stat.S_ISDIR(a.st_mode):
            for e in fs.readdir(ino):
                if e.name not in (b".", b".."):
                    visit(e.ino, f"{path}/{e.name.decode()}")
    visit(ROOT, "")
    out["links"] = sorted(sorted(g) for g in groups.values() if len(g) > 1)
    return out


def test_incremental_chain_model():
    for seed in range(3 * ROUNDS):
        rng = random.Random(seed)
        src, dst = new_handle("tank"), new_handle("other")
        serial = [0]
        prev = None
        for step in range(4 * ROUNDS + 2):
            with src.pool.lock:
                fs = src.filesystem("tank/fs")
                for _ in range(rng.randrange(5, 25)):
                    random_change(fs, rng, serial)
                snap = f"tank/fs@s{step}"
                src.dsl.snapshot([snap])
                want = snapshot_image(src, snap)
                guid = src.dsl.get(snap).guid
            stream = send(src, snap, prev)
            recv(dst, "other/copy", stream)
            with dst.pool.lock:
                got = snapshot_image(dst, f"other/copy@s{step}")
                assert dst.dsl.get(f"other/copy@s{step}").guid == guid
            assert got == want, (seed, step)
            prev = snap
        check(src)
        check(dst)


def test_replication_stream_model(tmp_path, monkeypatch):
    """-R over tank/r, its children a and a/b and a clone of a, with random changes in each
    and snapshots between: a full -R, then incrementals (-R -i) received with -F."""
    monkeypatch.setenv("FUSEZFS_STATE_DIR", str(tmp_path / "state"))
    c = Cli(tmp_path)
    c.pool("tank")
    c.pool("other")
    rng = random.Random(77)
    serial = [0]
    for fs in ("tank/r", "tank/r/a", "tank/r/a/b"):
        c.ok("create", fs)
    heads = ["tank/r", "tank/r/a", "tank/r/a/b"]
    prev = None
    for step in range(3 * ROUNDS + 1):
        with c.opened("tank") as h:
            for fs in heads:
                for _ in range(rng.randrange(3, 12)):
                    random_change(h.filesystem(fs), rng, serial)
        c.ok("snapshot", "-r", f"tank/r@s{step}")
        if step >= 2:                       # the source drops a snapshot: -F drops it too
            c.ok("destroy", f"tank/r/a/b@s{step - 2}")
        if step == 0:
            c.ok("clone", "tank/r/a@s0", "tank/r/cl")
            heads.append("tank/r/cl")
        src = f"-i @s{prev} " if prev is not None else ""
        r = c.sh(f"$F send -R {src}tank/r@s{step} | $F receive -F other/r")
        assert r.returncode == 0, r.stderr
        with c.opened("tank") as h:
            want = {}
            for fs in heads:
                for s in h.dsl.snapshots(h.dsl.get(fs).id):
                    name = f"{fs}@{s.component}"
                    want[name[len("tank/r"):]] = (s.guid, snapshot_image(h, name))
            origin = h.dsl.name(h.dsl.get("tank/r/cl").origin) if any(
                k.startswith("/cl@") for k in want) else None     # (made after s0)
        with c.opened("other") as h:
            have = {"other/r" + fs[len("tank/r"):]: fs for fs in heads}
            assert sorted(f"{n[len('other/r'):]}@{s.component}" for n in have
                          if h.dsl.lookup(n) is not None
                          for s in h.dsl.snapshots(h.dsl.get(n).id)) == sorted(want)
            for rel, (guid, image) in want.items():
                rec = h.dsl.get("other/r" + rel)
                assert rec.guid == guid, rel
                assert snapshot_image(h, "other/r" + rel) == image, (step, rel)
            if origin is not None:
                assert h.dsl.name(h.dsl.get("other/r/cl").origin) == \
                    "other/r" + origin[len("tank/r"):]
        prev = step
    c.check()
