"""Fixtures shared by the test files. Whether a missing prerequisite skips a test or fails it
(FUSEZFS_TEST_STRICT=1, set by .ci/run) is decided in prerequisites.py."""
from __future__ import annotations

import pytest

from prerequisites import require_fuse

pytest_plugins = ["pytester"]       # tests/test_plugin.py runs an example suite in a sandbox


@pytest.fixture
def needs_fuse() -> None:
    """For tests that mount (`pytestmark = pytest.mark.usefixtures("needs_fuse")`):
    prerequisites.require_fuse (pyfuse3 must import; FUSE unusable: skip, or fail in CI)."""
    require_fuse()
