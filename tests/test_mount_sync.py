"""The intent log through a FUSE mount: fsync, msync and O_SYNC writes are durable when they
return although no txg commits (the daemon killed with SIGKILL right after, then mounted
again, which replays the log); sync=disabled makes fsync return at once, durable only at the
next txg commit, as ZFS does."""
from __future__ import annotations

import mmap
import os
import signal
import time

import pytest

from test_mount import Env, _alive, read, write

pytestmark = pytest.mark.usefixtures("needs_fuse")


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    try:
        yield e
    finally:
        e.teardown()


def newest_txg(env: Env) -> int:
    """The newest uberblock on the pool file, read beside the daemon (no lock needed)."""
    from fusezfs.engine.devices import FileDevice
    from fusezfs.engine.vdevs import Leaf
    dev = FileDevice(str(env.tmp / "disk"), readonly=True)
    try:
        return max(ub.txg for ub in Leaf(dev, 0).read_uberblocks())
    finally:
        dev.close()


def kill_daemon(env: Env) -> None:
    pid = env.daemon_pid()
    os.kill(pid, signal.SIGKILL)
    while _alive(pid):
        time.sleep(0.05)


def test_fsync_msync_and_o_sync_survive_a_kill_with_no_txg_commit(env):
    env.create_pool()
    env.run("create", "-o", "sync=disabled", "tank/off")
    env.run("create", "-o", "sync=always", "tank/always")
    env.run("create", "-o", "logbias=throughput", "-o", "compression=off", "tank/tp")
    env.mount("-o", "sync_interval=3600")       # no timer commits: only the log is durable
    m = env.mnt
    write(f"{m}/first", b"the first fsync makes the log's chain (a txg)", sync=True)
    txg = newest_txg(env)
    data = os.urandom(300_000)
    write(f"{m}/f", data, sync=True)
    os.mkdir(f"{m}/dir")
    write(f"{m}/dir/g", b"in a new directory", sync=True)
    os.rename(f"{m}/dir/g", f"{m}/dir/h")
    write(f"{m}/dir/other", b"fsync'ed after the rename", sync=True)
    with open(f"{m}/mapped", "wb") as f:
        f.truncate(3 * mmap.PAGESIZE)
    fd = os.open(f"{m}/mapped", os.O_RDWR)
    try:
        with mmap.mmap(fd, 3 * mmap.PAGESIZE) as mm:
            mm[mmap.PAGESIZE:mmap.PAGESIZE + 6] = b"msync!"
            mm.flush()                          # msync(MS_SYNC)
    finally:
        os.close(fd)
    fd = os.open(f"{m}/osync", os.O_WRONLY | os.O_CREAT | os.O_SYNC, 0o640)
    try:
        os.write(fd, b"written with O_SYNC")
    finally:
        os.close(fd)
    big = os.urandom(1 << 20)
    write(f"{m}/tp/big", big, sync=True)        # logbias=throughput: logged by pointer
    write(f"{m}/always/a", b"sync=always: no fsync needed")
    write(f"{m}/off/lost", b"sync=disabled: fsync promises nothing", sync=True)
    assert newest_txg(env) == txg               # all of it durable through the log alone
    kill_daemon(env)
    env.run("pool", "verify", "tank")           # imports (claims the log), does not replay
    env.mount()                                 # replays it
    assert read(f"{m}/f") == data
    assert sorted(os.listdir(f"{m}/dir")) == ["h", "other"]
    assert read(f"{m}/dir/h") == b"in a new directory"
    mapped = read(f"{m}/mapped")
    assert len(mapped) == 3 * mmap.PAGESIZE and mapped[mmap.PAGESIZE:][:6] == b"msync!"
    assert read(f"{m}/osync") == b"written with O_SYNC"
    assert os.stat(f"{m}/osync").st_mode & 0o777 == 0o640
    assert read(f"{m}/tp/big") == big
    assert read(f"{m}/always/a") == b"sync=always: no fsync needed"
    assert not os.path.exists(f"{m}/off/lost")
    env.unmount()
    env.run("pool", "verify", "tank")


def test_sync_disabled_data_is_durable_at_the_next_txg_commit(env):
    env.create_pool()
    env.run("create", "-o", "sync=disabled", "tank/off")
    env.mount("-o", "sync_interval=0.5")
    write(f"{env.mnt}/off/kept", b"committed by the timer", sync=True)
    time.sleep(2)
    kill_daemon(env)
    env.mount()
    assert read(f"{env.mnt}/off/kept") == b"committed by the timer"
