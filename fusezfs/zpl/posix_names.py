"""Names: directories, lookups, creating, linking, unlinking and renaming (a mixin of Posix).

A directory's entries are items keyed by cookie (posix_layout.py): looking a name up hashes it
and scans the few keys of that hash, so lookups cost one tree descent whatever the directory's
size; readdir is a key-ordered scan from a cookie. Every operation here changes the tree (the
entries) and the cached inode records (sizes, link counts, times) under the pool's lock, and the
next flush writes the inodes, so the txg that commits one commits the other.
"""
from __future__ import annotations

import errno
import stat

from fusezfs.zpl.posix_layout import (
    CD_BITS,
    CD_MAX,
    COOKIE_DOT,
    COOKIE_DOTDOT,
    K_DIRENT,
    LINK_MAX,
    PATH_MAX,
    ROOT_INO,
    Inode,
    cookie_of,
    decode_dirent,
    dirent_key,
    dtype,
    encode_dirent,
    kind_hi,
    name_hash,
)
from fusezfs.zpl.posix_types import (
    DOTS,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    Attr,
    DirEntry,
    as_bytes,
    check_name,
    err,
    locked,
)

INODE_COST = 512            # space asked of check_space for a new inode or name


class Names:
    """Mixin of Posix: expects self.tree, self.io, self._inode, self._new_inode, ..."""

    # ---- internals: directories ----------------------------------------------------------
    def _dir_probe(self, dir_ino: int, name: bytes) -> tuple[tuple[int, int, int] | None, int]:
        """((cookie, ino, d_type) of `name` in a directory, or None; the cookie a new entry of
        that name would take, -1 if its hash has none left). The entries of one hash are
        probed one at a time, as there is almost always none or one: a lookup, and the check
        and the slot of a create, cost one descent of the tree."""
        tree = self.tree
        h = name_hash(name) << CD_BITS
        hi = dirent_key(dir_ino, h + CD_MAX + 1)
        free = h
        item = tree.first_item(dirent_key(dir_ino, h), hi)
        while item is not None:
            k, v, _r = item
            cookie = cookie_of(k)
            ino, dt, n = decode_dirent(v)
            if n == name:
                return (cookie, ino, dt), -1
            if cookie == free:          # entries come in cookie order: the lowest unused one
                free += 1
            item = tree.first_item(k + b"\0", hi)
        return None, (free if free <= h + CD_MAX else -1)

    def _dir_find(self, dir_ino: int, name: bytes) -> tuple[int, int, int] | None:
        """(cookie, ino, d_type) of `name` in a directory, or None."""
        return self._dir_probe(dir_ino, name)[0]

    def _child(self, dir_ino: int, name: bytes) -> int | None:
        """Inode of `name` in a directory ("." and ".." included), or None."""
        node = self._dir(dir_ino)
        if name == b".":
            return dir_ino
        if name == b"..":
            return node.parent
        e = self._dir_find(dir_ino, check_name(name))
        return None if e is None else e[1]

    def _dir_add(self, d: Inode, name: bytes, child: Inode, now: int, cookie: int) -> None:
        """Enter `name` at `cookie` (from _dir_probe, or _new_name which calls it)."""
        if cookie < 0:
            raise err(errno.ENOSPC)
        self.tree.put(dirent_key(d.ino, cookie), encode_dirent(child.ino, dtype(child.mode), name))
        d.size += 1
        if child.is_dir:
            d.nlink += 1
        d.mtime = d.ctime = now
        self._mark(d)

    def _dir_remove(self, d: Inode, cookie: int, is_dir: bool, now: int) -> None:
        self.tree.delete(dirent_key(d.ino, cookie))
        d.size -= 1
        if is_dir:
            d.nlink -= 1
        d.mtime = d.ctime = now
        self._mark(d)

    def _create_dir(self, parent: int) -> Inode:
        """A directory where a new name may go (not itself removed)."""
        d = self._dir(parent)
        if d.nlink == 0:
            raise err(errno.ENOENT)
        return d

    def _new_name(self, d: Inode, name) -> tuple[bytes, int]:
        """A name not in directory `d` yet, checked, and the cookie its entry will take."""
        name = check_name(name)
        if name in DOTS:
            raise err(errno.EEXIST)
        found, cookie = self._dir_probe(d.ino, name)
        if found is not None:
            raise err(errno.EEXIST)
        return name, cookie

    def _check_not_ancestor(self, anc: int, ino: int) -> None:
        """EINVAL if directory `anc` is `ino` or one of its ancestors (a rename into itself)."""
        cur = ino
        for _ in range(1 << 20):
            if cur == anc:
                raise err(errno.EINVAL)
            if cur == ROOT_INO:
                return
            cur = self._inode(cur).parent

    # ---- names ---------------------------------------------------------------------------
    @locked
    def lookup(self, parent: int, name) -> Attr:
        """The inode `name` names in directory `parent` (counts a lookup, see forget)."""
        name = as_bytes(name)
        ino = self._child(parent, name)
        if ino is None:
            raise err(errno.ENOENT)
        node = self._inode(ino)
        self._ref(ino)
        return self._attr(node)

    @locked
    def mknod(self, parent: int, name, mode: int, rdev: int = 0, uid: int = 0,
              gid: int = 0) -> Attr:
        """A regular file, device node, fifo or socket (S_IFMT of mode; 0 = regular)."""
        self._writable()
        d = self._create_dir(parent)
        name, cookie = self._new_name(d, name)
        fmt = stat.S_IFMT(mode) or stat.S_IFREG
        if fmt not in (stat.S_IFREG, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
            raise err(errno.EINVAL)
        node = self._new_inode(d, fmt | (mode & 0o7777), uid, gid,
                               rdev if fmt in (stat.S_IFCHR, stat.S_IFBLK) else 0)
        self._dir_add(d, name, node, node.ctime, cookie)
        self._note_create(d.ino, name, node)
        self._ref(node.ino)
        return self._attr(node)

    @locked
    def mkdir(self, parent: int, name, mode: int = 0o755, uid: int = 0, gid: int = 0) -> Attr:
        self._writable()
        d = self._create_dir(parent)
        name, cookie = self._new_name(d, name)
        node = self._new_inode(d, stat.S_IFDIR | (mode & 0o7777), uid, gid)
        self._dir_add(d, name, node, node.ctime, cookie)
        self._note_create(d.ino, name, node)
        self._ref(node.ino)
        return self._attr(node)

    @locked
    def symlink(self, parent: int, name, target, uid: int = 0, gid: int = 0) -> Attr:
        self._writable()
        target = as_bytes(target)
        if not target:
            raise err(errno.ENOENT)
        if len(target) >= PATH_MAX or b"\0" in target:
            raise err(errno.ENAMETOOLONG if len(target) >= PATH_MAX else errno.EINVAL)
        d = self._create_dir(parent)
        name, cookie = self._new_name(d, name)
        node = self._new_inode(d, stat.S_IFLNK | 0o777, uid, gid, 0, target)
        self._dir_add(d, name, node, node.ctime, cookie)
        self._note_create(d.ino, name, node)
        self._ref(node.ino)
        return self._attr(node)

    @locked
    def link(self, ino: int, new_parent: int, new_name) -> Attr:
        self._writable()
        node = self._inode(ino)
        d = self._create_dir(new_parent)
        name, cookie = self._new_name(d, new_name)
        if node.is_dir:
            raise err(errno.EPERM)
        if node.nlink == 0:
            raise err(errno.ENOENT)
        if node.nlink >= LINK_MAX:
            raise err(errno.EMLINK)
        self.io.check_space(self._dirty_data + INODE_COST)
        now = self.io.now_ns()
        node.nlink += 1
        node.ctime = now
        self._mark(node)
        self._dir_add(d, name, node, now, cookie)
        self._note_link(d.ino, name, ino)
        self._ref(ino)
        return self._attr(node)

    @locked
    def unlink(self, parent: int, name) -> None:
        self._writable()
        d = self._dir(parent)
        name = check_name(name)
        if name in DOTS:
            raise err(errno.EISDIR)
        e = self._dir_find(d.ino, name)
        if e is None:
            raise err(errno.ENOENT)
        node = self._inode(e[1])
        if node.is_dir:
            raise err(errno.EISDIR)
        now = self.io.now_ns()
        self._note_remove(d.ino, name, node.ino, False)
        self._dir_remove(d, e[0], False, now)
        self._drop_link(node, now)

    @locked
    def rmdir(self, parent: int, name) -> None:
        self._writable()
        d = self._dir(parent)
        name = check_name(name)
        if name == b".":
            raise err(errno.EINVAL)
        if name == b"..":
            raise err(errno.ENOTEMPTY)
        e = self._dir_find(d.ino, name)
        if e is None:
            raise err(errno.ENOENT)
        node = self._inode(e[1])
        if not node.is_dir:
            raise err(errno.ENOTDIR)
        if node.size > 2:
            raise err(errno.ENOTEMPTY)
        now = self.io.now_ns()
        self._note_remove(d.ino, name, node.ino, True)
        self._dir_remove(d, e[0], True, now)
        self._drop_link(node, now)

    @locked
    def rename(self, old_parent: int, old_name, new_parent: int, new_name,
               flags: int = 0) -> None:
        """rename(2), with renameat2's RENAME_NOREPLACE and RENAME_EXCHANGE flags."""
        self._writable()
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or \
                flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
            raise err(errno.EINVAL)
        od = self._dir(old_parent)
        nd = self._dir(new_parent)
        old_name = check_name(old_name)
        new_name = check_name(new_name)
        if old_name in DOTS or new_name in DOTS:
            raise err(errno.EBUSY)
        src = self._dir_find(od.ino, old_name)
        if src is None:
            raise err(errno.ENOENT)
        snode = self._inode(src[1])
        exchange = bool(flags & RENAME_EXCHANGE)
        # the checks in the order Linux makes them (do_renameat2, then vfs_rename)
        if snode.is_dir and od.ino != nd.ino:
            self._check_not_ancestor(snode.ino, nd.ino)     # source contains the target dir
        dst = self._dir_find(nd.ino, new_name)
        if dst is None:
            if exchange:
                raise err(errno.ENOENT)
        elif flags & RENAME_NOREPLACE:
            raise err(errno.EEXIST)
        dnode = None if dst is None else self._inode(dst[1])
        if dnode is not None and dnode.is_dir and od.ino != nd.ino:
            try:
                self._check_not_ancestor(dnode.ino, od.ino)  # target contains the source
            except OSError:
                raise err(errno.EINVAL if exchange else errno.ENOTEMPTY) from None
        now = self.io.now_ns()
        if exchange:
            if src[1] != dst[1]:
                self._note_rename(od.ino, old_name, nd.ino, new_name, flags)
            self._exchange(od, old_name, src, snode, nd, new_name, dst, dnode, now)
            return
        if dnode is not None:
            if dst[1] == src[1]:
                return                  # two names of one file: POSIX says do nothing
            if snode.is_dir:
                if not dnode.is_dir:
                    raise err(errno.ENOTDIR)
                if dnode.size > 2:
                    raise err(errno.ENOTEMPTY)
            elif dnode.is_dir:
                raise err(errno.EISDIR)
        if nd.nlink == 0:
            raise err(errno.ENOENT)
        self._note_rename(od.ino, old_name, nd.ino, new_name, flags)
        if dnode is not None:
            self._dir_remove(nd, dst[0], dnode.is_dir, now)
            self._drop_link(dnode, now)
        self._dir_remove(od, src[0], snode.is_dir, now)
        # the slot is probed after the removals, which may have freed a lower one
        self._dir_add(nd, new_name, snode, now, self._dir_probe(nd.ino, new_name)[1])
        snode.parent = nd.ino
        snode.ctime = now
        self._mark(snode)

    def _exchange(self, od: Inode, old_name: bytes, src: tuple, snode: Inode, nd: Inode,
                  new_name: bytes, dst: tuple, dnode: Inode, now: int) -> None:
        if src[1] == dst[1]:
            return
        self.tree.put(dirent_key(od.ino, src[0]), encode_dirent(dnode.ino, dst[2], old_name))
        self.tree.put(dirent_key(nd.ino, dst[0]), encode_dirent(snode.ino, src[2], new_name))
        if od.ino != nd.ino:
            moved = int(snode.is_dir) - int(dnode.is_dir)
            od.nlink -= moved
            nd.nlink += moved
            snode.parent, dnode.parent = nd.ino, od.ino
        for n in (od, nd):
            n.mtime = n.ctime = now
            self._mark(n)
        for n in (snode, dnode):
            n.ctime = now
            self._mark(n)

    # ---- directories ---------------------------------------------------------------------
    @locked
    def readdir(self, ino: int, cookie: int = 0, limit: int | None = None, *,
                touch: bool = True) -> list[DirEntry]:
        """Entries after `cookie` (0: from the start; else the cookie of the last entry the
        caller got), "." and ".." first. Cookies stay valid while entries come and go: an
        entry present throughout a listing is returned exactly once. `touch=False` for the
        system's own looks (the mount comparing names around a receive): only a user's read
        moves atime, or the head would count as modified since its snapshot."""
        node = self._dir(ino)
        if node.nlink == 0:
            return []
        out: list[DirEntry] = []
        if cookie < COOKIE_DOT:
            out.append(DirEntry(b".", ino, stat.S_IFDIR >> 12, COOKIE_DOT))
        if cookie < COOKIE_DOTDOT:
            out.append(DirEntry(b"..", node.parent, stat.S_IFDIR >> 12, COOKIE_DOTDOT))
        start = max(cookie + 1, 1 << CD_BITS)
        if start < 1 << 63 and (limit is None or len(out) < limit):
            for k, v in self.tree.scan(dirent_key(ino, start), kind_hi(ino, K_DIRENT)):
                child, dt, name = decode_dirent(v)
                out.append(DirEntry(name, child, dt, cookie_of(k)))
                if limit is not None and len(out) >= limit:
                    break
        if touch:
            self._relatime(node)
        return out[:limit] if limit is not None else out
