"""The backend choice and the passthrough's promises, with stand-in `zfs`/`zpool` commands
(shell scripts that report what they were given) where a real ZFS is not needed to tell:
which backend answers, that arguments, standard streams and exit codes pass through
untouched (exec'ed at a program start, relayed in-process), that fusezfs's own verbs map,
and that neither backend touches the other's pools. tests/test_backends_scenario.py runs the
same scenario on both backends against zfs-fuse."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fusezfs import cli
from fusezfs.backends import BackendError, choose

MiB = 1 << 20
FAKE = """#!/bin/sh
# a stand-in for the real {name}: says what it was given, echoes stdin, fails as asked
printf '{name}'; for a in "$@"; do printf ' [%s]' "$a"; done; printf '\\n'
if [ "$1" = list ] && [ -n "$FAKE_POOLS" ]; then printf '%s\\n' $FAKE_POOLS; fi
[ -t 0 ] || cat
echo "{name} stderr" >&2
exit ${{FAKE_EXIT:-0}}
"""


@pytest.fixture
def fake_zfs(tmp_path, monkeypatch) -> dict[str, str]:
    """FUSEZFS_ZFS/FUSEZFS_ZPOOL naming stand-ins; the emulated state in tmp_path."""
    bindir = tmp_path / "sbin"
    bindir.mkdir()
    for name in ("zfs", "zpool"):
        (bindir / name).write_text(FAKE.format(name=name))
        (bindir / name).chmod(0o755)
    env = {"FUSEZFS_ZFS": str(bindir / "zfs"), "FUSEZFS_ZPOOL": str(bindir / "zpool"),
           "FUSEZFS_STATE_DIR": str(tmp_path / "state"), "FUSEZFS_SYS_MODULE_ZFS":
           str(tmp_path / "no-module")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("FUSEZFS_BACKEND", raising=False)
    return env


def program(name: str, *args: str, env: dict | None = None, stdin: bytes | None = None,
            cwd=None, environ: dict | None = None) -> subprocess.CompletedProcess:
    """fusezfs's `zfs`, `zpool` or `fusezfs` program started as a user starts it, in
    `environ` (default: this process's) with `env` on top."""
    entry = "main" if name == "fusezfs" else f"{name}_main"
    code = f"import sys; from fusezfs.cli import {entry}; sys.exit({entry}())"
    base = os.environ if environ is None else environ
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                          env=dict(base, **(env or {})), input=stdin, cwd=cwd,
                          stdin=None if stdin is not None else subprocess.DEVNULL, timeout=60)


def test_the_choice(fake_zfs, monkeypatch, tmp_path):
    assert choose().name == "emulated"                      # no kernel module
    module = tmp_path / "module"
    module.mkdir()
    monkeypatch.setenv("FUSEZFS_SYS_MODULE_ZFS", str(module))
    auto = choose()
    assert (auto.name, auto.zfs, auto.zpool) == ("passthrough", [fake_zfs["FUSEZFS_ZFS"]],
                                                 [fake_zfs["FUSEZFS_ZPOOL"]])
    monkeypatch.setenv("FUSEZFS_BACKEND", "emulated")       # forced, module or not
    assert choose().name == "emulated"
    monkeypatch.setenv("FUSEZFS_BACKEND", "passthrough")
    monkeypatch.setenv("FUSEZFS_ZFS", "nsenter -t 1 -m /usr/sbin/zfs")   # a prefix
    monkeypatch.delenv("FUSEZFS_ZPOOL")
    assert choose().zpool == ["nsenter", "-t", "1", "-m", "/usr/sbin/zpool"]
    monkeypatch.setenv("FUSEZFS_ZFS", str(tmp_path / "missing" / "zfs"))
    with pytest.raises(BackendError, match="no real zfs and zpool commands found"):
        choose()
    monkeypatch.setenv("FUSEZFS_BACKEND", "kernel")
    with pytest.raises(BackendError, match="invalid FUSEZFS_BACKEND 'kernel'"):
        choose()
    r = program("zfs", "list")
    assert (r.returncode, r.stderr.decode()) == (
        1, "fusezfs: invalid FUSEZFS_BACKEND 'kernel': must be 'emulated' or 'passthrough'\n")


def test_fusezfs_backend_says_who_answers(fake_zfs, tmp_path):
    r = program("fusezfs", "backend")
    assert r.returncode == 0
    assert r.stdout.decode().splitlines()[:2] == ["backend: emulated",
                                                  "chosen: no ZFS kernel module is loaded"]
    module = tmp_path / "module"
    module.mkdir()
    r = program("fusezfs", "backend", env={"FUSEZFS_SYS_MODULE_ZFS": str(module)})
    assert r.stdout.decode().splitlines() == [
        "backend: passthrough", "chosen: a ZFS kernel module is loaded and its commands exist",
        f"zfs: {fake_zfs['FUSEZFS_ZFS']}", f"zpool: {fake_zfs['FUSEZFS_ZPOOL']}"]
    assert program("fusezfs", "backend", "-H").stdout == b"emulated\n"
    bad = program("fusezfs", "backend", "-x")
    assert (bad.returncode, bad.stderr) == (2, b"invalid option '-x'\nusage:\n\tbackend [-H]\n")


def test_everything_passes_through_untouched(fake_zfs):
    env = {"FUSEZFS_BACKEND": "passthrough", "FAKE_EXIT": "3"}
    args = ["get", "-Hp", "-o", "name,value", "all", "tank/a b", "--weird", ""]
    r = program("zfs", *args, env=env, stdin=b"\x00stream\xff")
    assert r.returncode == 3
    assert r.stdout == b"zfs [get] [-Hp] [-o] [name,value] [all] [tank/a b] [--weird] []\n" \
                       b"\x00stream\xff"
    assert r.stderr == b"zfs stderr\n"
    r = program("zpool", "scrub", "-w", "tank", env=env)
    assert (r.returncode, r.stdout, r.stderr) == (3, b"zpool [scrub] [-w] [tank]\n",
                                                  b"zpool stderr\n")
    # fusezfs's own program: zfs verbs to zfs, pool verbs to zpool, unknown verbs to zfs
    assert program("fusezfs", "snapshot", "t/a@s", env=env).stdout == \
        b"zfs [snapshot] [t/a@s]\n"
    assert program("fusezfs", "pool", "status", "-x", env=env).stdout == \
        b"zpool [status] [-x]\n"
    assert program("fusezfs", "upgrade", "-v", env=env).stdout == b"zfs [upgrade] [-v]\n"


def test_in_process_calls_relay_output(fake_zfs, monkeypatch, capsys):
    """cli.main/zfs_main called as a library (an argv given) runs the real command and relays
    its output into sys.stdout/sys.stderr, whatever they are; it never execs."""
    monkeypatch.setenv("FUSEZFS_BACKEND", "passthrough")
    monkeypatch.setenv("FAKE_EXIT", "5")
    assert cli.zfs_main(["list", "-H"]) == 5
    out, err = capsys.readouterr()
    assert (out, err) == ("zfs [list] [-H]\n", "zfs stderr\n")
    assert cli.main(["pool", "list"]) == 5
    assert capsys.readouterr().out == "zpool [list]\n"


def test_mapped_verbs(fake_zfs, tmp_path):
    env = {"FUSEZFS_BACKEND": "passthrough"}
    (tmp_path / "d0").write_bytes(b"")
    r = program("fusezfs", "pool", "create", "-m", "none", "tank", "mirror", "d0", "d1",
                env=env, cwd=tmp_path)
    assert r.stdout.decode().splitlines()[0] == (
        f"zpool [create] [-m] [none] [tank] [mirror] [{tmp_path}/d0] [d1]")
    r = program("fusezfs", "pool", "import", "-d", "disks", "tank", env=env, cwd=tmp_path)
    assert r.stdout.decode().splitlines()[0] == f"zpool [import] [-d] [{tmp_path}/disks] [tank]"
    r = program("fusezfs", "image", "ls", env=env)
    assert r.returncode == 1 and b"not available on the passthrough backend" in r.stderr
    r = program("fusezfs", "mount", "-a", env=env)
    assert (r.returncode, r.stdout) == (0, b"zfs [mount] [-a]\n")
    r = program("fusezfs", "unmount", "-f", "/mnt/x", env=env)
    assert (r.returncode, r.stdout) == (0, b"zfs [unmount] [-f] [/mnt/x]\n")
    # a dataset at a path: mount(8), run where the real ZFS runs (its command prefix)
    say = tmp_path / "say"
    say.write_text("#!/bin/sh\nfor a in \"$@\"; do printf '[%s] ' \"$a\"; done; echo\n")
    say.chmod(0o755)
    prefixed = {**env, "FUSEZFS_ZFS": f"{say} {fake_zfs['FUSEZFS_ZFS']}",
                "FUSEZFS_ZPOOL": f"{say} {fake_zfs['FUSEZFS_ZPOOL']}"}
    r = program("fusezfs", "mount", "-o", "ro", "tank/legacy", "rel", env=prefixed,
                cwd=tmp_path)
    assert r.stdout.decode() == f"[mount] [-t] [zfs] [-o] [ro] [tank/legacy] [{tmp_path}/rel] \n"
    r = program("fusezfs", "mount", "tank", "/mnt/x", env=env)
    assert r.returncode == 1 and r.stderr.decode() == (
        "cannot mount 'tank' at '/mnt/x': the passthrough backend mounts a pool at its "
        "mountpoint property (zfs set mountpoint=/mnt/x tank)\n")
    r = program("fusezfs", "pool", "verify", env=env)
    assert (r.returncode, r.stderr) == (2, b"missing pool name\nusage:\n\tverify <pool>\n")


def test_pool_verify_is_a_scrub_that_waits(fake_zfs, tmp_path, monkeypatch):
    """`pool verify` on passthrough: zpool scrub, then zpool status until the scrub is over;
    the last status is the report, and errors in it fail the verify."""
    counter = tmp_path / "polls"
    zpool = tmp_path / "zpool-scrubbing"
    zpool.write_text(f"""#!/bin/sh
case "$1" in
scrub) echo scrub "$2" >> {tmp_path}/calls ;;
status)
    n=$(cat {counter} 2>/dev/null || echo 0); n=$((n + 1)); echo $n > {counter}
    if [ $n -lt 3 ]; then echo "  scan: scrub in progress since now"; exit 0; fi
    echo "  scan: scrub repaired 0B in 00:00:01 with $SCRUB_ERRORS errors"
    if [ "$SCRUB_ERRORS" = 0 ]; then echo "errors: No known data errors"
    else echo "errors: $SCRUB_ERRORS data errors, use '-v' for a list"; fi ;;
esac
""")
    zpool.chmod(0o755)
    env = {"FUSEZFS_BACKEND": "passthrough", "FUSEZFS_ZPOOL": str(zpool)}
    r = program("fusezfs", "pool", "verify", "tank", env={**env, "SCRUB_ERRORS": "2"})
    assert (r.returncode, r.stdout.decode()) == (
        1, "  scan: scrub repaired 0B in 00:00:01 with 2 errors\n"
           "errors: 2 data errors, use '-v' for a list\n")
    assert counter.read_text() == "3\n"                 # polled until the scrub was over
    assert (tmp_path / "calls").read_text() == "scrub tank\n"
    counter.unlink()
    r = program("fusezfs", "pool", "verify", "tank", env={**env, "SCRUB_ERRORS": "0"})
    assert r.returncode == 0 and r.stdout.endswith(b"errors: No known data errors\n")


def test_fusezfs_own_program_is_never_the_real_one(fake_zfs, tmp_path):
    """FUSEZFS_ZFS naming fusezfs's own zfs program would exec itself forever: refused."""
    own = tmp_path / "own-zfs"
    own.write_text(f"#!{sys.executable}\nimport sys\nfrom fusezfs.cli import zfs_main\n"
                   f"sys.exit(zfs_main())\n")
    own.chmod(0o755)
    r = program("zfs", "list", env={"FUSEZFS_BACKEND": "passthrough", "FUSEZFS_ZFS": str(own)})
    assert r.returncode == 1 and b"is fusezfs's own program" in r.stderr


def test_neither_backend_touches_the_others_pools(fake_zfs, tmp_path):
    emulated = tmp_path / "emulated.img"
    with open(emulated, "wb") as f:
        f.truncate(96 * MiB)
    assert program("zpool", "create", "emu", str(emulated),
                   env={"FUSEZFS_NO_SERVICE": "1"}).returncode == 0
    passthrough = {"FUSEZFS_BACKEND": "passthrough"}
    r = program("zpool", "create", "-f", "real", str(emulated), env=passthrough)
    assert (r.returncode, r.stdout, r.stderr.decode()) == (
        1, b"", f"cannot create on '{emulated}': it is part of the emulated backend's pool "
                "'emu' (fusezfs); the passthrough backend (real ZFS) does not touch it "
                "(destroy it with FUSEZFS_BACKEND=emulated first)\n")
    # the library on passthrough goes through the same check
    from fusezfs.backends import connect
    from fusezfs.backends.library import ZfsCommandError
    real_lib = connect("passthrough", zfs=fake_zfs["FUSEZFS_ZFS"], zpool=fake_zfs["FUSEZFS_ZPOOL"])
    with pytest.raises(ZfsCommandError) as e:
        real_lib.create_pool("real", [emulated], force=True)
    assert e.value.backend == "passthrough" and "part of the emulated backend's pool 'emu'" \
        in e.value.stderr
    # a pool name only the emulated registry holds is not the real ZFS's to answer for
    r = program("zfs", "destroy", "-r", "emu/data", env=passthrough)
    assert (r.returncode, r.stdout) == (1, b"")
    assert r.stderr.decode().startswith("cannot open 'emu': pool 'emu' belongs to the "
                                        "emulated backend (fusezfs, state ")
    # the real ZFS knows a pool of the same name: it answers for its own
    r = program("zfs", "list", "emu", env={**passthrough, "FAKE_POOLS": "emu"})
    assert (r.returncode, r.stdout) == (0, b"zfs [list] [emu]\nemu\n")
    # a file a real ZFS labelled (an uberblock in label 0's ring) is refused by the emulation
    real = tmp_path / "real.img"
    with open(real, "wb") as f:
        f.truncate(96 * MiB)
        f.seek((128 << 10) + 4096)
        f.write((0x00BAB10C).to_bytes(8, "little"))
    r = program("zpool", "create", "-f", "other", str(real), env={"FUSEZFS_NO_SERVICE": "1"})
    assert (r.returncode, r.stderr.decode()) == (
        1, f"cannot create on '{real}': it holds a real ZFS label (a pool of the passthrough "
           f"backend); the emulated backend (fusezfs) does not touch it (clear it with the "
           f"real ZFS's 'zpool labelclear' first)\n")
    assert program("zpool", "destroy", "emu", env={"FUSEZFS_NO_SERVICE": "1"}).returncode == 0


def test_the_hook_stays_cheap():
    """The entry-point hook imports nothing of fusezfs beyond itself on the emulated path."""
    code = ("import sys, fusezfs.backends as b; before = set(sys.modules); "
            "assert b.delegate('zfs', ['list']) is None; "
            "print(sorted(m for m in set(sys.modules) - before if m.startswith('fusezfs')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if k != "FUSEZFS_BACKEND"},
                       timeout=60)
    assert (r.returncode, r.stdout) == (0, "[]\n"), r.stderr
