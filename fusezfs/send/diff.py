"""`zfs diff`: what changed between a snapshot and a later snapshot (or the filesystem itself)
of its timeline, in the lines OpenZFS's libzfs_diff.c prints.

Theory of operation
-------------------
OpenZFS finds the objects to look at by birth time (dmu_diff walks only the dnode blocks of the
later dataset born after the earlier snapshot's txg) and then decides, object by object, from
what ZFS_IOC_OBJ_TO_STATS says of it on either side: its mode, generation, link count, change
time and path. This module does the same over a fusezfs tree:

- *What may have changed* (`changed`): the leaves of the later tree born after `from_txg` are
  found by descending only into children born after it, as the send code does. Copy-on-write
  rewrites the leaf of every item put or deleted, and leaves are merged or split only by being
  rewritten, so a leaf born at or before `from_txg` covers the same key range in both trees
  with the same items. Every inode with an item in a new leaf, or with an item of the earlier
  tree in the key range a new leaf covers, is looked at; no other can differ. An inode whose
  record is byte-identical on both sides is passed over: its change time did not move, and
  OpenZFS reports nothing for such an object.
- *Stats and path* (`Side.stats`): the inode record gives mode, generation (the txg it was
  created in), links and ctime; the path is built as zfs_obj_to_path does, by following the
  parent pointer to the root and naming each step with the first entry of the parent that
  refers to it (the ZAP's order is hash order, and so is a fusezfs directory's). An inode in
  the unlinked set answers ESTALE with the path "(on_delete_queue)"; one its parent no longer
  names answers ENOENT (stats still filled), as the kernel does for a hard link whose
  recorded parent lost it.
- *The verdict* (`Differ`): write_inuse_diffs_one for an inode the later tree has,
  describe_free for one it lacks, line for line: `+` and `-`, `M` for a change of the same
  object, `M ... (+N)` for a changed link count, `R old -> new` for a new path, `-` then `+`
  for an object whose type or generation changed.

Objects are visited in inode-number order, as OpenZFS visits object numbers. Paths are printed
after the mountpoint given (OpenZFS: the dataset's mountpoint), escaped as stream_bytes does
(every byte that is not printable ASCII, space and backslash included, as `\\` and four octal
digits) unless `no_mangle`.
"""
from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import Callable, Iterator

from fusezfs.formats import node as fmt_node
from fusezfs.zpl.posix_layout import (
    FS_INO,
    K_DIRENT,
    Inode,
    decode_dirent,
    inode_key,
    kind_hi,
    kind_lo,
    unlinked_key,
)
from fusezfs.engine.tree import Tree

ON_DELETE_QUEUE = b"(on_delete_queue)"


@dataclass(frozen=True)
class Stat:
    """zfs_stat_t: what ZFS_IOC_OBJ_TO_STATS reports of an object (zeros: no object)."""
    mode: int = 0
    gen: int = 0
    links: int = 0
    ctime: int = 0          # nanoseconds


NO_STAT = Stat()


@dataclass(frozen=True)
class Flags:
    """zfs diff's -F, -H, -t and -h."""
    classify: bool = False
    scripted: bool = False
    timestamped: bool = False
    no_mangle: bool = False


class Side:
    """One side of a diff: a snapshot's tree (or the filesystem's, synced), named `name` in
    error messages, answering for objects as ZFS_IOC_OBJ_TO_STATS does."""

    def __init__(self, tree: Tree, name: str) -> None:
        self.tree = tree
        self.name = name
        self._names: dict[int, dict[int, bytes]] = {}     # dir -> {child: first name}

    def record(self, ino: int) -> bytes | None:
        return self.tree.get(inode_key(ino))

    def stats(self, ino: int) -> tuple[int, bytes, Stat]:
        """(0 or an errno, path, stats). ENOENT with NO_STAT: no such object."""
        try:
            raw = self.record(ino)
            if raw is None:
                return errno.ENOENT, b"", NO_STAT
            node = Inode.decode(ino, raw)
            st = Stat(node.mode, node.gen, node.nlink, node.ctime)
            if self.tree.get(unlinked_key(ino)) is not None:
                return errno.ESTALE, ON_DELETE_QUEUE, st
            return self._path(node, st)
        except OSError as e:                       # a block no copy of which is good (EIO)
            return e.errno or errno.EIO, b"", NO_STAT

    def _path(self, node: Inode, st: Stat) -> tuple[int, bytes, Stat]:
        parts: list[bytes] = []
        seen = {node.ino}
        while node.parent != node.ino:
            name = self._name_in(node.parent, node.ino)
            raw = self.record(node.parent)
            if name is None or raw is None or node.parent in seen:
                return errno.ENOENT, b"", st
            parts.append(name)
            seen.add(node.parent)
            node = Inode.decode(node.parent, raw)
        return 0, b"".join(b"/" + p for p in reversed(parts)) or b"/", st

    def _name_in(self, parent: int, ino: int) -> bytes | None:
        names = self._names.get(parent)
        if names is None:
            names = self._names[parent] = {}
            for _k, value in self.tree.scan(kind_lo(parent, K_DIRENT), kind_hi(parent, K_DIRENT)):
                child, _dt, name = decode_dirent(value)
                names.setdefault(child, name)
        return names.get(ino)


# ---- what may have changed ----------------------------------------------------------------
def _new_leaves(tree: Tree, from_txg: int) -> Iterator[tuple[bytes, bytes | None, list[bytes]]]:
    """(lo, hi, keys) of every leaf of `tree` born after from_txg, in key order; [lo, hi) is
    the key range the leaf covers (hi None: no upper bound). Only nodes born after from_txg
    are read."""
    root = tree.root
    if root is None or root.birth <= from_txg:
        return
    stack: list[tuple] = [(root, b"", None)]
    while stack:
        bp, lo, hi = stack.pop()
        node = fmt_node.decode(tree.store.read_node(bp))
        if node.level == 0:
            yield lo, hi, node.keys
            continue
        keys, kids = node.keys, node.values
        for i in range(len(keys) - 1, -1, -1):
            if kids[i].birth > from_txg:
                stack.append((kids[i], lo if i == 0 else keys[i],
                              keys[i + 1] if i + 1 < len(keys) else hi))


def changed(old: Tree, new: Tree, from_txg: int) -> list[int]:
    """Inode numbers that may differ between `old` (the snapshot of txg from_txg) and `new`
    (a later point of its timeline), ascending; see the module comment."""
    inos: set[int] = set()
    ranges: list[list] = []                    # merged [lo, hi) runs of new leaves
    for lo, hi, keys in _new_leaves(new, from_txg):
        inos.update(int.from_bytes(k[:8], "big") for k in keys)
        if ranges and ranges[-1][1] == lo:
            ranges[-1][1] = hi
        else:
            ranges.append([lo, hi])
    for lo, hi in ranges:
        inos.update(int.from_bytes(k[:8], "big") for k, _v in old.scan(lo or None, hi))
    inos.discard(FS_INO)
    return sorted(inos)


# ---- the lines -----------------------------------------------------------------------------
def escape(raw: bytes) -> bytes:
    """stream_bytes: printable ASCII as is, any other byte (space and backslash too) as a
    backslash and four octal digits."""
    return b"".join(bytes((c,)) if 32 < c < 127 and c != 92 else b"\\%04o" % c for c in raw)


def file_type(mode: int) -> bytes:
    """get_what: the -F column."""
    return {stat.S_IFBLK: b"B", stat.S_IFCHR: b"C", stat.S_IFDIR: b"/", stat.S_IFIFO: b"|",
            stat.S_IFLNK: b"@", stat.S_IFSOCK: b"=", stat.S_IFREG: b"F"}.get(
                stat.S_IFMT(mode), b"?")


class Differ:
    """The lines of one diff. `out` takes each line (bytes, with its newline); `err` each
    message for stderr."""

    def __init__(self, old: Side, new: Side, mount: bytes, flags: Flags,
                 out: Callable[[bytes], None], err: Callable[[str], None]) -> None:
        self.old, self.new = old, new
        self.mount = mount
        self.flags = flags
        self.out = out
        self.err = err

    def run(self, inos: list[int]) -> int:
        """Report every inode of `inos`; 1 if the diff had to stop (a removed object whose
        stats could not be read: OpenZFS's differ thread gives up there), else 0."""
        for ino in inos:
            if self.new.record(ino) is None:
                if self._free(ino):
                    return 1
            else:
                old, new = self.old.record(ino), self.new.record(ino)
                if old != new:
                    self._inuse(ino)
        return 0

    # -- write_inuse_diffs_one and describe_free
    @staticmethod
    def _failed(code: int) -> bool:
        """Whether a stats failure is one to report (not ENOENT/ESTALE: no object there)."""
        return code not in (0, errno.ENOENT, errno.ESTALE)

    def _unable(self, side: Side, ino: int, code: int) -> str:
        return (f"Unable to determine path or stats for object {ino} in {side.name}: "
                f"{os.strerror(code)}")

    def _inuse(self, ino: int) -> None:
        ferr, fname, fsb = self.old.stats(ino)
        terr, tname, tsb = self.new.stats(ino)
        logged = False
        if self._failed(ferr):
            self.err(self._unable(self.old, ino, ferr))
            logged = True
        if self._failed(terr) and not logged:
            self.err(self._unable(self.new, ino, terr))
        # get_stats_for_obj answers ESTALE with a path and success
        ferr = 0 if ferr == errno.ESTALE else ferr
        terr = 0 if terr == errno.ESTALE else terr
        if ferr and terr:
            return
        fmode, tmode = stat.S_IFMT(fsb.mode), stat.S_IFMT(tsb.mode)
        if stat.S_IFDIR in (fmode, tmode) or fsb.links == 0 or tsb.links == 0:
            change = 0
        else:
            change = tsb.links - fsb.links
        if ferr:
            if change:
                self._link_change(change, tname, tsb)
            else:
                self._file(b"+", tname, tsb)
            return
        if terr:
            if change:
                self._link_change(change, fname, fsb)
            else:
                self._file(b"-", fname, fsb)
            return
        tgen = tsb.gen + 1 if fmode != tmode and fsb.gen == tsb.gen else tsb.gen
        if fsb.gen == tgen:
            if fsb.ctime == tsb.ctime:
                return
            if change:
                self._link_change(change, fname if change > 0 else tname, tsb)
            elif fname == tname:
                self._file(b"M", fname, tsb)
            else:
                self._rename(fname, tname, tsb)
        else:                                   # re-created, or the object number reused
            self._file(b"-", fname, fsb)
            self._file(b"+", tname, tsb)

    def _free(self, ino: int) -> bool:
        """describe_free of an inode only the earlier side has; True if the diff must stop."""
        code, name, sb = self.old.stats(ino)
        if code in (errno.ESTALE, errno.ENOENT):
            return False
        if code:
            self.err(self._unable(self.old, ino, code))
            return True
        self._file(b"-", name, sb)
        return False

    # -- print_file, print_link_change, print_rename
    def _start(self, kind: bytes, sb: Stat) -> bytes:
        head = b""
        if self.flags.timestamped:
            head = b"%10d.%09d\t" % divmod(sb.ctime, 1_000_000_000)
        head += kind + b"\t"
        if self.flags.classify:
            head += file_type(sb.mode) + b"\t"
        return head

    def _path(self, path: bytes) -> bytes:
        whole = self.mount + path
        return whole if self.flags.no_mangle else escape(whole)

    def _file(self, kind: bytes, path: bytes, sb: Stat) -> None:
        self.out(self._start(kind, sb) + self._path(path) + b"\n")

    def _link_change(self, delta: int, path: bytes, sb: Stat) -> None:
        self.out(self._start(b"M", sb) + self._path(path) + b"\t(%+d)\n" % delta)

    def _rename(self, old: bytes, new: bytes, sb: Stat) -> None:
        sep = b"\t" if self.flags.scripted else b" -> "
        self.out(self._start(b"R", sb) + self._path(old) + sep + self._path(new) + b"\n")
