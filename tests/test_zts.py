"""OpenZFS 2.1.11's own command-line tests through tools/zts: a fixed handful of fast ones, and
the isolation that makes running them safe.

tools/zts fetches the suite (Debian's zfs-test, unpacked, never installed) and runs it in a
mount and pid namespace of its own over an overlay of /. These tests skip with the reason
where the package cannot be fetched or the namespace cannot be made, and fail there under
FUSEZFS_TEST_STRICT=1 (prerequisites.skip_or_fail). The full list (405 tests) takes far longer
than the suite may: its numbers are in docs/COMPATIBILITY.md with the command that gives them.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from prerequisites import skip_or_fail

REPO = Path(__file__).resolve().parent.parent
ZTS = REPO / "tools" / "zts"
# fast tests that fusezfs passes: bad usage of both programs, zpool's usage and history,
# and zfs get/set refusals
SUBSET = ["zpool/zpool_001_neg", "zpool/zpool_003_pos", "zfs_get/zfs_get_010_neg"]


def _tool():
    loader = importlib.machinery.SourceFileLoader("zts_tool", str(ZTS))
    spec = importlib.util.spec_from_loader("zts_tool", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def zts():
    tool = _tool()
    skip_or_fail(tool.fetch())
    return tool


@pytest.fixture(scope="module")
def namespaces(zts):
    skip_or_fail(zts.namespaces_unavailable())


def run_zts(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ZTS), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def test_the_list_is_the_405_command_line_tests(zts):
    r = run_zts("--list")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[-1] == "405 tests"
    dirs = {line.split("/")[0] for line in lines[:-1]}
    assert dirs == set(zts.DIRS) and len(dirs) == 44
    # linux.run's own tests of a directory are in the list with common.run's
    assert "zfs_mount/zfs_multi_mount" in lines and "zfs_create/zfs_create_001_pos" in lines
    r = run_zts("--list", "zfs_get/")
    assert r.stdout.splitlines()[-1] == "10 tests"


def test_a_cleanup_that_deletes_tmp_leaves_the_hosts_tmp_alone(namespaces):
    """What zfs_unmount_008_neg's cleanup does with an empty $dir, and worse: everything under
    /tmp and /var/tmp deleted inside; the host's files there survive."""
    with tempfile.NamedTemporaryFile(dir="/tmp", prefix="zts-keep-") as tmp, \
            tempfile.NamedTemporaryFile(dir="/var/tmp", prefix="zts-keep-") as vartmp:
        r = run_zts("--exec", "rm -rf /tmp/* /var/tmp/* && mkdir /tmp/gone && "
                    f"test ! -e {tmp.name} && test ! -e {vartmp.name} && "
                    "test -n \"$TESTPOOL$DISKS\" || echo suite-variables-missing; "
                    "echo zts-ran", timeout=120)
        assert "zts-ran" in r.stdout, r.stdout + r.stderr
        assert os.path.exists(tmp.name) and os.path.exists(vartmp.name)
        assert not os.path.exists("/tmp/gone")


def test_the_namespace_is_what_the_suite_needs(namespaces):
    """default.cfg's variables reach the tests, three disks exist, sudo runs the command as the
    namespace's root, and zfs is fusezfs's."""
    r = run_zts("--exec", ". $STF_SUITE/include/default.cfg; echo pool=$TESTPOOL; "
                "for d in $DISKS; do test -f $d && echo disk; done; sudo -E -u root id -u; "
                "zfs version", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout.splitlines()
    assert "pool=testpool" in out and out.count("disk") == 3 and "0" in out
    assert any(line.startswith("zfs-2.1.11-fusezfs") for line in out), out


def test_a_fixed_subset_of_the_suite_passes(namespaces, tmp_path):
    out = tmp_path / "results.json"
    r = run_zts("--json", str(out), "-t", "120", *SUBSET, timeout=900)
    results = json.loads(out.read_text())["fusezfs"]
    assert results == {name: "PASS" for name in SUBSET}, r.stdout[-3000:]
    assert r.returncode == 0
