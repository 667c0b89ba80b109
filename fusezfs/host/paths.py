"""Where the state directory is (registry.py makes and checks it): $FUSEZFS_STATE_DIR, else
/var/lib/fusezfs for root, else $XDG_STATE_HOME/fusezfs (~/.local/state/fusezfs). A module of
its own, importing only os, because the thin client (client.py) needs it on every command."""
from __future__ import annotations

import os


def state_dir_path() -> str:
    path = os.environ.get("FUSEZFS_STATE_DIR")
    if path:
        return path
    if os.geteuid() == 0:
        return "/var/lib/fusezfs"
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "fusezfs")
