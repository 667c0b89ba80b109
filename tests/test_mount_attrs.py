"""Attributes seen through the mount are never stale, whatever answers the kernel's follow-up
requests: the writeback cache's ctime-only SETATTR after an unlink, link, rename or xattr
change is answered from the POSIX layer's own ctime (fuse_ops._setattr), which that operation
already moved; and a change made past the kernel's attribute cache (`fusezfs cp` into the
mounted dataset, a rollback) shows at once, before the 1 s attribute timeout runs out."""
from __future__ import annotations

import os
import time

import pytest

from test_mount import env, read, write  # noqa: F401 - env is the fixture of test_mount

pytestmark = pytest.mark.usefixtures("needs_fuse")


def ctime(path: str) -> int:
    return os.lstat(path).st_ctime_ns


def test_ctime_moves_with_unlink_link_rename_and_xattrs_and_stays_after_remount(env):
    env.create_pool()
    env.mount()
    a, b, c = (os.path.join(env.mnt, n) for n in ("a", "b", "c"))
    write(a, b"data")
    seen = [ctime(a)]

    def changed(what: str) -> None:
        now = ctime(c if os.path.exists(c) else a)
        assert now > seen[-1], f"ctime did not move at {what}"
        seen.append(now)
    for step in ("link", "unlink", "rename", "setxattr", "removexattr"):
        time.sleep(0.01)
        if step == "link":
            os.link(a, b)
        elif step == "unlink":
            os.unlink(b)
        elif step == "rename":
            os.rename(a, c)
        elif step == "setxattr":
            os.setxattr(c, "user.k", b"v")
        else:
            os.removexattr(c, "user.k")
        changed(step)
        assert os.lstat(c if os.path.exists(c) else a).st_nlink == (2 if step == "link" else 1)
    fd = os.open(c, os.O_RDONLY)
    try:
        os.unlink(c)
        time.sleep(0.01)
        st = os.fstat(fd)           # the open, unlinked file: its last ctime, nlink 0
        assert st.st_nlink == 0 and st.st_ctime_ns >= seen[-1]
    finally:
        os.close(fd)
    write(a, b"again")
    before = os.lstat(a)
    env.unmount()
    env.mount()
    after = os.lstat(a)
    assert (after.st_ctime_ns, after.st_mtime_ns, after.st_size) == \
        (before.st_ctime_ns, before.st_mtime_ns, before.st_size)


def test_changes_from_outside_the_kernels_cache_show_at_once(env, tmp_path):
    env.create_pool()
    env.mount()
    f = os.path.join(env.mnt, "f")
    write(f, b"x" * 10)
    assert os.stat(f).st_size == 10        # now in the kernel's attribute cache
    src = tmp_path / "src"
    src.write_bytes(b"y" * 20)
    env.run("cp", str(src), "tank:/f")     # through the daemon, past the kernel
    assert os.stat(f).st_size == 20 and read(f) == b"y" * 20
    env.run("snapshot", "tank@s")
    write(f, b"z" * 30)
    assert os.stat(f).st_size == 30
    env.run("rollback", "tank@s")
    assert os.stat(f).st_size == 20 and read(f) == b"y" * 20
    os.unlink(f)
    env.run("cp", str(src), "tank:/f")     # a name the kernel had as negative
    assert os.stat(f).st_size == 20
