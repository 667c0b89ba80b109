"""`fusezfs image export`: a `docker load`-shaped tarball whose layer tars are made from the
differences between layer snapshots (deletions as whiteouts); import -> export -> import
gives the same trees, and exporting again gives the same bytes (the same layer digests). The
walk pruned by birth time agrees with a comparison of every path. Debian's skopeo (another
implementation of both formats) reads the export, and what it writes imports as the same
trees."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile

from fusezfs.api import Handle
from fusezfs.cli.cli_pool import open_pool
from fusezfs.images.layerdiff import changes
from imagekit import D, F, L, S, WH, diff_trees, docker_save, dump_fs, layer_tar
from test_images_deep import deep_layers
from prerequisites import skip_or_fail
from test_images_import import env, every_kind, ok, run  # noqa: F401  (env: the fixture)


def trees(store: str, ref: str, capsys) -> list:
    info = json.loads(ok(capsys, "image", "inspect", "-s", store, ref))[0]
    h = Handle(open_pool(store.split("/")[0]))
    try:
        return [dump_fs(h.filesystem(l["Snapshot"])) for l in info["Layers"]]
    finally:
        h.close()


def archive_members(path) -> dict[str, bytes]:
    with tarfile.open(path) as t:
        return {m.name: (t.extractfile(m).read() if m.isfile() else b"") for m in t}


def check_docker_load_shape(path) -> list[str]:
    """What `docker load` reads: manifest.json's Config and Layers, each present; the
    config's diff ids are the layers' digests; and the OCI index beside it."""
    m = archive_members(path)
    manifest = json.loads(m["manifest.json"])
    ids = []
    for entry in manifest:
        cfg = m[entry["Config"]]
        assert "sha256:" + hashlib.sha256(cfg).hexdigest() == "sha256:" + entry["Config"][-64:]
        diff_ids = json.loads(cfg)["rootfs"]["diff_ids"]
        assert diff_ids == ["sha256:" + hashlib.sha256(m[p]).hexdigest() for p in entry["Layers"]]
        ids.append("sha256:" + entry["Config"][-64:])
    index = json.loads(m["index.json"])
    assert json.loads(m["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    for desc in index["manifests"]:
        assert hashlib.sha256(m["blobs/sha256/" + desc["digest"][7:]]).hexdigest() == \
            desc["digest"][7:]
    return ids


def round_trip(env, capsys, tars, tag: str) -> None:
    docker_save(str(env / "orig.tar"), [(tars, [tag])])
    ok(capsys, "image", "import", "-q", "tank/a", "orig.tar")
    ok(capsys, "image", "export", "-s", "tank/a", tag, "e1.tar")
    ids = check_docker_load_shape(env / "e1.tar")
    ok(capsys, "image", "import", "-q", "tank/b", "e1.tar")
    a, b = trees("tank/a", tag, capsys), trees("tank/b", tag, capsys)
    assert len(a) == len(b) == len(tars)
    for i, (x, y) in enumerate(zip(a, b), 1):
        assert diff_trees(y, x) == [], f"layer {i}"
    ok(capsys, "image", "export", "-s", "tank/b", tag, "e2.tar")
    e1, e2 = (env / "e1.tar").read_bytes(), (env / "e2.tar").read_bytes()
    assert e1 == e2                       # the same layer digests, the same image id
    assert json.loads(ok(capsys, "image", "inspect", "-s", "tank/b", tag))[0]["Id"] == ids[0]
    ok(capsys, "image", "export", "-s", "tank/a", tag, "e3.tar")
    assert (env / "e3.tar").read_bytes() == e1      # deterministic


def test_every_kind_round_trip(env, capsys):
    tars = every_kind() + [layer_tar([F("etc/passwd", b"root:x:0:0\n"), WH("big"),
                                      D("newdir"), S("newdir/l", "../etc")])]
    round_trip(env, capsys, tars, "kinds:1")


def test_deep_chain_round_trip(env, capsys):
    round_trip(env, capsys, deep_layers() + DEEP_PATHS, "deep:50")


def test_layer_tars_carry_whiteouts_and_links(env, capsys):
    tars = [layer_tar([D("d"), F("d/a", b"a"), F("d/b", b"b"), D("gone"), F("gone/x")]),
            layer_tar([WH("d/a"), WH("gone"), L("d/c", "d/b"), F("d/new", b"n")])]
    docker_save(str(env / "o.tar"), [(tars, ["wl:1"])])
    ok(capsys, "image", "import", "-q", "tank/a", "o.tar")
    ok(capsys, "image", "export", "-s", "tank/a", "wl:1", "e.tar")
    m = archive_members(env / "e.tar")
    layer = json.loads(m["manifest.json"])[0]["Layers"][1]
    with tarfile.open(fileobj=io.BytesIO(m[layer])) as t:
        entries = [(ti.name, ti.type, ti.linkname) for ti in t]
    names = [e[0] for e in entries]
    assert "d/.wh.a" in names and ".wh.gone" in names
    assert not any(n.startswith("gone/") for n in names)    # the directory's whiteout only
    kinds = {e[0]: (e[1], e[2]) for e in entries}
    assert kinds["d/b"][0] == tarfile.REGTYPE and kinds["d/c"] == (tarfile.LNKTYPE, "d/b")


DEEP_PATHS = [layer_tar([D("p"), D("p/q"), D("p/q/r"), F("p/q/r/f", b"1"), F("p/q/g", b"g")]),
              layer_tar([F("p/q/r/f", b"2")]),        # only r changes: p, q must be walked
              layer_tar([WH("p/q/r/f"), F("p/q/r/h", b"h", mtime=5)]),
              layer_tar([D("p/q", mode=0o711)])]


def test_pruned_walk_agrees_with_every_path_compared(env, capsys):
    tars = every_kind() + deep_layers()[1:12] + DEEP_PATHS
    docker_save(str(env / "o.tar"), [(tars, ["p:1"])])
    ok(capsys, "image", "import", "-q", "tank/a", "o.tar")
    info = json.loads(ok(capsys, "image", "inspect", "-s", "tank/a", "p:1"))[0]
    h = Handle(open_pool("tank"))
    try:
        parent = None
        for layer in info["Layers"]:
            child = h.filesystem(layer["Snapshot"])
            if parent is None:
                pfs, txg = None, 0
            else:
                prec = h.dsl.get(parent)
                pfs, txg = h.filesystem_of(prec), prec.createtxg
            fast = changes(pfs, child, txg)
            slow = changes(pfs, child, txg, full=True)
            assert [(c.path, c.kind) for c in fast] == [(c.path, c.kind) for c in slow]
            assert fast, "every layer changes something"
            parent = layer["Snapshot"]
    finally:
        h.close()


def test_skopeo_reads_the_export_and_writes_what_import_reads(env, capsys):
    """Another implementation of the formats (Debian's skopeo, containers/image): it copies
    our export (a docker-archive, every layer checked against its digest) into an OCI layout,
    and that into a docker-archive of its own; both import as the same trees."""
    if shutil.which("skopeo") is None:
        skip_or_fail("skopeo not installed (apt-get install skopeo)")
    tars = every_kind()
    docker_save(str(env / "orig.tar"), [(tars, ["sk:1"])])
    ok(capsys, "image", "import", "-q", "tank/a", "orig.tar")
    ok(capsys, "image", "export", "-s", "tank/a", "sk:1", "e.tar")
    for cmd in (["copy", "docker-archive:e.tar", f"oci:{env / 'oci'}:v1"],
                ["copy", f"oci:{env / 'oci'}:v1", f"docker-archive:{env / 'back.tar'}:sk:2"]):
        r = subprocess.run(["skopeo", "--insecure-policy", *cmd], capture_output=True,
                           text=True, cwd=env, timeout=120)
        assert r.returncode == 0, r.stderr
    ok(capsys, "image", "import", "-q", "-t", "sk:oci", "tank/b", "oci")
    ok(capsys, "image", "import", "-q", "tank/c", "back.tar")
    want = trees("tank/a", "sk:1", capsys)
    for store, ref in (("tank/b", "sk:oci"), ("tank/c", "sk:2")):
        got = trees(store, ref, capsys)
        assert len(got) == len(want)
        for i, (g, w) in enumerate(zip(got, want), 1):
            assert diff_trees(g, w) == [], (store, i)


def test_export_errors(env, capsys):
    docker_save(str(env / "o.tar"), [([layer_tar([F("a")])], ["e:1"])])
    ok(capsys, "image", "import", "-q", "tank/a", "o.tar")
    code, _out, err = run(capsys, "image", "export", "-s", "tank/a", "nosuch", "x.tar")
    assert code == 1 and "no such image" in err and not (env / "x.tar").exists()
    assert run(capsys, "image", "export", "-s", "tank/a", "e:1")[0] == 2
    code, _out, err = run(capsys, "image", "export", "-s", "tank/a", "e:1", "/nonexistent/x.tar")
    assert code == 1
