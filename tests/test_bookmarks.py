"""Bookmarks (`zfs bookmark`, `list -t bookmark`, `get`, `destroy FS#BM`), `written@FS@SNAP` and
`written#BM`, and `zpool get feature@...`, driven through the command line as a user would,
with the consistency checker (space invariants, bookmarks left behind) and verify run on
every pool after every test. zfs-fuse (pool version 23) has no bookmarks and no feature
flags: messages, exit codes and outputs are OpenZFS 2.1.11's (zfs_main.c zfs_do_bookmark and
zfs_do_destroy, libzfs_dataset.c, dsl_bookmark.c, zpool_main.c)."""
from __future__ import annotations

import os

import pytest

from clitools import check_pools, ok, run
from fusezfs import cli
from fusezfs.cli.cli_pool import open_pool
from fusezfs.dsl.datasets import Datasets

MiB = 1 << 20
USAGE = ("usage:\n\tbookmark <snapshot|bookmark> <newbookmark>\n\n"
         "For the property list, run: zfs set|get\n\n"
         "For the delegated permission list, run: zfs allow|unallow\n")


@pytest.fixture
def env(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FUSEZFS_STATE_DIR", str(tmp_path / "state"))
    disk = tmp_path / "disk"
    with open(disk, "wb") as f:
        f.truncate(256 * MiB)
    assert cli.main(["pool", "create", "-O", "compression=off", "tank", str(disk)]) == 0
    yield tmp_path
    capsys.readouterr()
    check_pools()


def put(tmp, capsys, dest: str, data: bytes) -> None:
    src = tmp / "src"
    src.write_bytes(data)
    ok(capsys, "cp", str(src), dest)


def values(capsys, props: str, name: str) -> list[str]:
    return ok(capsys, "get", "-Hp", "-o", "value", props, name).splitlines()


def fs_with_snapshot(tmp, capsys, fs: str = "tank/fs", snap: str = "s1") -> None:
    ok(capsys, "create", fs)
    put(tmp, capsys, f"{fs}:/f", os.urandom(300_000))
    ok(capsys, "snapshot", f"{fs}@{snap}")


def test_bookmark_keeps_the_snapshots_identity_and_outlives_it(env, capsys):
    fs_with_snapshot(env, capsys)
    assert run(capsys, "bookmark", "tank/fs@s1", "tank/fs#b1") == (0, "", "")
    snap = values(capsys, "guid,createtxg,creation,referenced,logicalreferenced", "tank/fs@s1")
    assert values(capsys, "guid,createtxg,creation,referenced,logicalreferenced",
                  "tank/fs#b1") == snap
    assert ok(capsys, "list", "-H", "-t", "bookmark", "-o", "name,type") == "tank/fs#b1\tbookmark\n"
    # zfs get all: what dsl_bookmark_fetch_props gives, in zfs_prop_t order, no compressratio
    out = ok(capsys, "get", "-Hp", "all", "tank/fs#b1")
    assert [line.split("\t")[1:] for line in out.splitlines()] == [
        ["type", "bookmark", "-"], ["creation", snap[2], "-"], ["referenced", snap[3], "-"],
        ["createtxg", snap[1], "-"], ["guid", snap[0], "-"], ["logicalreferenced", snap[4], "-"]]
    # properties a bookmark does not have: "-" with source "-"
    assert ok(capsys, "get", "-H", "used,compressratio,mountpoint,org.x:y", "tank/fs#b1") == (
        "tank/fs#b1\tused\t-\t-\ntank/fs#b1\tcompressratio\t-\t-\n"
        "tank/fs#b1\tmountpoint\t-\t-\ntank/fs#b1\torg.x:y\t-\t-\n")
    refer = ok(capsys, "get", "-H", "-o", "value", "referenced", "tank/fs@s1").strip()
    out = ok(capsys, "list", "-t", "bookmark").splitlines()
    assert out[0].split() == ["NAME", "USED", "AVAIL", "REFER", "MOUNTPOINT"]
    assert out[1].split() == ["tank/fs#b1", "-", "-", refer, "-"]
    # the snapshot goes; the bookmark stays, with the dataset layer's (guid, createtxg)
    ok(capsys, "destroy", "tank/fs@s1")
    assert values(capsys, "guid,createtxg", "tank/fs#b1") == snap[:2]
    pool = open_pool("tank")
    try:
        assert Datasets(pool).bookmark_source("tank/fs#b1") == (int(snap[0]), int(snap[1]))
    finally:
        pool.close()
    assert run(capsys, "destroy", "tank/fs#b1") == (0, "", "")
    assert ok(capsys, "list", "-H", "-t", "bookmark") == ""
    code, _o, err = run(capsys, "get", "guid", "tank/fs#b1")
    assert (code, err) == (1, "cannot open 'tank/fs#b1': no such pool or dataset\n")


def test_short_names_and_copies(env, capsys):
    fs_with_snapshot(env, capsys)
    ok(capsys, "bookmark", "@s1", "tank/fs#a")
    ok(capsys, "bookmark", "tank/fs@s1", "#b")
    ok(capsys, "bookmark", "tank/fs#a", "tank/fs#c")
    ok(capsys, "bookmark", "#a", "tank/fs#d")
    ok(capsys, "bookmark", "tank/fs#a", "#e")
    guid = values(capsys, "guid", "tank/fs@s1")
    assert ok(capsys, "list", "-H", "-o", "name", "-t", "bookmark", "tank/fs") == \
        "tank/fs#a\ntank/fs#b\ntank/fs#c\ntank/fs#d\ntank/fs#e\n"
    ok(capsys, "destroy", "tank/fs#a")          # a copy does not depend on its source
    assert values(capsys, "guid", "tank/fs#c") == guid
    # -t all lists filesystems, snapshots and bookmarks, in zfs_compare's order
    ok(capsys, "create", "tank/fs/child")
    assert ok(capsys, "list", "-H", "-o", "name", "-t", "all") == (
        "tank\ntank/fs\ntank/fs@s1\ntank/fs#b\ntank/fs#c\ntank/fs#d\ntank/fs#e\ntank/fs/child\n")
    # zfs get's default types include bookmarks; zfs list's do not
    assert ok(capsys, "get", "-H", "-o", "name", "-r", "type", "tank/fs") == (
        "tank/fs\ntank/fs@s1\ntank/fs#b\ntank/fs#c\ntank/fs#d\ntank/fs#e\ntank/fs/child\n")
    assert ok(capsys, "get", "-H", "-o", "name", "-t", "bookmark", "guid", "tank/fs") == (
        "tank/fs#b\ntank/fs#c\ntank/fs#d\ntank/fs#e\n")
    code, out, err = run(capsys, "list", "tank/fs#b")
    assert (code, out, err) == (1, "", "cannot open 'tank/fs#b': bookmark delimiter '#' is not "
                                        "expected here\n")


@pytest.mark.parametrize("argv,code,err", [
    ([], 2, "missing source argument\n" + USAGE),
    (["tank/fs@s1"], 2, "missing bookmark argument\n" + USAGE),
    (["@s1", "#b"], 2, "either source or bookmark must be specified as full dataset paths" + USAGE),
    (["s1", "#b"], 2, "invalid source name 's1': must contain a '@' or '#'\n" + USAGE),
    (["", "#"], 2, "invalid source name '': must contain a '@' or '#'\n" + USAGE),
    (["@s1", "b"], 2, "invalid bookmark name 'b': must contain a '#'\n" + USAGE),
    (["tank/fs", "tank/fs"], 2, "invalid source name 'tank/fs': must contain a '@' or '#'\n"
     + USAGE),
    (["-x", "tank/fs@s1", "#b"], 2, "invalid option 'x'\n" + USAGE),
    (["tank/fs@", "#b"], 2, "cannot open 'tank/fs@': empty component or misplaced '@' or '#' "
     "delimiter in name\n" + USAGE),
    (["tank/fs@nope", "#b"], 2, "cannot open 'tank/fs@nope': dataset does not exist\n" + USAGE),
    (["tank/fs#nope", "#b"], 2, "cannot open 'tank/fs#nope': no such pool or dataset\n" + USAGE),
    (["tank/no#b", "tank/fs#b"], 2, "cannot open 'tank/no#b': dataset does not exist\n" + USAGE),
    (["nopool/fs@s1", "nopool/fs#b"], 2, "cannot open 'nopool/fs@s1': dataset does not exist\n"
     + USAGE),
    (["tank/fs@s1", "#"], 1, "cannot create bookmark 'tank/fs#': invalid argument\n"),
    (["@s1", "tank/fs#"], 1, "cannot create bookmark 'tank/fs#': invalid argument\n"),
    (["tank/fs@s1", "tank/fs#b!"], 1, "cannot create bookmark 'tank/fs#b!': invalid argument\n"),
    (["tank/fs@s1", "tank/fs#x#y"], 1, "cannot create bookmark 'tank/fs#x#y': invalid "
     "argument\n"),
    (["tank/fs@s1", "tank/fs#old"], 1, "cannot create bookmark 'tank/fs#old': bookmark exists\n"),
    (["tank/fs@s1", "tank/nofs#b"], 1, "cannot create bookmark 'tank/nofs#b': dataset does not "
     "exist\n"),
    (["tank/fs@s1", "tank/other#b"], 1, "cannot create bookmark 'tank/other#b': source is not "
     "an ancestor of the new bookmark's dataset\n"),
    (["tank/fs#old", "tank/other#b"], 1, "cannot create bookmark 'tank/other#b': source is not "
     "an ancestor of the new bookmark's dataset\n"),
    (["tank/fs@s1", "pool2/fs#b"], 1, "cannot create bookmark 'pool2/fs#b': bookmark is in a "
     "different pool\n"),
    (["tank/fs@s1", "nopool/fs#b"], 1, "cannot create bookmark 'nopool/fs#b': dataset does not "
     "exist\n"),
])
def test_bookmark_errors(env, capsys, argv, code, err):
    fs_with_snapshot(env, capsys)
    ok(capsys, "create", "tank/other")
    ok(capsys, "bookmark", "tank/fs@s1", "tank/fs#old")
    disk = env / "disk2"
    with open(disk, "wb") as f:
        f.truncate(128 * MiB)
    ok(capsys, "pool", "create", "pool2", str(disk))
    ok(capsys, "create", "pool2/fs")
    before = ok(capsys, "list", "-H", "-t", "all", "-o", "name")
    assert run(capsys, "bookmark", *argv) == (code, "", err)
    assert ok(capsys, "list", "-H", "-t", "all", "-o", "name") == before


def test_bookmarks_of_clones_and_the_pool(env, capsys):
    """A bookmark may take a snapshot of its filesystem's origin (or an earlier one), and the
    pool's own filesystem has bookmarks too (zfs_bookmark_cliargs.ksh)."""
    fs_with_snapshot(env, capsys)
    ok(capsys, "snapshot", "tank/fs@s2")
    ok(capsys, "clone", "tank/fs@s2", "tank/clone")
    ok(capsys, "bookmark", "tank/fs@s2", "tank/clone#origin")
    ok(capsys, "bookmark", "tank/fs@s1", "tank/clone#before")
    ok(capsys, "bookmark", "tank/fs@s1", "tank/fs#s1")
    ok(capsys, "bookmark", "tank/fs#s1", "tank/clone#copy")
    ok(capsys, "snapshot", "tank/fs@s3")                   # after the origin: not an ancestor
    code, _o, err = run(capsys, "bookmark", "tank/fs@s3", "tank/clone#late")
    assert code == 1 and err.endswith("source is not an ancestor of the new bookmark's dataset\n")
    ok(capsys, "snapshot", "tank@p")
    ok(capsys, "bookmark", "tank@p", "tank#p")
    ok(capsys, "bookmark", "tank#p", "tank#p2")
    assert ok(capsys, "list", "-H", "-o", "name", "-t", "bookmark") == (
        "tank#p\ntank#p2\ntank/clone#before\ntank/clone#copy\ntank/clone#origin\ntank/fs#s1\n")
    ok(capsys, "destroy", "tank#p")
    ok(capsys, "destroy", "-r", "tank/clone")              # its bookmarks go with it
    assert ok(capsys, "list", "-H", "-o", "name", "-t", "bookmark") == "tank#p2\ntank/fs#s1\n"


@pytest.mark.parametrize("flags,code,err", [
    (["-n"], 255, "dryrun is not supported with bookmark\n"),
    (["-d"], 255, "defer destroy is not supported with bookmark\n"),
    (["-r"], 255, "recursive is not supported with bookmark\n"),
    (["-R"], 255, "recursive is not supported with bookmark\n"),
    (["-nr"], 255, "dryrun is not supported with bookmark\n"),
])
def test_destroy_bookmark_refuses_what_zfs_refuses(env, capsys, flags, code, err):
    fs_with_snapshot(env, capsys)
    ok(capsys, "bookmark", "tank/fs@s1", "tank/fs#b")
    assert run(capsys, "destroy", *flags, "tank/fs#b") == (code, "", err)
    assert ok(capsys, "list", "-H", "-o", "name", "-t", "bookmark") == "tank/fs#b\n"


def test_destroy_missing_bookmark(env, capsys):
    fs_with_snapshot(env, capsys)
    for name in ("tank/fs#nope", "tank/nofs#b", "nopool/fs#b", "tank/fs#"):
        assert run(capsys, "destroy", name) == (1, "", f"bookmark '{name}' does not exist.\n")
    ok(capsys, "bookmark", "tank/fs@s1", "tank/fs#b")
    assert run(capsys, "destroy", "-v", "tank/fs#b") == (0, "", "")     # -v says nothing


def test_bookmarks_follow_their_filesystem(env, capsys):
    ok(capsys, "create", "-p", "tank/a/b")
    put(env, capsys, "tank/a/b:/f", b"x" * 5000)
    ok(capsys, "snapshot", "-r", "tank/a@s")
    ok(capsys, "bookmark", "tank/a@s", "tank/a#ma")
    ok(capsys, "bookmark", "tank/a/b@s", "tank/a/b#mb")
    ok(capsys, "rename", "tank/a", "tank/z")
    assert ok(capsys, "list", "-H", "-o", "name", "-t", "bookmark") == "tank/z#ma\ntank/z/b#mb\n"
    assert ok(capsys, "get", "-H", "-o", "value", "type", "tank/z/b#mb") == "bookmark\n"
    code, _o, err = run(capsys, "get", "type", "tank/a#ma")
    assert (code, err) == (1, "cannot open 'tank/a#ma': dataset does not exist\n")
    ok(capsys, "destroy", "tank/z/b@s")
    ok(capsys, "destroy", "tank/z/b")            # a bookmark does not keep its filesystem
    assert ok(capsys, "list", "-H", "-o", "name", "-t", "bookmark") == "tank/z#ma\n"
    ok(capsys, "destroy", "-r", "tank/z")
    assert ok(capsys, "list", "-H", "-o", "name", "-t", "bookmark") == ""


def test_rollback_destroys_later_bookmarks_with_r(env, capsys):
    fs_with_snapshot(env, capsys)
    ok(capsys, "bookmark", "tank/fs@s1", "tank/fs#at")
    ok(capsys, "snapshot", "tank/fs@s2")
    ok(capsys, "bookmark", "tank/fs@s2", "tank/fs#later")
    ok(capsys, "destroy", "tank/fs@s2")
    code, _o, err = run(capsys, "rollback", "tank/fs@s1")
    assert (code, err) == (1, "cannot rollback to 'tank/fs@s1': more recent snapshots or "
                              "bookmarks exist\nuse '-r' to force deletion of the following "
                              "snapshots and bookmarks:\ntank/fs#later\n")
    ok(capsys, "rollback", "-r", "tank/fs@s1")
    assert ok(capsys, "list", "-H", "-o", "name", "-t", "bookmark") == "tank/fs#at\n"


def test_promote_takes_the_bookmarks_up_to_the_origin(env, capsys):
    fs_with_snapshot(env, capsys, snap="s1")
    ok(capsys, "bookmark", "tank/fs@s1", "tank/fs#b1")
    put(env, capsys, "tank/fs:/g", os.urandom(50_000))
    ok(capsys, "snapshot", "tank/fs@s2")
    ok(capsys, "bookmark", "tank/fs@s2", "tank/fs#b2")
    ok(capsys, "clone", "tank/fs@s1", "tank/c")
    ok(capsys, "bookmark", "tank/fs@s1", "tank/c#b2")
    ok(capsys, "promote", "tank/c")          # b1 moves to tank/c beside its own b2
    assert ok(capsys, "list", "-H", "-o", "name", "-t", "bookmark") == \
        "tank/c#b1\ntank/c#b2\ntank/fs#b2\n"
    # written of the demoted filesystem: since its own b2, nothing; since b1, now the new
    # head's and at its origin's txg, what it wrote after s1
    assert int(values(capsys, "written#b2", "tank/fs")[0]) == 0
    assert 50_000 <= int(values(capsys, "written@tank/c#b1", "tank/fs")[0]) < 80_000


def test_promote_refuses_a_bookmark_name_conflict(env, capsys):
    fs_with_snapshot(env, capsys)
    ok(capsys, "bookmark", "tank/fs@s1", "tank/fs#same")
    ok(capsys, "clone", "tank/fs@s1", "tank/c")
    ok(capsys, "bookmark", "tank/fs@s1", "tank/c#same")
    code, _o, err = run(capsys, "promote", "tank/c")
    assert (code, err) == (1, "cannot promote 'tank/c': conflicting snapshot 'same' from parent "
                              "'tank/fs@s1'\n")
    assert ok(capsys, "get", "-H", "-o", "value", "origin", "tank/c") == "tank/fs@s1\n"


def test_written_full_names_and_bookmarks(env, capsys):
    fs_with_snapshot(env, capsys)
    ok(capsys, "bookmark", "tank/fs@s1", "tank/fs#b1")
    put(env, capsys, "tank/fs:/g", os.urandom(200_000))
    short, full, mark, markfull = (int(v) for v in values(
        capsys, "written@s1,written@tank/fs@s1,written#b1,written@tank/fs#b1", "tank/fs"))
    assert short == full == mark == markfull and 200_000 <= short < 260_000
    ok(capsys, "snapshot", "tank/fs@s2")
    ok(capsys, "destroy", "tank/fs@s1")
    assert int(values(capsys, "written#b1", "tank/fs@s2")[0]) == short
    # a clone: a snapshot of its origin's filesystem is in its timeline, a later one is not
    ok(capsys, "clone", "tank/fs@s2", "tank/c")
    put(env, capsys, "tank/c:/h", os.urandom(100_000))
    w_origin, w_mark = (int(v) for v in values(capsys, "written@tank/fs@s2,written@tank/fs#b1",
                                               "tank/c"))
    assert 100_000 <= w_origin < 140_000 and w_mark >= w_origin + 200_000
    ok(capsys, "snapshot", "tank/fs@s3")
    assert ok(capsys, "get", "-H", "-o", "value,source", "written@tank/fs@s3,written@s3,"
              "written#nope,written@tank/nope@x", "tank/c") == "-\t-\n-\t-\n-\t-\n-\t-\n"
    # a snapshot before the one asked about, as OpenZFS: "-"
    assert ok(capsys, "get", "-H", "-o", "value", "written@s3", "tank/fs@s2") == "-\n"


def test_features(env, capsys):
    def feature(name: str) -> str:
        return ok(capsys, "pool", "get", "-H", "-o", "value,source", f"feature@{name}", "tank")

    assert feature("bookmarks") == "enabled\tlocal\n"
    assert feature("bookmark_v2") == "enabled\tlocal\n"
    assert feature("extensible_dataset") == "active\tlocal\n"
    assert feature("zstd_compress") == "enabled\tlocal\n"
    assert feature("encryption") == "disabled\tlocal\n"
    assert feature("nosuchfeature") == ""
    fs_with_snapshot(env, capsys)
    ok(capsys, "bookmark", "tank/fs@s1", "tank/fs#b")
    assert feature("bookmarks") == feature("bookmark_v2") == "active\tlocal\n"
    assert feature("bookmark_written") == "enabled\tlocal\n"
    ok(capsys, "destroy", "tank/fs#b")
    assert feature("bookmarks") == "enabled\tlocal\n"
    ok(capsys, "create", "-o", "compression=zstd-3", "tank/z")
    assert feature("zstd_compress") == "active\tlocal\n"
    out = ok(capsys, "pool", "get", "-H", "all", "tank").splitlines()
    rows = [line.split("\t") for line in out if line.split("\t")[1].startswith("feature@")]
    assert [r[1] for r in rows] == [f"feature@{n}" for n in (
        "async_destroy", "empty_bpobj", "lz4_compress", "multi_vdev_crash_dump",
        "spacemap_histogram", "enabled_txg", "hole_birth", "extensible_dataset",
        "embedded_data", "bookmarks", "filesystem_limits", "large_blocks", "large_dnode",
        "sha512", "skein", "edonr", "userobj_accounting", "encryption", "project_quota",
        "device_removal", "obsolete_counts", "zpool_checkpoint", "spacemap_v2",
        "allocation_classes", "resilver_defer", "bookmark_v2", "redaction_bookmarks",
        "redacted_datasets", "bookmark_written", "log_spacemap", "livelist", "device_rebuild",
        "zstd_compress", "draid")]
    assert {r[1]: r[2] for r in rows if r[2] != "disabled"} == {
        "feature@extensible_dataset": "active", "feature@bookmarks": "enabled",
        "feature@bookmark_v2": "enabled", "feature@bookmark_written": "enabled",
        "feature@zstd_compress": "active"}
    first = next(i for i, line in enumerate(out) if "\tfeature@" in line)
    assert "\tautotrim\t" in out[first - 1] and all(r[3] == "local" for r in rows)
