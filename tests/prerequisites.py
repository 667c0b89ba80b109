"""What the suite does when something a test needs is missing here: skip, or fail in CI.

Tests that need FUSE (a usable /dev/fuse and fusermount3), zfs-fuse, or mount namespaces
(unshare, nsenter) skip with the reason on a machine without them, so that the suite runs
anywhere. CI installs all of them (.ci/run) and sets FUSEZFS_TEST_STRICT=1: there, a missing
prerequisite is a failure, so that a broken CI machine cannot pass by skipping the tests that
matter. `skip_or_fail` is the one place that decides; every such check goes through it (the
FUSE tests through conftest.py's `needs_fuse` fixture, the zfs-fuse ones through
zfsfuse.require()).

Not covered, and skipped either way: wanting root (a property of how the suite is run: .ci/run
may run it as an ordinary user under sudo), and a missing user `nobody`. pyfuse3 and trio are
declared dependencies of fusezfs and never a reason to skip: without them the FUSE tests fail.

A module of its own rather than conftest.py, which pytest does not mean to be imported.
"""
from __future__ import annotations

import os
import shutil

import pytest

STRICT_VARIABLE = "FUSEZFS_TEST_STRICT"


def strict() -> bool:
    """True when a missing prerequisite must fail the test (FUSEZFS_TEST_STRICT=1)."""
    return os.environ.get(STRICT_VARIABLE, "") == "1"


def skip_or_fail(reason: str | None) -> None:
    """Nothing if `reason` is None (the prerequisite is there); else skip the calling test
    with the reason, or fail it under FUSEZFS_TEST_STRICT=1."""
    if reason is None:
        return
    if strict():
        pytest.fail(f"{reason} ({STRICT_VARIABLE}=1: a missing prerequisite is a failure)",
                    pytrace=False)
    pytest.skip(reason)


_fuse_reason: list[str | None] = []


def fuse_unusable() -> str | None:
    """Why FUSE mounts cannot be made here (no fusermount3, /dev/fuse missing or not openable),
    or None. Probed once per session."""
    if not _fuse_reason:
        reason = None
        if shutil.which("fusermount3") is None:
            reason = "fusermount3 not found (apt-get install fuse3)"
        else:
            try:
                os.close(os.open("/dev/fuse", os.O_RDWR))
            except OSError as e:
                reason = f"/dev/fuse unusable: {e.strerror}"
        _fuse_reason.append(reason)
    return _fuse_reason[0]


def require_fuse() -> None:
    """The calling test mounts: pyfuse3 and trio must import (a failure, never a skip: they
    are fusezfs's dependencies), and FUSE must be usable (skip_or_fail)."""
    try:
        import pyfuse3  # noqa: F401
        import trio  # noqa: F401
    except ImportError as e:
        pytest.fail(f"pyfuse3 and trio are dependencies of fusezfs (pyproject.toml) and must "
                    f"be installed: {e}", pytrace=False)
    skip_or_fail(fuse_unusable())
