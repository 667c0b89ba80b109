"""fusezfs's pytest plugin (fusezfs/pytest_plugin.py) as a downstream project uses it: the
example suite in tests/downstream_example/ (a snapshot-rotation tool and its tests, which use
only the plugin's fixtures) runs in a pytester sandbox on the emulation and on a real ZFS
(zfs-fuse in a private mount namespace, named through FUSEZFS_ZFS/FUSEZFS_ZPOOL), with the
same outcome; teardown leaves no pool behind and touches no pool the suite did not make."""
from __future__ import annotations

import os
import uuid
from importlib.metadata import entry_points

import pytest

EXAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "downstream_example")
TESTS = 5           # in example_test_snaprotate.py


def sandbox(pytester: pytest.Pytester) -> None:
    """The example project in the sandbox: its tool and its tests."""
    with open(os.path.join(EXAMPLE, "snaprotate.py")) as f:
        pytester.makepyfile(snaprotate=f.read())
    with open(os.path.join(EXAMPLE, "example_test_snaprotate.py")) as f:
        pytester.makepyfile(test_snaprotate=f.read())


def test_the_plugin_is_registered_for_pytest():
    plugins = {e.name: e.value for e in entry_points(group="pytest11")}
    assert plugins.get("fusezfs") == "fusezfs.pytest_plugin"


def test_example_suite_on_the_emulation(pytester, needs_fuse, monkeypatch, tmp_path):
    monkeypatch.delenv("FUSEZFS_BACKEND", raising=False)
    monkeypatch.delenv("FUSEZFS_NO_SERVICE", raising=False)    # as downstream: the service
    monkeypatch.setenv("FUSEZFS_SERVICE_IDLE", "30")     # a service left behind would end
    state = tmp_path / "outer-state"           # the run must not use this one
    monkeypatch.setenv("FUSEZFS_STATE_DIR", str(state))
    sandbox(pytester)
    result = pytester.runpytest_subprocess("--fusezfs-backend=emulated", "-p",
                                           "no:cacheprovider", "-v")
    result.assert_outcomes(passed=TESTS)
    assert not state.exists()                  # the session had a state directory of its own
    [session_state] = pytester.path.glob("runpytest-0/fusezfs-state[0-9]*")
    assert (session_state / "service.lock").exists()           # a service served the tests
    assert not (session_state / "service.sock").exists()       # and ended with the session
    assert (session_state / "pools.json").read_text().strip() in ("{}", "")   # none left


def test_example_suite_on_a_real_zfs(pytester, monkeypatch, tmp_path):
    from zfsfuse import ZfsFuse, require
    require()
    with ZfsFuse() as zf:
        pid = zf.helper.pid
        monkeypatch.setenv("FUSEZFS_ZFS", f"nsenter -t {pid} -m /usr/sbin/zfs")
        monkeypatch.setenv("FUSEZFS_ZPOOL", f"nsenter -t {pid} -m /usr/sbin/zpool")
        monkeypatch.setenv("FUSEZFS_MOUNT_ROOT", f"/proc/{pid}/root")
        # a pool that is not the suite's: it must survive the suite's teardown
        bystander = "by" + uuid.uuid4().hex[:6]
        zf.zpool("create", "-m", "none", bystander, zf.sparse_file("bystander", 96 << 20),
                 check=True)
        sandbox(pytester)
        result = pytester.runpytest_subprocess("--fusezfs-backend=passthrough", "-p",
                                               "no:cacheprovider", "-v", "-rs")
        result.assert_outcomes(passed=TESTS - 1, skipped=1)
        result.stdout.fnmatch_lines(["SKIPPED*fusezfs: runs on the emulated backend only (this "
                                     "run: passthrough)"])
        assert zf.pools() == [bystander]


def test_a_clear_skip_where_no_real_zfs_can_run(pytester, monkeypatch, tmp_path):
    monkeypatch.setenv("FUSEZFS_ZFS", str(tmp_path / "no-such-zfs"))
    monkeypatch.setenv("FUSEZFS_ZPOOL", str(tmp_path / "no-such-zpool"))
    sandbox(pytester)
    result = pytester.runpytest_subprocess("--fusezfs-backend=passthrough", "-p",
                                           "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=TESTS)
    result.stdout.fnmatch_lines(["*fusezfs: passthrough backend: no real zfs and zpool "
                                 "commands found*"])
