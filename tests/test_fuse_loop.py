"""fusezfs/fuse/fuse_loop.py, the request wait fusezfs installs in pyfuse3's session loop: a queued
request is taken without a trio round trip, one task at a time waits for the descriptor, a
handler about to wait lends the reader's place, a busy session passes a checkpoint now and
then, and every task ends when the session ends. The Waiter is driven on a socket pair (as
/dev/fuse: readable when a request is queued); then the pyfuse3 floor, which installs the same
wait, is mounted and used by several processes at once, its results compared with a plain
directory's."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
import trio
import trio.abc
import trio.testing

from fusezfs.fuse import fuse_loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Session:
    """A socket pair standing in for /dev/fuse: `send` queues a request, `take` reads one
    (what pyfuse3 does after the wait returns True)."""

    def __init__(self) -> None:
        self.kernel, self.dev = socket.socketpair()
        self.dev.setblocking(False)
        self.exit = False
        self.waiter = fuse_loop.Waiter(self.dev.fileno(), lambda: self.exit)

    def send(self) -> None:
        self.kernel.send(b"r")

    def take(self) -> None:
        assert self.dev.recv(1) == b"r"

    def end(self) -> None:
        """pyfuse3.terminate with the wait installed: libfuse's exit flag, the descriptor's
        waiter woken (trio's notify_closing), the parked tasks told."""
        self.exit = True
        trio.lowlevel.notify_closing(self.dev.fileno())
        self.waiter._end()

    def close(self) -> None:
        self.kernel.close()
        self.dev.close()


class Steps(trio.abc.Instrument):
    """Counts the scheduler's steps of one task: a wait that never yields adds none."""

    def __init__(self, task) -> None:
        self.task = task
        self.n = 0

    def before_task_step(self, task) -> None:
        if task is self.task:
            self.n += 1


def test_queued_requests_are_taken_without_a_checkpoint_until_the_fairness_bound():
    s = Session()

    async def main():
        steps = Steps(trio.lowlevel.current_task())
        trio.lowlevel.add_instrument(steps)
        for _ in range(fuse_loop.FAIR):
            s.send()
            assert await s.waiter.wait()
            s.take()
        assert steps.n == 0             # FAIR requests back to back: never yielded
        s.send()
        assert await s.waiter.wait()
        s.take()
        assert steps.n == 1             # the next one passed a checkpoint first
        for _ in range(fuse_loop.FAIR - 1):     # (that one began the next run)
            s.send()
            assert await s.waiter.wait()
            s.take()
        assert steps.n == 1
        trio.lowlevel.remove_instrument(steps)
    trio.run(main)
    s.close()


def test_one_reader_at_a_time_and_a_lent_reader_serves_while_a_handler_waits():
    s = Session()
    log: list[str] = []

    async def loop(name: str, handler_waits: trio.Event | None):
        """pyfuse3's session loop in miniature: wait, read, run the handler."""
        while await s.waiter.wait():
            s.take()
            log.append(name)
            if handler_waits is not None and name == "A" and log.count("A") == 1:
                fuse_loop.lend_reader()         # as fuse_ops does before a worker thread
                await handler_waits.wait()

    async def main():
        fuse_loop._waiters.append(s.waiter)
        release = trio.Event()
        try:
            async with trio.open_nursery() as n:
                n.start_soon(loop, "A", release)
                await trio.testing.wait_all_tasks_blocked()
                assert s.waiter.reading       # A waits for the descriptor
                n.start_soon(loop, "B", None)
                await trio.testing.wait_all_tasks_blocked()
                assert s.waiter.reading and len(s.waiter.lot()) == 1   # B parked
                s.send()                        # A takes it and its handler waits...
                await trio.testing.wait_all_tasks_blocked()
                assert log == ["A"] and s.waiter.reading      # ...B was lent the reader
                for _ in range(3):
                    s.send()
                    await trio.testing.wait_all_tasks_blocked()
                assert log == ["A", "B", "B", "B"]    # served while A's handler waits
                release.set()
                await trio.testing.wait_all_tasks_blocked()
                s.end()
        finally:
            fuse_loop._waiters.remove(s.waiter)
    trio.run(main)
    s.close()


def test_every_task_ends_when_the_session_ends():
    for how in ("terminate", "broken"):
        s = Session()
        ended: list[bool] = []

        async def loop():
            while await s.waiter.wait():
                s.take()
            ended.append(True)

        async def main():
            with trio.fail_after(5):
                async with trio.open_nursery() as n:
                    for _ in range(4):
                        n.start_soon(loop)
                    await trio.testing.wait_all_tasks_blocked()
                    if how == "terminate":
                        s.end()
                    else:
                        s.exit = True       # libfuse's exit flag after ENODEV ...
                        s.kernel.close()    # ... the descriptor reports a hang-up
        trio.run(main)
        assert ended == [True] * 4, how
        s.dev.close()
        if how == "terminate":
            s.kernel.close()


def test_a_parked_task_takes_an_empty_readers_place_by_itself(monkeypatch):
    """A handler that waits without lending: the session still gets a reader, PARK_S later."""
    monkeypatch.setattr(fuse_loop, "PARK_S", 0.05)
    s = Session()
    log: list[str] = []

    async def loop(name, block: trio.Event):
        while await s.waiter.wait():
            s.take()
            log.append(name)
            if name == "A" and len(log) == 1:
                await block.wait()              # no lend_reader()

    async def main():
        block = trio.Event()
        with trio.fail_after(5):
            async with trio.open_nursery() as n:
                n.start_soon(loop, "A", block)
                await trio.testing.wait_all_tasks_blocked()
                n.start_soon(loop, "B", block)
                await trio.testing.wait_all_tasks_blocked()
                s.send()
                s.send()
                while len(log) < 2:
                    await trio.sleep(0.01)
                assert log == ["A", "B"]
                block.set()
                s.end()
    trio.run(main)
    s.close()


# ---- through FUSE: the pyfuse3 floor, which installs the same wait -----------------------------
WORKER = r"""
import os, sys
root, me, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
d = os.path.join(root, me)
os.mkdir(d)
for i in range(n):
    with open(os.path.join(d, f"f{i}"), "wb") as f:
        f.write(f"{me}:{i}\n".encode() * (i % 7 + 1))
for i in range(0, n, 3):
    os.unlink(os.path.join(d, f"f{i}"))
for i in range(1, n, 3):
    os.rename(os.path.join(d, f"f{i}"), os.path.join(d, f"g{i}"))
os.symlink("g1", os.path.join(d, "link"))
"""


def snapshot(root: str) -> dict:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = ("link", os.readlink(p))
            elif os.path.isdir(p):
                out[rel] = ("dir", st.st_nlink)
            else:
                with open(p, "rb") as f:
                    out[rel] = ("file", st.st_size, f.read())
    return out


@pytest.mark.usefixtures("needs_fuse")
@pytest.mark.parametrize("loop", ["fusezfs", "stock"])
def test_floor_serves_concurrent_processes_like_a_plain_directory(tmp_path, loop):
    mnt = tmp_path / "mnt"
    plain = tmp_path / "plain"
    mnt.mkdir()
    plain.mkdir()
    argv = [sys.executable, os.path.join(ROOT, "tools", "pyfuse3-floor"), "--watch-stdin"]
    if loop == "stock":
        argv.append("--stock-loop")
    err = open(tmp_path / "floor.log", "wb")
    proc = subprocess.Popen(argv + [str(mnt)], stdin=subprocess.PIPE, stderr=err)
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            assert proc.poll() is None, (tmp_path / "floor.log").read_text()
            assert time.monotonic() < deadline, "no mount"
            time.sleep(0.02)
        for root in (mnt, plain):
            procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(root), f"w{k}", "150"])
                     for k in range(4)]
            assert [p.wait(timeout=120) for p in procs] == [0] * 4
        assert snapshot(str(mnt)) == snapshot(str(plain))
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
        err.close()
    assert proc.returncode == 0
    assert not os.path.ismount(mnt)
    log = (tmp_path / "floor.log").read_text()
    assert "Traceback" not in log and "pyfuse3's own request wait" not in log, log
