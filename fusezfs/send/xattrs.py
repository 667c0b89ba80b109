"""Extended attributes in a send stream, as ZFS lays out directory-based xattrs (xattr=on).

Theory of operation
-------------------
In ZFS a file with extended attributes has, in its znode's `zp_xattr`, the object number of a
hidden directory (flag ZFS_XATTR, mode S_IFDIR|S_ISVTX|0777, its parent the file) whose ZAP maps
each attribute's name to a regular file (mode S_IFREG|0644) holding the value. On Linux, names
of the `user.` namespace are stored without that prefix and the other namespaces (`trusted.`,
`security.`, `system.`) with theirs (zpl_xattr.c); a receiver puts `user.` back.

fusezfs keeps xattrs as items of their inode (FORMAT.md section 7), so the objects a stream
needs are made up, at numbers that no file object takes and that are the same in every stream
of a filesystem: the xattr objects of the file of object o are the block of XATTR_SPAN numbers
from `block_of(o)` = XATTR_BASE + o * XATTR_SPAN (XATTR_BASE = 2^47, past every inode number
fusezfs hands out): the directory first, then one file per attribute in name order, and the
rest of the block freed (FREEOBJECTS), so a receiver drops attributes removed since. A file
sent without attributes in an incremental stream gets its whole block freed when the source
had any (or when the source is a bookmark and cannot tell). Whenever a file is sent, its
attributes are sent whole (setxattr changes ctime, so a changed attribute always sends its
file). WRITE records must come in increasing object order, so the xattr objects of a stream
follow every file object (`Sender` queues them).

A receiver (`XattrGather`) collects the xattr directories and value files of the stream by
their ZFS_XATTR flag and parent, wherever their numbers are (zfs-era ZFS streams put them among
the files), and at the end makes each owner's xattr items exactly the directory's; a freed
block whose directory object is gone clears its owner's xattrs. A value file that an
incremental stream from another ZFS changed without its directory (only possible with foreign
streams) is not known and is left out, as before.
"""
from __future__ import annotations

import stat
from typing import Iterator

from fusezfs.formats.bp import decode_bp, encode_bp
from fusezfs.zpl.posix_layout import K_XATTR, XATTR_INLINE_MAX, Inode, kind_hi, kind_lo, xattr_key
from fusezfs.engine.tree import REF_BLOCK, Tree
from fusezfs.send import records as R
from fusezfs.send.zap import ZapError, decode_zap, encode_zap, salt_for, uint64_items
from fusezfs.send.znode import (
    DMU_OT_DIRECTORY_CONTENTS,
    DMU_OT_PLAIN_FILE_CONTENTS,
    DMU_OT_ZNODE,
    DN_MAX_OBJECT,
    ZFS_XATTR,
    Znode,
    dirent_object,
    dirent_value,
    znode_flags,
)

XATTR_BASE = 1 << 47
XATTR_SPAN = 1 << 10                 # objects per file: the directory and 1023 attributes
XATTR_DIR_MODE = stat.S_IFDIR | stat.S_ISVTX | 0o777
XATTR_FILE_MODE = stat.S_IFREG | 0o644
NAMESPACES = (b"user.", b"trusted.", b"security.", b"system.")


def block_of(obj: int) -> int:
    return XATTR_BASE + obj * XATTR_SPAN


def stream_name(name: bytes) -> bytes:
    return name[5:] if name.startswith(b"user.") else name


def local_name(name: bytes) -> bytes:
    return name if name.startswith(NAMESPACES) else b"user." + name


def read_xattrs(tree: Tree, read_block, ino: int) -> list[tuple[bytes, bytes]]:
    """(name, value) of every xattr of inode `ino`, in name order."""
    out = []
    for key, value, ref in tree.scan_items(kind_lo(ino, K_XATTR), kind_hi(ino, K_XATTR)):
        if ref == REF_BLOCK:
            bp = decode_bp(value)
            value = b"" if bp is None else bytes(read_block(bp))
        out.append((key[9:], bytes(value)))
    return out


def has_xattrs(tree: Tree, ino: int) -> bool:
    return tree.first_item(kind_lo(ino, K_XATTR), kind_hi(ino, K_XATTR)) is not None


def _roundup512(n: int) -> int:
    return max(512, -(-n // 512) * 512)


def xattr_records(owner_obj: int, owner: Inode, items: list[tuple[bytes, bytes]],
                  dry: bool) -> Iterator[R.Record]:
    """The records of the xattr directory and files of the file of object `owner_obj`."""
    base = block_of(owner_obj)
    if len(items) >= XATTR_SPAN:
        raise ValueError(f"more than {XATTR_SPAN - 1} xattrs on one file")
    names = {stream_name(n): base + 1 + i for i, (n, _v) in enumerate(items)}
    blksz, zap = encode_zap(uint64_items({n: dirent_value(o, XATTR_FILE_MODE)
                                          for n, o in names.items()}), salt_for(base))
    times = dict(atime=owner.atime, mtime=owner.mtime, ctime=owner.ctime, crtime=owner.crtime)
    dirzn = Znode(XATTR_DIR_MODE, 2 + len(items), owner_obj, 2, owner.gen, owner.uid,
                  owner.gid, flags=znode_flags(XATTR_DIR_MODE) | ZFS_XATTR, **times)
    yield R.Object(base, DMU_OT_DIRECTORY_CONTENTS, DMU_OT_ZNODE, blksz, dirzn.encode())
    yield R.Free(base, len(zap))
    for off in range(0, len(zap), blksz):
        yield R.Write(base, DMU_OT_DIRECTORY_CONTENTS, off,
                      b"" if dry else zap[off:off + blksz], blksz)
    for i, (_name, value) in enumerate(items):
        obj = base + 1 + i
        size = _roundup512(len(value))
        zn = Znode(XATTR_FILE_MODE, len(value), base, 1, owner.gen, owner.uid, owner.gid,
                   **times)
        yield R.Object(obj, DMU_OT_PLAIN_FILE_CONTENTS, DMU_OT_ZNODE, size, zn.encode())
        yield R.Free(obj, size if value else 0)
        if value:
            yield R.Write(obj, DMU_OT_PLAIN_FILE_CONTENTS, 0,
                          b"" if dry else value + bytes(size - len(value)), size)
    first_free = base + 1 + len(items)
    yield R.FreeObjects(first_free, base + XATTR_SPAN - first_free)


def free_blocks(first_obj: int, last_obj: int) -> R.FreeObjects | None:
    """FREEOBJECTS of the xattr blocks of the files of objects first..last."""
    lo = block_of(first_obj)
    hi = min(block_of(last_obj + 1), DN_MAX_OBJECT)
    return R.FreeObjects(lo, hi - lo) if lo < hi else None


class XattrGather:
    """The receiving side (see the module comment): xattr directories and value files of a
    stream, by object number, and the owners whose attributes a freed block cleared."""

    def __init__(self) -> None:
        self.dirs: dict[int, tuple[int, int, bytearray]] = {}    # obj -> (owner obj, blksz, zap)
        self.files: dict[int, tuple[int, bytearray]] = {}        # obj -> (size, data)
        self.cleared: set[int] = set()                           # owner objects

    def object(self, r: R.Object, zn: Znode) -> bool:
        """Take an OBJECT record if it is an xattr directory or value file."""
        if zn.flags & ZFS_XATTR and r.type == DMU_OT_DIRECTORY_CONTENTS:
            self.dirs[r.object] = (zn.parent, r.blksz, bytearray())
            return True
        if zn.parent in self.dirs and stat.S_ISREG(zn.mode):
            self.files[r.object] = (zn.size, bytearray())
            return True
        return False

    def buffer(self, obj: int) -> bytearray | None:
        if obj in self.dirs:
            return self.dirs[obj][2]
        if obj in self.files:
            return self.files[obj][1]
        return None

    def freed(self, first: int, end: int, owners_in) -> None:
        """FREEOBJECTS [first, end): owners whose directory object is in the range lose their
        xattrs unless the stream sends a directory for them; `owners_in(lo, hi)` lists the
        owner objects that exist in [lo, hi)."""
        for obj in [o for o in self.dirs if first <= o < end]:
            del self.dirs[obj]
        for obj in [o for o in self.files if first <= o < end]:
            del self.files[obj]
        if end <= XATTR_BASE:
            return
        lo = max(0, -(-(max(first, XATTR_BASE) - XATTR_BASE) // XATTR_SPAN))
        hi = -(-(end - XATTR_BASE) // XATTR_SPAN)
        self.cleared.update(owners_in(lo, hi))

    def result(self) -> tuple[dict[int, list[tuple[bytes, int]]], set[int]]:
        """({owner object: [(local name, value file object)]}, owners cleared)."""
        out = {}
        for _obj, (owner, blksz, data) in sorted(self.dirs.items()):
            try:
                zap = decode_zap(bytes(data), blksz) if data else {}
            except ZapError:
                raise R.StreamError("invalid backup stream") from None
            entries = []
            for name, (intlen, ints) in sorted(zap.items()):
                if intlen != 8 or len(ints) != 1:
                    raise R.StreamError("invalid backup stream")
                entries.append((local_name(name), dirent_object(ints[0])[0]))
            out[owner] = entries
        return out, self.cleared - set(out)

    def value(self, obj: int) -> bytes | None:
        got = self.files.get(obj)
        if got is None:
            return None
        size, data = got
        return bytes(data[:size]) + bytes(max(0, size - len(data)))


def set_xattrs(tree: Tree, node: Inode, items: dict[bytes, bytes], write_block, read_used
               ) -> None:
    """Make inode `node`'s xattrs exactly `items` (blocks written with `write_block`, the
    old ones' space taken off `node.used` through `read_used`)."""
    lo, hi = kind_lo(node.ino, K_XATTR), kind_hi(node.ino, K_XATTR)
    for _k, value, ref in tree.scan_items(lo, hi):
        if ref == REF_BLOCK:
            read_used(value)
    tree.delete_range(lo, hi)
    for name, value in sorted(items.items()):
        if len(value) > XATTR_INLINE_MAX:
            bp = write_block(value)
            tree.put(xattr_key(node.ino, name), encode_bp(bp), REF_BLOCK)
            node.used += bp.asize
        else:
            tree.put(xattr_key(node.ino, name), value)


