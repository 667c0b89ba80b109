"""Dedup driven as a user would: files copied into `dedup=on|verify` filesystems, snapshots,
clones and destroys move the dedup table's reference counts; space is charged per reference to
datasets (exactly what a dedup=off twin is charged) and once to the pool; `dedupratio` and
`zpool status -D` say so in OpenZFS's words; a forced checksum collision under `verify` keeps
every byte right; scrub reads a deduplicated block once; a power cut at every write of the
dedup workload leaves consistent counts and the committed contents."""
from __future__ import annotations

import hashlib
import random

import pytest

from clitools import check_pools, ok, pool_files, run
from fusezfs.engine import blocks, dedup
from fusezfs.testing import crashsim
from fusezfs.api import Handle
from fusezfs.cli.cli_pool import open_pool

MiB = 1 << 20
NODES_APART = 4096          # what tree nodes alone may make two twins' figures differ by
SPACE = ["used", "referenced", "usedbysnapshots", "usedbydataset", "written", "logicalused"]


@pytest.fixture
def env(tmp_path, monkeypatch, capsys):
    files = pool_files(tmp_path, monkeypatch, 1)
    ok(capsys, "pool", "create", "tank", files[0])
    yield tmp_path
    check_pools()


def put(tmp, capsys, dataset: str, path: str, data: bytes) -> None:
    src = tmp / "src"
    src.write_bytes(data)
    ok(capsys, "cp", str(src), f"{dataset}:{path}")


def cat(tmp, capsys, dataset: str, path: str) -> bytes:
    dst = tmp / "dst"
    dst.unlink(missing_ok=True)
    ok(capsys, "cp", f"{dataset}:{path}", str(dst))
    return dst.read_bytes()


def rm(dataset: str, path: str) -> None:
    """Remove a file (the library's unlink: the command line has no rm verb)."""
    pool = open_pool("tank")
    try:
        Handle(pool).filesystem(dataset).unlink(1, path.lstrip("/").encode())
    finally:
        pool.close()


def space(capsys, name: str) -> dict[str, int]:
    out = ok(capsys, "get", "-Hp", "-o", "property,value", ",".join(SPACE), name)
    return {k: int(v) for k, v in (line.split("\t") for line in out.splitlines()) if v != "-"}


def pool_prop(capsys, prop: str) -> str:
    return ok(capsys, "pool", "get", "-Hp", "-o", "value", prop, "tank").strip()


def table() -> dict[int, list[int]]:
    """The dedup table's histogram as it is on disk (a fresh import)."""
    pool = open_pool("tank")
    try:
        return pool.blocks.ddt.stats()
    finally:
        pool.close()


def test_copies_snapshots_clones_and_destroys_move_reference_counts(env, capsys):
    tmp = env
    data = random.Random(1).randbytes(1 * MiB)              # 8 records of 128 KiB
    ok(capsys, "create", "-o", "dedup=on", "-o", "compression=off", "tank/a")
    alloc0 = int(pool_prop(capsys, "allocated"))
    put(tmp, capsys, "tank/a", "/f1", data)
    alloc1 = int(pool_prop(capsys, "allocated"))
    assert table() == {0: [8, MiB, MiB, MiB, 8, MiB, MiB, MiB]}
    put(tmp, capsys, "tank/a", "/f2", data)
    put(tmp, capsys, "tank/a", "/f3", data)
    assert table() == {1: [8, MiB, MiB, MiB, 24, 3 * MiB, 3 * MiB, 3 * MiB]}
    # the pool stores the records once: only metadata grew
    assert int(pool_prop(capsys, "allocated")) - alloc1 < (alloc1 - alloc0) // 4
    assert pool_prop(capsys, "dedupratio") == "3.00"

    ok(capsys, "snapshot", "tank/a@s")
    rm("tank/a", "/f1")
    assert table() == {1: [8, MiB, MiB, MiB, 24, 3 * MiB, 3 * MiB, 3 * MiB]}  # the snapshot has f1
    ok(capsys, "clone", "tank/a@s", "tank/c")
    put(tmp, capsys, "tank/c", "/f4", data)
    # a clone inherits from its parent (tank), not its origin: tank/c does not dedup
    assert table()[1][4] == 24
    ok(capsys, "set", "dedup=verify", "tank/c")
    put(tmp, capsys, "tank/c", "/f5", data)
    assert table() == {2: [8, MiB, MiB, MiB, 32, 4 * MiB, 4 * MiB, 4 * MiB]}
    assert cat(tmp, capsys, "tank/c", "/f5") == data and cat(tmp, capsys, "tank/c", "/f1") == data

    ok(capsys, "destroy", "tank/c")
    ok(capsys, "destroy", "tank/a@s")                        # f1's references go now
    assert table() == {1: [8, MiB, MiB, MiB, 16, 2 * MiB, 2 * MiB, 2 * MiB]}
    ok(capsys, "destroy", "-r", "tank/a")
    assert table() == {}
    assert pool_prop(capsys, "dedupratio") == "1.00"
    assert "dedup: no DDT entries" in ok(capsys, "pool", "status", "-D", "tank")
    assert int(pool_prop(capsys, "allocated")) <= alloc0


def test_identical_records_of_one_txg_are_distinct_references(env, capsys):
    """A file of four identical records: four identical block pointers (same DVAs, same
    birth), four references. A snapshot keeps them when the file goes, and all four reach
    its deadlist; destroying the snapshot frees all four."""
    tmp = env
    record = random.Random(9).randbytes(128 << 10)
    ok(capsys, "create", "-o", "dedup=on", "-o", "compression=off", "tank/a")
    put(tmp, capsys, "tank/a", "/four", record * 4)
    assert table() == {2: [1, 128 << 10, 128 << 10, 128 << 10, 4, 4 * 128 << 10,
                           4 * 128 << 10, 4 * 128 << 10]}
    ok(capsys, "snapshot", "tank/a@s")
    rm("tank/a", "/four")
    assert space(capsys, "tank/a")["usedbysnapshots"] >= 4 * 128 << 10
    check_pools()
    ok(capsys, "destroy", "tank/a@s")
    assert table() == {}


def test_promote_rollback_and_destroy_keep_counts_exact(env, capsys):
    """A dedup clone written to, promoted (the origin's snapshots move to it), rolled back and
    destroyed in turns: after each step the consistency checker recounts every refcount from
    the trees, and at the end nothing is left in the table."""
    tmp = env
    data = random.Random(10).randbytes(384 << 10)
    ok(capsys, "create", "-o", "dedup=on", "tank/o")
    put(tmp, capsys, "tank/o", "/a", data)
    ok(capsys, "snapshot", "tank/o@s1")
    put(tmp, capsys, "tank/o", "/b", data)
    ok(capsys, "clone", "-o", "dedup=on", "tank/o@s1", "tank/c")
    put(tmp, capsys, "tank/c", "/c", data)
    ok(capsys, "snapshot", "tank/c@s2")
    put(tmp, capsys, "tank/c", "/d", data)
    check_pools()
    assert table()[2][4] == 4 * 3                   # a, b, c, d: three records each
    ok(capsys, "promote", "tank/c")
    check_pools()
    ok(capsys, "rollback", "tank/c@s2")             # d's references go
    check_pools()
    assert table()[1][4] == 3 * 3
    assert cat(tmp, capsys, "tank/o", "/b") == data == cat(tmp, capsys, "tank/c", "/c")
    ok(capsys, "destroy", "tank/o")
    check_pools()
    ok(capsys, "destroy", "-r", "tank/c")
    assert table() == {}


def test_space_is_charged_per_reference_exactly_as_without_dedup(env, capsys):
    """used, referenced, usedbysnapshots, usedbydataset, written and logicalused of a dedup
    filesystem follow those of a dedup=off twin given the same files, snapshots and removals:
    every data record is charged once per reference, so they differ only by the tree nodes
    (whose block pointers hold other DVAs and births, and compress differently), never by a
    record (64 KiB here); the consistency checker recounts each exactly from the trees. The
    pool allocates the shared records once."""
    tmp = env
    rng = random.Random(2)
    pieces = [rng.randbytes(300_000), rng.randbytes(64 << 10), rng.randbytes(5000)]
    for name, value in (("tank/d", "on"), ("tank/n", "off")):
        ok(capsys, "create", "-o", f"dedup={value}", "-o", "recordsize=64K", name)
    steps = [("put", "/a", pieces[0]), ("put", "/b", pieces[0]), ("snap", "s1", None),
             ("put", "/c", pieces[1] * 3), ("rm", "/a", None), ("snap", "s2", None),
             ("put", "/b", pieces[2]), ("rm", "/c", None), ("put", "/d", pieces[0])]
    for op, arg, data in steps:
        for name in ("tank/d", "tank/n"):
            if op == "put":
                put(tmp, capsys, name, arg, data)
            elif op == "rm":
                rm(name, arg)
            else:
                ok(capsys, "snapshot", f"{name}@{arg}")
        names = ["tank/d"] + [f"tank/d@{s}" for s in ("s1", "s2")
                              if run(capsys, "list", f"tank/d@{s}")[0] == 0]
        for name in names:
            d, n = space(capsys, name), space(capsys, name.replace("tank/d", "tank/n"))
            assert d.keys() == n.keys(), (op, name)
            for prop in d:
                assert abs(d[prop] - n[prop]) <= NODES_APART, (op, arg, name, prop, d, n)
    pool = open_pool("tank")
    try:
        ddt = pool.blocks.ddt
        t = ddt.totals()
        assert t[4] > t[0]                  # some records are shared
        # the pool holds each table entry's block once: what dedup saved is exactly the
        # references beyond the first, and the ratio is referenced over allocated
        assert ddt.ratio_percent() == t[7] * 100 // t[3] > 100
    finally:
        pool.close()


def test_dedupratio_and_status_D_as_openzfs_prints_them(env, capsys):
    tmp = env
    ok(capsys, "create", "-o", "dedup=sha256", "-o", "compression=off", "tank/a")
    data = random.Random(3).randbytes(128 << 10)
    assert "dedup: no DDT entries" in ok(capsys, "pool", "status", "-D", "tank")
    for i in range(4):
        put(tmp, capsys, "tank/a", f"/x{i}", data)          # one block, 4 references
    put(tmp, capsys, "tank/a", "/u", random.Random(4).randbytes(256 << 10))  # 2 unique
    listed = ok(capsys, "pool", "list", "tank").splitlines()
    cols = listed[0].split()
    assert listed[1].split()[cols.index("DEDUP")] == "2.00x"    # 6 references / 3 blocks
    assert ok(capsys, "pool", "get", "-H", "-o", "value", "dedupratio", "tank").strip() == "2.00x"
    out = ok(capsys, "pool", "status", "-D", "tank")
    tail = out[out.index("errors: No known data errors"):].splitlines()
    assert tail[1] == ""
    assert tail[2].startswith(" dedup: DDT entries 3, size ") and tail[2].endswith(" in core")
    assert tail[3:] == [
        "",
        "bucket              allocated                       referenced          ",
        "______   ______________________________   ______________________________",
        "refcnt   blocks   LSIZE   PSIZE   DSIZE   blocks   LSIZE   PSIZE   DSIZE",
        "------   ------   -----   -----   -----   ------   -----   -----   -----",
        "     1        2    256K    256K    256K        2    256K    256K    256K",
        "     4        1    128K    128K    128K        4    512K    512K    512K",
        " Total        3    384K    384K    384K        6    768K    768K    768K",
        ""]
    assert "dedup:" not in ok(capsys, "pool", "status", "tank")


def test_verify_keeps_colliding_blocks_apart(env, capsys, monkeypatch):
    """Two different records given the same checksum (the hash forced to collide): with
    verify the second is compared byte for byte and stored on its own, so both read back
    right; with dedup=on (no verify) the table trusts the checksum, as OpenZFS's does."""
    tmp = env
    real = blocks.checksum

    def colliding(data, algorithm):
        if bytes(data[:7]) == b"COLLIDE":
            return hashlib.sha256(b"one digest for all").digest()
        return real(data, algorithm)
    monkeypatch.setattr(blocks, "checksum", colliding)
    one, two = b"COLLIDE" + b"1" * 9000, b"COLLIDE" + b"2" * 9000
    ok(capsys, "create", "-o", "dedup=verify", "-o", "compression=off", "tank/v")
    put(tmp, capsys, "tank/v", "/one", one)
    put(tmp, capsys, "tank/v", "/two", two)
    put(tmp, capsys, "tank/v", "/again", one)                # a true duplicate still dedups
    assert cat(tmp, capsys, "tank/v", "/one") == one
    assert cat(tmp, capsys, "tank/v", "/two") == two
    assert cat(tmp, capsys, "tank/v", "/again") == one
    assert table() == {1: [1, len(one), len(one), 9216, 2, 2 * len(one), 2 * len(one),
                           2 * 9216]}
    ok(capsys, "create", "-o", "dedup=on", "-o", "compression=off", "tank/o")
    put(tmp, capsys, "tank/o", "/two", two)
    assert cat(tmp, capsys, "tank/o", "/two") == one        # what verify is for
    ok(capsys, "destroy", "tank/o")


def test_scrub_reads_a_deduplicated_block_once_and_repairs_it(env, capsys):
    tmp = env
    ok(capsys, "create", "-o", "dedup=on", "-o", "copies=2", "-o", "compression=off",
       "tank/a")
    data = random.Random(5).randbytes(128 << 10)
    for i in range(5):
        put(tmp, capsys, "tank/a", f"/f{i}", data)
    pool = open_pool("tank")
    try:
        (key, entry), = pool.blocks.ddt.entries()
        path = pool.leaves()[0].path
    finally:
        pool.close()
    with open(path, "r+b") as f:                            # damage the second copy
        f.seek(entry.bp.dvas[1].offset)
        f.write(b"\xa5" * 512)
    ok(capsys, "pool", "scrub", "-w", "tank")
    out = ok(capsys, "pool", "status", "tank")
    assert "scrub repaired 128K" in out and "with 0 errors" in out, out   # (the block)
    allocated = int(pool_prop(capsys, "allocated"))
    pool = open_pool("tank")
    try:
        from fusezfs.engine import scrub
        st = scrub.load(pool)
        # every block once: the deduplicated record counted once, not five times
        assert st.examined <= allocated
    finally:
        pool.close()
    ok(capsys, "pool", "scrub", "-w", "tank")
    assert "scrub repaired 0B" in ok(capsys, "pool", "status", "tank")
    for i in range(5):
        assert cat(tmp, capsys, "tank/a", f"/f{i}") == data


def test_pool_verify_finds_a_wrong_reference_count(env, capsys):
    tmp = env
    ok(capsys, "create", "-o", "dedup=on", "tank/a")
    data = random.Random(6).randbytes(50_000)
    put(tmp, capsys, "tank/a", "/x", data)
    put(tmp, capsys, "tank/a", "/y", data)
    pool = open_pool("tank")
    try:
        ddt = pool.blocks.ddt
        (key, entry), = ddt.entries()
        ddt._put(key, entry, dedup.Entry(entry.bp, entry.refcount + 1))   # a lost free
        pool.sync()
    finally:
        pool.close()
    code, out, _err = run(capsys, "pool", "verify", "tank")
    assert code == 1 and "refcount 3, 2 block pointers reference it" in out
    pool = open_pool("tank")
    try:
        ddt = pool.blocks.ddt
        (key, entry), = ddt.entries()
        ddt._put(key, entry, dedup.Entry(entry.bp, 2))      # put right for the final check
        pool.sync()
    finally:
        pool.close()
    assert run(capsys, "pool", "verify", "tank")[0] == 0


def test_the_table_lives_on_disk_with_bounded_memory(env, capsys):
    """Thousands of entries: the table's nodes are written at each txg and only the pool's
    bounded node cache holds decoded ones; a read after re-import finds every entry."""
    tmp = env
    ok(capsys, "create", "-o", "dedup=on", "-o", "recordsize=4K", "-o", "compression=off",
       "tank/a")
    data = random.Random(7).randbytes(3000 * 4096)
    put(tmp, capsys, "tank/a", "/big", data)
    put(tmp, capsys, "tank/a", "/copy", data)
    pool = open_pool("tank")
    try:
        ddt = pool.blocks.ddt
        assert ddt.totals()[:1] == [3000] and ddt.totals()[4] == 6000
        tree = pool.objset(dedup.DDT_OBJSET, create=False)
        assert not tree.dirty
        assert len(pool.node_cache) <= pool.node_cache.max_nodes
        assert sum(1 for _ in ddt.entries()) == 3000
    finally:
        pool.close()


def test_a_power_cut_at_every_write_of_the_dedup_workload_is_clean():
    summary = crashsim.run(["file"], ["keep", "reorder"], 3, 6, load="dedup")
    assert summary.cuts > 20
    assert summary.damaged == [], summary.damaged[:3]


def test_fzdump_reads_the_table_and_finds_pointers_it_lacks(env, capsys):
    """The independent dumper (written from FORMAT.md) prints the table's entries, checks them
    against the dedup pointers and the MOS's totals, and finds an entry gone."""
    import subprocess
    import sys
    tmp = env
    ok(capsys, "create", "-o", "dedup=on", "tank/a")
    data = random.Random(8).randbytes(200_000)
    put(tmp, capsys, "tank/a", "/x", data)
    put(tmp, capsys, "tank/a", "/y", data)
    pool = open_pool("tank")
    path = pool.leaves()[0].path
    pool.close()

    def fzdump() -> tuple[int, str]:
        r = subprocess.run([sys.executable, "tools/fzdump", "--verify", path],
                           capture_output=True, text=True, timeout=120,
                           cwd=__file__.rsplit("/tests/", 1)[0])
        assert "Traceback" not in r.stderr, r.stderr
        return r.returncode, r.stdout
    code, out = fzdump()
    assert code == 0 and out.count("refcount=2: ") == 2, out[-2000:]
    pool = open_pool("tank")
    try:
        ddt = pool.blocks.ddt
        key, entry = next(ddt.entries())
        ddt._put(key, entry, None)                          # an entry lost
        pool.sync()
        code, out = fzdump()
        assert code == 1 and "no dedup table entry with its DVAs" in out
        ddt._put(key, None, entry)                          # put back for the final check
    finally:
        pool.close()


def histogram(status: str) -> list[str]:
    """`zpool status -D`'s table, from the `bucket` line to the totals."""
    lines = status.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("bucket"))
    end = next(i for i, line in enumerate(lines) if line.startswith(" Total"))
    return lines[start:end + 1]


@pytest.mark.usefixtures("needs_fuse")
def test_table_and_ratio_match_zfs_fuse(env, capsys):
    """The same files into a dedup=on filesystem of zfs-fuse (pool version 23, real ZFS) and
    of fusezfs: the same DEDUP column and the same histogram, line for line (zfs-fuse's
    `DDT entries` line is older: no ` dedup: ` and raw byte counts, so it is not compared)."""
    import sys
    from zfsfuse import ZfsFuse, require
    require()
    tmp = env
    x, y = random.Random(1).randbytes(256 << 10), random.Random(2).randbytes(128 << 10)
    with ZfsFuse(workdir=tmp / "zf") as zf:
        mnt = str(zf.workdir / "mnt")
        zf.zpool("create", "-m", mnt, "dd", zf.sparse_file("d0", 128 * MiB), check=True)
        zf.zfs("create", "-o", "dedup=on", "-o", "compression=off", "dd/a", check=True)
        code = ("import random, sys\n"
                "x = random.Random(1).randbytes(256 << 10)\n"
                "y = random.Random(2).randbytes(128 << 10)\n"
                "for i in range(3):\n"
                "    open(f'{sys.argv[1]}/a/x{i}', 'wb').write(x)\n"
                "open(f'{sys.argv[1]}/a/y', 'wb').write(y)\n")
        zf.run([sys.executable, "-c", code, mnt], check=True)
        zf.zfs("set", "org.fusezfs.test:sync=1", "dd", check=True)   # a sync task: committed
        theirs_list = zf.zpool("list", "dd", check=True).stdout.splitlines()
        theirs = zf.zpool("status", "-D", "dd", check=True).stdout
    ok(capsys, "create", "-o", "dedup=on", "-o", "compression=off", "tank/a")
    for i in range(3):
        put(tmp, capsys, "tank/a", f"/x{i}", x)
    put(tmp, capsys, "tank/a", "/y", y)
    ours_list = ok(capsys, "pool", "list", "tank").splitlines()

    def dedup_column(rows: list[str]) -> str:
        return rows[1].split()[rows[0].split().index("DEDUP")]
    assert dedup_column(ours_list) == dedup_column(theirs_list) == "2.33x"
    assert histogram(ok(capsys, "pool", "status", "-D", "tank")) == histogram(theirs)
