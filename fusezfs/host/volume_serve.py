"""`python -m fusezfs.host.volume_serve POOL/VOL [PATH]`: one volume served as a file by a process
of its own, the pool opened here (volume_mount.py does the serving; tests and users without the
service use this)."""
from __future__ import annotations

import signal
import sys

import trio

from fusezfs.host.volume_mount import default_root, serve_volume, volume_path


def main(argv: list[str]) -> int:
    """`python -m fusezfs.host.volume_serve POOL/VOL [PATH]`: serve a volume until SIGTERM/SIGINT
    or unmount, the pool opened here; commits and closes it at the end."""
    from fusezfs.api import Handle
    from fusezfs.cli.cli_pool import open_pool
    if not 1 <= len(argv) <= 2:
        print("usage: python -m fusezfs.host.volume_serve POOL/VOL [PATH]", file=sys.stderr)
        return 2
    dataset = argv[0]
    path = argv[1] if len(argv) > 1 else volume_path(default_root(), dataset)
    pool = open_pool(dataset.split("/")[0].split("@")[0])
    try:
        handle = Handle(pool)

        async def run() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(lambda: serve_volume(
                        handle, dataset, path, ready=lambda: print(path, flush=True)))

                    async def stop_on_signal() -> None:
                        async for _sig in signals:
                            nursery.cancel_scope.cancel()
                            return
                    nursery.start_soon(stop_on_signal)
        trio.run(run)
    finally:
        with pool.lock:
            pool.sync()
        pool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
