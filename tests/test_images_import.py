"""`fusezfs image import`: images the tests build entry by entry (tests/imagekit.py), in both
archive formats (docker save; OCI layouts as a directory or a tar, gzip and zstd layers),
become clone chains whose every layer snapshot is exactly the tree a reference applier written
independently of fusezfs gives; layers are shared by chain id; digests are checked, and an
import that fails leaves nothing behind. Every pool is checked (Datasets.check, verify) at the
end of every test."""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess

import pytest

from clitools import check_pools, ok, run
from fusezfs.api import Handle
from fusezfs.cli.cli_pool import open_pool
from imagekit import (D, E, F, L, OPQ, S, WH, RefTree, diff_trees, docker_save, dump_fs,
                      layer_tar, oci_files, sha, write_layout)
from prerequisites import skip_or_fail

MiB = 1 << 20
T0 = 1_700_000_000_123_456_789          # a time with nanoseconds


@pytest.fixture
def env(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FUSEZFS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("FUSEZFS_IMAGE_STORE", "tank/images")
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "disk", "wb") as f:
        f.truncate(256 * MiB)
    ok(capsys, "pool", "create", "tank", str(tmp_path / "disk"))
    yield tmp_path
    capsys.readouterr()
    check_pools(skip_exported=True)


def chains(tars: list[bytes]) -> list[str]:
    import hashlib
    out, parent = [], None
    for t in tars:
        d = sha(t)
        parent = d if parent is None else \
            "sha256:" + hashlib.sha256(f"{parent} {d}".encode()).hexdigest()
        out.append(parent)
    return out


def layer_trees(store: str, tars: list[bytes]) -> list[tuple[dict, set]]:
    """The tree of every layer's snapshot, base first."""
    h = Handle(open_pool("tank"))
    try:
        return [dump_fs(h.filesystem(f"{store}/{c[7:]}@layer")) for c in chains(tars)]
    finally:
        h.close()


def reference(tars: list[bytes]) -> list[tuple[dict, set]]:
    ref, out = RefTree(), []
    for t in tars:
        ref = ref.copy()
        ref.apply(t)
        out.append(ref.dump())
    return out


def assert_layers(store: str, tars: list[bytes]) -> None:
    for i, (got, want) in enumerate(zip(layer_trees(store, tars), reference(tars)), 1):
        assert diff_trees(got, want) == [], f"layer {i}"


# ---- the layers: every kind of entry and whiteout -----------------------------------------
def every_kind() -> list[bytes]:
    rnd = random.Random(13)
    big = rnd.randbytes(300 * 1024)
    base = [
        D("etc"), F("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", mtime=T0),
        F("etc/shadow", b"root:*:\n", mode=0o640, gid=42), F("etc/hostname", b"base\n"),
        D("bin"), F("bin/tool", b"\x7fELF tool", mode=0o4755),
        L("bin/tool-link", "bin/tool"), S("bin/sh", "tool"),
        S("abs", "/etc/passwd"), S("dangling", "nowhere/x", uid=5),
        D("tmp", mode=0o1777), F("big", big), F("empty"),
        E("dev/null", "chr", mode=0o666, major=1, minor=3),      # dev/ made as a parent
        E("dev/sda", "blk", mode=0o660, major=8, minor=0, gid=6),
        E("run/fifo", "fifo", mode=0o600),
        D("x"), F("x/attrs", b"a", xattrs={"user.small": b"v", "user.bin": bytes(range(256)),
                                          "user.big": b"A" * 5000}),
        D("x/dir", xattrs={"user.d": b"1"}, mtime=T0 + 5),
        D("home"), D("home/u", uid=1000, gid=1000, mode=0o700),
        F("home/u/file", b"mine", uid=1000, gid=1000, mode=0o600),
        D("opq"), F("opq/old1"), D("opq/sub"), F("opq/sub/old2"), D("opq/keepdir"),
        F("opq/keepdir/lower"),
        D("wd"), F("wd/gone"), D("wd/gonedir"), F("wd/gonedir/f"),
        D("replace"), F("replace/f2d", b"file"), D("replace/d2f"), F("replace/d2f/inner"),
        D("lnkdir"), S("via", "lnkdir"),
        F(os.fsdecode(b"odd-\xe9-name \\ \n"), b"not utf-8"),     # any bytes but / and NUL
        D("long-" + "d" * 150), F("long-" + "d" * 150 + "/" + "f" * 200, b"long"),
    ]
    second = [
        D(".", mode=0o755, mtime=T0 + 100),                       # the root's own entry
        WH("wd/gone"), WH("wd/gonedir"), WH("wd/never-existed"),
        F("opq/new-before", b"nb"), OPQ("opq"), D("opq/sub"), F("opq/sub/new", b"n"),
        F("opq/keepdir/mine", b"m"),                  # its directory stays without an entry
        D("replace/f2d", mode=0o750), F("replace/f2d/in", b"i"),
        F("replace/d2f", b"now a file"),
        D("x/dir", mode=0o700, xattrs={"user.e": b"2"}),        # merge: user.d goes
        L("etc/passwd-link", "etc/passwd"),                     # a link to a lower file
        F("via/file", b"through a symlinked directory"),
        F("same/keep", b"k"), WH("same/keep"),         # whiteouts hide lower layers only
        F("etc/newfile", b"n"),                        # etc has no entry: keeps its mtime
        F("empty", b"not any more", mtime=T0 + 7),
    ]
    third = [
        OPQ("newopq"), F("newopq/a", b"a"),
        WH("dev"),
        F("bin/tool", b"replaced", mode=0o755),         # bin/tool-link keeps the old file
        D(".wh..wh.plnk"), F(".wh..wh.plnk/1.2", b"aufs"),   # aufs bookkeeping: skipped
        S("etc/hostname", "/proc/sys/kernel/hostname"),     # a file becomes a symlink
        L("hl/second", "home/u/file"), L("hl/third", "home/u/file"),
    ]
    return [layer_tar(base), layer_tar(second), layer_tar(third)]


FORMATS = [("docker", None, False), ("oci", "gzip", False), ("oci", "zstd", True),
           ("oci", None, True)]


def write_archive(path, fmt: str, compression, as_tar: bool, images) -> str:
    if fmt == "docker":
        docker_save(path, images)
    else:
        if not as_tar:
            os.makedirs(path)
        write_layout(oci_files(images, compression), path, as_tar)
    return path


@pytest.mark.parametrize("fmt,compression,as_tar", FORMATS,
                         ids=["docker-save", "oci-dir-gzip", "oci-tar-zstd", "oci-tar"])
def test_every_kind_of_entry_matches_the_reference(env, capsys, fmt, compression, as_tar):
    tars = every_kind()
    path = write_archive(str(env / "img"), fmt, compression, as_tar, [(tars, ["kinds:1"])])
    code, out, err = run(capsys, "image", "import", *(["-t", "kinds:1"] if fmt == "oci" else []),
                         "tank/images", path)
    assert code == 0, err
    assert out == "Loaded image: kinds:1\n"
    assert err.count("loaded") == 3                  # progress: a line per layer
    assert_layers("tank/images", tars)
    # the chain: base a filesystem, each next layer a clone of the one below's snapshot
    listing = ok(capsys, "list", "-H", "-o", "name,origin,canmount", "-r", "tank/images")
    rows = {r.split("\t")[0]: r.split("\t")[1:] for r in listing.splitlines()}
    c = chains(tars)
    assert rows[f"tank/images/{c[0][7:]}"] == ["-", "noauto"]
    for below, above in zip(c, c[1:]):
        assert rows[f"tank/images/{above[7:]}"] == [f"tank/images/{below[7:]}@layer", "noauto"]
    props = ok(capsys, "get", "-H", "-o", "property,value", "-s", "local",
               "all", f"tank/images/{c[1][7:]}")
    assert f"fusezfs:image.diff-id\t{sha(tars[1])}" in props
    assert f"fusezfs:image.parent\t{c[0]}" in props
    assert f"fusezfs:image.size\t{len(tars[1])}" in props


def test_a_second_image_on_the_same_base_adds_only_its_own_layers(env, capsys):
    base = [layer_tar([D("etc"), F("etc/os", b"base\n")])]
    a = base + [layer_tar([F("a", b"a")])]
    b = base + [layer_tar([F("b", b"b")]), layer_tar([WH("etc/os")])]
    write_archive(str(env / "a.tar"), "docker", None, True, [(a, ["a:1"])])
    write_layout(oci_files([(b, ["b:1"])], "gzip"), str(env / "b.tar"), True)
    ok(capsys, "image", "import", "tank/images", "a.tar")
    guid = ok(capsys, "get", "-H", "-o", "value", "guid", f"tank/images/{chains(a)[0][7:]}@layer")
    code, out, err = run(capsys, "image", "import", "-t", "b:1", "tank/images", "b.tar")
    assert code == 0, err
    assert err.count("already present") == 1 and err.count("loaded") == 2
    assert ok(capsys, "get", "-H", "-o", "value", "guid",
              f"tank/images/{chains(b)[0][7:]}@layer") == guid
    names = ok(capsys, "list", "-H", "-o", "name", "-r", "tank/images").split()
    layers = [n for n in names if len(n.rsplit("/", 1)[1]) == 64]
    assert sorted(layers) == sorted({f"tank/images/{c[7:]}" for c in chains(a) + chains(b)})
    assert len(layers) == 4
    assert_layers("tank/images", a)
    assert_layers("tank/images", b)
    ls = ok(capsys, "image", "ls", "-H")
    assert sorted(l.split("\t")[:2] for l in ls.splitlines()) == [["a", "1"], ["b", "1"]]
    # importing the same archive again builds nothing
    code, _out, err = run(capsys, "image", "import", "tank/images", "a.tar")
    assert code == 0 and err.count("already present") == 2 and "loaded" not in err


def _store_state(capsys) -> tuple[str, str]:
    return (ok(capsys, "list", "-H", "-t", "all", "-o", "name", "-r", "tank"),
            ok(capsys, "image", "ls", "-H"))


def test_digests_are_checked_and_a_failed_import_leaves_nothing(env, capsys):
    good = [layer_tar([F("a", b"a" * 1000)]), layer_tar([F("b", b"b")])]
    ok(capsys, "image", "import", "tank/images",
       write_archive(str(env / "good.tar"), "docker", None, True, [(good[:1], ["g:1"])]))
    before = _store_state(capsys)
    # a layer whose bytes are not the ones its digest names (OCI: the blob digest)
    files = oci_files([(good, ["x:1"])], "gzip")
    blob = next(n for n in files if files[n].startswith(b"\x1f\x8b") and
                files[n] != oci_files([(good[:1], [])], "gzip").get(n))
    import gzip
    files[blob] = gzip.compress(layer_tar([F("b", b"evil")]), mtime=0)
    write_layout(files, str(env / "bad-blob.tar"), True)
    code, _out, err = run(capsys, "image", "import", "tank/images", "bad-blob.tar")
    assert code == 1 and "does not match its digest" in err
    assert _store_state(capsys) == before
    # docker save: the layer's uncompressed bytes are not the config's diff id
    docker_save(str(env / "bad-diff.tar"), [(good, ["y:1"])])
    import tarfile
    with tarfile.open(env / "bad-diff.tar") as t:
        members = {m.name: t.extractfile(m).read() for m in t if m.isfile()}
    name = next(n for n, d in members.items() if d == good[1])
    members[name] = layer_tar([F("b", b"c")])
    with tarfile.open(env / "bad-diff.tar", "w") as t:
        import io
        for n, d in members.items():
            ti = tarfile.TarInfo(n)
            ti.size = len(d)
            t.addfile(ti, io.BytesIO(d))
    code, _out, err = run(capsys, "image", "import", "tank/images", "bad-diff.tar")
    assert code == 1 and "does not match the diff id" in err
    assert _store_state(capsys) == before
    # a config that is not what its name says, and a truncated layer
    files = oci_files([(good, ["z:1"])])
    cfg = next(n for n, d in files.items() if b'"rootfs"' in d)
    files[cfg] = files[cfg].replace(b"/bin/sh", b"/bin/xx")
    write_layout(files, str(env / "bad-config"), False)
    code, _out, err = run(capsys, "image", "import", "tank/images", "bad-config")
    assert code == 1 and "does not match its digest" in err
    files = oci_files([(good, ["z:1"])])
    top = next(n for n, d in files.items() if d == good[1])
    files[top] = good[1][:700]
    write_layout(files, str(env / "truncated"), False)
    code, _out, err = run(capsys, "image", "import", "tank/images", "truncated")
    assert code == 1 and "layer blobs/sha256/" in err
    assert _store_state(capsys) == before
    # not an archive at all
    (env / "junk").write_bytes(b"junk" * 100)
    code, _out, err = run(capsys, "image", "import", "tank/images", "junk")
    assert code == 1 and "cannot read" in err


def test_an_unfinished_layer_is_built_again(env, capsys):
    """A layer dataset without its @layer snapshot (an import killed while applying it) is
    destroyed and built anew by the next import."""
    tars = [layer_tar([F("a", b"1")]), layer_tar([F("b", b"2")])]
    c = chains(tars)
    path = write_archive(str(env / "i.tar"), "docker", None, True, [(tars, ["i:1"])])
    ok(capsys, "image", "import", "tank/images",
       write_archive(str(env / "base.tar"), "docker", None, True, [(tars[:1], [])]))
    ok(capsys, "clone", "-o", "canmount=noauto", f"tank/images/{c[0][7:]}@layer",
       f"tank/images/{c[1][7:]}")
    ok(capsys, "cp", "/etc/hostname", f"tank/images/{c[1][7:]}:/debris")
    code, _out, err = run(capsys, "image", "import", "tank/images", path)
    assert code == 0, err
    assert_layers("tank/images", tars)


def test_tags_ids_and_errors(env, capsys):
    tars = [layer_tar([F("a", b"1")])]
    write_layout(oci_files([(tars, ["latest"])]), str(env / "untagged"), False)
    code, out, _err = run(capsys, "image", "import", "-q", "tank/images", "untagged")
    assert code == 0 and out.startswith("Loaded image ID: sha256:")
    image_id = out.split()[-1]
    ls = ok(capsys, "image", "ls", "-H").split("\t")
    assert ls[:3] == ["<none>", "<none>", image_id[7:19]]
    ok(capsys, "image", "import", "-q", "-t", "mine", "tank/images", "untagged")
    assert ok(capsys, "image", "ls", "-H").split("\t")[:2] == ["mine", "latest"]
    info = json.loads(ok(capsys, "image", "inspect", image_id[7:15]))
    assert info[0]["Id"] == image_id and info[0]["RepoTags"] == ["mine:latest"]
    assert run(capsys, "image", "inspect", "nosuch")[0] == 1
    assert run(capsys, "image", "ls", "-s", "tank/nothere")[0] == 1
    assert run(capsys, "image", "import")[0] == 2          # no dataset (no archive: stdin)
    code, _o, err = run(capsys, "image", "frobnicate")
    assert code == 2 and "unrecognized" in err
    code, _o, err = run(capsys)                       # bare fusezfs lists the verbs
    assert code == 2 and "\n\timage import " in err and "\n\tcontainer commit " in err
    assert run(capsys, "image", "import", "nopool/x", "untagged")[0] == 1


def test_an_oci_layout_made_by_umoci(env, capsys, tmp_path):
    """An image from Debian's tools: umoci turns a directory into an OCI layout; the imported
    image's tree is that directory's."""
    if shutil.which("umoci") is None:
        skip_or_fail("umoci not installed (apt-get install umoci)")
    if os.geteuid() != 0:
        pytest.skip("umoci unpack/repack of files owned by others needs root")
    layout, bundle = str(tmp_path / "layout"), str(tmp_path / "bundle")
    subprocess.run(["umoci", "init", "--layout", layout], check=True)
    subprocess.run(["umoci", "new", "--image", f"{layout}:v1"], check=True)
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:v1", bundle], check=True,
                   capture_output=True)
    root = os.path.join(bundle, "rootfs")
    os.makedirs(os.path.join(root, "etc/conf.d"))
    with open(os.path.join(root, "etc/conf.d/app.conf"), "w") as f:
        f.write("key=value\n")
    os.symlink("conf.d/app.conf", os.path.join(root, "etc/app.conf"))
    os.link(os.path.join(root, "etc/conf.d/app.conf"), os.path.join(root, "etc/hard"))
    os.mkfifo(os.path.join(root, "fifo"))
    os.chown(os.path.join(root, "etc/conf.d"), 1234, 5678)
    os.setxattr(os.path.join(root, "etc/conf.d/app.conf"), "user.note", b"hello")
    subprocess.run(["umoci", "repack", "--image", f"{layout}:v1", bundle], check=True,
                   capture_output=True)
    code, out, err = run(capsys, "image", "import", "-t", "umoci:v1", "tank/images", layout)
    assert code == 0, err
    img = json.loads(ok(capsys, "image", "inspect", "umoci:v1"))[0]
    h = Handle(open_pool("tank"))
    try:
        got = dump_fs(h.filesystem(img["GraphDriver"]["Data"]["Snapshot"]))
    finally:
        h.close()
    want = _dump_host(root)
    # umoci writes whole seconds (rounded): compare times to the second
    for tree in (got[0], want[0]):
        for p, d in tree.items():
            tree[p] = d[:4] + (round(d[4] / 1e9),) + d[5:]
    assert diff_trees(got, want) == []


def _dump_host(root: str) -> tuple[dict, set]:
    """The host directory `root` in dump_fs's shape (times and owners as lstat has them)."""
    import stat as st
    from imagekit import KINDS
    out, groups = {}, {}
    paths = [root]
    for dirpath, dirs, files in os.walk(root):
        paths += [os.path.join(dirpath, n) for n in dirs + files]
    for p in paths:
        rel = os.fsencode(os.path.relpath(p, root))
        rel = b"" if rel == b"." else rel
        s = os.lstat(p)
        kind = KINDS[st.S_IFMT(s.st_mode)]
        data = open(p, "rb").read() if kind == "file" else None
        if kind == "file":
            groups.setdefault(s.st_ino, set()).add(rel)
        xattrs = () if kind == "symlink" else tuple(sorted(
            (n.encode(), os.getxattr(p, n)) for n in os.listxattr(p)
            if not n.startswith(("security.", "system."))))
        out[rel] = (kind, st.S_IMODE(s.st_mode), s.st_uid, s.st_gid, s.st_mtime_ns, data,
                    os.fsencode(os.readlink(p)) if kind == "symlink" else b"",
                    s.st_rdev if kind in ("chr", "blk") else 0, xattrs)
    return out, {frozenset(g) for g in groups.values() if len(g) > 1}
