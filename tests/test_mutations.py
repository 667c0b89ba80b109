"""The short form of tools/mutate: every planted fault (a lost commit, a skipped flush, an
unverified read, a stale cached block, a free of a referenced block, a free reused too early, a
forgotten dirty inode) is killed by its fast tests. A survivor means the suite can no longer tell
that fault from correct code."""
from __future__ import annotations

import os
import subprocess
import sys

TOOL = os.path.join(os.path.dirname(__file__), "..", "tools", "mutate")


def test_every_planted_fault_is_killed():
    names = subprocess.run([sys.executable, TOOL, "--list"], capture_output=True, text=True,
                           check=True).stdout.split("\n")
    expected = len([n for n in names if n.strip()])
    out = subprocess.run([sys.executable, TOOL, "--quick"], capture_output=True, text=True,
                         timeout=600)
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 0, out.stdout + out.stderr
    assert lines[-1] == f"{expected} mutations, {expected} killed, 0 survived", lines
    assert sum(ln.startswith("killed ") for ln in lines) == expected >= 8
