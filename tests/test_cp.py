"""`fusezfs cp` behaves like cp: links copied as links, special files made anew (never opened),
holes kept as holes both ways, failures that name the file and let the copy go on, operands
that name no dataset refused in zfs's words, and -a keeping modes, owners, times, xattrs and
hard links. Driven through the command line as a user would (in this process, with a private
state directory; the cases that need fewer privileges than root's run the `fusezfs` command
under setpriv). Every pool is verified after every test."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys

import pytest

from clitools import check_pools, ok, run
from fusezfs.api import Handle
from fusezfs.cli.cli_pool import open_pool

MiB = 1 << 20
GiB = 1 << 30
FUSEZFS = os.path.join(os.path.dirname(sys.executable), "fusezfs")


@pytest.fixture
def env(tmp_path, monkeypatch, capsys):
    """A pool `tank` (compression off: zeros written are stored, so a hole is a hole because
    cp left it one) with filesystems tank/t and tank/u, the working directory in tmp_path; a
    copy that opens a FIFO is stopped by an alarm instead of hanging the suite."""
    monkeypatch.setenv("FUSEZFS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "disk", "wb") as f:
        f.truncate(256 * MiB)
    ok(capsys, "pool", "create", "-O", "compression=off", "tank", str(tmp_path / "disk"))
    ok(capsys, "create", "tank/t")
    ok(capsys, "create", "tank/u")

    def hung(_sig, _frame):
        raise TimeoutError("fusezfs cp hung")
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    yield tmp_path
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)
    capsys.readouterr()
    check_pools(skip_exported=True)


def in_dataset(name: str, path: str):
    """The attributes of `path` in dataset `name`, looked at through the library."""
    h = Handle(open_pool("tank"))
    try:
        return h.filesystem(name).stat(path, follow=False)
    finally:
        h.close()


def referenced(capsys, name: str) -> int:
    return int(ok(capsys, "get", "-Hp", "-o", "value", "referenced", name))


def sparse_file(path, size: int, pieces: dict[int, bytes]) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        for off, data in pieces.items():
            f.seek(off)
            f.write(data)


# ---- symbolic links -----------------------------------------------------------------------------
def test_symlinks_are_copied_as_links_every_way(env, capsys):
    src = env / "src"
    (src / "dir").mkdir(parents=True)
    (src / "dir" / "file").write_bytes(b"file")
    links = {"rel": "dir/file", "abs": "/etc/passwd", "dangling": "../nowhere/at/all",
             "todir": "dir", "loop": "loop"}
    for name, target in links.items():
        os.symlink(target, src / name)
    ok(capsys, "cp", "-r", "src", "tank/t:/")                   # host -> dataset
    for name, target in links.items():
        st = in_dataset("tank/t", f"/src/{name}")
        assert stat.S_ISLNK(st.st_mode) and st.st_size == len(target)
    ok(capsys, "cp", "-r", "tank/t:/src", "tank/u:/copy")       # dataset -> dataset
    ok(capsys, "cp", "-r", "tank/u:/copy", "back")              # dataset -> host
    for name, target in links.items():
        assert os.readlink(env / "back" / name) == target
    assert not os.path.islink(env / "back" / "dir")
    # -r never follows a link named on the command line either; without -r cp follows it
    ok(capsys, "cp", "-r", "src/todir", "tank/t:/top")
    assert stat.S_ISLNK(in_dataset("tank/t", "/top").st_mode)
    ok(capsys, "cp", "src/rel", "tank/t:/followed")
    st = in_dataset("tank/t", "/followed")
    assert stat.S_ISREG(st.st_mode) and st.st_size == 4
    ok(capsys, "cp", "-P", "tank/t:/src/rel", "one-link")
    assert os.readlink(env / "one-link") == "dir/file"
    # -L follows every link (the dangling and looping ones cannot be)
    code, _o, err = run(capsys, "cp", "-rL", "tank/t:/src", "followed-tree")
    assert code == 1
    assert "cp: cannot stat 'tank/t:/src/dangling': No such file or directory" in err
    assert "cp: cannot stat 'tank/t:/src/loop': Too many levels of symbolic links" in err
    assert (env / "followed-tree" / "rel").read_bytes() == b"file"
    assert not os.path.islink(env / "followed-tree" / "todir")


def test_a_link_replaces_the_file_it_is_copied_over(env, capsys):
    (env / "l").symlink_to("target-of-l")
    (env / "f").write_bytes(b"old")
    ok(capsys, "cp", "f", "tank/t:/x")
    ok(capsys, "cp", "-a", "l", "tank/t:/x")
    ok(capsys, "cp", "-a", "tank/t:/x", "f")
    assert os.readlink(env / "f") == "target-of-l"


# ---- special files ------------------------------------------------------------------------------
def test_fifos_sockets_and_devices_are_made_not_opened(env, capsys):
    src = env / "src"
    src.mkdir()
    os.mkfifo(src / "fifo", 0o640)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(src / "sock"))
    if os.geteuid() == 0:
        os.mknod(src / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    ok(capsys, "cp", "-r", "src", "tank/t:/")                   # would wait for a writer
    ok(capsys, "cp", "-r", "tank/t:/src", "tank/u:/src")
    ok(capsys, "cp", "-a", "tank/u:/src", "back")
    assert stat.S_ISFIFO(in_dataset("tank/t", "/src/fifo").st_mode)
    back = env / "back"
    st = os.lstat(back / "fifo")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    assert stat.S_ISSOCK(os.lstat(back / "sock").st_mode)
    if os.geteuid() == 0:
        st = os.lstat(back / "null")
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    # without -r a special file's contents are copied, as `cp /dev/null f` expects
    ok(capsys, "cp", "/dev/null", "tank/t:/empty")
    st = in_dataset("tank/t", "/empty")
    assert stat.S_ISREG(st.st_mode) and st.st_size == 0
    code, _o, err = run(capsys, "cp", "src/sock", "tank/t:/s")
    assert code == 1 and err == "cp: cannot open 'src/sock' for reading: No such device or address\n"


# ---- holes --------------------------------------------------------------------------------------
def test_a_sparse_gigabyte_stays_sparse_both_ways(env, capsys):
    pieces = {0: b"head", 300 * MiB + 5: b"x" * 200_000, GiB - 3: b"end"}
    sparse_file(env / "sparse", GiB, pieces)
    base = referenced(capsys, "tank/t")
    ok(capsys, "cp", "sparse", "tank/t:/sparse")
    assert referenced(capsys, "tank/t") - base < 2 * MiB       # no zero records stored
    st = in_dataset("tank/t", "/sparse")
    assert st.st_size == GiB and st.st_blocks * 512 < 2 * MiB
    ok(capsys, "cp", "tank/t:/sparse", "tank/u:/sparse")        # dataset -> dataset
    assert in_dataset("tank/u", "/sparse").st_blocks * 512 < 2 * MiB
    ok(capsys, "cp", "tank/u:/sparse", "out")                   # dataset -> host
    st = os.stat(env / "out")
    assert st.st_size == GiB and st.st_blocks * 512 < 4 * MiB   # not a gigabyte of zeros
    with open(env / "out", "rb") as f:
        for off, data in pieces.items():
            f.seek(off)
            assert f.read(len(data)) == data
        f.seek(300 * MiB - 1000)
        assert f.read(1000) == bytes(1000)


def test_zeros_written_into_a_sparse_file_become_holes(env, capsys):
    """cp --sparse=auto: a source that looks sparse has its runs of zeros left out too; a dense
    one is copied as it is (compression=off stores its zero records)."""
    sparse_file(env / "holey", 64 * MiB, {0: b"a" * MiB + bytes(8 * MiB) + b"b" * MiB})
    base = referenced(capsys, "tank/t")
    ok(capsys, "cp", "holey", "tank/t:/holey")
    assert referenced(capsys, "tank/t") - base < 3 * MiB
    (env / "dense").write_bytes(bytes(2 * MiB))
    base = referenced(capsys, "tank/u")
    ok(capsys, "cp", "dense", "tank/u:/dense")
    assert referenced(capsys, "tank/u") - base >= 2 * MiB
    ok(capsys, "cp", "tank/t:/holey", "holey.out")
    assert (env / "holey.out").read_bytes() == (env / "holey").read_bytes()
    assert os.stat(env / "holey.out").st_blocks * 512 < 3 * MiB


def test_data_extents_of_the_posix_layer(env):
    """Posix.data_extents: stored and buffered records, merged, clipped to the window and to
    the file's size; a hole (never written, or truncated away) is in none of them."""
    h = Handle(open_pool("tank"))
    try:
        fs = h.filesystem("tank/t")
        bs = 128 * 1024
        ino = fs.write_file("/f", b"")
        fh = fs.open(ino, os.O_WRONLY)
        fs.write(fh, 0, b"a")
        fs.write(fh, 3 * bs + 10, b"b" * bs)       # records 3 and 4
        h.pool.sync()                               # those are stored now ...
        fs.write(fh, 5 * bs, b"c")                  # ... record 5 is buffered
        fs.write(fh, 9 * bs, b"d" * 100)
        assert fs.data_extents(ino) == [(0, bs), (3 * bs, 6 * bs), (9 * bs, 9 * bs + 100)]
        assert fs.data_extents(ino, 4 * bs + 7, 9 * bs + 50) == [(4 * bs + 7, 6 * bs),
                                                                 (9 * bs, 9 * bs + 50)]
        assert fs.data_extents(ino, bs, 3 * bs) == []
        fs.setattr(ino, size=4 * bs)
        assert fs.data_extents(ino) == [(0, bs), (3 * bs, 4 * bs)]
        fs.release(fh)
        assert fs.data_extents(fs.resolve("/")) == []
    finally:
        h.close()


# ---- operands -----------------------------------------------------------------------------------
def test_an_operand_naming_no_dataset_is_an_error_not_a_file(env, capsys):
    (env / "a:b").write_bytes(b"colon")
    (env / "plain").write_bytes(b"plain")
    code, _o, err = run(capsys, "cp", "a:b", "plain", "tank/t:/")
    assert code == 1
    assert err == "cp: cannot open 'a': dataset does not exist (the local file is ./a:b)\n"
    assert in_dataset("tank/t", "/plain").st_size == 5          # the others are copied
    ok(capsys, "cp", "./a:b", "tank/t:/a:b")
    ok(capsys, "cp", "tank/t:/a:b", "./c:d")
    assert (env / "c:d").read_bytes() == b"colon"
    for spec, name in [("nosuch:/x", "nosuch"), ("tank/nosuch:/x", "tank/nosuch"),
                       ("tank/t@nosnap:/x", "tank/t@nosnap")]:
        code, _o, err = run(capsys, "cp", spec, "out")
        assert (code, err) == (1, f"cp: cannot open '{name}': dataset does not exist\n")
        code, _o, err = run(capsys, "cp", "plain", spec)
        assert (code, err) == (1, f"cp: cannot open '{name}': dataset does not exist\n")
    code, _o, err = run(capsys, "cp", "a,b:c", "out")
    assert (code, err) == (1, "cp: cannot open 'a,b': invalid character ',' in name\n")
    assert not (env / "out").exists()
    ok(capsys, "pool", "export", "tank")                        # a pool not imported
    code, _o, err = run(capsys, "cp", "plain", "tank/t:/again")
    assert (code, err) == (1, "cp: cannot open 'tank/t': dataset does not exist\n")
    ok(capsys, "pool", "import", "-d", str(env), "tank")


def test_failures_name_the_file_and_the_copy_goes_on(env, capsys):
    src = env / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"f")
    (src / "g").write_bytes(b"g")
    ok(capsys, "snapshot", "tank/t@s")
    code, _o, err = run(capsys, "cp", "nope", "src/g", "src/d", "tank/u:/")
    assert code == 1
    assert err == ("cp: cannot stat 'nope': No such file or directory\n"
                   "cp: -r not specified; omitting directory 'src/d'\n")
    assert in_dataset("tank/u", "/g").st_size == 1
    code, _o, err = run(capsys, "cp", "src/g", "tank/t@s:/g")
    assert (code, err) == (1, "cp: cannot create regular file 'tank/t@s:/g': "
                              "Read-only file system\n")
    code, _o, err = run(capsys, "cp", "src/g", "src/d", "tank/u:/g")
    assert (code, err) == (1, "cp: target 'tank/u:/g' is not a directory\n")
    ok(capsys, "cp", "-r", "src", "tank/u:/tree")
    code, _o, err = run(capsys, "cp", "src/g", "tank/u:/tree/d")    # into it: fine
    assert code == 0
    code, _o, err = run(capsys, "cp", "-r", "tank/u:/tree", "tank/u:/tree/d/deeper")
    assert (code, err) == (1, "cp: cannot copy a directory, 'tank/u:/tree', into itself, "
                              "'tank/u:/tree/d/deeper'\n")
    code, _o, err = run(capsys, "cp", "-r", "src", "src/d")
    assert (code, err) == (1, "cp: cannot copy a directory, 'src', into itself, 'src/d/src'\n")
    ok(capsys, "cp", "src/g", "tank/u:/plain")
    code, _o, err = run(capsys, "cp", "-r", "src/d", "tank/u:/plain")
    assert (code, err) == (1, "cp: cannot overwrite non-directory 'tank/u:/plain' with "
                              "directory 'src/d'\n")
    code, _o, err = run(capsys, "cp", "tank/u:/g", "tank/u:/g")
    assert (code, err) == (1, "cp: 'tank/u:/g' and 'tank/u:/g' are the same file\n")


def _unprivileged(*argv: str) -> subprocess.CompletedProcess:
    """The `fusezfs` command as root without the privileges an ordinary user lacks: making
    device nodes, and reading or searching what its mode forbids."""
    return subprocess.run(["setpriv", "--bounding-set=-mknod,-dac_override,-dac_read_search",
                           "--", FUSEZFS, *argv], capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv (util-linux) to drop privileges")
def test_without_privileges_each_failure_is_named_and_the_rest_copied(env, capsys):
    src = env / "src"
    src.mkdir()
    os.mknod(src / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mkfifo(src / "fifo")
    (src / "secret").write_bytes(b"secret")
    os.chmod(src / "secret", 0)
    (src / "public").write_bytes(b"public")
    r = _unprivileged("cp", "-a", "src", "tank/t:/")
    assert (r.returncode, r.stderr) == (1, "cp: cannot open 'src/secret' for reading: "
                                           "Permission denied\n")
    assert stat.S_ISCHR(in_dataset("tank/t", "/src/null").st_mode)  # (no privilege needed)
    r = _unprivileged("cp", "-a", "tank/t:/src", "back")
    assert (r.returncode, r.stderr) == (1, "cp: cannot create special file 'back/null': "
                                           "Operation not permitted\n")
    assert stat.S_ISFIFO(os.lstat(env / "back" / "fifo").st_mode)
    assert (env / "back" / "public").read_bytes() == b"public"
    assert not (env / "back" / "null").exists()


# ---- what -a keeps ------------------------------------------------------------------------------
def test_archive_keeps_modes_owners_times_xattrs_and_hard_links(env, capsys):
    src = env / "src"
    (src / "dir").mkdir(parents=True)
    (src / "dir" / "file").write_bytes(b"content")
    os.link(src / "dir" / "file", src / "hard")
    os.link(src / "dir" / "file", src / "dir" / "hard2")
    (src / "exec").write_bytes(b"#!/bin/sh\n")
    os.symlink("exec", src / "link")
    os.mkdir(src / "ro")
    (src / "ro" / "inside").write_bytes(b"x")
    root = os.geteuid() == 0
    if root:                    # (before the chmod: a chown clears set-id bits)
        os.chown(src / "exec", 1234, 5678, follow_symlinks=False)
        os.chown(src / "link", 4321, 8765, follow_symlinks=False)
    modes = {"dir": 0o2750, "dir/file": 0o640, "exec": 0o4751, "ro": 0o555}
    for name, mode in modes.items():
        os.chmod(src / name, mode)
    xattrs = {"dir": b"on a directory", "exec": b"\x00binary\xff"}
    for name, value in xattrs.items():
        os.setxattr(src / name, "user.test", value)
    times = {}
    for i, name in enumerate(["dir/file", "exec", "link", "ro", "dir", ""]):
        times[name] = (1_500_000_000_000_000_001 + i, 1_400_000_000_000_000_007 + i)
        os.utime(src / name, ns=times[name], follow_symlinks=False)
    ok(capsys, "cp", "-a", "src", "tank/t:/")
    ok(capsys, "cp", "-a", "tank/t:/src", "tank/u:/")
    ok(capsys, "cp", "-a", "tank/u:/src", "back")
    back = env / "back"
    for name, mode in modes.items():
        assert stat.S_IMODE(os.lstat(back / name).st_mode) == mode, name
    for name, value in xattrs.items():
        assert os.getxattr(back / name, "user.test") == value
    for name, (atime, mtime) in times.items():
        st = os.lstat(back / name)
        assert (st.st_atime_ns, st.st_mtime_ns) == (atime, mtime), name
    inos = {os.lstat(back / n).st_ino for n in ("dir/file", "hard", "dir/hard2")}
    assert len(inos) == 1 and os.lstat(back / "hard").st_nlink == 3
    assert os.readlink(back / "link") == "exec"
    assert (back / "dir" / "file").read_bytes() == b"content"     # (after atime is checked)
    if root:
        st = os.lstat(back / "exec")
        assert (st.st_uid, st.st_gid) == (1234, 5678)
        st = os.lstat(back / "link")
        assert (st.st_uid, st.st_gid) == (4321, 8765)
    assert in_dataset("tank/u", "/src/hard").st_nlink == 3


def test_without_p_new_files_get_the_umask_and_the_callers_owner(env, capsys):
    (env / "f").write_bytes(b"f")
    os.chmod(env / "f", 0o777)
    if os.geteuid() == 0:
        os.chown(env / "f", 1234, 5678)
    os.utime(env / "f", ns=(10**18, 10**18))
    old = os.umask(0o027)
    try:
        ok(capsys, "cp", "f", "tank/t:/f")
        ok(capsys, "cp", "tank/t:/f", "g")
    finally:
        os.umask(old)
    st = in_dataset("tank/t", "/f")
    assert stat.S_IMODE(st.st_mode) == 0o750
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())
    assert st.st_mtime_ns != 10**18
    assert stat.S_IMODE(os.stat(env / "g").st_mode) == 0o750
