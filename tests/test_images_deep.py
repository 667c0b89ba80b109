"""Deep chains: a 50-layer image imports; every layer's snapshot holds exactly the state the
layers up to it describe (the reference applier of tests/imagekit.py); reading a file from
the top layer costs the same block reads as from the base (a clone's tree is whole: no lookup
walks down the chain)."""
from __future__ import annotations

import random

from fusezfs.api import Handle
from fusezfs.cli.cli_pool import open_pool
from imagekit import D, F, OPQ, WH, diff_trees, docker_save, dump_fs, layer_tar
from test_images_import import chains, env, ok, reference  # noqa: F401  (env: the fixture)

DEPTH = 50


def deep_layers(many: int = 0) -> list[bytes]:
    """50 layers; `many` more files in the base (a tree of several levels)."""
    rnd = random.Random(50)
    tars = [layer_tar([D("base"), F("base/big", rnd.randbytes(256 * 1024)),
                       D("d"), F("d/f0", b"0"), F("common", b"v0")]
                      + [F(f"many/{i:05d}", b"x") for i in range(many)])]
    for i in range(1, DEPTH):
        entries = [F(f"d/f{i}", b"%d" % i, mtime=(1_700_000_000 + i) * 10**9 + i),
                   WH(f"d/f{i - 1}"), F("common", b"v%d" % i)]
        if i % 10 == 0:
            entries += [OPQ("o"), F("o/only", b"%d" % i)]
        if i % 7 == 0:
            entries.append(D("d", mode=0o700 + i % 8, mtime=i * 10**9))
        tars.append(layer_tar(entries))
    return tars


def test_fifty_layers_each_snapshot_holds_its_state(env, capsys):
    tars = deep_layers()
    docker_save(str(env / "deep.tar"), [(tars, ["deep:50"])])
    out = ok(capsys, "image", "import", "-q", "tank/images", "deep.tar")
    assert out == "Loaded image: deep:50\n"
    want = reference(tars)
    h = Handle(open_pool("tank"))
    try:
        for i, c in enumerate(chains(tars)):
            got = dump_fs(h.filesystem(f"tank/images/{c[7:]}@layer"))
            assert diff_trees(got, want[i]) == [], f"layer {i + 1}"
    finally:
        h.close()
    # the chain is 50 clones deep
    origins = ok(capsys, "list", "-H", "-o", "origin", "-r", "tank/images").split()
    assert sum(o.endswith("@layer") for o in origins) == DEPTH - 1


def _reads(snapshot: str, path: str) -> tuple[int, bytes]:
    """Blocks read (tree nodes and data, cold caches) to read `path` in `snapshot`."""
    pool = open_pool("tank")
    try:
        h = Handle(pool)
        count = [0]
        read, read_many = pool.blocks.read, pool.blocks.read_many

        def counting_read(bp, *a, **kw):
            count[0] += 1
            return read(bp, *a, **kw)

        def counting_many(bps, *a, **kw):
            count[0] += len(bps)
            return read_many(bps, *a, **kw)
        pool.blocks.read, pool.blocks.read_many = counting_read, counting_many
        data = h.filesystem(snapshot).read_file(path)
        return count[0], data
    finally:
        pool.close()


def test_reading_from_the_top_costs_what_reading_from_the_base_does(env, capsys):
    tars = deep_layers(many=3000)
    docker_save(str(env / "deep.tar"), [(tars, ["deep:50"])])
    ok(capsys, "image", "import", "-q", "tank/images", "deep.tar")
    c = chains(tars)
    base_reads, base_data = _reads(f"tank/images/{c[0][7:]}@layer", "/base/big")
    top_reads, top_data = _reads(f"tank/images/{c[-1][7:]}@layer", "/base/big")
    assert top_data == base_data and len(base_data) == 256 * 1024
    assert base_reads >= 5                      # a tree of more than one level, two records
    # the same tree height and the same records: the same reads (one more level at most,
    # if the top's tree grew a level); nothing proportional to the 50 layers below
    assert base_reads <= top_reads <= base_reads + 1, (base_reads, top_reads)
    mid_reads, _ = _reads(f"tank/images/{c[DEPTH // 2][7:]}@layer", "/base/big")
    assert abs(mid_reads - top_reads) <= 1
