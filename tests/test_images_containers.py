"""Containers (`fusezfs container create/ls/rm/commit`) and image removal: the init layer and
the writable clone as Docker's ZFS driver makes them, the space each uses, ZFS's dependency
message when an image's layers are still needed, and a commit that becomes an ordinary layer
(exported and imported again, the same tree)."""
from __future__ import annotations

import json
import os

from fusezfs.api import Handle
from fusezfs.cli.cli_pool import open_pool
from imagekit import D, F, S, diff_trees, docker_save, dump_fs, layer_tar
from test_images_import import env, ok, run  # noqa: F401  (env: the fixture)

INIT = {b".dockerenv", b"etc/resolv.conf", b"etc/hosts", b"dev", b"dev/console", b"dev/pts",
        b"dev/shm", b"proc", b"sys", b"etc/mtab"}


def image(env, capsys, tag="app:1", extra=()) -> list[bytes]:
    tars = [layer_tar([D("etc"), F("etc/hostname", b"image\n"), F("etc/conf", b"a=1\n"),
                       D("bin"), F("bin/app", b"\x7fELF" + bytes(4000), mode=0o755)]),
            layer_tar([F("etc/conf", b"a=2\n"), S("bin/sh", "app"), *extra])]
    docker_save(str(env / f"{tag}.tar"), [(tars, [tag])])
    ok(capsys, "image", "import", "-q", "tank/images", f"{tag}.tar")
    return tars


def fs_dump(name: str):
    h = Handle(open_pool("tank"))
    try:
        return dump_fs(h.filesystem(name))
    finally:
        h.close()


def in_fs(name: str, fn) -> None:
    h = Handle(open_pool("tank"))
    try:
        fn(h.filesystem(name))
    finally:
        h.close()


def top_snapshot(capsys, ref: str) -> str:
    return json.loads(ok(capsys, "image", "inspect", ref))[0]["GraphDriver"]["Data"]["Snapshot"]


def test_create_makes_the_init_layer_and_the_container_clone(env, capsys):
    image(env, capsys)
    cid = ok(capsys, "container", "create", "app:1", "web").strip()
    assert len(cid) == 64
    rows = {r.split("\t")[0]: r.split("\t")[1:] for r in ok(
        capsys, "list", "-H", "-t", "all", "-o", "name,origin,canmount,fusezfs:container.name",
        "-r", "tank/images").splitlines()}
    top = top_snapshot(capsys, "app:1")
    assert rows[f"tank/images/{cid}-init"] == [top, "noauto", "web-init"]
    assert f"tank/images/{cid}-init@layer" in rows
    assert rows[f"tank/images/{cid}"] == [f"tank/images/{cid}-init@layer", "on", "web"]
    # the init layer: the image and Docker's initlayer paths the image lacks
    img, init = fs_dump(top), fs_dump(f"tank/images/{cid}-init")
    assert set(init[0]) - set(img[0]) == INIT
    assert {p: init[0][p] for p in img[0] if p not in (b"", b"etc")} == \
        {p: d for p, d in img[0].items() if p not in (b"", b"etc")}
    assert init[0][b"etc/hostname"][5] == b"image\n"          # the image's, kept
    assert init[0][b"etc/hosts"][:3] == ("file", 0o755, 0) and init[0][b"etc/hosts"][5] == b""
    assert init[0][b"etc/mtab"][6] == b"/proc/mounts" and init[0][b"dev/pts"][0] == "dir"
    assert fs_dump(f"tank/images/{cid}")[0] == init[0]
    # writes go to the container only
    ok(capsys, "cp", "/etc/os-release", f"tank/images/{cid}:/etc/conf")
    assert fs_dump(top)[0][b"etc/conf"][5] == b"a=2\n"
    assert fs_dump(f"tank/images/{cid}")[0][b"etc/conf"][5] == open("/etc/os-release", "rb").read()


def test_ls_shows_the_space_each_container_uses(env, capsys):
    image(env, capsys)
    alloc0 = int(ok(capsys, "pool", "list", "-Hp", "-o", "alloc", "tank"))
    for i in range(10):
        ok(capsys, "container", "create", "app:1", f"c{i}")
    alloc1 = int(ok(capsys, "pool", "list", "-Hp", "-o", "alloc", "tank"))
    assert alloc1 - alloc0 < 10 * 16 * 1024, "a container is a few records, not a copy"
    rows = [r.split("\t") for r in ok(capsys, "container", "ls", "-Hp").splitlines()]
    assert [r[6] for r in rows] == [f"c{i}" for i in range(10)]
    assert all(r[1] == "app:1" and int(r[3]) < 16 * 1024 for r in rows)
    cid = next(r[5] for r in rows if r[6] == "c3")
    with open(env / "blob", "wb") as f:
        f.write(os.urandom(1 << 20))
    ok(capsys, "cp", str(env / "blob"), f"{cid}:/blob")
    used = {r[6]: int(r[3]) for r in (x.split("\t") for x in
                                       ok(capsys, "container", "ls", "-Hp").splitlines())}
    assert used["c3"] >= 1 << 20 and used["c4"] < 16 * 1024
    header = ok(capsys, "container", "ls").splitlines()[0].split()
    assert header[:2] == ["CONTAINER", "ID"] and header[-1] == "NAME"


def test_a_container_costs_two_txgs(env, capsys):
    """The init layer's files, then its snapshot, the container's clone and record in one
    txg: what keeps `container create` near one zfs-fuse clone (tools/bench-layers)."""
    from fusezfs.images import containers
    from fusezfs.images.store import Store
    image(env, capsys)
    pool = open_pool("tank")
    try:
        with pool.lock:
            store = Store(Handle(pool), "tank/images")
            for i in range(5):
                before = pool.txg
                containers.create(store, "app:1", f"c{i}")
                assert pool.txg - before == 2
                assert not pool.mos.dirty           # committed: nothing left for the caller
    finally:
        pool.close()
    assert len(ok(capsys, "container", "ls", "-H").splitlines()) == 5


def test_names_and_errors(env, capsys):
    image(env, capsys)
    ok(capsys, "container", "create", "app:1", "web")
    code, _o, err = run(capsys, "container", "create", "app:1", "web")
    assert code == 1 and "already in use" in err
    code, _o, err = run(capsys, "container", "create", "app:1", "-bad/name")
    assert code in (1, 2)
    code, _o, err = run(capsys, "container", "create", "nosuch:1", "x")
    assert code == 1 and "no such image" in err
    code, _o, err = run(capsys, "container", "rm", "nosuch")
    assert code == 1 and "no such container" in err
    assert run(capsys, "container", "create", "app:1")[0] == 2
    code, _o, err = run(capsys, "container", "ls", "-s", "")
    assert code == 1 and "no image store" in err


def test_rm_destroys_the_container_and_its_init_layer(env, capsys):
    image(env, capsys)
    cid = ok(capsys, "container", "create", "app:1", "web").strip()
    before = ok(capsys, "list", "-H", "-t", "all", "-o", "name", "-r", "tank")
    assert f"tank/images/{cid}" in before
    assert ok(capsys, "container", "rm", "web") == "web\n"
    after = ok(capsys, "list", "-H", "-t", "all", "-o", "name", "-r", "tank")
    assert cid not in after
    assert ok(capsys, "container", "ls", "-H") == ""
    assert sorted(after.split()) == sorted(n for n in before.split() if cid not in n)


def test_image_rm_keeps_layers_others_need_with_zfs_message(env, capsys):
    image(env, capsys, "app:1")
    image(env, capsys, "app:2", extra=[F("v2", b"2")])     # shares the base layer
    cid = ok(capsys, "container", "create", "app:1", "web").strip()
    top = top_snapshot(capsys, "app:1")
    code, out, err = run(capsys, "image", "rm", "app:1")
    assert code == 1 and out == ""
    assert err.startswith(f"cannot destroy '{top}': snapshot has dependent clones\n"
                          f"use '-R' to destroy the following datasets:\n"
                          f"tank/images/{cid}\ntank/images/{cid}-init@layer\n"
                          f"tank/images/{cid}-init\n")
    assert "web" in err
    code, out, err = run(capsys, "image", "rm", "-f", "app:1")
    assert code == 0 and out.startswith("Untagged: app:1\nDeleted: sha256:")
    assert "snapshot has dependent clones" in err         # the layer stays, and says why
    names = ok(capsys, "list", "-H", "-t", "snapshot", "-o", "name", "-r", "tank")
    assert top in names.split()
    assert [r.split("\t")[:2] for r in ok(capsys, "image", "ls", "-H").splitlines()] == \
        [["app", "2"]]
    assert fs_dump(f"tank/images/{cid}")[0][b"etc/conf"][5] == b"a=2\n"
    ok(capsys, "container", "rm", "web")                 # the last user: the layers go
    names = ok(capsys, "list", "-H", "-t", "all", "-o", "name", "-r", "tank").split()
    assert top not in names
    base = json.loads(ok(capsys, "image", "inspect", "app:2"))[0]["Layers"][0]["Snapshot"]
    assert base in names                                  # app:2 still needs the base
    code, out, _e = run(capsys, "image", "rm", "app:2")
    assert code == 0 and out.count("Deleted:") == 3       # the image and its two layers
    names = ok(capsys, "list", "-H", "-t", "all", "-o", "name", "-r", "tank").split()
    assert names == ["tank", "tank/images", "tank/images/meta"]


def test_untag_an_image_with_two_tags(env, capsys):
    image(env, capsys, "app:1")
    docker_save(str(env / "again.tar"), [([layer_tar([D("etc"), F("etc/hostname", b"image\n"),
                                                      F("etc/conf", b"a=1\n"), D("bin"),
                                                      F("bin/app", b"\x7fELF" + bytes(4000),
                                                        mode=0o755)]),
                                           layer_tar([F("etc/conf", b"a=2\n"),
                                                      S("bin/sh", "app")])], ["app:latest"])])
    ok(capsys, "image", "import", "-q", "tank/images", "again.tar")
    assert len(ok(capsys, "image", "ls", "-H").splitlines()) == 2
    assert ok(capsys, "image", "rm", "app") == "Untagged: app:latest\n"
    assert [r.split("\t")[:2] for r in ok(capsys, "image", "ls", "-H").splitlines()] == \
        [["app", "1"]]


def test_commit_makes_an_ordinary_layer(env, capsys):
    image(env, capsys)
    cid = ok(capsys, "container", "create", "app:1", "web").strip()

    def change(fs):
        fh = fs.open(fs.resolve("/etc/conf"), os.O_WRONLY)       # in place: the same inode
        fs.write(fh, 0, b"a=3\n")
        fs.release(fh)
        fs.unlink(*fs.parent_of("/bin/sh"))
        fs.makedirs("/srv/data", 0o750, 33, 33)
        fs.write_file("/srv/data/new", b"new\n", 0o640, 33, 33)
        fs.setxattr(fs.resolve("/bin/app"), b"user.tag", b"x")
    in_fs(f"tank/images/{cid}", change)
    new_id = ok(capsys, "container", "commit", "web", "app:2").strip()
    info = json.loads(ok(capsys, "image", "inspect", "app:2"))[0]
    assert info["Id"] == new_id and len(info["Layers"]) == 3
    assert info["Layers"][:2] == json.loads(ok(capsys, "image", "inspect", "app:1"))[0]["Layers"]
    new_top = fs_dump(info["Layers"][2]["Snapshot"])
    container = fs_dump(f"tank/images/{cid}")
    want = ({p: d for p, d in container[0].items() if p not in INIT and p not in (b"", b"etc")},
            container[1])
    got = ({p: d for p, d in new_top[0].items() if p not in (b"", b"etc")}, new_top[1])
    assert diff_trees(got, want) == []
    assert new_top[0][b"etc/conf"][5] == b"a=3\n" and b"bin/sh" not in new_top[0]
    assert not INIT & set(new_top[0])
    # the container's snapshot for the commit is gone; the commit layer is a clone of app:1
    snaps = ok(capsys, "list", "-H", "-t", "snapshot", "-o", "name", "-r", "tank").split()
    assert not any(s.endswith("@commit") for s in snaps)
    origin = ok(capsys, "get", "-H", "-o", "value", "origin", info["Layers"][2]["Dataset"])
    assert origin.strip() == top_snapshot(capsys, "app:1")
    # exported and imported again: the same tree
    ok(capsys, "image", "export", "app:2", "c.tar")
    ok(capsys, "image", "import", "-q", "tank/other", "c.tar")
    again = json.loads(ok(capsys, "image", "inspect", "-s", "tank/other", "app:2"))[0]
    assert diff_trees(fs_dump(again["Layers"][2]["Snapshot"]), new_top) == []
    # a container of the new image sees the committed state
    ok(capsys, "container", "create", "app:2", "web2")
    space = json.loads(ok(capsys, "image", "inspect", "app:2"))[0]["Space"]
    assert space["Used"] < space["SumOfReferenced"]


def test_inspect_space_really_used_against_the_sum_of_layers(env, capsys):
    big = os.urandom(512 * 1024)
    tars = [layer_tar([F("big", big)])] + [layer_tar([F(f"small{i}", b"s")]) for i in range(5)]
    docker_save(str(env / "s.tar"), [(tars, ["space:1"])])
    ok(capsys, "image", "import", "-q", "tank/images", "s.tar")
    info = json.loads(ok(capsys, "image", "inspect", "space:1"))[0]
    space = info["Space"]
    assert space["SumOfLayerSizes"] == sum(len(t) for t in tars) == info["Size"]
    # six layers each referencing the 512 KiB file, stored once
    assert space["SumOfReferenced"] >= 6 * 512 * 1024
    assert 512 * 1024 <= space["Used"] < 1.2 * 512 * 1024
    assert [l["ChainID"] for l in info["Layers"]][0] == info["RootFS"]["Layers"][0]


def mount_props(capsys, names: list[str]) -> dict[str, tuple[str, str, str, str]]:
    """name -> (mountpoint, its source, canmount, its source), as `zfs get` shows them."""
    out: dict[str, list[str]] = {}
    for line in ok(capsys, "get", "-H", "-o", "name,property,value,source",
                   "mountpoint,canmount", *names).splitlines():
        name, _prop, value, source = line.split("\t")
        out.setdefault(name, []).extend([value, source])
    return {n: tuple(v) for n, v in out.items()}


def test_mount_properties_as_dockers_driver(env, capsys):
    """Layers and init layers: mountpoint=legacy and canmount=noauto (Docker's driver makes
    every dataset legacy; nothing mounts them by path). A container: canmount=on, and its
    mountpoint the store's graph directory/<id>: inherited from the store by default, its own
    once the store has a graph directory (Docker's /var/lib/docker/zfs/graph, outside the
    pool's tree: a host mounting datasets at their mountpoints puts it there), legacy when the
    graph directory is "legacy". A commit's layer is legacy too."""
    image(env, capsys)
    info = json.loads(ok(capsys, "image", "inspect", "app:1"))[0]
    layers = [l["Dataset"] for l in info["Layers"]]
    c1 = ok(capsys, "container", "create", "app:1", "one").strip()
    got = mount_props(capsys, layers + [f"tank/images/{c1}-init", f"tank/images/{c1}",
                                        "tank/images"])
    for name in layers + [f"tank/images/{c1}-init"]:
        assert got[name] == ("legacy", "local", "noauto", "local"), name
    assert got[f"tank/images/{c1}"] == (f"/tank/images/{c1}", "default", "on", "local")
    # a graph directory outside the pool's tree, given at import
    graph = "/var/lib/docker/zfs/graph"
    docker_save(str(env / "b.tar"), [([layer_tar([F("b", b"b")])], ["b:1"])])
    ok(capsys, "image", "import", "-q", "-g", graph, "tank/images", "b.tar")
    assert ok(capsys, "get", "-H", "-o", "value", "fusezfs:image.graph",
              "tank/images").strip() == graph
    c2 = ok(capsys, "container", "create", "app:1", "two").strip()
    assert mount_props(capsys, [f"tank/images/{c2}"])[f"tank/images/{c2}"] == \
        (f"{graph}/{c2}", "local", "on", "local")
    # the earlier container keeps the mountpoint it was made with
    assert mount_props(capsys, [f"tank/images/{c1}"])[f"tank/images/{c1}"][0] == \
        f"/tank/images/{c1}"
    # Docker's own way: legacy, mounted only when asked for
    ok(capsys, "set", "fusezfs:image.graph=legacy", "tank/images")
    c3 = ok(capsys, "container", "create", "app:1", "three").strip()
    assert mount_props(capsys, [f"tank/images/{c3}"])[f"tank/images/{c3}"][:3] == \
        ("legacy", "local", "on")
    # a commit's new layer is a layer like any other
    new = ok(capsys, "container", "commit", "two", "app:2").strip()
    top = json.loads(ok(capsys, "image", "inspect", new))[0]["Layers"][-1]["Dataset"]
    assert mount_props(capsys, [top])[top] == ("legacy", "local", "noauto", "local")
    # a relative graph directory is refused, and nothing changes
    code, _out, err = run(capsys, "image", "import", "-q", "-g", "graph", "tank/images",
                          "b.tar")
    assert code == 1 and "must be an absolute path" in err
    assert ok(capsys, "get", "-H", "-o", "value", "fusezfs:image.graph",
              "tank/images").strip() == "legacy"
