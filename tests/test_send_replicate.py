"""`send -R` and the receive of replication streams, as a user runs them (real processes, real
pipes): a tree of filesystems with a grandchild, a clone and properties, sent whole and then
incrementally after the source destroyed a snapshot and a filesystem and made a new one; the
stream's nvlist against libzfs's layout and zstream; errors in OpenZFS's words; zfs-fuse's -R
streams received and ours given to it. Every test ends with the pools checked (Cli.check)."""
from __future__ import annotations

import json

import pytest

import zstream
from fusezfs.send import nvlist
from fusezfs.send import records as R
from test_send_cli import FZ, MiB, Cli, snapshots, trees
from test_send_stream import WALKER, same_trees, tree_of

FILESYSTEMS = ["tank/fs", "tank/fs/c1", "tank/fs/c1/g", "tank/fs/c2"]


@pytest.fixture
def rep(tmp_path, monkeypatch):
    """tank/fs with children c1 (user property, grandchild g) and c2, snapshots s1 and s2
    everywhere, and tank/fs/cl, a clone of c1@s1 (snapshot s2 only)."""
    monkeypatch.setenv("FUSEZFS_STATE_DIR", str(tmp_path / "state"))
    c = Cli(tmp_path)
    c.pool("tank")
    c.pool("other")
    for fs in FILESYSTEMS:
        c.ok("create", fs)
    c.ok("set", "my:tag=one", "tank/fs/c1")
    c.ok("set", "compression=gzip-3", "tank/fs/c2")
    with c.opened("tank") as h:
        for i, fs in enumerate(FILESYSTEMS):
            f = h.filesystem(fs)
            f.write_file("/common", fs.encode() * 100)
            f.makedirs("/dir/sub")
            f.write_file(f"/dir/sub/n{i}", bytes(range(256)) * (i + 1) * 50)
    c.ok("snapshot", "-r", "tank/fs@s1")
    c.ok("set", "snap:note=first", "tank/fs/c1@s1")
    c.ok("clone", "tank/fs/c1@s1", "tank/fs/cl")
    with c.opened("tank") as h:
        for fs in FILESYSTEMS + ["tank/fs/cl"]:
            h.filesystem(fs).write_file("/after-s1", b"later " + fs.encode())
    c.ok("snapshot", "-r", "tank/fs@s2")
    yield c
    c.check()


def listing(c: Cli, top: str) -> list[tuple[str, str, str]]:
    """(name relative to top, origin relative to its pool, guid) of everything below top."""
    out = c.ok("list", "-H", "-t", "all", "-r", "-o", "name,origin,guid", top).stdout.decode()
    rows = []
    for line in out.splitlines():
        name, origin, guid = line.split("\t")
        rows.append((name[len(top):], origin.partition("/")[2] if origin != "-" else "-",
                     guid if "@" in name else ""))
    return sorted(rows)


def test_full_replication_stream(rep, tmp_path):
    r = rep.sh("$F send -R tank/fs@s2 > full && $F receive -v other/copy < full")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert "found clone origin other/copy/c1@s1\n" \
           "receiving incremental stream of tank/fs/cl@s2 into other/copy/cl@s2\n" in out
    # the same tree: names, snapshots with their guids, the clone of the right origin
    assert listing(rep, "other/copy") == [
        (n, o.replace("fs/", "copy/", 1), g) for n, o, g in listing(rep, "tank/fs")]
    trees(rep, [(f"{fs}@{s}", f"other/copy{fs[7:]}@{s}") for fs in FILESYSTEMS for s in
                ("s1", "s2")] + [("tank/fs/cl@s2", "other/copy/cl@s2")])
    got = rep.ok("get", "-H", "-r", "-o", "name,property,value,source",
                 "my:tag,compression,snap:note", "other/copy/c1", "other/copy/c2").stdout
    lines = set(got.decode().splitlines())
    assert {"other/copy/c1\tmy:tag\tone\treceived",
            "other/copy/c2\tcompression\tgzip-3\treceived",
            "other/copy/c1@s1\tsnap:note\tfirst\treceived",
            "other/copy/c1/g\tmy:tag\tone\tinherited from other/copy/c1"} <= lines
    # the package: libzfs's nvlist (no not_recursive), then the substreams, parents first,
    # the clone after its origin and flagged CLONE
    reader = R.StreamReader(open(tmp_path / "full", "rb"))
    head = reader.begin()
    nvl = nvlist.decode(head.payload)
    assert (head.hdrtype, head.toname) == (R.DMU_COMPOUNDSTREAM, "tank/fs@s2")
    assert "not_recursive" not in nvl and "fromsnap" not in nvl and nvl["tosnap"] == "s2"
    with rep.opened("tank") as h:
        guid = {n: h.dsl.get(n).guid for n in FILESYSTEMS + ["tank/fs/cl", "tank/fs/c1@s1",
                                                             "tank/fs@s2", "tank/fs/c1@s2"]}
    fss = nvl["fss"]
    assert {v["name"] for v in fss.values()} == set(FILESYSTEMS + ["tank/fs/cl"])
    by_name = {v["name"]: (k, v) for k, v in fss.items()}
    assert by_name["tank/fs"][0] == f"0x{guid['tank/fs']:x}"
    assert by_name["tank/fs"][1]["parentfromsnap"] == 0
    assert by_name["tank/fs/c1"][1]["parentfromsnap"] == guid["tank/fs@s2"]
    assert by_name["tank/fs/c1/g"][1]["parentfromsnap"] == guid["tank/fs/c1@s2"]
    assert by_name["tank/fs/cl"][1]["origin"] == guid["tank/fs/c1@s1"]
    assert by_name["tank/fs/c1"][1]["props"] == {"my:tag": "one"}
    assert by_name["tank/fs/c2"][1]["props"] == {"compression": 7}
    assert by_name["tank/fs/c1"][1]["snapprops"]["s1"] == {"snap:note": "first"}
    reader.package_end()
    subs = []
    while (sub := reader.begin(package=True)) is not None:
        subs.append((sub.toname, bool(sub.fromguid), sub.flags))
        list(reader.records())
    assert subs.index(("tank/fs/cl@s2", True, R.DRR_FLAG_CLONE)) > subs.index(
        ("tank/fs/c1@s1", False, 0))
    assert [s[0] for s in subs if s[0].startswith("tank/fs@")] == ["tank/fs@s1", "tank/fs@s2"]
    assert subs.index(("tank/fs/c1/g@s1", False, 0)) > subs.index(("tank/fs/c1@s1", False, 0))
    # -nvP: one line per substream, and the total is the stream's size
    lines = rep.ok("send", "-nvP", "-R", "tank/fs@s2").stdout.decode().splitlines()
    size = (tmp_path / "full").stat().st_size
    assert lines[-1] == f"size\t{size - 3 * R.RECORD_SIZE - len(head.payload)}"
    assert "full\ttank/fs/cl@s2\t" in "\n".join(lines)          # (libzfs says full)
    assert lines[0].startswith("full\ttank/fs@s1\t") and \
        lines[1].startswith("incremental\ts1\ttank/fs@s2\t")
    if zstream.unavailable() is None:
        d = zstream.dump(tmp_path / "full")
        assert d.returncode == 0 and "Expected checksum" not in d.stdout, d.stderr
        counts = zstream.summary(d.stdout)
        assert counts["BEGIN"] == len(subs) + 1 and counts["END"] == len(subs) + 2


def test_incremental_replication_destroys_what_the_source_destroyed(rep):
    assert rep.sh("$F send -R tank/fs@s2 | $F receive other/copy").returncode == 0
    rep.ok("snapshot", "-r", "tank/fs@s3")
    rep.ok("destroy", "tank/fs@s1")
    # without -F: nothing is destroyed, the new snapshots arrive
    r = rep.sh("$F send -R -i @s2 tank/fs@s3 | $F receive other/copy")
    assert r.returncode == 0, r.stderr
    assert snapshots(rep, "other/copy/c1/g") == ["s1", "s2", "s3"]
    assert snapshots(rep, "other/copy") == ["s1", "s2", "s3"]
    rep.ok("destroy", "-r", "tank/fs/c1/g")
    rep.ok("create", "tank/fs/c3")
    with rep.opened("tank") as h:
        h.filesystem("tank/fs/c3").write_file("/new", b"new fs")
        h.filesystem("tank/fs/c2").write_file("/common", b"rewritten")
    rep.ok("snapshot", "-r", "tank/fs@s4")
    # with -F: g and tank/fs@s1 go, c3 comes
    r = rep.sh("$F send -R -I @s3 tank/fs@s4 | $F receive -F other/copy")
    assert r.returncode == 0, r.stderr
    names = [n for n, _o, _g in listing(rep, "other/copy")]
    assert "/c1/g" not in names and "@s1" not in names and "/c3@s4" in names
    assert listing(rep, "other/copy") == [
        (n, o.replace("fs/", "copy/", 1), g) for n, o, g in listing(rep, "tank/fs")]
    trees(rep, [(f"{fs}@s4", f"other/copy{fs[7:]}@s4") for fs in
                ("tank/fs", "tank/fs/c1", "tank/fs/c2", "tank/fs/c3", "tank/fs/cl")])
    # a stream already received: every snapshot is there, nothing changes; with -F, a
    # filesystem the stream makes that exists is refused, as libzfs refuses it
    before = listing(rep, "other/copy")
    r = rep.sh("$F send -R -i @s3 tank/fs@s4 | $F receive -v other/copy")
    assert r.returncode == 1
    assert "snap other/copy@s4 already exists; ignoring" in r.stdout.decode()
    assert r.stderr.decode() == ("cannot receive new filesystem stream: destination "
                                 "'other/copy/c3' exists\nmust specify -F to overwrite it\n")
    assert listing(rep, "other/copy") == before


def test_replication_errors(rep):
    def fails(script: str) -> str:
        r = rep.sh(script)
        assert r.returncode == 1, r
        return r.stderr.decode()
    rep.ok("create", "tank/fs/late")
    rep.ok("snapshot", "tank/fs@s3")          # its children were made before s3, without it
    assert fails("$F send -R tank/fs@s3 > /dev/null") == (
        "cannot send tank/fs@s3 recursively: snapshot tank/fs/c1@s3 does not exist\n"
        "warning: cannot send 'tank/fs@s3': invalid backup stream\n")
    # a filesystem made after the top's snapshot is left out
    rep.ok("destroy", "tank/fs@s3")
    r = rep.ok("send", "-nvP", "-R", "tank/fs@s2")
    assert "late" not in r.stdout.decode()
    assert fails("$F send -R tank/fs@s2 | $F receive other/copy@x") == (
        "cannot receive: cannot specify snapshot name for multi-snapshot stream\n")
    assert fails("$F send -R tank/fs > /dev/null") == (
        "Error: Unsupported flag with filesystem or bookmark.\n")
    # a clone whose origin the receiver does not have
    assert fails("$F send -R tank/fs/cl@s2 | $F receive other/cl") == (
        "cannot receive new filesystem stream: local origin for clone other/cl@s2 does not "
        "exist\n")
    assert snapshots(rep, "other") == [] and b"other/cl" not in rep.ok("list", "-r").stdout


def test_replication_with_zfsfuse(rep, tmp_path):
    """zfs-fuse's -R stream (children, a clone, properties) into fusezfs: the same trees,
    guids and received properties; fusezfs's -R stream into zfs-fuse: the same datasets and
    files as zfs-fuse's own mount shows them."""
    from zfsfuse import ZfsFuse, require
    require()
    (tmp_path / "walk.py").write_text(WALKER)
    f = " ".join(FZ)
    with rep.opened("tank") as h:
        want = {fs: tree_of(h, f"{fs}@s2") for fs in FILESYSTEMS + ["tank/fs/cl"]}
    with ZfsFuse(env=rep.env) as zf:
        mnt = tmp_path / "zmnt"
        zf.zpool("create", "-m", str(mnt), "zt", zf.sparse_file("d0", 256 * MiB), check=True)
        r = zf.run(["sh", "-c", f"{f} send -R tank/fs@s2 | zfs receive -d zt"], timeout=300)
        assert r.returncode == 0, r.stderr
        got = zf.zfs("list", "-H", "-t", "all", "-r", "-o", "name,origin", "zt/fs",
                     check=True).stdout.split("\n")
        assert "zt/fs/cl\tzt/fs/c1@s1" in got and "zt/fs/c1/g@s2\t-" in got
        assert zf.zfs("get", "-H", "-o", "value,source", "my:tag", "zt/fs/c1",
                      check=True).stdout == "one\treceived\n"
        for fs in FILESYSTEMS + ["tank/fs/cl"]:
            path = mnt / fs[5:]
            zf.zfs("rollback", f"zt{fs[4:]}@s2", check=True)
            walked = json.loads(zf.run(["python3", tmp_path / "walk.py", path],
                                       check=True).stdout)
            same_trees(want[fs], walked)
        # and back: zfs-fuse's own replication stream of what it now has
        zf.zfs("snapshot", "-r", "zt/fs@z3", check=True)
        r = zf.run(["sh", "-c", f"zfs send -R zt/fs@z3 | {f} receive -v other/back"],
                   timeout=300)
        assert r.returncode == 0, r.stderr
        zget = zf.zfs("get", "-H", "-p", "-r", "-o", "name,value", "guid", "zt/fs",
                      check=True).stdout
    ours = rep.ok("get", "-H", "-p", "-r", "-o", "name,value", "guid", "other/back").stdout
    snapguids = sorted(x for x in zget.splitlines() if "@" in x)
    assert sorted(x.replace("other/back", "zt/fs", 1) for x in ours.decode().splitlines()
                  if "@" in x) == snapguids
    assert len(snapguids) == 14
    assert rep.ok("get", "-H", "-o", "value", "origin", "other/back/cl").stdout == \
        b"other/back/c1@s1\n"
    trees(rep, [(f"{fs}@s2", f"other/back{fs[7:]}@s2") for fs in FILESYSTEMS]
          + [("tank/fs/cl@s2", "other/back/cl@s2")])
