"""The FUSE side of the service: the trio loop every mount's session runs in.

The loop runs on the service's main thread (pyfuse3's sessions are trio tasks); the service's
startup, its clock (Service.watch) and its commands run on other threads and reach the loop
through its token (fuse_sessions.Sessions starts each session's task with it). Where FUSE is
unusable (no /dev/fuse, no permission, no pyfuse3, no fusermount3 for an ordinary user) there is
no loop at all: the service serves commands on unmounted pools, and every mount says why.
"""
from __future__ import annotations

import threading

from fusezfs.host.mounts import fuse_unusable
from fusezfs.host.prober import Prober


class FuseHost:
    """What every pool's mounts share: the loop's nursery and token (set once it runs), the
    prober, and why FUSE is unusable here (None if it is usable)."""

    def __init__(self) -> None:
        self.reason = fuse_unusable()
        self.prober = Prober()
        self.nursery = None
        self.token = None
        self.done = threading.Event()

    def run(self, service) -> None:
        """Serve until the service stops: its startup and clock on threads of their own, the
        loop (if any) here."""
        if self.reason is not None:
            service.startup()
            service.watch()
            return
        import trio

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                self.token = trio.lowlevel.current_trio_token()
                threading.Thread(target=service.startup, name="fusezfs-startup",
                                 daemon=True).start()
                threading.Thread(target=service.watch, name="fusezfs-watch",
                                 daemon=True).start()
                while not self.done.is_set():
                    await trio.sleep(0.2)
                nursery.cancel_scope.cancel()
        trio.run(main)

    def finished(self) -> None:
        """Every mount is gone: the loop may end."""
        self.done.set()
