"""What tests of the service share: an environment whose commands go to the service of a
test's own state directory, and stopping that service at the end (it unmounts and closes every
pool), so no service outlives its test."""
from __future__ import annotations

import os
import signal
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def service_env(state: str, **more: str) -> dict[str, str]:
    env = dict(os.environ, FUSEZFS_STATE_DIR=str(state),
               PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p),
               **more)
    env.pop("FUSEZFS_NO_SERVICE", None)         # (tests/conftest.py sets it for the others)
    return env


def service_pid(state: str) -> int | None:
    try:
        with open(os.path.join(str(state), "service.pid")) as f:
            pid = int(f.read())
    except (OSError, ValueError):
        return None
    return pid if alive(pid) else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop_service(state: str, timeout: float = 30) -> None:
    """SIGTERM to the state directory's service and wait for it (SIGKILL past `timeout`)."""
    pid = service_pid(state)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)
