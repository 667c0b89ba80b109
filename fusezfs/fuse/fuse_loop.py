"""A cheaper wait for the next FUSE request in pyfuse3's session loop.

Theory of operation
-------------------
pyfuse3's session loop (3.x, `_session_loop`) runs in up to `max_tasks` trio tasks; before
each request a task calls the module-level `_wait_fuse_readable`, which takes a trio lock
shared by all the tasks and then waits in `trio.lowlevel.wait_readable` on /dev/fuse, even
when requests are already queued. With several tasks the lock is handed from task to task at
every request: in a profile of the daemon creating files, the lock and the wait took about a
third of the loop thread's busy time, more than fusezfs's handlers.

The session loop looks `_wait_fuse_readable` up in its module's globals at every call, so
`install(mod)` replaces it in a pyfuse3 module instance (the daemon's, and each copy that
fuse_sessions loads for another session) with `Waiter.wait`:

* A request already queued is taken at once: poll(2) with a zero timeout on the session's
  file descriptor, and back to pyfuse3 with no trio checkpoint, no lock, no epoll
  registration. Between that poll and pyfuse3's read of the request there is no await, so no
  other task of the loop can read it first; the read therefore never blocks the thread
  (as in pyfuse3, a request withdrawn by the kernel in between, whose caller was killed,
  would; pyfuse3's own wait has the same window).
* Only one task at a time waits for the descriptor (trio allows one waiter per fd): the
  *reader*. A task that finds nothing queued becomes the reader if there is none, otherwise
  it parks. The task that served a request comes back as the reader, so a stream of
  requests from one caller costs one epoll wake-up each and no task switches.
* A task whose handler is about to wait (a worker thread: the pool lock held by a txg sync,
  an fsync) calls `lend_reader()` first: a parked task of every session that has no reader
  becomes its reader, so other requests are served meanwhile, as with pyfuse3's own loop.
  One parked task also wakes every PARK_S seconds and takes the reader's place if it is
  empty, so a handler that waits without saying so delays others by at most that, never
  forever (one timeout, not one per parked task: trio's cancel scopes are not free).
* Fairness: after FAIR requests taken back to back a task passes a trio checkpoint, so the
  loop's other tasks (the txg timer, other sessions, worker threads' results) are never
  starved by a busy session.
* End: when libfuse's exit flag is set (pyfuse3.terminate, the device gone) or the
  descriptor is closed, every waiting and parked task returns False and pyfuse3's loop ends.

pyfuse3's loop still counts its own waiting readers to decide when to start another task;
with this wait that count stays zero, so it starts tasks up to `max_tasks` over its first
requests, and those that are not needed stay parked (they cost nothing per request). Nothing
here reads or writes pyfuse3's memory: the session's descriptor and exit flag come from
libfuse through the session pointer fuse_extra finds.
"""
from __future__ import annotations

import logging
import select

import trio

log = logging.getLogger("fusezfs.fuse")

FAIR = 32           # requests taken back to back before a trio checkpoint
PARK_S = 1.0        # a parked task looks for an empty reader's place at least this often

BROKEN = select.POLLERR | select.POLLHUP | select.POLLNVAL
_waiters: list["Waiter"] = []       # of every session served in this process


class Waiter:
    """The request wait of one pyfuse3 session (see the module comment)."""

    def __init__(self, fd: int, exited) -> None:
        self.fd = fd
        self.exited = exited            # () -> bool: libfuse's exit flag of the session
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        self._poll = poller.poll
        self.reading = False            # a task waits in wait_readable on fd
        self.watching = False           # a parked task has a PARK_S timeout
        self.streak = 0
        self.done = False
        self._lot: trio.lowlevel.ParkingLot | None = None

    def lot(self) -> trio.lowlevel.ParkingLot:
        if self._lot is None:           # made inside the trio run
            self._lot = trio.lowlevel.ParkingLot()
        return self._lot

    def _end(self) -> bool:
        self.done = True
        if self._lot is not None:
            self._lot.unpark_all()
        return False

    async def wait(self) -> bool:
        """True when a request can be read without blocking; False when the loop is to end."""
        poll = self._poll
        while True:
            ready = poll(0)
            if ready:
                if ready[0][1] & BROKEN:    # unmounted: every task is to read its ENODEV
                    if self.exited():
                        return self._end()
                    if self._lot is not None:
                        self._lot.unpark_all()
                    return True
                self.streak += 1
                if self.streak <= FAIR:
                    return True         # no await between here and pyfuse3's read
                self.streak = 0
                await trio.lowlevel.cancel_shielded_checkpoint()
                continue
            self.streak = 0
            if self.done:               # (libfuse's exit flag comes with a wake-up: the
                return False            # descriptor's hang-up, or terminate's _end)
            if self.reading:
                if self.watching:
                    await self.lot().park()
                    continue
                self.watching = True    # one parked task looks again now and then
                try:
                    with trio.move_on_after(PARK_S):
                        await self.lot().park()
                finally:
                    self.watching = False
                continue
            self.reading = True
            try:
                await trio.lowlevel.wait_readable(self.fd)
            except (trio.ClosedResourceError, OSError):
                return self._end()
            finally:
                self.reading = False

    def lend(self) -> None:
        """Another task becomes the reader if there is none (a handler is about to wait)."""
        if not self.reading and not self.done and self._lot is not None and self._lot:
            self._lot.unpark()


def lend_reader() -> None:
    """Call before a FUSE handler awaits something slow (a worker thread): every session
    without a reader gets one, so requests keep being served while the handler waits."""
    for w in _waiters:
        w.lend()


async def run_sync_in_thread(fn, *args):
    """trio.to_thread.run_sync for a FUSE handler: the session keeps a reader meanwhile."""
    lend_reader()
    return await trio.to_thread.run_sync(fn, *args)


def install(mod, session: int, lib) -> bool:
    """Give pyfuse3 module instance `mod`, whose libfuse session is at address `session`
    (after init), the wait of this module. `lib` is libfuse3 (ctypes). False, with a warning,
    when pyfuse3 has no `_wait_fuse_readable` to replace (another pyfuse3 version): its own
    loop then serves as before."""
    if not callable(getattr(mod, "_wait_fuse_readable", None)) or \
            not callable(getattr(mod, "_session_loop", None)):
        log.warning("pyfuse3 without _wait_fuse_readable: its own request loop is used")
        return False
    fd = lib.fuse_session_fd(session)
    if fd < 0:
        log.warning("no FUSE descriptor for the session: pyfuse3's own request loop is used")
        return False
    waiter = Waiter(fd, lambda: bool(lib.fuse_session_exited(session)))
    uninstall(mod)                      # an instance reused for a new session
    _waiters.append(waiter)
    mod._fusezfs_waiter = waiter
    mod._wait_fuse_readable = waiter.wait
    terminate = getattr(mod, "_fusezfs_terminate", None) or mod.terminate
    mod._fusezfs_terminate = terminate

    def terminate_and_wake() -> None:
        """pyfuse3.terminate, and parked tasks told at once (not PARK_S later)."""
        terminate()
        waiter._end()
    mod.terminate = terminate_and_wake
    return True


def uninstall(mod) -> None:
    """Forget the wait of an ended session (its instance may serve another later)."""
    old = getattr(mod, "_fusezfs_waiter", None)
    if old in _waiters:
        _waiters.remove(old)
