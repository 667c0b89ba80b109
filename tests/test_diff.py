"""`zfs diff [-FHth] SNAPSHOT [SNAPSHOT|FILESYSTEM]`, checked line for line against what OpenZFS
2.1.11's libzfs_diff.c prints for the same changes (zfs-fuse has no `zfs diff`): M, +, -, R,
link-count changes, file types, change times, escaping, clones, and the errors of zfs_do_diff
and zfs_show_diffs. Changes are made through the library (as a FUSE mount would make them),
and once through a real FUSE mount with the diff answered by the daemon. The consistency
checker and verify run on every pool after every test."""
from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
from contextlib import contextmanager

import pytest

from clitools import check_pools, ok, run
from fusezfs import cli
from fusezfs.send import diff
from fusezfs.api import Handle
from fusezfs.cli.cli_pool import open_pool
from fusezfs.dsl.datasets import Datasets
from fusezfs.engine.verify import verify
from prerequisites import require_fuse

MiB = 1 << 20
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USAGE = ("usage:\n\tdiff [-FHt] <snapshot> [snapshot|filesystem]\n\n"
         "For the property list, run: zfs set|get\n\n"
         "For the delegated permission list, run: zfs allow|unallow\n")


@pytest.fixture
def env(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FUSEZFS_STATE_DIR", str(tmp_path / "state"))
    disk = tmp_path / "disk"
    with open(disk, "wb") as f:
        f.truncate(256 * MiB)
    assert cli.main(["pool", "create", "-O", "compression=off", "tank", str(disk)]) == 0
    assert cli.main(["create", "tank/fs"]) == 0
    yield tmp_path
    capsys.readouterr()
    check_pools()


class Files:
    """Path-level operations on one filesystem through the POSIX layer (what a process would
    do through a mount)."""

    def __init__(self, fs) -> None:
        self.fs = fs

    def _at(self, path: str) -> tuple[int, bytes]:
        parent, _, name = os.fsencode(path).rpartition(b"/")
        return self.fs.resolve(parent or b"/"), name

    def ino(self, path: str) -> int:
        return self.fs.resolve(os.fsencode(path), follow=False)

    def write(self, path: str, data: bytes = b"data") -> None:
        parent, name = self._at(path)
        try:
            fh = self.fs.open(self.fs.lookup(parent, name).st_ino, os.O_RDWR)
        except OSError:
            fh, _attr = self.fs.create(parent, name, 0o644)
        self.fs.write(fh, 0, data)
        self.fs.release(fh)

    def mkdir(self, path: str) -> None:
        self.fs.mkdir(*self._at(path), 0o755)

    def unlink(self, path: str) -> None:
        self.fs.unlink(*self._at(path))

    def rmdir(self, path: str) -> None:
        self.fs.rmdir(*self._at(path))

    def rename(self, old: str, new: str) -> None:
        self.fs.rename(*self._at(old), *self._at(new))

    def link(self, old: str, new: str) -> None:
        self.fs.link(self.ino(old), *self._at(new))

    def symlink(self, path: str, target: str) -> None:
        self.fs.symlink(*self._at(path), os.fsencode(target))

    def mknod(self, path: str, mode: int, rdev: int = 0) -> None:
        self.fs.mknod(*self._at(path), mode, rdev)

    def chmod(self, path: str, mode: int) -> None:
        self.fs.setattr(self.ino(path), mode=mode)


@contextmanager
def files(name: str = "tank/fs"):
    pool = open_pool(name.split("/")[0])
    try:
        handle = Handle(pool)
        with pool.lock:
            yield Files(handle.filesystem(name))
    finally:
        pool.close()


def test_modified_added_removed_renamed_linked(env, capsys):
    with files() as f:
        for name in ("keep", "mod", "gone", "old"):
            f.write(f"/{name}")
        f.mkdir("/d")
        f.write("/d/inner")
        f.write("/linked")
        f.mkdir("/tree")
        f.write("/tree/x")
        f.write("/mode")
    ok(capsys, "snapshot", "tank/fs@s1")
    with files() as f:
        f.write("/mod", b"changed")
        f.unlink("/gone")
        f.rename("/old", "/d/new")
        f.link("/linked", "/d/hard")
        f.unlink("/tree/x")
        f.rmdir("/tree")
        f.chmod("/mode", 0o600)
        f.write("/added")
    expected = ("M\t/tank/fs/\n"
                "M\t/tank/fs/mod\n"
                "-\t/tank/fs/gone\n"
                "R\t/tank/fs/old -> /tank/fs/d/new\n"
                "M\t/tank/fs/d\n"
                "M\t/tank/fs/linked\t(+1)\n"
                "-\t/tank/fs/tree\n"
                "-\t/tank/fs/tree/x\n"
                "M\t/tank/fs/mode\n"
                "+\t/tank/fs/added\n")
    assert run(capsys, "diff", "tank/fs@s1") == (0, expected, "")      # against the filesystem
    assert run(capsys, "diff", "tank/fs@s1", "tank/fs") == (0, expected, "")
    ok(capsys, "snapshot", "tank/fs@s2")
    for argv in (["tank/fs@s1", "tank/fs@s2"], ["tank/fs@s1", "@s2"], ["@s1", "tank/fs@s2"],
                 ["@s1", "tank/fs"]):
        assert run(capsys, "diff", *argv) == (0, expected, "")
    # -H: tabs around the rename's arrow too; -F: the type column
    out = ok(capsys, "diff", "-FH", "tank/fs@s1", "tank/fs@s2")
    assert out == ("M\t/\t/tank/fs/\nM\tF\t/tank/fs/mod\n-\tF\t/tank/fs/gone\n"
                   "R\tF\t/tank/fs/old\t/tank/fs/d/new\nM\t/\t/tank/fs/d\n"
                   "M\tF\t/tank/fs/linked\t(+1)\n-\t/\t/tank/fs/tree\n-\tF\t/tank/fs/tree/x\n"
                   "M\tF\t/tank/fs/mode\n+\tF\t/tank/fs/added\n")
    assert run(capsys, "diff", "tank/fs@s2") == (0, "", "")            # nothing since s2
    # the mountpoint is the prefix; "/" gives no double slash
    ok(capsys, "set", "mountpoint=/", "tank/fs")
    assert ok(capsys, "diff", "tank/fs@s1", "tank/fs@s2").splitlines()[:2] == ["M\t/", "M\t/mod"]


def test_file_types_and_change_times(env, capsys):
    ok(capsys, "snapshot", "tank/fs@s1")
    with files() as f:
        f.write("/file")
        f.mkdir("/dir")
        f.symlink("/link", "file")
        f.mknod("/fifo", stat.S_IFIFO | 0o644)
        f.mknod("/sock", stat.S_IFSOCK | 0o644)
        f.mknod("/chr", stat.S_IFCHR | 0o644, os.makedev(1, 3))
        f.mknod("/blk", stat.S_IFBLK | 0o644, os.makedev(7, 0))
        ctimes = {p: f.fs.getattr(f.ino(p)).st_ctime_ns
                  for p in ("/", "/file", "/dir", "/link", "/fifo", "/sock", "/chr", "/blk")}
    assert ok(capsys, "diff", "-F", "tank/fs@s1") == (
        "M\t/\t/tank/fs/\n+\tF\t/tank/fs/file\n+\t/\t/tank/fs/dir\n+\t@\t/tank/fs/link\n"
        "+\t|\t/tank/fs/fifo\n+\t=\t/tank/fs/sock\n+\tC\t/tank/fs/chr\n+\tB\t/tank/fs/blk\n")
    lines = ok(capsys, "diff", "-t", "tank/fs@s1").splitlines()
    for line, path in zip(lines, ctimes):
        stamp, _kind, shown = line.split("\t")
        assert re.fullmatch(r"[ 0-9]{10}\.[0-9]{9}", stamp), stamp
        assert stamp == "%10d.%09d" % divmod(ctimes[path], 10 ** 9)
        assert shown == "/tank/fs" + path


def test_names_are_escaped_as_stream_bytes_does(env, capsys):
    names = ["sp ace", "back\\slash", "tab\there", "é", "new\nline", "del\x7f", 'q"uo%te']
    ok(capsys, "snapshot", "tank/fs@s1")
    with files() as f:
        for name in names:
            f.write("/" + name)
    assert ok(capsys, "diff", "tank/fs@s1") == (
        "M\t/tank/fs/\n+\t/tank/fs/sp\\0040ace\n+\t/tank/fs/back\\0134slash\n"
        "+\t/tank/fs/tab\\0011here\n+\t/tank/fs/\\0303\\0251\n+\t/tank/fs/new\\0012line\n"
        "+\t/tank/fs/del\\0177\n+\t/tank/fs/q\"uo%te\n")
    assert ok(capsys, "diff", "-h", "tank/fs@s1") == (
        "M\t/tank/fs/\n" + "".join(f"+\t/tank/fs/{n}\n" for n in names))
    ok(capsys, "set", "mountpoint=/mnt/with space", "tank/fs")          # the prefix too
    assert ok(capsys, "diff", "tank/fs@s1").splitlines()[0] == "M\t/mnt/with\\0040space/"


def test_hard_links_as_zfs_reports_them(env, capsys):
    """A link count change is `M PATH (+N)`; when the name the file was created under goes
    (its parent no longer names it), its later path cannot be found and OpenZFS reports the
    earlier path with the change."""
    with files() as f:
        f.mkdir("/d1")
        f.mkdir("/d2")
        f.write("/d1/f")
        f.link("/d1/f", "/d2/g")
        f.write("/d1/h")
        f.link("/d1/h", "/d2/i")
    ok(capsys, "snapshot", "tank/fs@s1")
    with files() as f:
        f.unlink("/d1/f")           # the name it was created under
        f.unlink("/d2/i")           # another name
    assert ok(capsys, "diff", "tank/fs@s1") == (
        "M\t/tank/fs/d1\nM\t/tank/fs/d2\nM\t/tank/fs/d1/f\t(-1)\nM\t/tank/fs/d1/h\t(-1)\n")


def test_recreated_file_is_removed_then_added(env, capsys):
    with files() as f:
        f.write("/r", b"first")
    ok(capsys, "snapshot", "tank/fs@s1")
    with files() as f:
        f.unlink("/r")
        f.write("/r", b"second")
        f.mkdir("/dir")
        f.rename("/dir", "/moved")           # new since s1: only its final name shows
    assert ok(capsys, "diff", "tank/fs@s1") == (
        "M\t/tank/fs/\n-\t/tank/fs/r\n+\t/tank/fs/r\n+\t/tank/fs/moved\n")


def test_a_file_unlinked_while_open(env, capsys):
    """An inode in the unlinked set: ZFS_IOC_OBJ_TO_STATS answers ESTALE, which libzfs shows
    as the path "(on_delete_queue)" after the mountpoint."""
    with files() as f:
        f.write("/open")
    ok(capsys, "snapshot", "tank/fs@s1")
    pool = open_pool("tank")
    try:
        handle = Handle(pool)
        with pool.lock:
            fs = handle.filesystem("tank/fs")
            fh = fs.open(fs.resolve(b"/open"), os.O_RDONLY)
            fs.unlink(1, b"open")
            handle.dsl.snapshot(["tank/fs@s2"])
            fs.release(fh)
    finally:
        pool.close()
    assert ok(capsys, "diff", "tank/fs@s1", "tank/fs@s2") == (
        "M\t/tank/fs/\nR\t/tank/fs/open -> /tank/fs(on_delete_queue)\n")
    assert ok(capsys, "diff", "tank/fs@s2") == ""      # gone since: ESTALE there, not shown


def test_clones(env, capsys):
    with files() as f:
        f.write("/base")
    ok(capsys, "snapshot", "tank/fs@s1")
    ok(capsys, "clone", "tank/fs@s1", "tank/c")
    with files("tank/c") as f:
        f.write("/base", b"in the clone")
        f.write("/new")
    ok(capsys, "snapshot", "tank/c@cs")
    expected = "M\t/tank/c/\nM\t/tank/c/base\n+\t/tank/c/new\n"
    assert ok(capsys, "diff", "tank/fs@s1", "tank/c") == expected
    assert ok(capsys, "diff", "tank/fs@s1", "tank/c@cs") == expected
    ok(capsys, "snapshot", "tank/fs@s2")             # not in the clone's timeline
    code, out, err = run(capsys, "diff", "tank/fs@s2", "tank/c")
    assert (code, out, err) == (1, "", "Unable to obtain diffs: \n   Not an earlier snapshot "
                                       "from the same fs\n")


@pytest.mark.parametrize("argv,code,err", [
    ([], 2, "must provide at least one snapshot name\n" + USAGE),
    (["tank/fs@s1", "tank/fs@s2", "tank/fs"], 2, "too many arguments\n" + USAGE),
    (["@s1"], 2, USAGE),
    (["-x", "tank/fs@s1"], 2, "invalid option 'x'\n" + USAGE),
    (["tank/fs"], 1, "Badly formed snapshot name tank/fs: missing '@' delimiter in snapshot "
     "name\n"),
    (["tank/nofs@s1"], 1, "cannot open 'tank/nofs': dataset does not exist\n"),
    (["nopool/fs@s1"], 1, "cannot open 'nopool/fs': dataset does not exist\n"),
    (["tank/fs#b"], 1, "cannot open 'tank/fs#b': bookmark delimiter '#' is not expected here\n"),
    (["@s1", "@s2"], 1, "cannot open '': empty component or misplaced '@' or '#' delimiter in "
     "name\n"),
    (["tank/fs@nope"], 1, "Unable to obtain diffs: No such file or directory\n"),
    (["tank/fs@s1", "tank/fs@nope"], 1, "Unable to obtain diffs: No such file or directory\n"),
    (["tank/fs@s2", "tank/fs@s1"], 1, "Unable to obtain diffs: \n   Not an earlier snapshot "
     "from the same fs\n"),
    (["tank/fs@s1", "@s1"], 1, "Unable to obtain diffs: \n   Not an earlier snapshot from the "
     "same fs\n"),
    (["tank/fs", "tank/fs@s1"], 1, "Unable to determine which snapshots to compare: invalid "
     "name\n"),
    (["tank/fs@s1", "@"], 1, "Unable to determine which snapshots to compare: invalid name\n"),
    (["tank/fs@s1", "tank/other"], 1, "Not an earlier snapshot from the same fs: invalid name\n"),
    (["tank/fs@s1", "tank/nothere"], 1, "cannot open 'tank/nothere': dataset does not exist\n"
     "Not an earlier snapshot from the same fs: invalid name\n"),
    # libzfs compares only as many characters of the clone's origin as the snapshot part of
    # the earlier name has: here they differ, and it opens the origin as a filesystem
    (["tank/fs@a_long_snapshot", "tank/xc"], 1, "cannot open 'tank/x@s': snapshot delimiter "
     "'@' is not expected here\nNot an earlier snapshot from the same fs: invalid name\n"),
    # ... here they agree ("tan"), and the kernel's check refuses it
    (["tank/fs@s1", "tank/xc"], 1, "Unable to obtain diffs: \n   Not an earlier snapshot from "
     "the same fs\n"),
    (["tank/legacy@s"], 1, "Cannot diff an unmounted snapshot: operation not applicable to "
     "datasets of this type\n"),
    (["tank/off@s", "tank/off"], 1, "Cannot diff an unmounted snapshot: operation not "
     "applicable to datasets of this type\n"),
])
def test_errors(env, capsys, argv, code, err):
    ok(capsys, "snapshot", "tank/fs@s1")
    ok(capsys, "snapshot", "tank/fs@a_long_snapshot")
    ok(capsys, "snapshot", "tank/fs@s2")
    ok(capsys, "create", "tank/other")
    ok(capsys, "create", "tank/x")
    ok(capsys, "snapshot", "tank/x@s")
    ok(capsys, "clone", "tank/x@s", "tank/xc")
    ok(capsys, "create", "-o", "mountpoint=legacy", "tank/legacy")
    ok(capsys, "snapshot", "tank/legacy@s")
    ok(capsys, "create", "-o", "canmount=off", "tank/off")
    ok(capsys, "snapshot", "tank/off@s")
    assert run(capsys, "diff", *argv) == (code, "", err)


def test_only_what_was_born_after_the_snapshot_is_read(env, capsys):
    """One file changed among 3,000: the walk reads the few nodes born since the snapshot (and
    the earlier tree's nodes in the ranges they cover), and looks at a few leaves' inodes."""
    with files() as f:
        f.mkdir("/d")
        for i in range(3000):
            f.write(f"/d/f{i:04d}", b"%d" % i)
    ok(capsys, "snapshot", "tank/fs@s1")
    with files() as f:
        f.write("/d/f1234", b"changed")
    ok(capsys, "snapshot", "tank/fs@s2")
    assert ok(capsys, "diff", "tank/fs@s1", "tank/fs@s2") == "M\t/tank/fs/d/f1234\n"
    pool = open_pool("tank")
    try:
        dsl = Datasets(pool)
        s1, s2 = dsl.get("tank/fs@s1"), dsl.get("tank/fs@s2")
        old, new = dsl.tree(s1), dsl.tree(s2)
        nodes = sum(1 for kind, _bp in new.walk() if kind == "node")
        reads = []
        for tree in (old, new):
            store_read = tree.store.read_node
            tree.store.read_node = lambda bp, _r=store_read: reads.append(bp) or _r(bp)
        inos = diff.changed(old, new, s1.createtxg)
        assert f_ino(dsl, s2, "/d/f1234") in inos
        assert nodes > 30 and len(reads) <= 8, (len(reads), nodes)
        assert len(inos) < 300, len(inos)
    finally:
        pool.close()


def f_ino(dsl, rec, path: str) -> int:
    from fusezfs.dsl.objset import DatasetIO
    from fusezfs.zpl.posix import Posix
    return Posix(DatasetIO(dsl, rec)).resolve(os.fsencode(path))


def test_through_a_fuse_mount(tmp_path, monkeypatch):
    """A user's session: a mounted pool, changes made with ordinary system calls, `zfs diff`
    answered by the service that serves the pool (paths at the mount)."""
    require_fuse()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    state = tmp_path / "state"
    from servicetools import service_env, stop_service
    environ = service_env(str(state))

    def fz(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run([sys.executable, "-m", "fusezfs.cli", *args], env=environ,
                           capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
        assert not check or r.returncode == 0, (args, r.stderr)
        return r

    disk = tmp_path / "disk"
    with open(disk, "wb") as f:
        f.truncate(256 * MiB)
    fz("pool", "create", "-m", str(mnt), "tank", str(disk))
    fz("create", "tank/fs")             # mounted at once, as zfs create does
    try:
        top = mnt / "fs"
        (top / "a").write_text("a")
        (top / "b").write_text("b")
        (top / "dir").mkdir()
        fz("snapshot", "tank/fs@s1")
        (top / "a").write_text("changed")
        os.rename(top / "b", top / "dir" / "b2")
        os.link(top / "a", top / "dir" / "a2")
        os.mkfifo(top / "fifo")
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(top / "sock"))
        os.symlink("a", top / "ln")
        shutil.rmtree(top / "dir")
        r = fz("diff", "-F", "tank/fs@s1")
        m = str(top)
        assert (r.returncode, r.stdout, r.stderr) == (0, (
            f"M\t/\t{m}/\nM\tF\t{m}/a\n-\tF\t{m}/b\n-\t/\t{m}/dir\n+\t|\t{m}/fifo\n"
            f"+\t=\t{m}/sock\n+\t@\t{m}/ln\n"), "")
        assert fz("diff", "tank/fs@s1", "tank/nope", check=False).stderr == (
            "cannot open 'tank/nope': dataset does not exist\n"
            "Not an earlier snapshot from the same fs: invalid name\n")
    finally:
        fz("unmount", "tank", check=False)
        stop_service(str(state))
    monkeypatch.setenv("FUSEZFS_STATE_DIR", str(state))
    pool = open_pool("tank")
    try:
        assert Datasets(pool).check() == []
        assert verify(pool).ok
    finally:
        pool.close()
