"""What changed between a layer's snapshot and its parent's, path by path: the changes a
layer tar must carry.

Theory of operation
-------------------
A layer tar must turn the parent's tree into the child's when applied (applier.py). What it
holds is decided *by paths*, never by inode identity: a path is written if it is new, or if
what a tar entry says of it differs (type, mode, owner, mtime, size, rdev, symlink target,
xattrs, contents, or the set of paths sharing its inode); a path the child lacks is a whiteout,
unless its directory went too. So the changes are a function of the two trees as paths show
them, and importing the tar they make gives a tree those paths cannot tell from the child's:
the export is the same for any two trees that look the same, which is what makes import ->
export -> import -> export give the same layer digests.

Finding them without reading every inode: fusezfs's `zfs diff` walk (diff.changed) gives, by
birth time, the inodes whose items may differ between the two snapshots (only the child's tree
nodes born after the parent snapshot are read); those whose inode record is byte-identical on
both sides are dropped (every change to an inode's items changes its ctime, so its record),
leaving the inodes that did change. The directories to descend into are those and their
ancestors, found by the parent pointer each inode keeps. A regular file's parent pointer is
exact only while it has one name (a hard-linked file names the directory of one link; and
after the other names went, possibly a directory that no longer names it), so if a changed
file has several links, or its recorded parent does not list it, every directory is walked
(the ordinary case of a base layer, whose parent is empty, is a full walk anyway). A path
whose inode is the same on both sides and unchanged is equal without a look; everything else
is compared entry by entry, contents by the checksums of their blocks, and only if those
differ (another compression, another txg's rewrite of equal bytes) by the bytes themselves.

The base layer is compared against an empty root directory (0755, root's, time 0), the root
the importer gives a new base layer, so a base layer's tar holds the root itself only if the
root differs from that. Changes come out in tar order: a depth-first walk with names in byte
order, a directory before what is in it; a whiteout sorts under its `.wh.` name.
"""
from __future__ import annotations

import stat
from dataclasses import dataclass
from typing import Iterator

from fusezfs.formats.bp import decode_bp
from fusezfs.zpl.posix import ROOT_INO, Posix
from fusezfs.zpl.posix_layout import K_DATA, Inode, inode_key, kind_hi, kind_lo
from fusezfs.images.layertar import WH_PREFIX

ADD, MODIFY, DELETE = "add", "modify", "delete"
CHUNK = 1 << 20


@dataclass(frozen=True)
class Entry:
    """What a tar entry says of a path (directories: no size; symlinks: no mode)."""
    kind: int
    mode: int
    uid: int
    gid: int
    mtime: int
    size: int
    rdev: int
    target: bytes
    xattrs: tuple
    group: tuple | None = None      # every path of a hard-linked file, tar order


EMPTY_ROOT = Entry(stat.S_IFDIR, 0o755, 0, 0, 0, 0, 0, b"", ())


@dataclass(frozen=True)
class Change:
    path: bytes                     # the path in the child ("" is the root)
    kind: str                       # ADD, MODIFY or DELETE
    ino: int = 0                    # the child's inode (ADD, MODIFY)
    entry: Entry | None = None


def order(path: bytes) -> list[bytes]:
    """Tar order of paths (depth first, names in byte order) as a sort key."""
    return path.split(b"/")


class Side:
    """One snapshot's filesystem, read by inode."""

    def __init__(self, fs: Posix) -> None:
        self.fs = fs
        self.tree = fs.tree
        self.groups: dict[int, tuple] = {}

    def entries(self, ino: int) -> dict[bytes, tuple[int, bool]]:
        """name -> (inode, is a directory)."""
        return {e.name: (e.ino, e.type == stat.S_IFDIR >> 12) for e in self.fs.readdir(ino, 2)}

    def record(self, ino: int) -> bytes | None:
        return self.tree.get(inode_key(ino))

    def entry(self, ino: int) -> Entry:
        fs = self.fs
        a = fs.getattr(ino)
        kind = stat.S_IFMT(a.st_mode)
        names = fs.listxattr(ino)
        xa = tuple(sorted((n, fs.getxattr(ino, n)) for n in names))
        return Entry(kind, 0 if kind == stat.S_IFLNK else stat.S_IMODE(a.st_mode), a.st_uid,
                     a.st_gid, a.st_mtime_ns, a.st_size if kind == stat.S_IFREG else 0,
                     a.st_rdev if kind in (stat.S_IFCHR, stat.S_IFBLK) else 0,
                     fs.readlink(ino) if kind == stat.S_IFLNK else b"", xa,
                     self.groups.get(ino))

    def blocks(self, ino: int) -> list:
        out = []
        for key, raw in self.tree.scan(kind_lo(ino, K_DATA), kind_hi(ino, K_DATA)):
            bp = decode_bp(raw)
            out.append((key[9:], None if bp is None else (bp.lsize, bp.comp, bp.cksum, bp.checksum)))
        return out

    def chunks(self, ino: int, size: int) -> Iterator[bytes]:
        fh = self.fs.open(ino)
        try:
            for off in range(0, size, CHUNK):
                yield self.fs.read(fh, off, CHUNK)
        finally:
            self.fs.release(fh)

    def find_groups(self) -> None:
        """Every path of each hard-linked file (a full walk)."""
        paths: dict[int, list[bytes]] = {}
        stack = [(b"", ROOT_INO)]
        while stack:
            path, ino = stack.pop()
            for e in self.fs.readdir(ino, 2):
                p = path + b"/" + e.name if path else e.name
                if e.type == stat.S_IFDIR >> 12:
                    stack.append((p, e.ino))
                elif e.type == stat.S_IFREG >> 12 and self.fs.getattr(e.ino).st_nlink > 1:
                    paths.setdefault(e.ino, []).append(p)
        self.groups = {ino: tuple(sorted(ps, key=order)) for ino, ps in paths.items()}


def changes(parent: Posix | None, child: Posix, parent_txg: int = 0, *,
            full: bool = False) -> list[Change]:
    """The changes from `parent` (a snapshot of txg `parent_txg` on the child's timeline, or
    None for an empty root) to `child`, in tar order. `full`: compare every path (what the
    walk pruned by birth time must agree with; for tests)."""
    return _Differ(parent, child, parent_txg, full).run()


class _Everything(set):
    def __contains__(self, item) -> bool:
        return True


class _Differ:
    def __init__(self, parent: Posix | None, child: Posix, parent_txg: int,
                 full: bool) -> None:
        self.p = Side(parent) if parent is not None else None
        self.c = Side(child)
        self.out: list[Change] = []
        self.changed: set[int] = set()
        self.dirty: set[int] = set()
        self.full = self.p is None
        if self.p is not None:
            self._candidates(parent_txg)
        if full:                            # nothing is taken as unchanged without a look
            self.full = True
            self.changed = _Everything()
        if self.full:
            self.c.find_groups()
            if self.p is not None:
                self.p.find_groups()

    def _candidates(self, parent_txg: int) -> None:
        from fusezfs.send.diff import changed
        p, c = self.p, self.c
        assert p is not None
        listed: dict[tuple[int, int], set[int]] = {}
        for ino in changed(p.tree, c.tree, parent_txg):
            rp, rc = p.record(ino), c.record(ino)
            if rp == rc:
                continue
            self.changed.add(ino)
            for side, raw in ((c, rc), (p, rp)):
                if raw is None:
                    continue
                node = Inode.decode(ino, raw)
                if not stat.S_ISDIR(node.mode):
                    key = (id(side), node.parent)
                    if key not in listed:
                        try:
                            listed[key] = {i for i, _d in side.entries(node.parent).values()}
                        except OSError:
                            listed[key] = set()
                    if node.nlink > 1 or ino not in listed[key]:
                        self.full = True        # still collect every changed inode
                if not self.full:
                    self._mark_up(side, ino, node)

    def _mark_up(self, side: Side, ino: int, node: Inode) -> None:
        for _ in range(4096):
            if stat.S_ISDIR(node.mode):
                self.dirty.add(ino)
            if ino == ROOT_INO:
                return
            ino = node.parent
            raw = side.record(ino)
            if raw is None:
                return
            node = Inode.decode(ino, raw)

    # ---- the walk -----------------------------------------------------------------------------
    def run(self) -> list[Change]:
        c = self.c
        croot = c.entry(ROOT_INO)
        proot = self.p.entry(ROOT_INO) if self.p is not None else EMPTY_ROOT
        if croot != proot:
            self.out.append(Change(b"", MODIFY, ROOT_INO, croot))
        self._walk(b"", ROOT_INO if self.p is not None else None, ROOT_INO)
        return self.out

    def _walk(self, path: bytes, pdir: int | None, cdir: int) -> None:
        p, c = self.p, self.c
        pe = p.entries(pdir) if (p is not None and pdir is not None) else {}
        ce = c.entries(cdir)
        names = sorted(set(pe) | set(ce), key=lambda n: WH_PREFIX + n if n not in ce else n)
        for name in names:
            sub = path + b"/" + name if path else name
            if name not in ce:
                self.out.append(Change(sub, DELETE))
                continue
            ci, cdir = ce[name]
            if name not in pe:
                self._add(sub, ci)
                continue
            assert p is not None
            pi = pe[name][0]
            if pi == ci and ci not in self.changed:
                # the same inode, unchanged: equal; below it only where a changed inode lies
                # (dirty), or anywhere in a full walk
                if cdir and (self.full or ci in self.dirty):
                    self._walk(sub, pi, ci)
                continue
            cent, pent = c.entry(ci), p.entry(pi)
            if cent != pent or (cent.kind == stat.S_IFREG and not self._same_data(pi, ci, cent)):
                self.out.append(Change(sub, MODIFY, ci, cent))
            if cent.kind == stat.S_IFDIR:
                self._walk(sub, pi if pent.kind == stat.S_IFDIR else None, ci)

    def _add(self, path: bytes, ino: int) -> None:
        ent = self.c.entry(ino)
        self.out.append(Change(path, ADD, ino, ent))
        if ent.kind == stat.S_IFDIR:
            self._walk(path, None, ino)

    def _same_data(self, pi: int, ci: int, ent: Entry) -> bool:
        p, c = self.p, self.c
        assert p is not None
        if pi == ci and ci not in self.changed:
            return True
        if p.blocks(pi) == c.blocks(ci):
            return True
        return all(a == b for a, b in zip(p.chunks(pi, ent.size), c.chunks(ci, ent.size)))
