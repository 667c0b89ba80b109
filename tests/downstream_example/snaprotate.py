"""A downstream project's tool, as fusezfs's pytest plugin example tests it: take a snapshot
`DATASET@auto-NNNN` (one more than the newest) and keep only the newest KEEP of them.
It knows nothing of fusezfs: it runs whatever `zfs` is first on PATH."""
import argparse
import subprocess
import sys


def zfs(*args: str) -> str:
    r = subprocess.run(["zfs", *args], capture_output=True, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stderr)
        raise SystemExit(r.returncode)
    return r.stdout


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset")
    ap.add_argument("--keep", type=int, default=3)
    a = ap.parse_args()
    names = zfs("list", "-H", "-o", "name", "-t", "snapshot", "-r", "-d", "1", a.dataset).split()
    autos = sorted(n for n in names if n.split("@")[1].startswith("auto-"))
    number = int(autos[-1].rsplit("-", 1)[1]) + 1 if autos else 1
    zfs("snapshot", f"{a.dataset}@auto-{number:04d}")
    autos.append(f"{a.dataset}@auto-{number:04d}")
    for old in autos[:-a.keep]:
        zfs("destroy", old)
    return 0


if __name__ == "__main__":
    sys.exit(main())
