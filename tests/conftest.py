"""Fixtures shared by the test files. Whether a missing prerequisite skips a test or fails it
(FUSEZFS_TEST_STRICT=1, set by .ci/run) is decided in prerequisites.py."""
from __future__ import annotations

import os

import pytest

from prerequisites import require_fuse

# Commands run in the test's own process unless a test asks for the service (tests/servicetools.py,
# test_host*.py, the FUSE tests): a service per test's state directory would outlive the test.
os.environ.setdefault("FUSEZFS_NO_SERVICE", "1")

pytest_plugins = ["pytester"]       # tests/test_plugin.py runs an example suite in a sandbox


@pytest.fixture
def needs_fuse() -> None:
    """For tests that mount (`pytestmark = pytest.mark.usefixtures("needs_fuse")`):
    prerequisites.require_fuse (pyfuse3 must import; FUSE unusable: skip, or fail in CI)."""
    require_fuse()
