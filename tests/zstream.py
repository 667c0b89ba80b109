"""OpenZFS 2.1.11's `zstream`, unpacked (never installed) for the stream tests.

`zstream dump -v` is the reference reader of send streams: the tests hand it every kind of
stream fusezfs writes and check that it reads them with no checksum complaint and the record
counts expected. It comes from Debian bookworm contrib's `zfsutils-linux` and the libraries it
links (libzfs4linux, libnvpair3linux, libuutil3linux, libzpool5linux), fetched with
`apt-get download` through a private sources list and state directory and unpacked with
`dpkg -x` into a cache (installing zfsutils-linux would pull the kernel module). The cache is
$FUSEZFS_ZSTREAM_DIR, or ~/.cache/fusezfs-zstream; `python3 tests/zstream.py` fills it (.ci/run
does, before the suite). Tests call `require()`: without the tool they skip with the reason,
or fail under FUSEZFS_TEST_STRICT=1 (prerequisites.skip_or_fail).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGES = ("zfsutils-linux", "libzfs4linux", "libnvpair3linux", "libuutil3linux",
            "libzpool5linux")
SOURCE = "deb http://deb.debian.org/debian bookworm contrib"
_reason: list[str | None] = []


def cache_dir() -> Path:
    return Path(os.environ.get("FUSEZFS_ZSTREAM_DIR") or
                Path.home() / ".cache" / "fusezfs-zstream")


def _root() -> Path:
    return cache_dir() / "root"


def binary() -> Path:
    return _root() / "sbin" / "zstream"


def env() -> dict[str, str]:
    root = _root()
    libs = [str(root / "lib" / "x86_64-linux-gnu"), str(root / "usr" / "lib" / "x86_64-linux-gnu")]
    e = dict(os.environ, LC_ALL="C")
    e["LD_LIBRARY_PATH"] = ":".join(libs + [e.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    return e


def fetch() -> str | None:
    """Download and unpack the packages into the cache; None on success, else why not."""
    why = fetch_debs(PACKAGES, cache_dir(), SOURCE, "zstream")
    if why is not None:
        return why
    return None if binary().exists() else "zstream: not found in the unpacked packages"


def fetch_debs(packages: tuple[str, ...], d: Path, source: str, what: str) -> str | None:
    """`apt-get download` PACKAGES from SOURCE through a private sources list and apt state in
    directory D (the host's apt is not touched) and `dpkg -x` them into D/root, never installing
    them; None on success, else why not (WHAT names the tool in the message). Also used by
    tools/zts for OpenZFS's test suite."""
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        return f"{what}: apt-get and dpkg are needed to fetch {', '.join(packages)}"
    root = d / "root"
    for sub in ("lists/partial", "cache/archives/partial", "pkgs"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    (d / "sources.list").write_text(source + "\n")
    opts = [f"-oDir::Etc::SourceList={d / 'sources.list'}", "-oDir::Etc::SourceParts=/dev/null",
            f"-oDir::State::Lists={d / 'lists'}", f"-oDir::Cache={d / 'cache'}",
            "-oAPT::Sandbox::User=root", "-qq"]
    try:
        r = subprocess.run(["apt-get", *opts, "update"], capture_output=True, text=True,
                           timeout=300)
        if r.returncode != 0:
            return f"{what}: apt-get update failed: {r.stderr.strip()[-300:]}"
        r = subprocess.run(["apt-get", *opts, "download", *packages], cwd=d / "pkgs",
                           capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            return f"{what}: apt-get download failed: {r.stderr.strip()[-300:]}"
        for deb in sorted((d / "pkgs").glob("*.deb")):
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as e:
        return f"{what}: fetching {', '.join(packages)} failed: {e}"
    return None


def unavailable() -> str | None:
    """Why zstream cannot be run here (after trying to fetch it once), or None."""
    if not _reason:
        reason = None
        if not binary().exists():
            reason = fetch()
        if reason is None:
            try:
                r = subprocess.run([str(binary())], capture_output=True, text=True,
                                   env=env(), timeout=30)
                if "zstream dump" not in r.stdout + r.stderr:
                    reason = f"zstream does not run: {(r.stdout + r.stderr).strip()[:300]}"
            except OSError as e:
                reason = f"zstream does not run: {e}"
        _reason.append(reason)
    return _reason[0]


def require() -> None:
    from prerequisites import skip_or_fail
    skip_or_fail(unavailable())


def dump(path: str | os.PathLike, *flags: str) -> subprocess.CompletedProcess:
    """`zstream dump [-v] PATH` (default flags: -v)."""
    return subprocess.run([str(binary()), "dump", *(flags or ("-v",)), os.fspath(path)],
                          capture_output=True, text=True, env=env(), timeout=300)


def summary(out: str) -> dict[str, int]:
    """The record counts of a dump's SUMMARY: {"BEGIN": n, "OBJECT": n, ...}."""
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"Total DRR_(\w+) records = (\d+)", out)}


if __name__ == "__main__":
    why = unavailable()
    print(why or f"zstream ready: {binary()}")
    sys.exit(1 if why else 0)
