"""The ZPL objects of a send stream: what a fusezfs filesystem looks like to ZFS.

Theory of operation
-------------------
ZFS sends objects (dnodes) and their blocks; a ZPL filesystem is a set of objects with meaning
(include/sys/zfs_znode.h, module/zfs/zfs_znode.c zfs_create_fs). fusezfs writes the layout of
ZPL version 4, the newest one without system attributes, which every ZFS since 2009 reads
(zfs-fuse's pool version 23 among them):

- object 1, the master node (DMU_OT_MASTER_NODE, a microzap): VERSION = 4, ROOT = the root
  directory's object, DELETE_QUEUE = the unlinked set's object, and normalization, utf8only,
  casesensitivity = 0;
- the unlinked set (DMU_OT_UNLINKED_SET, an empty microzap);
- one object per file: its bonus buffer is a 264-byte znode_phys_t (bonus type DMU_OT_ZNODE)
  with times, generation, mode, size, parent, links, rdev, flags, uid, gid and a trivial ACL
  in the form ZFS builds from the mode; a symlink's target follows it in the bonus buffer;
  regular files are DMU_OT_PLAIN_FILE_CONTENTS with the data in blocks, directories are
  DMU_OT_DIRECTORY_CONTENTS ZAPs (zap.py) whose entries map a name to the child's object
  number with its file type in the top 4 bits; other file types have no blocks.

Object numbers are a fixed function of fusezfs inode numbers (`ObjectMap`), so the object of
a file is the same in every stream of a dataset and an incremental stream lines up with what
the receiver got before: for a filesystem made by fusezfs, the master node is 1, the unlinked
set 2 and inode i is object i + 2 (the root, inode 1, is object 3, as in ZFS). A filesystem
received from ZFS keeps the sender's numbers: inode o is object o, except the root, which is
inode 1 whatever its object number (object 1 is the master node, never a file). The map is
stored in the dataset's object tree (MAP_KEY, docs/FORMAT.md section 8.6).
"""
from __future__ import annotations

import json
import stat
import struct
from dataclasses import asdict, dataclass, field

from fusezfs.zpl.posix_layout import ROOT_INO, Inode

# dmu_object_type_t
DMU_OT_ZNODE = 17
DMU_OT_PLAIN_FILE_CONTENTS = 19
DMU_OT_DIRECTORY_CONTENTS = 20
DMU_OT_MASTER_NODE = 21
DMU_OT_UNLINKED_SET = 22
DMU_OT_SA = 44

MASTER_NODE_OBJ = 1
ZPL_VERSION = 4
DN_MAX_OBJECT = 1 << 48
ZNODE_SIZE = 264
BONUS_MAX = 320                      # DN_MAX_BONUSLEN of a 512-byte dnode
SYMLINK_INLINE_MAX = BONUS_MAX - ZNODE_SIZE

# zp_flags (zfs_znode.h)
ZFS_XATTR = 0x1
ZFS_ACL_TRIVIAL = 0x4
ZFS_ACL_AUTO_INHERIT = 0x40
ZFS_NO_EXECS_DENIED = 0x100
ZFS_ARCHIVE = 0x0000000800000000
ZFS_AV_MODIFIED = 0x0000040000000000

# ACEs (zfs_acl.h, acl.h)
ACE_ALLOW, ACE_DENY = 0, 1
ACE_OWNER, ACE_GROUP, ACE_EVERYONE, ACE_IDENTIFIER_GROUP = 0x1000, 0x40, 0x4000, 0x2000
ACE_READ_DATA, ACE_WRITE_DATA, ACE_APPEND_DATA, ACE_EXECUTE = 0x1, 0x2, 0x4, 0x20
OWNER_ALLOW_BASE = 0xC0110           # WRITE_ACL|WRITE_OWNER|WRITE_ATTRIBUTES|WRITE_NAMED_ATTRS
EVERYONE_DENY_BASE = 0xC0110
EVERYONE_ALLOW_BASE = 0x120088       # READ_ACL|READ_ATTRIBUTES|READ_NAMED_ATTRS|SYNCHRONIZE
ZFS_ACL_VERSION_FUID = 1
ACE_SPACE = 72

_ZNODE = struct.Struct("<22QQIHH72s")
assert _ZNODE.size == ZNODE_SIZE

MAP_KEY = (0).to_bytes(8, "big") + b"\x20"   # the object map item in a filesystem's tree


def trivial_acl(mode: int) -> tuple[bytes, int]:
    """The six ACEs (zfs_ace_hdr_t) ZFS gives a file of `mode` with no ACL of its own (owner@,
    group@, everyone@; a deny and an allow each), and the count."""
    aces = []
    for who, flags, shift, deny, allow in (
            ("owner", ACE_OWNER, 6, 0, OWNER_ALLOW_BASE),
            ("group", ACE_GROUP | ACE_IDENTIFIER_GROUP, 3, 0, 0),
            ("everyone", ACE_EVERYONE, 0, EVERYONE_DENY_BASE, EVERYONE_ALLOW_BASE)):
        bits = (mode >> shift) & 7
        for bit, mask in ((4, ACE_READ_DATA), (2, ACE_WRITE_DATA | ACE_APPEND_DATA),
                          (1, ACE_EXECUTE)):
            if bits & bit:
                allow |= mask
            else:
                deny |= mask
        aces.append(struct.pack("<HHI", ACE_DENY, flags, deny))
        aces.append(struct.pack("<HHI", ACE_ALLOW, flags, allow))
    return b"".join(aces), 6


def znode_flags(mode: int) -> int:
    flags = ZFS_ARCHIVE | ZFS_AV_MODIFIED | ZFS_ACL_TRIVIAL
    if mode & 0o111 == 0o111:
        flags |= ZFS_NO_EXECS_DENIED
    if stat.S_ISDIR(mode):
        flags |= ZFS_ACL_AUTO_INHERIT
    return flags


def _split_ns(ns: int) -> tuple[int, int]:
    sec, nsec = divmod(ns, 10**9)
    return sec & ((1 << 64) - 1), nsec


@dataclass
class Znode:
    """The fields of a znode_phys_t fusezfs reads and writes (times in ns since the epoch)."""
    mode: int
    size: int
    parent: int                       # object number
    links: int
    gen: int
    uid: int = 0
    gid: int = 0
    rdev: int = 0
    atime: int = 0
    mtime: int = 0
    ctime: int = 0
    crtime: int = 0
    flags: int = 0
    xattr: int = 0
    target: bytes = b""               # a symlink's target, when kept in the bonus buffer

    def encode(self) -> bytes:
        acl, count = trivial_acl(self.mode)
        times = [*_split_ns(self.atime), *_split_ns(self.mtime), *_split_ns(self.ctime),
                 *_split_ns(self.crtime)]
        raw = _ZNODE.pack(*times, max(self.gen, 1), self.mode, self.size, self.parent,
                          self.links, self.xattr, self.rdev,
                          self.flags or znode_flags(self.mode), self.uid, self.gid, 0, 0, 0, 0,
                          0, len(acl), ZFS_ACL_VERSION_FUID, count, acl)
        return raw + self.target

    @classmethod
    def decode(cls, raw: bytes) -> "Znode":
        if len(raw) < ZNODE_SIZE:
            raise ValueError("bonus buffer too short for a znode")
        f = _ZNODE.unpack_from(raw)
        t = [f[i] * 10**9 + f[i + 1] for i in range(0, 8, 2)]
        (gen, mode, size, parent, links, xattr, rdev, flags, uid, gid) = f[8:18]
        return cls(mode, size, parent, links, gen, uid, gid, rdev, t[0], t[1], t[2], t[3], flags,
                   xattr, bytes(raw[ZNODE_SIZE:]))


def dirent_value(obj: int, mode: int) -> int:
    """A directory entry's value: ZFS_DIRENT_MAKE(IFTODT(mode), obj)."""
    return ((stat.S_IFMT(mode) >> 12) << 60) | obj


def dirent_object(value: int) -> tuple[int, int]:
    """(object number, d_type) of a directory entry's value (ZFS_DIRENT_OBJ: low 48 bits)."""
    return value & ((1 << 48) - 1), value >> 60


def object_type(mode: int) -> int:
    return DMU_OT_DIRECTORY_CONTENTS if stat.S_ISDIR(mode) else DMU_OT_PLAIN_FILE_CONTENTS


@dataclass
class ObjectMap:
    """Inode numbers <-> object numbers of one filesystem (see the module comment).
    `keep`: objects of the sender that are not files fusezfs keeps (its shares directory,
    FUID tables, ...): never reused for a file and never freed by a stream fusezfs sends."""
    delta: int = 2
    root: int = 3
    delete_queue: int = 2
    keep: list[int] = field(default_factory=list)

    def obj(self, ino: int) -> int:
        return self.root if ino == ROOT_INO else ino + self.delta

    def ino(self, obj: int) -> int:
        return ROOT_INO if obj == self.root else obj - self.delta

    def reserved(self) -> set[int]:
        """Object numbers that are not files: the master node, the unlinked set, `keep`."""
        return {MASTER_NODE_OBJ, self.delete_queue, *self.keep}

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes | None) -> "ObjectMap":
        return cls() if raw is None else cls(**json.loads(raw))


def znode_of(inode: Inode, omap: ObjectMap) -> Znode:
    """The znode a fusezfs inode is sent as."""
    parent = omap.obj(inode.parent)
    return Znode(inode.mode, inode.size, parent, inode.nlink, inode.gen, inode.uid, inode.gid,
                 inode.rdev, inode.atime, inode.mtime, inode.ctime, inode.crtime)
