"""Pools that outlive the state that knew them: a lost state directory (the pool is found by
scanning, as "last accessed by another system", and imported with -f), a pool file deleted
(UNAVAIL in list and status, removed with export -f or destroy -f, the other pools unharmed),
a corrupt or unreadable registry (an error naming the file and the way back, never read as
empty), and an unusable state directory (one line, no traceback)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from clitools import pool_files, run



@pytest.fixture
def env(tmp_path, monkeypatch):
    return tmp_path, pool_files(tmp_path, monkeypatch, 3, mib=96)


def put(tmp, capsys, dest: str, data: bytes) -> None:
    src = tmp / "src"
    src.write_bytes(data)
    assert run(capsys, "cp", str(src), dest)[0] == 0


def test_a_lost_state_directory_loses_no_pool(env, capsys):
    tmp, d = env
    assert run(capsys, "pool", "create", "tank", d[0])[0] == 0
    put(tmp, capsys, "tank:/f", b"kept" * 1000)
    shutil.rmtree(tmp / "state")                        # the state directory is gone
    code, out, err = run(capsys, "pool", "list")
    assert code == 0 and out == "no pools available\n"
    code, out, err = run(capsys, "pool", "import", "-d", str(tmp))
    assert code == 0 and "  pool: tank" in out
    assert "status: The pool was last accessed by another system." in out
    assert "the '-f' flag." in out and "ZFS-8000-EY" in out
    code, out, err = run(capsys, "pool", "import", "-d", str(tmp), "tank")
    assert code == 1 and err.startswith("cannot import 'tank': pool was previously in use from "
                                        "another system.\nLast accessed by ")
    assert "use 'zpool import -f' to import the pool." in err
    assert run(capsys, "pool", "import", "-d", str(tmp), "-f", "tank")[0] == 0
    code, out, _ = run(capsys, "cp", "tank:/f", str(tmp / "back"))
    assert code == 0 and (tmp / "back").read_bytes() == b"kept" * 1000
    code, out, err = run(capsys, "pool", "import", "-d", str(tmp))   # imported: not listed
    assert "tank" not in out


def test_a_deleted_pool_file_is_unavail_and_can_be_forgotten(env, capsys):
    tmp, d = env
    assert run(capsys, "pool", "create", "tank", d[0])[0] == 0
    assert run(capsys, "pool", "create", "other", d[1])[0] == 0
    os.unlink(d[0])
    code, out, err = run(capsys, "pool", "list", "-H", "-o", "name,health")
    assert (code, out) == (0, "other\tONLINE\ntank\tUNAVAIL\n"), err
    code, out, err = run(capsys, "pool", "status", "tank")
    assert code == 0 and " state: UNAVAIL" in out and "cannot open" in out and \
        "insufficient replicas" in out
    code, out, err = run(capsys, "pool", "status")                   # every pool, both shown
    assert "  pool: other" in out and "  pool: tank" in out
    code, _, err = run(capsys, "pool", "export", "tank")
    assert code == 1
    assert run(capsys, "pool", "export", "-f", "tank")[0] == 0
    assert run(capsys, "pool", "list", "-H", "-o", "name")[1] == "other\n"
    assert run(capsys, "pool", "create", "tank", d[2])[0] == 0       # the name is free again
    os.unlink(d[2])
    assert run(capsys, "pool", "destroy", "tank")[0] == 1
    assert run(capsys, "pool", "destroy", "-f", "tank")[0] == 0
    assert run(capsys, "pool", "list", "-H", "-o", "name")[1] == "other\n"


def test_a_corrupt_registry_is_an_error_not_an_empty_one(env, capsys):
    tmp, d = env
    assert run(capsys, "pool", "create", "tank", d[0])[0] == 0
    reg = tmp / "state" / "pools.json"
    reg.write_text("{ this is not json")
    for argv in (["pool", "list"], ["list"], ["pool", "create", "other", d[1]]):
        code, out, err = run(capsys, *argv)
        assert code == 1 and err == (
            f"cannot read the pool registry '{reg}': not a valid registry; move it aside and "
            f"run 'zpool import -d DIR -f POOL' for each pool to rebuild it\n"), (argv, err)
    assert reg.read_text() == "{ this is not json"                   # never overwritten
    reg.rename(tmp / "pools.json.bad")                               # the way back
    assert run(capsys, "pool", "import", "-d", str(tmp), "-f", "tank")[0] == 0
    assert run(capsys, "pool", "list", "-H", "-o", "name")[1] == "tank\n"


def test_an_unusable_state_directory_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    env = dict(os.environ, FUSEZFS_STATE_DIR=str(blocker / "state"))
    r = subprocess.run([sys.executable, "-m", "fusezfs.cli", "pool", "list"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr == (f"cannot use the state directory '{blocker / 'state'}': Not a directory "
                        f"(set FUSEZFS_STATE_DIR to a directory of your own)\n")
