"""Which backend a pool belongs to, so that one backend never touches the other's pools.

A pool belongs to the backend that made it, and each backend can tell its own pools from the
other's by what it finds on disk and in its registry:

* a file holding a fusezfs label (magic `FZFSLABL`, docs/FORMAT.md section 1) is the emulated
  backend's; one holding a ZFS uberblock (magic 0x00bab10c in the uberblock ring of label 0,
  in either byte order) is a real ZFS's. A command that would write labels onto files (zpool
  create, add, attach, replace, labelclear) is refused by the backend that does not own them,
  with or without -f: -f overrides ZFS's own "in use" checks, never a crossing.
* a pool name the emulated registry (the state directory) holds and the real ZFS does not know
  is the emulated backend's: passthrough refuses commands naming it instead of letting the
  real ZFS answer "no such pool" about a pool the user can see with the other backend.

Every refusal names the backend that refused and the one that owns the pool. Nothing here
writes anything.
"""
from __future__ import annotations

import os
import struct
import sys

from fusezfs.host.paths import state_dir_path

ZFS_UBERBLOCK_MAGIC = 0x00BAB10C
FUSEZFS_LABEL_MAGIC = b"FZFSLABL"
UBERBLOCK_RING = (128 << 10, 256 << 10)      # of label 0, the same place in ZFS and fusezfs


def real_zfs_label(path: str) -> bool:
    """Whether the file carries a real ZFS label (an uberblock in label 0's ring)."""
    try:
        with open(path, "rb") as f:
            f.seek(UBERBLOCK_RING[0])
            ring = f.read(UBERBLOCK_RING[1] - UBERBLOCK_RING[0])
    except OSError:
        return False
    for off in range(0, len(ring) - 8, 1024):
        word = ring[off:off + 8]
        if len(word) == 8 and ZFS_UBERBLOCK_MAGIC in (struct.unpack("<Q", word)[0],
                                                      struct.unpack(">Q", word)[0]):
            return True
    return False


def fusezfs_label(path: str) -> dict | None:
    """The emulated pool's label config a file carries (name, state), or None."""
    try:
        with open(path, "rb") as f:
            if f.read(len(FUSEZFS_LABEL_MAGIC)) != FUSEZFS_LABEL_MAGIC:
                return None
    except OSError:
        return None
    from fusezfs.engine.devices import FileDevice
    from fusezfs.engine.pool import read_label
    dev = FileDevice(path, readonly=True)
    try:
        return read_label(dev) or {"name": "?", "state": "unknown"}
    finally:
        dev.close()


def file_operands(args: list[str]) -> list[str]:
    """The operands of a zpool verb that are existing regular files (absolute or not)."""
    return [a for a in args if not a.startswith("-") and os.path.isfile(a)]


def refuse_real_labels(verb_args: list[str]) -> int | None:
    """The emulated backend's check before a zpool verb writes labels: 1 (with the message)
    if a file holds a real ZFS pool, else None (the command goes on)."""
    verb = verb_args[0] if verb_args else ""
    for path in file_operands(verb_args[1:]):
        if real_zfs_label(path):
            print(f"cannot {verb} on '{path}': it holds a real ZFS label (a pool of the "
                  f"passthrough backend); the emulated backend (fusezfs) does not touch it "
                  f"(clear it with the real ZFS's 'zpool labelclear' first)", file=sys.stderr)
            return 1
    return None


def refuse_emulated_labels(verb_args: list[str]) -> int | None:
    """The passthrough backend's check before a zpool verb writes labels onto files."""
    verb = verb_args[0] if verb_args else ""
    for path in file_operands(verb_args[1:]):
        label = fusezfs_label(path)
        if label is not None:
            print(f"cannot {verb} on '{path}': it is part of the emulated backend's pool "
                  f"'{label.get('name')}' (fusezfs); the passthrough backend (real ZFS) does "
                  f"not touch it (destroy it with FUSEZFS_BACKEND=emulated first)",
                  file=sys.stderr)
            return 1
    return None


def emulated_pool_names() -> set[str]:
    """Pools the emulated backend's registry holds (empty if there is no registry)."""
    if not os.path.exists(os.path.join(state_dir_path(), "pools.json")):
        return set()
    try:
        from fusezfs.host import registry
    except ImportError:                     # before the host/ move
        from fusezfs import registry  # type: ignore[no-redef]
    try:
        return set(registry.load())
    except registry.RegistryError:          # unreadable: the emulation says so itself
        return set()


def print_backend(choice, args: list[str]) -> int:
    """`fusezfs backend [-H]`: which backend answers here and why; -H: the name alone."""
    if args and args != ["-H"]:
        print(f"invalid option '{args[0]}'" if args[0].startswith("-") else
              "too many arguments", file=sys.stderr)
        print("usage:\n\tbackend [-H]", file=sys.stderr)
        return 2
    if args == ["-H"]:
        print(choice.name)
        return 0
    import shlex
    print(f"backend: {choice.name}")
    print(f"chosen: {choice.why}")
    if choice.name == "passthrough":
        print(f"zfs: {shlex.join(choice.zfs)}")
        print(f"zpool: {shlex.join(choice.zpool)}")
    else:
        from fusezfs.cli.cli_help import fusezfs_version
        print(f"fusezfs: {fusezfs_version()}")
        print(f"state: {state_dir_path()}")
    return 0
