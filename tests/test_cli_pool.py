"""`fusezfs pool ...` driven as a user would: exit codes, messages, outputs."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fusezfs import cli
from fusezfs.engine.pool import read_label
from fusezfs.engine.devices import FileDevice

MiB = 1 << 20


@pytest.fixture
def env(tmp_path, monkeypatch):
    state = tmp_path / "state"
    monkeypatch.setenv("FUSEZFS_STATE_DIR", str(state))
    files = []
    for i in range(4):
        p = tmp_path / f"disk{i}"
        with open(p, "wb") as f:
            f.truncate(128 * MiB)
        files.append(str(p))
    return tmp_path, files


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_create_list_get_set_export_import_destroy(env, capsys):
    tmp, files = env
    assert run(capsys, "pool", "create", "tank", files[0]) == (0, "", "")
    code, out, err = run(capsys, "pool", "list", "-H", "-o", "name,health,cap,dedup")
    assert (code, out) == (0, "tank\tONLINE\t0%\t1.00x\n")
    code, out, _ = run(capsys, "pool", "list", "-Hp", "-o", "name,size,alloc,free")
    name, size, alloc, free = out.split()
    assert int(size) == int(alloc) + int(free) and 120 * MiB < int(size) < 128 * MiB
    code, out, _ = run(capsys, "pool", "list")
    assert out.splitlines()[0].split() == ["NAME", "SIZE", "ALLOC", "FREE", "CKPOINT",
                                           "EXPANDSZ", "FRAG", "CAP", "DEDUP", "HEALTH", "ALTROOT"]
    assert run(capsys, "pool", "set", "comment=hello world", "tank")[0] == 0
    code, out, _ = run(capsys, "pool", "get", "-H", "comment,failmode", "tank")
    assert out == "tank\tcomment\thello world\tlocal\ntank\tfailmode\twait\tdefault\n"
    code, out, _ = run(capsys, "pool", "get", "all", "tank")
    assert out.splitlines()[0].split() == ["NAME", "PROPERTY", "VALUE", "SOURCE"]
    assert any(line.split()[:3] == ["tank", "health", "ONLINE"] for line in out.splitlines())
    assert run(capsys, "pool", "export", "tank") == (0, "", "")
    assert run(capsys, "pool", "list", "tank")[:3:2] == (1, "cannot open 'tank': no such pool\n")
    code, out, _ = run(capsys, "pool", "import", "-d", str(tmp))
    assert code == 0 and "pool: tank" in out
    assert run(capsys, "pool", "import", "-d", str(tmp), "tank") == (0, "", "")
    code, out, _ = run(capsys, "pool", "get", "-H", "-o", "value", "comment", "tank")
    assert out == "hello world\n"
    assert run(capsys, "pool", "destroy", "tank") == (0, "", "")
    code, out, _ = run(capsys, "pool", "list")
    assert out == "no pools available\n"
    dev = FileDevice(files[0], readonly=True)
    assert read_label(dev)["state"] == "destroyed"
    dev.close()


def test_mirror_and_stripe_status(env, capsys):
    tmp, files = env
    assert run(capsys, "pool", "create", "m", "mirror", files[0], files[1])[0] == 0
    assert run(capsys, "pool", "create", "s", files[2], files[3])[0] == 0
    code, out, _ = run(capsys, "pool", "status", "m")
    assert "mirror-0" in out and files[0] in out and "errors: No known data errors" in out
    code, out, _ = run(capsys, "pool", "status", "-x")
    assert out == "all pools are healthy\n"
    code, out, _ = run(capsys, "pool", "list", "-H", "-o", "name")
    assert out == "m\ns\n"


@pytest.mark.parametrize("argv,code,message", [
    (["pool", "create", "1tank", "F0"], 1, "cannot create '1tank': name must begin with a letter"),
    (["pool", "create", "mirror", "F0"], 1, "cannot create 'mirror': name is reserved"),
    (["pool", "create", "ta@nk", "F0"], 1, "cannot create 'ta@nk': invalid character '@' in pool name"),
    (["pool", "create", "tank", "/nonexistent/x"], 1, "cannot open '/nonexistent/x': No such file or directory"),
    (["pool", "create", "tank"], 2, "missing vdev specification"),
    (["pool", "create"], 2, "missing pool name argument"),
    (["pool", "create", "-o", "bogus=1", "tank", "F0"], 1, "property 'bogus' is not a valid pool property"),
    (["pool", "create", "-o", "failmode=never", "tank", "F0"], 1, "cannot create 'tank': 'failmode' must be one of 'wait | continue | panic'"),
    (["pool", "create", "ta/nk", "F0"], 1, "cannot create 'ta/nk': invalid character '/' in pool name"),
    (["pool", "create", "tank", "relative"], 1, "cannot open 'relative': no such device in /dev"),
    (["pool", "create", "tank", "F0", "F0"], 1, "cannot create 'tank': one or more vdevs refer to the same device"),
    (["pool", "create", "tank", "mirror", "F0"], 1, "invalid vdev specification: mirror requires at least 2 devices"),
    (["pool", "create", "-o", "comment", "tank", "F0"], 1, "missing '=' for -o option"),
    (["pool", "set", "size=1", "nosuch"], 1, "cannot open 'nosuch': no such pool"),
    (["pool", "destroy"], 2, "missing pool argument"),
    (["pool", "create", "-z", "tank", "F0"], 2, "invalid option 'z'"),
    (["pool", "list", "nosuch"], 1, "cannot open 'nosuch': no such pool"),
    (["pool", "destroy", "nosuch"], 1, "cannot open 'nosuch': no such pool"),
    (["pool", "import", "-d", "TMP", "nosuch"], 1, "cannot import 'nosuch': no such pool available"),
    (["pool", "frob"], 2, "unrecognized command 'frob'"),
])
def test_mistakes_are_refused_in_zpool_words(env, capsys, argv, code, message):
    tmp, files = env
    argv = [files[0] if a == "F0" else str(tmp) if a == "TMP" else a for a in argv]
    got, out, err = run(capsys, *argv)
    assert got == code
    assert err.splitlines()[0] == message
    if code == 2:
        assert "usage:" in err
    assert read_label(FileDevice(files[0], readonly=True)) is None   # nothing written


def test_files_of_active_and_exported_pools_are_refused(env, capsys):
    tmp, files = env
    assert run(capsys, "pool", "create", "tank", files[0])[0] == 0
    code, _, err = run(capsys, "pool", "create", "other", files[0])
    assert code == 1 and f"{files[0]} is part of active pool 'tank'" in err
    assert run(capsys, "pool", "create", "-f", "other", files[0])[0] == 1
    code, _, err = run(capsys, "pool", "create", "tank", files[1])
    assert (code, err) == (1, "cannot create 'tank': pool already exists\n")
    assert run(capsys, "pool", "export", "tank")[0] == 0
    code, _, err = run(capsys, "pool", "create", "other", files[0])
    assert code == 1 and "use '-f' to override" in err and "exported pool 'tank'" in err
    assert run(capsys, "pool", "create", "-f", "other", files[0])[0] == 0


def test_small_file_is_refused(env, capsys):
    tmp, files = env
    small = tmp / "small"
    with open(small, "wb") as f:
        f.truncate(10 * MiB)
    code, _, err = run(capsys, "pool", "create", "tank", str(small))
    assert code == 1 and "less than the minimum size (64M)" in err


def test_verify_reports_damage_and_status_counts_it(env, capsys):
    tmp, files = env
    assert run(capsys, "pool", "create", "tank", files[0])[0] == 0
    code, out, _ = run(capsys, "pool", "verify", "tank")
    assert code == 0 and "no errors found" in out
    # store a block through the library, then damage it on disk
    from fusezfs.engine.blocks import Policy
    from fusezfs.cli.cli_pool import open_pool
    from fusezfs.formats.bp import BT_DATA, encode_bp
    from fusezfs.engine.tree import REF_BLOCK
    pool = open_pool("tank")
    bp = pool.blocks.write(b"important " * 100, BT_DATA, Policy())
    pool.objset(b"t").put(b"x", encode_bp(bp), REF_BLOCK)
    pool.close()
    with open(files[0], "r+b") as f:
        f.seek(bp.dvas[0].offset + 20)
        f.write(b"\xff\xfe")
    code, out, _ = run(capsys, "pool", "verify", "tank")
    assert code == 1 and "1 fault(s)" in out and "checksum error" in out
    code, out, _ = run(capsys, "pool", "status", "-x")
    row = next(line for line in out.splitlines() if files[0] in line)
    assert row.split()[1:] == ["ONLINE", "0", "0", "1"]
    assert "ZFS-8000-8A" in out and "errors: 1 data errors, use '-v' for a list" in out
    assert run(capsys, "pool", "clear", "tank")[0] == 0
    code, out, _ = run(capsys, "pool", "status", "-x")
    assert out == "all pools are healthy\n"


def test_console_script_runs(env):
    tmp, files = env
    out = subprocess.run([sys.executable, "-m", "fusezfs.cli", "pool", "create", "tank", files[0]],
                         capture_output=True, text=True, env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    out = subprocess.run([sys.executable, "-m", "fusezfs.cli", "pool", "list", "-H", "-o", "name"],
                         capture_output=True, text=True, env=dict(os.environ))
    assert out.stdout == "tank\n"


def test_pool_files_are_private(env, capsys):
    """A pool file holds every file of the pool whatever their modes: zpool create clears its
    group and other bits; import of a file made readable again warns (and changes nothing)."""
    tmp, files = env
    os.chmod(files[0], 0o644)
    assert run(capsys, "pool", "create", "tank", files[0])[0] == 0
    assert os.stat(files[0]).st_mode & 0o777 == 0o600
    assert run(capsys, "pool", "export", "tank")[0] == 0
    os.chmod(files[0], 0o644)
    code, out, err = run(capsys, "pool", "import", "-d", str(tmp), "tank")
    assert code == 0 and err == (f"warning: pool file '{files[0]}' can be read by other users "
                                 f"(mode 0644); 'chmod 600' it to keep the pool's files private\n")
    assert os.stat(files[0]).st_mode & 0o777 == 0o644
