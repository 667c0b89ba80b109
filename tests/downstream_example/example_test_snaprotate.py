"""An example downstream test suite: it uses only fusezfs's pytest fixtures, and runs unchanged
on the emulation and on a real ZFS (pytest --fusezfs-backend=passthrough). tests/test_plugin.py
runs it both ways with pytester; docs/PYTEST.md shows it."""
import os
import subprocess
import sys

import pytest

TOOL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "snaprotate.py")


def zfs(*args):
    return subprocess.run(["zfs", *args], capture_output=True, text=True)


def rotate(dataset, keep=3):
    return subprocess.run([sys.executable, TOOL, dataset, "--keep", str(keep)],
                          capture_output=True, text=True)


def snapshots(dataset):
    return zfs("list", "-H", "-o", "name", "-t", "snapshot", "-r", dataset).stdout.split()


def test_keeps_the_newest_and_leaves_other_snapshots_alone(fusezfs_pool):
    data = fusezfs_pool.dataset("data")
    assert zfs("create", data).returncode == 0
    assert zfs("snapshot", f"{data}@manual").returncode == 0
    for _ in range(4):
        assert rotate(data, keep=2).returncode == 0
    assert snapshots(data) == [f"{data}@manual", f"{data}@auto-0003", f"{data}@auto-0004"]


def test_a_missing_dataset_fails_in_zfs_words(fusezfs_pool):
    r = rotate(fusezfs_pool.dataset("nosuch"))
    assert r.returncode == 1
    assert r.stderr == f"cannot open '{fusezfs_pool.dataset('nosuch')}': dataset does not exist\n"


def test_a_snapshot_keeps_what_was_written(fusezfs_pool):
    data = fusezfs_pool.dataset("data")
    assert zfs("create", data).returncode == 0
    fusezfs_pool.backend.write_file(data, "/config", b"version 1\n")
    assert rotate(data).returncode == 0
    fusezfs_pool.backend.write_file(data, "/config", b"version 2\n")
    assert zfs("rollback", f"{data}@auto-0001").returncode == 0
    assert fusezfs_pool.backend.read_file(data, "/config") == b"version 1\n"


def test_through_the_mount(fusezfs_mounted_pool):
    pool = fusezfs_mounted_pool
    assert zfs("create", pool.dataset("www")).returncode == 0
    with open(os.path.join(pool.path("www"), "index.html"), "w") as f:
        f.write("<h1>hello</h1>\n")
    assert rotate(pool.dataset("www")).returncode == 0
    written = zfs("get", "-H", "-p", "-o", "value", "used", pool.dataset("www")).stdout
    assert int(written) > 0


@pytest.mark.fusezfs_backend("emulated")
def test_the_emulation_says_so(fusezfs_pool):
    assert "-fusezfs-" in zfs("version").stdout
