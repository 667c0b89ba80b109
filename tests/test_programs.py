"""The `zfs` and `zpool` programs, run as a script runs them: from the virtualenv's bin directory
with a private state directory. They answer `version` in OpenZFS's form, list exactly the verbs
fusezfs implements (each of which then runs), do the same work as `fusezfs VERB`, and refuse to
stand in for a real ZFS kernel module."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from fusezfs.cli import cli_help

BIN = os.path.dirname(sys.executable)
MiB = 1 << 20


def program(name: str) -> str:
    path = os.path.join(BIN, name)
    assert os.access(path, os.X_OK), f"{path}: the {name} entry point is not installed"
    return path


@pytest.fixture
def sh(tmp_path):
    env = dict(os.environ, FUSEZFS_STATE_DIR=str(tmp_path / "state"),
               FUSEZFS_SYS_MODULE_ZFS=str(tmp_path / "no-such-module"))

    def run(name: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([program(name), *args], capture_output=True, text=True, env=env,
                              timeout=120, stdin=subprocess.DEVNULL)
    run.env = env
    return run


def test_version_in_openzfs_form(sh):
    for name, args in [("zfs", ["version"]), ("zfs", ["--version"]), ("zfs", ["-V"]),
                       ("zpool", ["version"]), ("fusezfs", ["version"])]:
        r = sh(name, *args)
        assert r.returncode == 0 and not r.stderr, (name, args, r.stderr)
        lines = r.stdout.splitlines()
        assert len(lines) == 2
        assert re.fullmatch(r"zfs-2\.1\.11-fusezfs-\S+", lines[0]), lines
        assert re.fullmatch(r"zfs-kmod-2\.1\.11-fusezfs-\S+", lines[1]), lines
    r = sh("zfs", "version", "-x")
    assert r.returncode == 2 and "invalid option '-x'" in r.stderr


def listed_verbs(text: str) -> list[str]:
    return sorted({m.group(1) for m in re.finditer(r"^\t([a-z-]+)", text, re.M)})


@pytest.mark.parametrize("name,usages", [("zfs", cli_help.zfs_usages),
                                         ("zpool", cli_help.zpool_usages)])
def test_bare_and_help_list_every_verb_and_only_those(sh, name, usages):
    bare = sh(name)
    assert bare.returncode == 2 and not bare.stdout
    assert bare.stderr.startswith(f"usage: {name} command args ...\n"
                                  "where 'command' is one of the following:\n\n\tversion\n")
    helped = sh(name, "-?")
    assert helped.returncode == 0 and helped.stdout == bare.stderr
    verbs = listed_verbs(helped.stdout)
    assert verbs == sorted(usages())
    # each listed verb is one this program runs: a bad option gets its usage, not "unrecognized"
    for verb in verbs:
        if verb == "version":
            continue
        r = sh(name, verb, "-%")
        assert r.returncode == 2, (verb, r.stdout, r.stderr)
        assert "unrecognized command" not in r.stderr and "usage:" in r.stderr, (verb, r.stderr)
    r = sh(name, "frobnicate")
    assert r.returncode == 2 and "unrecognized command 'frobnicate'" in r.stderr


def test_bare_fusezfs_lists_both_sets_of_verbs(sh):
    r = sh("fusezfs")
    assert r.returncode == 2
    for verb in ("create", "snapshot", "list", "cp", "mount"):
        assert f"\n\t{verb} " in r.stderr or f"\n\t{verb}\n" in r.stderr, verb
    assert "zpool commands: fusezfs pool <command>" in r.stderr and "\n\tverify <pool>" in r.stderr


def test_zpool_and_zfs_do_the_work(sh, tmp_path):
    disk = tmp_path / "disk"
    with open(disk, "wb") as f:
        f.truncate(128 * MiB)
    assert sh("zpool", "create", "tank", str(disk)).returncode == 0
    assert sh("zfs", "create", "-o", "compression=zstd", "tank/a").returncode == 0
    assert sh("zfs", "snapshot", "tank/a@s").returncode == 0
    r = sh("zfs", "list", "-H", "-t", "all", "-o", "name,compression")
    assert r.stdout.splitlines() == ["tank\ton", "tank/a\tzstd", "tank/a@s\t-"], r.stderr
    r = sh("zpool", "list", "-H", "-o", "name,health")
    assert r.stdout == "tank\tONLINE\n"
    assert sh("zpool", "export", "tank").returncode == 0
    r = sh("zpool", "list")
    assert r.returncode == 0 and r.stdout == "no pools available\n"      # stdout, as OpenZFS


def test_a_loaded_kernel_module_is_not_stood_in_for(sh, tmp_path):
    """With a ZFS kernel module loaded, its own commands answer (the passthrough backend,
    fusezfs/backends; here stand-ins named by FUSEZFS_ZFS/FUSEZFS_ZPOOL); where they cannot
    be found, fusezfs's programs refuse rather than stand in for them."""
    module = tmp_path / "sys-module-zfs"
    module.mkdir()
    for name in ("zfs", "zpool"):
        (tmp_path / f"real-{name}").write_text(f"#!/bin/sh\necho real {name} \"$@\"\n")
        (tmp_path / f"real-{name}").chmod(0o755)
    env = dict(sh.env, FUSEZFS_SYS_MODULE_ZFS=str(module),
               FUSEZFS_ZFS=str(tmp_path / "real-zfs"), FUSEZFS_ZPOOL=str(tmp_path / "real-zpool"))
    for name in ("zfs", "zpool"):
        r = subprocess.run([program(name), "list"], capture_output=True, text=True, env=env,
                           timeout=60)
        assert (r.returncode, r.stdout, r.stderr) == (0, f"real {name} list\n", "")
    env.update(FUSEZFS_ZFS=str(tmp_path / "gone" / "zfs"),
               FUSEZFS_ZPOOL=str(tmp_path / "gone" / "zpool"))
    for name in ("zfs", "zpool"):
        r = subprocess.run([program(name), "list"], capture_output=True, text=True, env=env,
                           timeout=60)
        assert r.returncode == 1 and not r.stdout
        assert f"{name}: a ZFS kernel module is loaded on this host" in r.stderr
        assert "run the real command (" in r.stderr
