"""`fusezfs send` as a user runs it: real processes and real pipes (`fusezfs send ... |
fusezfs receive ...`), every flag, OpenZFS 2.1.11's lines (-nvP, -v progress) and messages,
the terminal refusal (a pty), the estimate against the stream's size, -I's compound stream
against zstream and zfs-fuse. The helpers here are test_recv_cli.py's too.

Each test checks the pools it used afterwards: `pool verify` clean, the space checker clean,
and no receive's hidden dataset left behind.
"""
from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from contextlib import contextmanager

import pytest

import zstream
from fusezfs.api import Handle
from fusezfs.cli.cli_pool import open_pool
from fusezfs.send import records as R
from fusezfs.send.incoming import marks
from fusezfs.engine.verify import verify
from test_send_stream import change, populate, same_trees, tree_of

MiB = 1 << 20
FZ = [sys.executable, "-m", "fusezfs.cli"]


class Cli:
    """A state directory with pools in files, commands run as separate processes."""

    def __init__(self, tmp_path) -> None:
        self.tmp = tmp_path
        self.state = str(tmp_path / "state")
        self.env = dict(os.environ, FUSEZFS_STATE_DIR=self.state,
                        F=" ".join(FZ), LC_ALL="C")
        self.pools: list[str] = []

    def pool(self, name: str, size: int = 256 * MiB) -> None:
        disk = self.tmp / f"{name}.img"
        with open(disk, "wb") as f:
            f.truncate(size)
        self.ok("pool", "create", "-O", "compression=off", name, str(disk))
        self.pools.append(name)

    def run(self, *args: str, input: bytes | None = None, stdin=None,
            timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(FZ + list(args), env=self.env, input=input,
                              stdin=stdin if input is None else None, capture_output=True,
                              timeout=timeout, cwd=str(self.tmp))

    def ok(self, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
        r = self.run(*args, input=input)
        assert r.returncode == 0, (args, r.stderr.decode())
        return r

    def sh(self, script: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """A shell pipeline; $F is the fusezfs command."""
        return subprocess.run(["sh", "-c", script], env=self.env, capture_output=True,
                              timeout=timeout, cwd=str(self.tmp))

    @contextmanager
    def opened(self, name: str):
        """The pool's Handle in this process, with its lock held (no command may run)."""
        pool = open_pool(name)
        try:
            h = Handle(pool)
            with pool.lock:
                yield h
        finally:
            pool.close()

    def check(self) -> None:
        for name in self.pools:
            with self.opened(name) as h:
                h.pool.sync()
                assert h.dsl.check() == []
                assert marks(h.dsl) == []
                report = verify(h.pool)
                assert report.ok, report.faults


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Pools tank (tank/fs with snapshots a and b, changes between) and other."""
    monkeypatch.setenv("FUSEZFS_STATE_DIR", str(tmp_path / "state"))
    c = Cli(tmp_path)
    c.pool("tank")
    c.pool("other")
    with c.opened("tank") as h:
        h.dsl.create("tank/fs")
        populate(h)
        h.dsl.snapshot(["tank/fs@a"])
        change(h)
        h.dsl.snapshot(["tank/fs@b"])
    yield c
    c.check()


def trees(c: Cli, pairs: list[tuple[str, str]]) -> None:
    """Each (tank name, other name): the same files, metadata and guids."""
    for src, dst in pairs:
        with c.opened(src.split("/")[0]) as h:
            want = tree_of(h, src)
            guid = h.dsl.get(src).guid if "@" in src else None
        with c.opened(dst.split("/")[0]) as h:
            same_trees(tree_of(h, dst), want)
            if guid is not None and "@" in dst:
                assert h.dsl.get(dst).guid == guid


def snapshots(c: Cli, fs: str) -> list[str]:
    with c.opened(fs.split("/")[0]) as h:
        return [s.component for s in h.dsl.snapshots(h.dsl.get(fs).id)]


# ---- streams through pipes ----------------------------------------------------------------------
def test_full_and_incremental_through_pipes(env):
    r = env.sh("$F send tank/fs@a | $F receive other/copy && "
               "$F send -i @a tank/fs@b | $F recv other/copy")
    assert r.returncode == 0, r.stderr
    # (snapshots only: reading a head with atime=on writes it, and a receive into a head
    # written since its latest snapshot needs -F, as in ZFS)
    trees(env, [("tank/fs@a", "other/copy@a"), ("tank/fs@b", "other/copy@b")])
    # the full name as the source, and the `zfs` program
    with env.opened("tank") as h:
        h.filesystem("tank/fs").write_file("/c-only", b"c")
        h.dsl.snapshot(["tank/fs@c"])
    zfs = os.path.join(os.path.dirname(sys.executable), "zfs")
    r = env.sh(f"{zfs} send -i tank/fs@b tank/fs@c | {zfs} receive other/copy")
    assert r.returncode == 0, r.stderr
    trees(env, [("tank/fs@c", "other/copy@c"), ("tank/fs@c", "other/copy")])


def test_source_without_type_warns_and_means_a_snapshot(env):
    r = env.sh("$F send -i a tank/fs@b > incr")
    assert r.returncode == 0
    assert r.stderr.decode() == ("Warning: incremental source didn't specify type, assuming "
                                 "snapshot. Use '@' or '#' prefix to avoid ambiguity.\n")
    assert (env.tmp / "incr").read_bytes() == env.ok("send", "-i", "@a", "tank/fs@b").stdout


def test_incremental_from_a_bookmark_after_its_snapshot_is_gone(env):
    env.ok("bookmark", "tank/fs@a", "tank/fs#mark")
    env.sh("$F send tank/fs@a | $F receive other/copy")
    env.ok("destroy", "tank/fs@a")
    r = env.sh("$F send -i '#mark' tank/fs@b | $F receive other/copy")
    assert r.returncode == 0, r.stderr
    r = env.sh("$F send -nvP -i tank/fs#mark tank/fs@b")
    assert r.stdout.decode().splitlines()[0].startswith("incremental\ttank/fs#mark\ttank/fs@b\t")
    trees(env, [("tank/fs@b", "other/copy@b")])
    r = env.run("send", "-i", "tank/fs#nosuch", "tank/fs@b", stdin=subprocess.DEVNULL)
    assert (r.returncode, r.stderr.decode()) == (
        1, "warning: cannot send 'tank/fs@b': incremental source (tank/fs#nosuch) does not "
           "exist\n")


def test_all_intermediate_snapshots(env, tmp_path):
    with env.opened("tank") as h:
        fs = h.filesystem("tank/fs")
        for name in ("c", "d"):
            fs.write_file(f"/new-{name}", name.encode() * 1000)
            h.dsl.snapshot([f"tank/fs@{name}"])
    r = env.sh("$F send tank/fs@a | $F receive other/copy && "
               "$F send -I @a tank/fs@d > all && $F receive -v other/copy < all")
    assert r.returncode == 0, r.stderr
    assert snapshots(env, "other/copy") == ["a", "b", "c", "d"]
    trees(env, [(f"tank/fs@{s}", f"other/copy@{s}") for s in "bcd"])
    out = r.stdout.decode().splitlines()
    assert out[0::2] == [f"receiving incremental stream of tank/fs@{s} into other/copy@{s}"
                         for s in "bcd"]
    assert all(re.fullmatch(r"received \S+ stream in \d+ seconds \(\S+/sec\)", x)
               for x in out[1::2])
    # libzfs's compound stream: BEGIN (header type 2, no nvlist), END checking it, the
    # substreams, a final END
    raw = (tmp_path / "all").read_bytes()
    reader = R.StreamReader(open(tmp_path / "all", "rb"))
    head = reader.begin()
    assert (head.hdrtype, head.toname, head.payload) == (R.DMU_COMPOUNDSTREAM, "tank/fs@d", b"")
    reader.package_end()
    names = []
    while (sub := reader.begin(package=True)) is not None:
        names.append(sub.toname)
        list(reader.records())
    assert names == ["tank/fs@b", "tank/fs@c", "tank/fs@d"]
    assert reader.offset == len(raw) and raw[-R.RECORD_SIZE:] == R.PACKAGE_END
    # -nvP: one line per substream, short source names, then the total
    lines = env.ok("send", "-nvP", "-I", "tank/fs@a", "tank/fs@d").stdout.decode().splitlines()
    sizes = [int(x.split("\t")[-1]) for x in lines[:3]]
    assert [x.rsplit("\t", 1)[0] for x in lines[:3]] == [
        "incremental\ta\ttank/fs@b", "incremental\tb\ttank/fs@c", "incremental\tc\ttank/fs@d"]
    assert lines[3] == f"size\t{sum(sizes)}"
    assert sum(sizes) + 2 * R.RECORD_SIZE + R.RECORD_SIZE == len(raw)
    human = env.ok("send", "-nv", "-I", "@a", "tank/fs@c").stdout.decode().splitlines()
    assert human[0].startswith("send from @a to tank/fs@b estimated size is ")
    assert human[2].startswith("total estimated size is ")
    if zstream.unavailable() is None:
        d = zstream.dump(tmp_path / "all")
        assert d.returncode == 0 and "checksum" not in d.stderr, d.stderr
        assert "Expected checksum" not in d.stdout
        assert f"Total stream length = {len(raw)} " in d.stdout
        assert zstream.summary(d.stdout)["BEGIN"] == 4 and zstream.summary(d.stdout)["END"] == 5


def test_estimate_is_the_stream_size(env):
    for args in (["tank/fs@a"], ["-i", "@a", "tank/fs@b"]):
        size = len(env.ok("send", *args).stdout)
        lines = env.ok("send", "-nvP", *args).stdout.decode().splitlines()
        kind = "full\ttank/fs@a" if len(args) == 1 else "incremental\ttank/fs@a\ttank/fs@b"
        assert lines == [f"{kind}\t{size}", f"size\t{size}"]
        assert env.ok("send", "-nP", *args).stdout.decode().splitlines() == lines  # -P: -v
        r = env.ok("send", "-nv", *args)
        text = "full send of tank/fs@a" if len(args) == 1 else "send from tank/fs@a to tank/fs@b"
        from fusezfs.dsl.dsprops import nicebytes, nicenum
        assert r.stdout.decode() == (f"{text} estimated size is {nicebytes(size)}\n"
                                     f"total estimated size is {nicenum(size)}\n")
        assert r.stderr == b""
        # without -n the same lines go to stderr, and the stream to stdout
        r = env.ok("send", "-vP", *args)
        assert len(r.stdout) == size
        assert r.stderr.decode().splitlines()[:2] == lines


def test_progress_once_a_second(env):
    with env.opened("tank") as h:
        h.filesystem("tank/fs").write_file("/big", os.urandom(6 * MiB))
        h.dsl.snapshot(["tank/fs@big"])
    # the reader sleeps, the pipe fills: the send takes more than 2 seconds
    r = env.sh("$F send -v tank/fs@big | (sleep 2.6; cat > big.stream)")
    assert r.returncode == 0
    err = r.stderr.decode().splitlines()
    assert err[0].startswith("full send of tank/fs@big estimated size is ")
    assert err[1].startswith("total estimated size is ")
    assert err[2] == "TIME        SENT   SNAPSHOT tank/fs@big"
    assert len(err) >= 5
    for line in err[3:]:
        assert re.fullmatch(r"\d\d:\d\d:\d\d   [ 0-9.BKMG]{5}   tank/fs@big", line), line
    assert (env.tmp / "big.stream").stat().st_size > 6 * MiB
    r = env.sh("$F send -vP tank/fs@big | (sleep 2.6; cat > /dev/null)")
    err = r.stderr.decode().splitlines()
    assert err[0].startswith("full\ttank/fs@big\t") and err[1].startswith("size\t")
    assert len(err) >= 4
    for line in err[2:]:
        assert re.fullmatch(r"\d\d:\d\d:\d\d\t\d+\ttank/fs@big", line), line
    r = env.sh("$F send -vv tank/fs@big | (sleep 1.6; cat > /dev/null)")
    err = r.stderr.decode().splitlines()
    assert err[2] == "TIME        SENT      BLOCKS    SNAPSHOT tank/fs@big"
    assert re.fullmatch(r"\d\d:\d\d:\d\d   [ 0-9.KMG]{5}    [ 0-9]{8}    tank/fs@big", err[3])


def test_never_to_a_terminal(env):
    for args in (["send", "tank/fs@a"], ["send", "-v", "-i", "@a", "tank/fs@b"]):
        master, slave = pty.openpty()
        try:
            r = subprocess.run(FZ + args, env=env.env, stdout=slave, stderr=subprocess.PIPE,
                               stdin=subprocess.DEVNULL, timeout=60)
        finally:
            os.close(slave)
            os.close(master)
        assert (r.returncode, r.stderr.decode()) == (
            1, "Error: Stream can not be written to a terminal.\nYou must redirect standard "
               "output.\n")
    # a dry run writes no stream: allowed
    master, slave = pty.openpty()
    try:
        r = subprocess.run(FZ + ["send", "-nv", "tank/fs@a"], env=env.env, stdout=slave,
                           stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=60)
        assert r.returncode == 0
        assert os.read(master, 1000).startswith(b"full send of tank/fs@a")
    finally:
        os.close(slave)
        os.close(master)


def test_flags_that_change_nothing_here(env):
    plain = env.ok("send", "-i", "@a", "tank/fs@b").stdout
    for flags in (["-L"], ["-e"], ["-w"], ["-Le"], ["-V"]):
        assert env.ok("send", *flags, "-i", "@a", "tank/fs@b").stdout == plain, flags
    r = env.ok("send", "-D", "tank/fs@a")
    assert r.stderr.decode() == ("WARNING: deduplicated send is no longer supported.  A "
                                 "regular,\nnon-deduplicated stream will be generated.\n\n")
    assert r.stdout == env.ok("send", "tank/fs@a").stdout


def test_a_filesystem_sends_its_current_state(env):
    with env.opened("tank") as h:
        h.filesystem("tank/fs").write_file("/unsnapped", b"now")
    r = env.sh("$F send tank/fs | $F receive other/now")
    assert r.returncode == 0, r.stderr
    assert snapshots(env, "other/now") == ["--head--"]
    trees(env, [("tank/fs", "other/now")])


def test_send_errors(env):
    def fails(*args, code=1):
        r = env.run("send", *args, stdin=subprocess.DEVNULL)
        assert r.stdout == b"" and r.returncode == code, (args, r.stderr)
        return r.stderr.decode()
    usage = fails(code=2)
    assert usage.startswith("missing snapshot argument\nusage:\n\tsend [-DnPpRVvLecwhb] ")
    assert fails("tank/fs@a", "tank/fs@b", code=2).startswith("too many arguments\nusage:")
    assert fails("-i", "@a", "-I", "@a", "tank/fs@b", code=2).startswith("usage:")
    assert fails("-Q", "tank/fs@a", code=2).startswith("invalid option 'Q'\nusage:")
    assert fails("tank/fs@nosuch") == "cannot open 'tank/fs@nosuch': dataset does not exist\n"
    assert fails("nopool/fs@a") == "cannot open 'nopool/fs@a': dataset does not exist\n"
    assert fails("-i", "@nosuch", "tank/fs@b") == (
        "cannot open 'tank/fs@nosuch': dataset does not exist\n")
    assert fails("-i", "@b", "tank/fs@a") == (
        "warning: cannot send 'tank/fs@a': not an earlier snapshot from the same fs\n")
    assert fails("-I", "tank/fs#x", "tank/fs@b") == (
        "Error: multiple snapshots cannot be sent from a bookmark.\n")
    assert fails("-I", "@a", "tank/fs") == "Error: Unsupported flag with filesystem or bookmark.\n"
    assert fails("-I", "other/x@a", "tank/fs@b", code=2).startswith(
        "incremental source must be in same filesystem\nusage:")
    assert fails("-R", "-i", "other/x@a", "tank/fs@b", code=2).startswith(
        "incremental source must be in same filesystem\nusage:")


def test_zfsfuse_receives_and_sends_back_through_the_cli(env, tmp_path):
    """`fusezfs send | zfs receive` in zfs-fuse's namespace (full, -i, -I) and `zfs send |
    fusezfs receive` back: the trees zfs-fuse shows are the source's, and back again."""
    from zfsfuse import ZfsFuse, require
    require()
    from test_send_stream import WALKER
    import json
    (tmp_path / "walk.py").write_text(WALKER)
    with env.opened("tank") as h:
        for s in "cd":
            h.filesystem("tank/fs").write_file(f"/{s}-file", s.encode() * 5000)
            h.dsl.snapshot([f"tank/fs@{s}"])
        want = {s: tree_of(h, f"tank/fs@{s}") for s in "abcd"}
    f = " ".join(FZ)
    with ZfsFuse(env=env.env) as zf:
        mnt = tmp_path / "zmnt"
        zf.zpool("create", "-m", str(mnt), "zt", zf.sparse_file("d0", 256 * MiB), check=True)
        r = zf.run(["sh", "-c", f"{f} send tank/fs@a | zfs receive zt/copy && "
                                f"{f} send -i @a tank/fs@b | zfs receive zt/copy && "
                                f"zfs rollback zt/copy@b"], timeout=300)
        assert r.returncode == 0, r.stderr
        got = json.loads(zf.run(["python3", tmp_path / "walk.py", mnt / "copy"],
                                check=True).stdout)
        same_trees(want["b"], got)
        # a compound stream of two substreams (zfs-fuse's kernel wants each source to be the
        # latest snapshot, so it starts at the one it has last)
        r = zf.run(["sh", "-c", f"{f} send -I @b tank/fs@d | zfs receive -F zt/copy"],
                   timeout=300)
        assert r.returncode == 0, r.stderr
        got = json.loads(zf.run(["python3", tmp_path / "walk.py", mnt / "copy"],
                                check=True).stdout)
        same_trees(want["d"], got)
        assert zf.zfs("list", "-H", "-o", "name", "-t", "snapshot", "-r", "zt/copy",
                      check=True).stdout.split() == [f"zt/copy@{s}" for s in "abcd"]
        # and back: zfs-fuse's full and -I streams into fusezfs, through its CLI
        r = zf.run(["sh", "-c", f"zfs send zt/copy@a | {f} receive other/back && "
                                f"zfs send -I @a zt/copy@d | {f} receive -v other/back"],
                   timeout=300)
        assert r.returncode == 0, r.stderr
        assert r.stdout.count("receiving incremental stream of zt/copy@") == 3
    trees(env, [(f"tank/fs@{s}", f"other/back@{s}") for s in "abcd"])


def test_properties_go_along_with_p(env, tmp_path):
    env.ok("set", "compression=gzip-3", "tank/fs")
    env.ok("set", "my:tag=hello", "tank/fs")
    env.ok("set", "quota=100M", "tank/fs")
    env.ok("snapshot", "tank/fs@p1")
    env.ok("snapshot", "tank/fs@p2")
    r = env.sh("$F send -p tank/fs@p1 > p && $F receive -x my:tag other/copy < p && "
               "$F send -p -I @p1 tank/fs@p2 | $F receive other/copy")
    assert r.returncode == 0, r.stderr
    got = env.ok("get", "-H", "-o", "property,value,source", "compression,my:tag,quota,atime",
                 "other/copy").stdout.decode()
    assert got == ("compression\tgzip-3\treceived\nmy:tag\t-\t-\nquota\t100M\treceived\n"
                   "atime\ton\tdefault\n")
    assert snapshots(env, "other/copy") == ["p1", "p2"]
    # the package: BEGIN (type 2) with the nvlist libzfs packs, the substream, the END
    reader = R.StreamReader(open(tmp_path / "p", "rb"))
    head = reader.begin()
    from fusezfs.send import nvlist
    nvl = nvlist.decode(head.payload)
    fs, = nvl["fss"].values()
    assert (nvl["tosnap"], "not_recursive" in nvl, fs["name"]) == ("p1", True, "tank/fs")
    assert fs["props"] == {"compression": 7, "my:tag": "hello", "quota": 100 << 20}
    assert list(fs["snaps"]) == ["a", "b", "p1"] and list(fs["snapprops"]) == ["p1"]
    if zstream.unavailable() is None:
        d = zstream.dump(tmp_path / "p")
        assert d.returncode == 0 and "Expected checksum" not in d.stdout, d.stderr


def test_properties_to_and_from_zfsfuse(env, tmp_path):
    """send -p into zfs-fuse: its `zfs get` shows the values as received; zfs-fuse's send -p
    into fusezfs: the same."""
    from zfsfuse import ZfsFuse, require
    require()
    env.ok("set", "compression=gzip-3", "tank/fs")
    env.ok("set", "my:tag=hello", "tank/fs")
    env.ok("snapshot", "tank/fs@p1")
    f = " ".join(FZ)
    with ZfsFuse(env=env.env) as zf:
        zf.zpool("create", "-m", str(tmp_path / "zmnt"), "zt", zf.sparse_file("d0", 256 * MiB),
                 check=True)
        r = zf.run(["sh", "-c", f"{f} send -p tank/fs@p1 | zfs receive zt/copy"], timeout=300)
        assert r.returncode == 0, r.stderr
        got = zf.zfs("get", "-H", "-o", "property,value,source", "compression,my:tag",
                     "zt/copy", check=True).stdout
        assert got == "compression\tgzip-3\treceived\nmy:tag\thello\treceived\n"
        zf.zfs("set", "atime=off", "zt/copy", check=True)
        zf.zfs("snapshot", "zt/copy@p2", check=True)
        r = zf.run(["sh", "-c", f"zfs send -p zt/copy@p2 | {f} receive other/back"],
                   timeout=300)
        assert r.returncode == 0, r.stderr
    got = env.ok("get", "-H", "-o", "property,value,source", "compression,my:tag,atime",
                 "other/back").stdout.decode()
    assert got == ("compression\tgzip-3\treceived\nmy:tag\thello\treceived\n"
                   "atime\toff\treceived\n")
