"""Rewind: when the newest txg cannot be read, the import says so in OpenZFS's words with its
`-F` suggestion; `zpool import -F [-n] [-X]` goes back to the newest older txg whose whole tree
verifies (frees are held REWIND_TXGS txgs, so those trees are whole), says how much was lost,
and the rewind sticks across later imports."""
from __future__ import annotations

import pytest

from clitools import pool_files, run
from fusezfs.engine.blocks import Policy
from fusezfs.cli.cli_pool import open_pool
from fusezfs.engine.devices import FileDevice
from fusezfs.formats.bp import BT_DATA, decode_bp, encode_bp
from fusezfs.engine.tree import REF_BLOCK
from fusezfs.engine.verify import verify
from fusezfs.engine.vdevs import Leaf



@pytest.fixture
def env(tmp_path, monkeypatch):
    return tmp_path, pool_files(tmp_path, monkeypatch, 1)[0]


def commit_versions(n: int) -> list[dict[bytes, bytes]]:
    """n txgs, each changing the tree: the content after each."""
    pool = open_pool("tank")
    tree = pool.objset(b"t")
    states, state = [], {}
    for i in range(n):
        key, data = b"k%d" % (i % 3), b"version %d " % i * 500
        tree.put(key, encode_bp(pool.blocks.write(data, BT_DATA, Policy())), REF_BLOCK)
        state = {**state, key: data}
        pool.sync()
        states.append(state)
    pool.close()
    return states


def uberblocks(path: str) -> list:
    dev = FileDevice(path, readonly=True)
    try:
        return sorted({ub.txg: ub for ub in Leaf(dev, 0).read_uberblocks()}.values(),
                      key=lambda u: -u.txg)
    finally:
        dev.close()


def wreck(path: str, ub) -> None:
    """Destroy every copy of the txg's MOS root node: that txg cannot be loaded."""
    with open(path, "r+b") as f:
        for d in ub.mos.dvas:
            f.seek(d.offset)
            f.write(b"\0" * ub.mos.psize)


def content(name: str) -> dict[bytes, bytes]:
    pool = open_pool(name)
    try:
        tree = pool.objset(b"t", create=False)
        return {k: pool.blocks.read(decode_bp(v)) for k, v, _r in tree.scan_items()}
    finally:
        pool.close()


def test_import_F_rewinds_to_the_newest_whole_txg(env, capsys):
    tmp, disk = env
    assert run(capsys, "pool", "create", "tank", disk)[0] == 0
    states = commit_versions(5)
    newest = uberblocks(disk)[0]
    wreck(disk, newest)
    code, out, err = run(capsys, "pool", "list", "-H", "-o", "name,health", "tank")
    assert (code, out) == (0, "tank\tUNAVAIL\n")              # listed, not an error
    code, out, err = run(capsys, "list", "tank")
    assert code == 1 and "cannot import 'tank': I/O error" in err
    assert ("\n\tRecovery is possible, but will result in some data loss.\n"
            "\tReturning the pool to its state as of ") in err
    assert ("Recovery can be attempted\n\tby executing 'zpool import -F tank'.  A scrub of "
            "the pool\n\tis strongly recommended after recovery.") in err
    before = open(disk, "rb").read()
    code, out, err = run(capsys, "pool", "import", "-F", "-n", "tank")
    assert (code, err) == (0, "") and out.startswith("Would be able to return tank to its "
                                                     "state as of ")
    assert open(disk, "rb").read() == before                 # -n writes nothing
    code, out, err = run(capsys, "pool", "import", "-F", "tank")
    assert (code, err) == (0, "") and out.startswith("Pool tank returned to its state as of ")
    assert content("tank") == states[-2]
    pool = open_pool("tank")
    assert pool.synced_txg > newest.txg                       # the rewind outranks what it gave up
    assert verify(pool).ok
    pool.close()
    assert run(capsys, "pool", "export", "tank")[0] == 0      # and sticks across imports
    assert run(capsys, "pool", "import", "-d", str(tmp), "tank")[0] == 0
    assert content("tank") == states[-2]
    code, out, err = run(capsys, "pool", "import", "-F", "tank")   # a whole pool: nothing to do
    assert code == 1 and "a pool with that name already exists" in err


def test_rewind_gives_up_past_the_held_txgs_unless_X(env, capsys):
    tmp, disk = env
    assert run(capsys, "pool", "create", "tank", disk)[0] == 0
    states = commit_versions(8)
    ubs = uberblocks(disk)
    for ub in ubs[:4]:                 # the newest and the REWIND_TXGS (2) before it, and one more
        wreck(disk, ub)
    code, out, err = run(capsys, "pool", "import", "-F", "tank")
    assert code == 1 and "Destroy and re-create the pool from\n\ta backup source." in err
    code, out, err = run(capsys, "pool", "import", "-F", "-X", "tank")
    assert code == 0 and out.startswith("Pool tank returned to its state as of ")
    got = content("tank")
    assert got in states[:-4], got                   # an older whole state, from before the damage
    pool = open_pool("tank")
    assert verify(pool).ok
    pool.close()


def test_rewind_usage(env, capsys):
    tmp, disk = env
    code, _, err = run(capsys, "pool", "import", "-n", "tank")
    assert code == 2 and err.startswith("-n or -X only meaningful with -F\nusage:")
