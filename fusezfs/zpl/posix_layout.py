"""On-disk layout of the POSIX layer (ZFS's ZPL) inside one dataset's object tree.

Every item of a filesystem lives in the dataset's object tree (fusezfs/engine/tree.py). Keys are built
from big-endian integers so that numeric order is key order; values are little-endian. All items
of one inode share the 8-byte key prefix of its inode number, so an inode and everything it owns
(directory entries, file records, xattrs) are contiguous and `delete_range` removes them at once.

Keys (all integers big-endian):

    key                                        value                              ref flag
    ino u64 | 0x00                             inode record (below)               none
    dir u64 | 0x01 | cookie u64                directory entry (below)            none
    ino u64 | 0x02 | blkid u64                 block pointer of record `blkid`    REF_BLOCK
    ino u64 | 0x03 | name                      xattr value, inline                none
                                               or the BP of a block holding it    REF_BLOCK
    0 u64 | 0x00                               superblock (below)                 none
    0 u64 | 0x10 | ino u64                     unlinked set member (empty value)  none

Inode number 0 is reserved for filesystem-wide items; the root directory is inode 1. Inode
numbers come from the superblock's `next_ino` counter and are never reused in a dataset (nor in
its clones, which inherit the counter), so (ino, generation) names a file forever.

Superblock (value of key 0|0x00, 32 bytes, little-endian):

    off size field
      0    4 magic b"FZPX"
      4    4 version u32 = 1
      8    8 root inode number u64 (1)
     16    8 next_ino u64: the next inode number to hand out
     24    8 objects u64: number of live inodes (unlinked-but-open ones included)

Inode record (value of key ino|0x00, little-endian; 96 bytes, then the symlink target):

    off size field
      0    2 version u16 = 1
      2    2 flags u16, reserved (0)
      4    4 mode u32: file type (S_IFMT bits) and permissions, as in st_mode
      8    4 uid u32
     12    4 gid u32
     16    4 nlink u32: names linking to it; a directory has 2 + number of subdirectories
     20    4 blksz u32: record size of this file, fixed when it is created (the dataset's
             recordsize at that time: changing recordsize affects only files created later)
     24    8 size u64: st_size. A directory's size is 2 + its number of entries; a symlink's is
             the length of its target
     32    8 rdev u64: device number of a character or block device node (Linux encoding)
     40    8 gen u64: generation, the txg in which the inode was created
     48    8 parent u64: inode of the directory containing it (for directories, the one their
             ".." names; for other files the directory it was created or last renamed in)
     56    8 used u64: bytes allocated to its data and xattr blocks (every copy), for st_blocks
     64    8 atime i64, nanoseconds since the epoch
     72    8 mtime i64
     80    8 ctime i64
     88    8 crtime i64 (birth time)
     96    * symlink target (S_IFLNK only), 1..4095 bytes; nothing for other types

Directory entry (key dir|0x01|cookie): the cookie is `hash << 15 | cd`, where `hash` is bits
63..16 of XXH3-64 of the name (48 bits; 0 becomes 1) and `cd` (15 bits) is the smallest
collision differentiator not used by another entry of the same directory with the same hash.
A cookie therefore never changes while its entry exists, and entries are listed in cookie
order: readdir resumes after any cookie it handed out, whatever was added or removed meanwhile
(ZFS's ZAP does the same). Cookies 1 and 2 are "." and ".." (never stored); stored cookies are
at least 1 << 15. Value: child ino u64 LE | d_type u8 (S_IFMT >> 12, i.e. DT_REG 8, DT_DIR 4,
DT_LNK 10, DT_CHR 2, DT_BLK 6, DT_FIFO 1, DT_SOCK 12) | name (1..255 bytes, no "/" or NUL).

File records (key ino|0x02|blkid): record `blkid` covers bytes [blkid * blksz, (blkid + 1) *
blksz) of the file. The block holds the record's bytes up to the end of the file at most, and
may be shorter than that: bytes past the end of the block read as zeros. So a file smaller
than its record size is one block of exactly its own size, the last record of a larger file
is stored up to end of file only, and a missing record is a hole (zeros). With compression on,
records that are all zeros are not stored at all (as ZFS does). No block reaches past st_size.

Xattrs (key ino|0x03|name, name 1..255 bytes): a value of up to 3072 bytes is stored inline;
a larger one (up to 64 KiB, Linux's XATTR_SIZE_MAX) is a data block whose BP (128 bytes) is the
item value, with the REF_BLOCK flag.

Unlinked set (key 0|0x10|ino): inodes whose last name was removed while still open (or still
known to the kernel). Whoever opens the filesystem read-write next destroys every inode in the
set before anything else happens: a process that died holding unlinked files leaks nothing.
"""
from __future__ import annotations

import stat
import struct
from dataclasses import dataclass

import xxhash

ROOT_INO = 1
FS_INO = 0

K_INODE = 0x00
K_DIRENT = 0x01
K_DATA = 0x02
K_XATTR = 0x03
K_UNLINKED = 0x10

NAME_MAX = 255
PATH_MAX = 4096
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536
XATTR_INLINE_MAX = 3072
MAX_FILE_SIZE = (1 << 63) - 1
LINK_MAX = (1 << 32) - 1

COOKIE_DOT = 1
COOKIE_DOTDOT = 2
CD_BITS = 15
CD_MAX = (1 << CD_BITS) - 1

_U64 = struct.Struct(">Q")
_SUPER = struct.Struct("<4sIQQQ")
SUPER_MAGIC = b"FZPX"
VERSION = 1
_INODE = struct.Struct("<HHIIIIIQQQQQqqqq")
INODE_SIZE = _INODE.size
_DIRENT = struct.Struct("<QB")
assert INODE_SIZE == 96 and _SUPER.size == 32


def ino_prefix(ino: int) -> bytes:
    return _U64.pack(ino)


def inode_key(ino: int) -> bytes:
    return _U64.pack(ino) + b"\x00"


def kind_lo(ino: int, kind: int) -> bytes:
    """First key of an inode's items of `kind`."""
    return _U64.pack(ino) + bytes((kind,))


def kind_hi(ino: int, kind: int) -> bytes:
    """First key past an inode's items of `kind`."""
    return _U64.pack(ino) + bytes((kind + 1,))


def dirent_key(dir_ino: int, cookie: int) -> bytes:
    return _U64.pack(dir_ino) + b"\x01" + _U64.pack(cookie)


def cookie_of(key: bytes) -> int:
    return _U64.unpack_from(key, 9)[0]


def data_key(ino: int, blkid: int) -> bytes:
    return _U64.pack(ino) + b"\x02" + _U64.pack(blkid)


def blkid_of(key: bytes) -> int:
    return _U64.unpack_from(key, 9)[0]


def xattr_key(ino: int, name: bytes) -> bytes:
    return _U64.pack(ino) + b"\x03" + name


SUPER_KEY = inode_key(FS_INO)
UNLINKED_LO = kind_lo(FS_INO, K_UNLINKED)
UNLINKED_HI = kind_hi(FS_INO, K_UNLINKED)


def unlinked_key(ino: int) -> bytes:
    return UNLINKED_LO + _U64.pack(ino)


def name_hash(name: bytes) -> int:
    """The 48-bit hash that places a name's cookie range."""
    return (xxhash.xxh3_64_intdigest(name) >> 16) or 1


def dtype(mode: int) -> int:
    return stat.S_IFMT(mode) >> 12


@dataclass(slots=True)
class Superblock:
    root: int = ROOT_INO
    next_ino: int = ROOT_INO + 1
    objects: int = 0

    def encode(self) -> bytes:
        return _SUPER.pack(SUPER_MAGIC, VERSION, self.root, self.next_ino, self.objects)

    @classmethod
    def decode(cls, raw: bytes) -> "Superblock":
        magic, version, root, next_ino, objects = _SUPER.unpack_from(raw)
        if magic != SUPER_MAGIC or version != VERSION:
            raise ValueError("not a fusezfs POSIX superblock")
        return cls(root, next_ino, objects)


@dataclass(slots=True)
class Inode:
    ino: int
    mode: int
    uid: int = 0
    gid: int = 0
    nlink: int = 1
    blksz: int = 128 << 10
    size: int = 0
    rdev: int = 0
    gen: int = 0
    parent: int = ROOT_INO
    used: int = 0
    atime: int = 0
    mtime: int = 0
    ctime: int = 0
    crtime: int = 0
    target: bytes = b""
    flags: int = 0

    def encode(self) -> bytes:
        return _INODE.pack(VERSION, self.flags, self.mode, self.uid, self.gid, self.nlink,
                           self.blksz, self.size, self.rdev, self.gen, self.parent, self.used,
                           self.atime, self.mtime, self.ctime, self.crtime) + self.target

    @classmethod
    def decode(cls, ino: int, raw: bytes) -> "Inode":
        (version, flags, mode, uid, gid, nlink, blksz, size, rdev, gen, parent, used,
         atime, mtime, ctime, crtime) = _INODE.unpack_from(raw)
        if version != VERSION:
            raise ValueError(f"inode {ino}: unknown version {version}")
        return cls(ino, mode, uid, gid, nlink, blksz, size, rdev, gen, parent, used,
                   atime, mtime, ctime, crtime, bytes(raw[INODE_SIZE:]), flags)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_lnk(self) -> bool:
        return stat.S_ISLNK(self.mode)


def encode_dirent(ino: int, dt: int, name: bytes) -> bytes:
    return _DIRENT.pack(ino, dt) + name


def decode_dirent(raw: bytes) -> tuple[int, int, bytes]:
    ino, dt = _DIRENT.unpack_from(raw)
    return ino, dt, bytes(raw[_DIRENT.size:])
