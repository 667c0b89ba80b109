"""Dataset properties (zfsprops(7)): the table, validation, value formats and inheritance.

Pure: no I/O, nothing from the pool. The dataset layer stores what `validate` returns and asks
`resolve` for effective values; `zfs get/set/inherit/list` use the rest. Everything follows
OpenZFS 2.2 (module/zcommon/zfs_prop.c, lib/libzfs/libzfs_dataset.c, libzfs_util.c and
cmd/zfs/zfs_main.c); where the zfs-fuse reference (pool version 23) words or behaves differently,
docs/reference/zfs-props.md says which one we follow and why.

Values as stored ("raw"): `number` properties are ints (bytes, counts, seconds, hundredths for
ratios); `index` properties are the canonical name (the first name OpenZFS's table gives that
value: gzip-6 is stored and shown as "gzip", posixacl as "posix"); `string` properties and user
properties are str. Numbers given as decimal text are accepted everywhere a raw value is read.

Error messages: `PropError.message` is the text zfs prints after "cannot set property for 'X': "
(or "cannot create 'X': "); the command line adds that prefix. `PropError.usage` marks the ones
zfs answers with its usage text and exit code 2.

Support levels (`Prop.support`): "native" properties change what fusezfs does; "stored" ones are
validated, stored, inherited and shown exactly as OpenZFS would but change nothing (sharenfs,
zoned, dnodesize, ...); "fixed" ones can only hold their default value (encryption, normalization,
casesensitivity, version): every other value OpenZFS knows is refused with the words OpenZFS uses
when the pool lacks the feature. `Prop.unsupported` lists values OpenZFS accepts that fusezfs
refuses the same way (lz4, lzjb, zle and zstd-fast* for compression; checksums other than on and
sha256; dedup checksums other than sha256).

compression=on means fusezfs's default algorithm, zstd at the level fusezfs.engine.compress.parse picks
for "on" (its fastest, 1, when written): OpenZFS's "on" is lz4, which fusezfs lacks. The value
is kept and shown as "on". The default compression is "on", as in OpenZFS 2.2 (zfs-fuse: off).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, MutableMapping, MutableSet, Sequence

# ---- dataset types -------------------------------------------------------------------------------
FILESYSTEM = "filesystem"
SNAPSHOT = "snapshot"
VOLUME = "volume"
BOOKMARK = "bookmark"
DATASET = frozenset({FILESYSTEM, SNAPSHOT, VOLUME})
_DS_BM = DATASET | {BOOKMARK}      # ZFS_TYPE_DATASET | ZFS_TYPE_BOOKMARK
_FS = frozenset({FILESYSTEM})
_SNAP = frozenset({SNAPSHOT})
_VOL = frozenset({VOLUME})
_FS_VOL = frozenset({FILESYSTEM, VOLUME})
_FS_SNAP = frozenset({FILESYSTEM, SNAPSHOT})
_SNAP_VOL = frozenset({SNAPSHOT, VOLUME})

# ---- property kinds and attributes (zprop_type_t, zprop_attr_t) ----------------------------------
NUMBER, INDEX, STRING = "number", "index", "string"
READONLY = "readonly"              # computed; never set
INHERIT = "inherit"                # settable, inherited by descendants
DEFAULT = "default"                # settable, not inherited
ONETIME = "onetime"                # set only at creation, inherited (utf8only, normalization, ...)
ONETIME_DEFAULT = "onetime_default"  # set only at creation, not inherited (keyformat, pbkdf2iters)

# ---- limits --------------------------------------------------------------------------------------
UINT64_MAX = (1 << 64) - 1
MIN_BLOCKSIZE = 512                # SPA_MINBLOCKSIZE
MAX_RECORDSIZE = 1 << 20           # the largest record fusezfs writes (OpenZFS: pool maxblocksize)
DEFAULT_RECORDSIZE = 128 << 10
DEFAULT_VOLBLOCKSIZE = 8 << 10     # ZVOL_DEFAULT_BLOCKSIZE of OpenZFS 2.1 (2.2: 16K)
REFRESERVATION_AUTO = UINT64_MAX   # refreservation=auto on a volume: fusezfs/zpl/volumes.py sizes it
ZFS_MAXPROPLEN = 4096              # native string values must be shorter (MAXPATHLEN)
ZAP_MAXNAMELEN = 256               # user property names must be shorter
ZAP_MAXVALUELEN = 8192             # user property values must be shorter
ZFS_MAX_DATASET_NAME_LEN = 256     # mountpoint components must be shorter
ZPL_VERSION = 5
RECEIVED = "$recvd"                # setpoint of a value received on the dataset itself

# ---- messages that belong to operations other than validation ------------------------------------
MSG_QUOTA_TOO_SMALL = "size is less than current used or reserved space"   # set quota (ENOSPC)
MSG_RESV_TOO_BIG = "size is greater than available space"                  # set reservation
MSG_UPGRADE_SET = "pool and or dataset must be upgraded to set this property or value"
MSG_UPGRADE_CREATE = "pool must be upgraded to set this property or value"
MSG_NO_ENCRYPTION = "Encryption feature not enabled."
MSG_SNAPSHOT_PROPS = "this property can not be modified for snapshots"
MSG_WRONG_TYPE_INHERIT = "property doesn't apply to datasets of this type"


class PropError(ValueError):
    """A property zfs refuses. `message` is zfs's text; `usage` means exit 2 with usage text."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.usage = usage


@dataclass(frozen=True)
class Prop:
    name: str
    type: str                          # number | index | string
    attr: str                          # readonly | inherit | default | onetime | onetime_default
    types: frozenset                   # dataset types the property applies to
    values: str | None                 # zfs's VALUES text (usage table, "must be one of")
    column: str                        # `zfs list -o` header
    default: Any = None                # raw default; None: the property has no default value
    fmt: str = "string"                # how `zfs get` prints it (see format_value)
    index: tuple = ()                  # index properties: ((name, number), ...), OpenZFS order
    rightalign: bool = False           # `zfs list` aligns the column right
    visible: bool = True               # hidden properties ('name') are not in `get all` or usage
    support: str = "native"            # native | stored | fixed (see the module docstring)
    unsupported: frozenset = frozenset()   # values OpenZFS accepts and fusezfs refuses
    source_none: bool = False          # SOURCE is '-' even when set (the ZPL properties)

    @property
    def readonly(self) -> bool:        # zfs_prop_readonly: read-only or set-once
        return self.attr in (READONLY, ONETIME, ONETIME_DEFAULT)

    @property
    def setonce(self) -> bool:
        return self.attr in (ONETIME, ONETIME_DEFAULT)

    @property
    def inheritable(self) -> bool:     # zfs_prop_inheritable
        return self.attr in (INHERIT, ONETIME)

    @property
    def settable(self) -> bool:        # can be given to `zfs set` (or to create, for set-once)
        return self.attr != READONLY

    @property
    def numeric_sort(self) -> bool:    # `zfs list -s` compares numbers, not strings
        return self.type == NUMBER

    def index_names(self) -> list[str]:
        return [n for n, _ in self.index]


# ---- index tables (zfs_prop.c; Linux) ------------------------------------------------------------
_BOOL = (("off", 0), ("on", 1))
_CHECKSUM = (("on", 1), ("off", 2), ("fletcher2", 6), ("fletcher4", 7), ("sha256", 8),
             ("noparity", 10), ("sha512", 11), ("skein", 12), ("edonr", 13), ("blake3", 14))
_DEDUP = (("on", 1), ("off", 2), ("verify", 1 | 256), ("sha256", 8), ("sha256,verify", 8 | 256),
          ("sha512", 11), ("sha512,verify", 11 | 256), ("skein", 12), ("skein,verify", 12 | 256),
          ("edonr,verify", 13 | 256), ("blake3", 14), ("blake3,verify", 14 | 256))
_ZSTD = 16


def _zstd(level: int) -> int:
    return (level << 7) | _ZSTD


_ZSTD_FAST_LEVELS = list(range(1, 11)) + [20, 30, 40, 50, 60, 70, 80, 90, 100, 500, 1000]
_COMPRESS = (
    (("on", 1), ("off", 2), ("lzjb", 3), ("gzip", 10))
    + tuple((f"gzip-{i}", 4 + i) for i in range(1, 10))
    + (("zle", 14), ("lz4", 15), ("zstd", _ZSTD), ("zstd-fast", _zstd(1001)))
    + tuple((f"zstd-{i}", _zstd(i)) for i in range(1, 20))
    + tuple((f"zstd-fast-{i}", _zstd(1000 + 10000 + i)) for i in _ZSTD_FAST_LEVELS)
)
_CRYPT = (("on", 1), ("off", 2), ("aes-128-ccm", 3), ("aes-192-ccm", 4), ("aes-256-ccm", 5),
          ("aes-128-gcm", 6), ("aes-192-gcm", 7), ("aes-256-gcm", 8))
_KEYFORMAT = (("none", 0), ("raw", 1), ("hex", 2), ("passphrase", 3))
_HIDDEN_VISIBLE = (("hidden", 0), ("visible", 1))
_ACLMODE = (("discard", 0), ("groupmask", 2), ("passthrough", 3), ("restricted", 4))
_ACLTYPE = (("off", 0), ("posix", 1), ("nfsv4", 2), ("disabled", 0), ("noacl", 0),
            ("posixacl", 1))
_ACLINHERIT = (("discard", 0), ("noallow", 1), ("restricted", 4), ("passthrough", 3),
               ("secure", 4), ("passthrough-x", 5))
_CASE = (("sensitive", 0), ("insensitive", 1), ("mixed", 2))
_COPIES = (("1", 1), ("2", 2), ("3", 3))
_NORMALIZE = (("none", 0), ("formD", 1), ("formKC", 2), ("formC", 3), ("formKD", 4))
_VERSION = (("1", 1), ("2", 2), ("3", 3), ("4", 4), ("5", 5), ("current", ZPL_VERSION))
_KEYSTATUS = (("none", 0), ("unavailable", 1), ("available", 2))
_LOGBIAS = (("latency", 0), ("throughput", 1))
_CANMOUNT = (("off", 0), ("on", 1), ("noauto", 2))
_CACHE = (("none", 0), ("metadata", 1), ("all", 2))
_SYNC = (("standard", 0), ("always", 1), ("disabled", 2))
_XATTR = (("off", 0), ("on", 1), ("sa", 2), ("dir", 1))
_DNSIZE = (("legacy", 0), ("auto", 1), ("1k", 1024), ("2k", 2048), ("4k", 4096), ("8k", 8192),
           ("16k", 16384))
_REDUNDANT_MD = (("all", 0), ("most", 1))
_VOLMODE = (("default", 0), ("full", 1), ("geom", 1), ("dev", 2), ("none", 3))

# fusezfs has zstd and gzip; scripts written for OpenZFS set lz4 (and older lzjb/zle, or
# zstd-fast): those values are accepted and shown as given, and written with zstd-1 (fast).
# Likewise every checksum name is accepted: sha256/sha512/skein/edonr/blake3 are written as
# sha256, the others (on, off, fletcher*) as xxh3-128 -- fusezfs never stores a block without
# a checksum (properties.write_policy).
_COMPRESS_UNSUPPORTED: frozenset = frozenset()
_CHECKSUM_UNSUPPORTED: frozenset = frozenset()
_DEDUP_UNSUPPORTED = frozenset(["sha512", "sha512,verify", "skein", "skein,verify",
                                "edonr,verify", "blake3", "blake3,verify"])
_ENCRYPTION_PROPS = frozenset(["encryption", "keyformat", "keylocation", "pbkdf2iters"])


# ---- the table, in zfs_prop_t order: `zfs get all` prints in this order --------------------------
def _num(name, attr, types, values, column, default=0, fmt="num", **kw) -> Prop:
    return Prop(name, NUMBER, attr, types, values, column, default, fmt, rightalign=True, **kw)


def _idx(name, attr, types, values, column, table, default, **kw) -> Prop:
    return Prop(name, INDEX, attr, types, values, column, default, "index", tuple(table), **kw)


def _str(name, attr, types, values, column, default=None, **kw) -> Prop:
    return Prop(name, STRING, attr, types, values, column, default, "string", **kw)


_ONOFF = "on | off"
_TABLE: list[Prop] = [
    _str("type", READONLY, _DS_BM, "filesystem | volume | snapshot | bookmark", "TYPE"),
    Prop("creation", NUMBER, READONLY, _DS_BM, "<date>", "CREATION", None, "date"),
    _num("used", READONLY, DATASET, "<size>", "USED", fmt="bytes"),
    _num("available", READONLY, _FS_VOL, "<size>", "AVAIL", fmt="bytes"),
    _num("referenced", READONLY, _DS_BM, "<size>", "REFER", fmt="bytes"),
    _num("compressratio", READONLY, _DS_BM, "<1.00x or higher if compressed>", "RATIO",
         fmt="ratio"),
    _idx("mounted", READONLY, _FS, "yes | no", "MOUNTED", _BOOL, None),
    _str("origin", READONLY, _FS_VOL, "<snapshot>", "ORIGIN"),
    _num("quota", DEFAULT, _FS, "<size> | none", "QUOTA", fmt="quota"),
    _num("reservation", DEFAULT, _FS_VOL, "<size> | none", "RESERV", fmt="quota"),
    _num("volsize", DEFAULT, _SNAP_VOL, "<size>", "VOLSIZE", fmt="bytes"),
    _num("volblocksize", ONETIME, _VOL, "512 to 128k, power of 2", "VOLBLOCK",
         DEFAULT_VOLBLOCKSIZE),
    _num("recordsize", INHERIT, _FS, "512 to 1M, power of 2", "RECSIZE", DEFAULT_RECORDSIZE),
    _str("mountpoint", INHERIT, _FS, "<path> | legacy | none", "MOUNTPOINT", "/"),
    _str("sharenfs", INHERIT, _FS, "on | off | NFS share options", "SHARENFS", "off",
         support="stored"),
    _idx("checksum", INHERIT, _FS_VOL,
         "on | off | fletcher2 | fletcher4 | sha256 | sha512 | skein | edonr | blake3",
         "CHECKSUM", _CHECKSUM, "on", unsupported=_CHECKSUM_UNSUPPORTED),
    _idx("compression", INHERIT, _FS_VOL,
         "on | off | lzjb | gzip | gzip-[1-9] | zle | lz4 | zstd | zstd-[1-19] | "
         "zstd-fast | zstd-fast-[1-10,20,30,40,50,60,70,80,90,100,500,1000]",
         "COMPRESS", _COMPRESS, "on", unsupported=_COMPRESS_UNSUPPORTED),
    _idx("atime", INHERIT, _FS, _ONOFF, "ATIME", _BOOL, "on"),
    _idx("devices", INHERIT, _FS_SNAP, _ONOFF, "DEVICES", _BOOL, "on"),
    _idx("exec", INHERIT, _FS_SNAP, _ONOFF, "EXEC", _BOOL, "on"),
    _idx("setuid", INHERIT, _FS_SNAP, _ONOFF, "SETUID", _BOOL, "on"),
    _idx("readonly", INHERIT, _FS_VOL, _ONOFF, "RDONLY", _BOOL, "off"),
    _idx("zoned", INHERIT, _FS, _ONOFF, "ZONED", _BOOL, "off", support="stored"),
    _idx("snapdir", INHERIT, _FS, "hidden | visible", "SNAPDIR", _HIDDEN_VISIBLE, "hidden"),
    _idx("aclmode", INHERIT, _FS, "discard | groupmask | passthrough | restricted", "ACLMODE",
         _ACLMODE, "discard", support="stored"),
    _idx("aclinherit", INHERIT, _FS,
         "discard | noallow | restricted | passthrough | passthrough-x", "ACLINHERIT",
         _ACLINHERIT, "restricted", support="stored"),
    _num("createtxg", READONLY, _DS_BM, "<uint64>", "CREATETXG", fmt="raw"),
    _str("name", READONLY, _DS_BM, None, "NAME", visible=False),
    _idx("canmount", DEFAULT, _FS, "on | off | noauto", "CANMOUNT", _CANMOUNT, "on"),
    _idx("xattr", INHERIT, _FS_SNAP, "on | off | dir | sa", "XATTR", _XATTR, "on"),
    _idx("copies", INHERIT, _FS_VOL, "1 | 2 | 3", "COPIES", _COPIES, "1"),
    _idx("version", DEFAULT, _FS_SNAP, "1 | 2 | 3 | 4 | 5 | current", "VERSION", _VERSION, "5",
         support="fixed", unsupported=frozenset("1234"), source_none=True),
    _idx("utf8only", ONETIME, _FS_SNAP, _ONOFF, "UTF8ONLY", _BOOL, "off", source_none=True),
    _idx("normalization", ONETIME, _FS_SNAP, "none | formC | formD | formKC | formKD",
         "NORMALIZATION", _NORMALIZE, "none", support="fixed",
         unsupported=frozenset(["formC", "formD", "formKC", "formKD"]), source_none=True),
    _idx("casesensitivity", ONETIME, _FS_SNAP, "sensitive | insensitive | mixed", "CASE",
         _CASE, "sensitive", support="fixed", unsupported=frozenset(["insensitive", "mixed"]),
         source_none=True),
    _idx("vscan", INHERIT, _FS, _ONOFF, "VSCAN", _BOOL, "off", support="stored"),
    _idx("nbmand", INHERIT, _FS_SNAP, _ONOFF, "NBMAND", _BOOL, "off", support="stored"),
    _str("sharesmb", INHERIT, _FS, "on | off | SMB share options", "SHARESMB", "off",
         support="stored"),
    _num("refquota", DEFAULT, _FS, "<size> | none", "REFQUOTA", fmt="quota"),
    _num("refreservation", DEFAULT, _FS_VOL, "<size> | none", "REFRESERV", fmt="quota"),
    _num("guid", READONLY, _DS_BM, "<uint64>", "GUID", fmt="raw"),
    _idx("primarycache", INHERIT, DATASET, "all | none | metadata", "PRIMARYCACHE", _CACHE,
         "all", support="stored"),
    _idx("secondarycache", INHERIT, DATASET, "all | none | metadata", "SECONDARYCACHE",
         _CACHE, "all", support="stored"),
    _num("usedbysnapshots", READONLY, _FS_VOL, "<size>", "USEDSNAP", fmt="bytes"),
    _num("usedbydataset", READONLY, _FS_VOL, "<size>", "USEDDS", fmt="bytes"),
    _num("usedbychildren", READONLY, _FS_VOL, "<size>", "USEDCHILD", fmt="bytes"),
    _num("usedbyrefreservation", READONLY, _FS_VOL, "<size>", "USEDREFRESERV", fmt="bytes"),
    _idx("defer_destroy", READONLY, _SNAP, "yes | no", "DEFER_DESTROY", _BOOL, None),
    _num("userrefs", READONLY, _SNAP, "<count>", "USERREFS"),
    _idx("logbias", INHERIT, _FS_VOL, "latency | throughput", "LOGBIAS", _LOGBIAS, "latency"),
    _num("objsetid", READONLY, DATASET, "<uint64>", "OBJSETID", fmt="raw"),
    _idx("dedup", INHERIT, _FS_VOL,
         "on | off | verify | sha256[,verify] | sha512[,verify] | skein[,verify] | "
         "edonr,verify | blake3[,verify]", "DEDUP", _DEDUP, "off",
         unsupported=_DEDUP_UNSUPPORTED),
    _str("mlslabel", INHERIT, DATASET, "<sensitivity label>", "MLSLABEL", "none",
         support="fixed"),
    _idx("sync", INHERIT, _FS_VOL, "standard | always | disabled", "SYNC", _SYNC, "standard"),
    _idx("dnodesize", INHERIT, _FS, "legacy | auto | 1k | 2k | 4k | 8k | 16k", "DNSIZE", _DNSIZE,
         "legacy", support="stored"),
    _num("refcompressratio", READONLY, DATASET, "<1.00x or higher if compressed>", "REFRATIO",
         fmt="ratio"),
    _num("written", READONLY, DATASET, "<size>", "WRITTEN"),
    _str("clones", READONLY, _SNAP, "<dataset>[,...]", "CLONES"),
    _num("logicalused", READONLY, _FS_VOL, "<size>", "LUSED"),
    _num("logicalreferenced", READONLY, _DS_BM, "<size>", "LREFER"),
    _idx("volmode", INHERIT, _FS_VOL, "default | full | geom | dev | none", "VOLMODE", _VOLMODE,
         "default", support="stored"),
    _num("filesystem_limit", DEFAULT, _FS, "<count> | none", "FSLIMIT", UINT64_MAX, fmt="limit"),
    _num("snapshot_limit", DEFAULT, _FS_VOL, "<count> | none", "SSLIMIT", UINT64_MAX,
         fmt="limit"),
    _num("filesystem_count", READONLY, _FS, "<count>", "FSCOUNT", UINT64_MAX, fmt="limit"),
    _num("snapshot_count", READONLY, _FS_VOL, "<count>", "SSCOUNT", UINT64_MAX, fmt="limit"),
    _idx("snapdev", INHERIT, _FS_VOL, "hidden | visible", "SNAPDEV", _HIDDEN_VISIBLE, "hidden",
         support="stored"),
    _idx("acltype", INHERIT, _FS_SNAP, "off | nfsv4 | posix", "ACLTYPE", _ACLTYPE, "off",
         support="stored"),
    _str("context", DEFAULT, DATASET, "<selinux context>", "CONTEXT", "none", support="stored"),
    _str("fscontext", DEFAULT, DATASET, "<selinux fscontext>", "FSCONTEXT", "none",
         support="stored"),
    _str("defcontext", DEFAULT, DATASET, "<selinux defcontext>", "DEFCONTEXT", "none",
         support="stored"),
    _str("rootcontext", DEFAULT, DATASET, "<selinux rootcontext>", "ROOTCONTEXT", "none",
         support="stored"),
    _idx("relatime", INHERIT, _FS, _ONOFF, "RELATIME", _BOOL, "off"),
    _idx("redundant_metadata", INHERIT, _FS_VOL, "all | most", "REDUND_MD", _REDUNDANT_MD, "all",
         support="stored"),
    _idx("overlay", INHERIT, _FS, _ONOFF, "OVERLAY", _BOOL, "on", support="stored"),
    _str("receive_resume_token", READONLY, _FS_VOL, "<string token>", "RESUMETOK"),
    _idx("encryption", ONETIME, DATASET,
         "on | off | aes-128-ccm | aes-192-ccm | aes-256-ccm | aes-128-gcm | aes-192-gcm | "
         "aes-256-gcm", "ENCRYPTION", _CRYPT, "off", support="fixed"),
    _str("keylocation", DEFAULT, _FS_VOL, "prompt | <file URI> | <https URL> | <http URL>",
         "KEYLOCATION", "none", support="fixed"),
    _idx("keyformat", ONETIME_DEFAULT, _FS_VOL, "none | raw | hex | passphrase", "KEYFORMAT",
         _KEYFORMAT, "none", support="fixed"),
    _num("pbkdf2iters", ONETIME_DEFAULT, _FS_VOL, "<iters>", "PBKDF2ITERS", 0, fmt="raw",
         support="fixed"),
    _str("encryptionroot", READONLY, DATASET, "<filesystem | volume>", "ENCROOT"),
    _idx("keystatus", READONLY, DATASET, "none | unavailable | available", "KEYSTATUS",
         _KEYSTATUS, None),
    _num("special_small_blocks", INHERIT, _FS, "zero or 512 to 1M, power of 2",
         "SPECIAL_SMALL_BLOCKS", 0, support="stored"),
    _str("redact_snaps", READONLY, _DS_BM, "<snapshot>[,...]", "RSNAPS"),
]
PROPS: dict[str, Prop] = {p.name: p for p in _TABLE}
ORDER: list[str] = [p.name for p in _TABLE]

# The properties `zfs get space` / `zfs list -o space` stand for (zprop_get_list).
SPACE_PROPS = ["name", "available", "used", "usedbysnapshots", "usedbydataset",
               "usedbyrefreservation", "usedbychildren"]

_USERQUOTA_PREFIXES = ("userused@", "userquota@", "groupused@", "groupquota@",
                       "userobjused@", "userobjquota@", "groupobjused@", "groupobjquota@",
                       "projectused@", "projectquota@", "projectobjused@", "projectobjquota@")
_USER_CHARS = re.compile(r"[a-z0-9\-_.:]*")


# ---- names ---------------------------------------------------------------------------------------
def canonical(name: str) -> str | None:
    """The native property `name` stands for (its name or its lowercased column), else None.

    zfs accepts the column names wherever a property name goes: avail, refer, recsize,
    compress, rdonly, reserv, refreserv, usedsnap, ..., case.
    """
    if name in PROPS:
        return name
    for p in _TABLE:
        if name == p.column.lower():
            return p.name
    return None


def get(name: str) -> Prop:
    """The Prop for a native property name or column alias; KeyError otherwise."""
    canon = canonical(name)
    if canon is None:
        raise KeyError(name)
    return PROPS[canon]


def is_user(name: str) -> bool:
    """A user property name (zfs_prop_user): has ':' and only a-z 0-9 - _ . :"""
    return ":" in name and _USER_CHARS.fullmatch(name) is not None


def is_userquota(name: str) -> bool:
    return name.startswith(_USERQUOTA_PREFIXES)


def is_written(name: str) -> bool:
    """written@SNAP (or written#BOOKMARK): a per-snapshot read-only number."""
    return name.startswith(("written@", "written#"))


def applies(name: str, ds_type: str, head_type: str = FILESYSTEM) -> bool:
    """Whether a native property has a value on a dataset of this type (user props: always).

    For a snapshot, zfs also asks whether the property applies to the snapshot's head type
    (zfs_prop_valid_for_type with headcheck): volsize is a snapshot property of volumes only.
    """
    if is_user(name):
        return True
    canon = canonical(name)
    if canon is None:
        return False
    p = PROPS[canon]
    if ds_type not in p.types:
        return False
    if ds_type == SNAPSHOT and p.types != _SNAP and head_type not in p.types:
        return False
    return True


def all_properties(ds_type: str, head_type: str = FILESYSTEM) -> list[str]:
    """The native properties `zfs get all` considers for a dataset of this type, in order.

    `zfs get all` then leaves out those without a value (origin of a non-clone, clones of a
    snapshot without clones, keystatus of an unencrypted dataset, ...) and appends the user
    properties.
    """
    return [p.name for p in _TABLE if p.visible and applies(p.name, ds_type, head_type)]


# ---- sizes ---------------------------------------------------------------------------------------
_STRTOD = re.compile(r"([0-9]*)(\.[0-9]*)?([eE][+-]?[0-9]+)?")


def _str2shift(suffix: str) -> int:
    if suffix == "":
        return 0
    ends = "BKMGTPEZ"
    i = ends.find(suffix[0].upper())
    if i < 0:
        raise PropError(f"invalid numeric suffix '{suffix}'")
    rest = suffix[1:].upper()
    if rest == "" or (suffix[0].upper() != "B" and rest in ("B", "IB")):
        return 10 * i
    raise PropError(f"invalid numeric suffix '{suffix}'")


def parse_size(text: str) -> int:
    """A number with an optional K M G T P E (Z) suffix, 1024-based, as zfs_nicestrtonum reads it.

    '1.5G', '128k', '10MB' and '10MiB' (case-insensitive, B or iB optional) are accepted;
    decimals are truncated to whole bytes. Raises PropError with zfs's message:
    bad numeric value 'abc' | invalid numeric suffix 'Q' | numeric value is too large.
    """
    if not text or not (text[0].isdigit() and text[0].isascii() or text[0] == "."):
        raise PropError(f"bad numeric value '{text}'")
    m = re.match(r"[0-9]*", text)
    digits = m.group(0)
    end = m.end()
    if digits and int(digits) > UINT64_MAX:
        raise PropError("numeric value is too large")
    if text[end:end + 1] == ".":
        fm = _STRTOD.match(text)
        mantissa = fm.group(1) + (fm.group(2) or "")
        if mantissa.strip(".") == "":          # strtod converted nothing
            fval, rest = 0.0, text
        else:
            fval, rest = float(fm.group(0)), text[fm.end():]
        fval *= 2.0 ** _str2shift(rest)
        if fval >= float(UINT64_MAX):
            raise PropError("numeric value is too large")
        return int(fval)
    num = int(digits)
    shift = _str2shift(text[end:])
    if shift >= 64 or ((num << shift) & UINT64_MAX) >> shift != num:
        raise PropError("numeric value is too large")
    return num << shift


def _nicenum_format(num: int, units: Sequence[str]) -> str:
    n, index = num, 0
    while n >= 1024 and index < 6:
        n //= 1024
        index += 1
    u = units[index]
    if index == 0 or num % (1024 ** index) == 0:
        return f"{n}{u}"
    val = num / (1024 ** index)
    for digits in (2, 1, 0):
        text = f"{val:.{digits}f}{u}"
        if len(text) <= 5:
            break
    return text


def nicenum(num: int) -> str:
    """zfs_nicenum: 1024-based, at most 5 characters where possible: 512, 1.50K, 15.5M, 128K."""
    return _nicenum_format(int(num), ("", "K", "M", "G", "T", "P", "E"))


def nicebytes(num: int) -> str:
    """zfs_nicebytes: like nicenum but bytes below 1K carry a B: 0B, 512B, 96K, 1.50G."""
    return _nicenum_format(int(num), ("B", "K", "M", "G", "T", "P", "E"))


def format_ratio(hundredths: int, parsable: bool = False) -> str:
    """compressratio: 1.00x (parsable: 1.00)."""
    h = int(hundredths)
    return f"{h // 100}.{h % 100:02d}" + ("" if parsable else "x")


def compress_ratio(logical: int, physical: int) -> int:
    """The ratio zfs keeps, in hundredths: logical * 100 // physical; 100 for nothing stored."""
    return 100 if physical == 0 else logical * 100 // physical


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def format_time(seconds: int, parsable: bool = False) -> str:
    """creation as zfs prints it: strftime "%a %b %e %k:%M %Y", local time, e.g.
    "Fri Nov 27  3:15 2026"; parsable: the seconds since the epoch."""
    if parsable:
        return str(int(seconds))
    t = time.localtime(int(seconds))
    return (f"{_DAYS[t.tm_wday]} {_MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} "
            f"{t.tm_hour:2d}:{t.tm_min:02d} {t.tm_year}")


# ---- validation ----------------------------------------------------------------------------------
def _canonical_index(p: Prop, value: str) -> str | None:
    for n, v in p.index:
        if n == value:
            return next(n2 for n2, v2 in p.index if v2 == v)
    return None


def _unsupported(p: Prop, value: Any, creating: bool) -> str | None:
    """The 'kernel' stage: values OpenZFS accepts that fusezfs cannot honour."""
    if p.name in _ENCRYPTION_PROPS:
        if value != p.default:
            return MSG_NO_ENCRYPTION if creating else (
                "keylocation may only be set on encryption roots" if p.name == "keylocation"
                else MSG_UPGRADE_SET)
        return None
    if p.name == "version":
        if value != str(ZPL_VERSION):
            if creating:
                return MSG_UPGRADE_CREATE
            return f"Can not downgrade; already at version {ZPL_VERSION}"
        return None
    if value in p.unsupported:
        return MSG_UPGRADE_CREATE if creating else MSG_UPGRADE_SET
    return None


def _check_mountpoint(name: str, value: str) -> None:
    if value in ("none", "legacy"):
        return
    if not value.startswith("/"):
        raise PropError(f"'{name}' must be an absolute path, 'none', or 'legacy'")
    for comp in value[1:].split("/"):
        if len(comp) >= ZFS_MAX_DATASET_NAME_LEN:
            raise PropError(f"component of '{name}' is too long")


# the NFS export options libshare's Linux NFS backend accepts in sharenfs (besides the host
# lists ro, rw and sec), as nfs.c's get_linux_shareopts_cb checks them
_NFS_SHARE_KEYS = frozenset((
    "anon", "root_mapping", "nosub", "insecure", "secure", "async", "sync", "no_wdelay",
    "wdelay", "nohide", "hide", "crossmnt", "no_subtree_check", "subtree_check",
    "insecure_locks", "secure_locks", "no_auth_nlm", "auth_nlm", "no_acl", "mountpoint", "mp",
    "fsuid", "refer", "replicas", "root_squash", "no_root_squash", "all_squash",
    "no_all_squash", "fsid", "anonuid", "anongid", "ro", "rw", "sec"))


def _valid_share_options(canon: str, value: str) -> bool:
    """zfs_parse_options: sharesmb takes only on/off; sharenfs, comma-separated options whose
    keys (before any '=') Linux's NFS export knows. Keys are case-sensitive: "ON" is none."""
    if value in ("on", "off"):
        return True
    if canon == "sharesmb":
        return False
    return all(opt.partition("=")[0] in _NFS_SHARE_KEYS for opt in value.split(",") if opt)


def _valid_keylocation(value: str) -> bool:
    return (value in ("none", "prompt") or (len(value) > 8 and value.startswith("file:///"))
            or (len(value) > 8 and value.startswith("https://"))
            or (len(value) > 7 and value.startswith("http://")))


def _check_value(typed: str, value: str, ds_type: str, creating: bool,
                 max_recordsize: int) -> tuple[str, Any]:
    """zfs_valid_proplist for one property: -> (canonical name, raw value). No kernel checks."""
    if is_user(typed):
        if len(typed) >= ZAP_MAXNAMELEN:
            raise PropError(f"property name '{typed}' is too long")
        return typed, value
    if ds_type == SNAPSHOT:
        raise PropError(MSG_SNAPSHOT_PROPS)
    if is_userquota(typed):
        if typed.startswith(("userquota@", "groupquota@", "userobjquota@", "groupobjquota@",
                             "projectquota@", "projectobjquota@")):
            return typed, 0 if value == "none" else parse_size(value)
        raise PropError(f"'{typed}' is readonly")
    if is_written(typed):
        raise PropError(f"'{typed}' is readonly")
    canon = canonical(typed)
    if canon is None:
        raise PropError(f"invalid property '{typed}'")
    p = PROPS[canon]
    if ds_type not in p.types:
        raise PropError(f"'{typed}' does not apply to datasets of this type")
    if p.readonly and not (p.setonce and creating):
        raise PropError(f"'{typed}' is readonly")

    # zprop_parse_value
    if p.type == STRING:
        if len(value) >= ZFS_MAXPROPLEN:
            raise PropError(f"'{typed}' is too long")
        raw: Any = value
    elif p.type == NUMBER:
        isnone = value == "none"
        if value == "auto":
            # zprop_parse_value: the sentinel the volume layer replaces with the size a
            # volume's refreservation would be given at creation
            if canon != "refreservation":
                raise PropError(f"'auto' is invalid value for '{typed}'")
            if ds_type != VOLUME:
                raise PropError(f"'{typed}=auto' only allowed on volumes")
            return canon, REFRESERVATION_AUTO
        raw = 0 if isnone else parse_size(value)
        if raw == 0 and not isnone and canon in ("quota", "refquota"):
            raise PropError("use 'none' to disable quota/refquota")
        if isnone and canon in ("filesystem_limit", "snapshot_limit"):
            raw = UINT64_MAX
    else:
        raw = _canonical_index(p, value)
        if raw is None:
            raise PropError(f"'{canon}' must be one of '{p.values}'")

    # the checks zfs_valid_proplist makes for particular properties
    if canon in ("recordsize", "volblocksize"):
        maxbs = max_recordsize if canon == "recordsize" else 128 << 10
        if raw < MIN_BLOCKSIZE or raw > maxbs or raw & (raw - 1):
            raise PropError(f"'{typed}' must be power of 2 from 512B to {nicebytes(maxbs)}")
    elif canon == "special_small_blocks":
        if raw != 0 and (raw < MIN_BLOCKSIZE or raw > max_recordsize or raw & (raw - 1)):
            raise PropError(f"invalid '{typed}={raw}' property: must be zero or a power of 2 "
                            f"from 512B to {nicebytes(max_recordsize)}")
    elif canon == "mlslabel":
        raise PropError("mlslabels are unsupported")
    elif canon == "mountpoint":
        _check_mountpoint(typed, raw)
    elif canon in ("sharenfs", "sharesmb"):
        if not _valid_share_options(canon, raw):
            raise PropError(f"'{typed}' cannot be set to invalid options")
    elif canon == "keylocation":
        if not _valid_keylocation(raw):
            raise PropError("invalid keylocation")
    return canon, raw


def validate(name: str, value: str, ds_type: str = FILESYSTEM, *, creating: bool = False,
             max_recordsize: int = MAX_RECORDSIZE) -> Any:
    """Check `zfs set name=value` (creating: `zfs create -o name=value`); return the raw value.

    Use `validate_props` for several at once: it returns canonical names and applies the
    utf8only/normalization rule. Raises PropError carrying zfs's message.
    """
    canon, raw = _check_value(name, value, ds_type, creating, max_recordsize)
    _check_supported(canon, raw, creating)
    return raw


def validate_props(props: Mapping[str, str], ds_type: str = FILESYSTEM, *,
                   creating: bool = False, max_recordsize: int = MAX_RECORDSIZE) -> dict[str, Any]:
    """Check a `zfs set a=b c=d` / `zfs create -o ...` / `zfs snapshot -o ...` property list.

    Returns {canonical name: raw value} in the order given. As in zfs, the first failing
    property (in order) is reported, all libzfs checks come before the ones the kernel makes
    (values fusezfs cannot honour), and at creation a normalization other than none turns
    utf8only on unless utf8only=off was given, which is an error.
    """
    out: dict[str, Any] = {}
    for typed, value in props.items():
        canon, raw = _check_value(typed, value, ds_type, creating, max_recordsize)
        out[canon] = raw
    norm = out.get("normalization")
    if norm is not None and norm != "none":
        if "utf8only" not in out:
            out["utf8only"] = "on"
        elif out["utf8only"] == "off":
            raise PropError("'utf8only' must be set 'on' if normalization chosen")
    for canon, raw in out.items():
        _check_supported(canon, raw, creating)
    return out


def _check_supported(canon: str, raw: Any, creating: bool) -> None:
    if canon in PROPS:
        why = _unsupported(PROPS[canon], raw, creating)
        if why is not None:
            raise PropError(why)
    elif is_userquota(canon):
        raise PropError(MSG_UPGRADE_CREATE if creating else MSG_UPGRADE_SET)
    elif is_user(canon) and len(raw) >= ZAP_MAXVALUELEN:
        raise PropError("property value too long")


# ---- `zfs inherit` -------------------------------------------------------------------------------
def check_inherit(name: str, *, received: bool = False) -> str:
    """zfs inherit [-S] NAME: the canonical name, or PropError with zfs's lines (no prefix).

    "invalid property 'foo'" is a usage error (exit 2); the others exit 1.
    """
    canon = canonical(name)
    if canon is not None:
        p = PROPS[canon]
        if p.readonly:
            raise PropError(f"{name} property is read-only")
        if not p.inheritable and not received:
            msg = f"'{name}' property cannot be inherited"
            if canon in ("quota", "reservation", "refquota", "refreservation"):
                msg += (f"\nuse 'zfs set {name}=none' to clear"
                        f"\nuse 'zfs inherit -S {name}' to revert to received value")
            raise PropError(msg)
        if received and canon in ("volsize", "version"):
            raise PropError(f"'{name}' property cannot be reverted to a received value")
        return canon
    if not is_user(name):
        raise PropError(f"invalid property '{name}'", usage=True)
    return name


def check_inherit_type(name: str, ds_type: str) -> None:
    """Per dataset: "cannot inherit NAME for 'DS': " + this message, when it does not apply."""
    if not is_user(name) and ds_type not in get(name).types:
        raise PropError(MSG_WRONG_TYPE_INHERIT)


# ---- property lists (get, list -o, list -s) ------------------------------------------------------
def parse_proplist(text: str) -> list[str] | None:
    """`zfs get PROPS` / `zfs list -o PROPS`: canonical names; None for "all".

    Accepts column aliases, user properties, userquota@... and written@...; "space" stands for
    SPACE_PROPS. Errors are usage errors worded as zfs does ("bad property list: ...").
    """
    if text == "all":
        return None
    if text == "":
        raise PropError("bad property list: no properties specified", usage=True)
    out: list[str] = []
    rest = text
    while rest:
        item, sep, rest = rest.partition(",")
        if item == "":
            raise PropError("bad property list: empty property name", usage=True)
        if item == "space":
            out.extend(SPACE_PROPS)
            continue
        canon = canonical(item)
        if canon is not None:
            out.append(canon)
        elif is_user(item) or is_userquota(item) or is_written(item):
            out.append(item)
        else:
            raise PropError(f"bad property list: invalid property '{item}'", usage=True)
    return out


def check_sort_property(name: str) -> str:
    """`zfs list -s/-S NAME`: the canonical name, or a usage PropError "invalid property 'x'"."""
    canon = canonical(name)
    if canon is not None:
        return canon
    if is_user(name):
        return name
    raise PropError(f"invalid property '{name}'", usage=True)


def column_header(name: str) -> str:
    """`zfs list` header: the property's column name; user properties upper-cased."""
    canon = canonical(name)
    return PROPS[canon].column if canon else name.upper()


def align_right(name: str) -> bool:
    """Numbers are right-aligned in `zfs list`; index, string and user properties left."""
    canon = canonical(name)
    return PROPS[canon].rightalign if canon else False


def column_width(name: str) -> tuple[int, bool]:
    """zprop_width: (minimum width, fixed). Fixed columns do not grow with their values (unless
    -p); numbers are at least 5 wide, index columns as wide as their longest value name."""
    canon = canonical(name)
    if canon is None:
        return len(name), False
    p = PROPS[canon]
    width = len(p.column)
    if p.type == NUMBER:
        return max(width, 5), canon != "creation"
    if p.type == INDEX:
        return max([width] + [len(n) for n in p.index_names()]), True
    return width, False


def sorts_numerically(name: str) -> bool:
    canon = canonical(name)
    return PROPS[canon].numeric_sort if canon else False


# ---- inheritance ---------------------------------------------------------------------------------
@dataclass
class Level:
    """One dataset's own property settings, as the dataset layer stores them.

    local: values set with zfs set / create -o; received: values a receive set; masked: names
    explicitly inherited (`zfs inherit` without -S) while a received value exists, which hides
    the received value (OpenZFS's "$inherit" entries).
    """
    name: str
    local: MutableMapping[str, Any] = field(default_factory=dict)
    received: MutableMapping[str, Any] = field(default_factory=dict)
    masked: MutableSet[str] = field(default_factory=set)


@dataclass(frozen=True)
class Resolved:
    value: Any          # raw value (the default when nothing is set; None: user prop unset)
    source: str         # SOURCE: local | default | received | inherited from X | -
    setpoint: str       # dataset the value comes from; RECEIVED; "" for the default


def _level(x: Any) -> Level:
    if isinstance(x, Level):
        return x
    if isinstance(x, tuple):
        return Level(*x)
    raise TypeError(f"not a Level: {x!r}")


def resolve(name: str, chain: Sequence[Any]) -> Resolved:
    """Effective value and SOURCE of a settable native or a user property (dsl_prop_get_ds).

    chain: Levels from the dataset itself up to the pool's root dataset; for a snapshot, the
    snapshot's own Level (its user properties) followed by its head filesystem's chain. Tuples
    (name, local[, received[, masked]]) are accepted for Levels.

    At each level a local value wins, then a received value unless masked; the first level
    reports "local"/"received", higher ones "inherited from NAME". Non-inheritable properties
    stop at the first level. A snapshot inherits its head's values (even the head's own ones
    show as "inherited from HEAD"); the properties zfs shows with SOURCE '-' (version, utf8only,
    normalization, casesensitivity) do so here too. Read-only properties are not resolved here:
    they come from the dataset layer (see get_property).
    """
    levels = [_level(x) for x in chain]
    user = is_user(name)
    p = None if user else get(name)
    if p is not None:
        name = p.name
    inheritable = user or p.inheritable
    found: tuple[Any, str, str] | None = None
    for i, lv in enumerate(levels):
        if i > 0 and not inheritable:
            break
        if name in lv.local:
            found = (lv.local[name], lv.name, f"inherited from {lv.name}" if i else "local")
            break
        if name in lv.received and name not in lv.masked:
            found = (lv.received[name], lv.name if i else RECEIVED,
                     f"inherited from {lv.name}" if i else "received")
            break
    if found is None:
        if user:
            return Resolved(None, "-", "")
        value, setpoint, source = p.default, "", "default"
    else:
        value, setpoint, source = found
    if p is not None and p.source_none:
        source = "-"
    return Resolved(value, source, setpoint)


def apply_set(level: Level, name: str, value: Any) -> None:
    """Record `zfs set` on a Level: a local value, and no more explicit-inherit mask."""
    level.local[name] = value
    level.masked.discard(name)


def apply_inherit(level: Level, name: str, *, received: bool = False) -> None:
    """Record `zfs inherit [-S]` on a Level.

    Without -S the local value goes and, where the dataset holds received properties, the
    received value is masked (the dataset then inherits as if nothing were received). With -S
    the local value and any mask go, so the received value (if any) shows again.
    """
    level.local.pop(name, None)
    if received:
        level.masked.discard(name)
    elif level.received:
        level.masked.add(name)


def mountpoint_value(raw: str, setpoint: str, dataset: str, altroot: str = "") -> str:
    """The mountpoint zfs get shows: an inherited path gets the rest of the dataset name appended
    (tank/a set to /x shows /x/b on tank/a/b); the default "/" becomes /POOL/..., a received
    value is shown as is; altroot (not "-") is prefixed."""
    if not raw.startswith("/"):
        return raw                              # none, legacy
    if setpoint == RECEIVED:
        relpath = ""
    else:
        relpath = dataset[len(setpoint):]
        if relpath.startswith("/"):
            relpath = relpath[1:]
    root = "" if altroot in ("", "-") else altroot
    if root == "/":
        root = ""
    s = raw
    if s == "/" and (root or relpath):
        s = ""
    if not relpath:
        return root + s
    return root + s + ("" if relpath[0] == "@" else "/") + relpath


# ---- values as zfs get prints them ---------------------------------------------------------------
def format_value(name: str, raw: Any, parsable: bool = False) -> str:
    """A raw value as `zfs get` / `zfs list` print it (parsable: -p)."""
    if is_user(name):
        return str(raw)
    if is_written(name) or is_userquota(name):
        n = int(raw)
        if parsable:
            return str(n)
        if n == 0 and "quota@" in name:
            return "none"
        return nicebytes(n)
    p = get(name)
    fmt = p.fmt
    if p.name == "mounted":
        return "yes" if _truthy(raw) else "no"
    if p.name == "defer_destroy":
        return "on" if _truthy(raw) else "off"
    if p.name == "clones" and not isinstance(raw, str):
        return ",".join(raw)
    if fmt == "string" or fmt == "index":
        return str(raw)
    n = int(raw)
    if fmt == "date":
        return format_time(n, parsable)
    if fmt == "ratio":
        return format_ratio(n, parsable)
    if fmt == "raw" or parsable and fmt != "limit":
        return str(n)
    if fmt == "quota":
        return "none" if n == 0 else nicebytes(n)
    if fmt == "limit":
        return "none" if n == UINT64_MAX else (str(n) if parsable else nicenum(n))
    if fmt == "bytes":
        return nicebytes(n)
    return nicenum(n)


def _truthy(raw: Any) -> bool:
    return raw in (True, 1, "1", "on", "yes")


def get_property(name: str, ds_type: str, chain: Sequence[Any],
                 computed: Mapping[str, Any] | None = None, *, parsable: bool = False,
                 head_type: str = FILESYSTEM, altroot: str = "") -> tuple[str, str] | None:
    """One row of `zfs get`: (VALUE, SOURCE), or None where zfs has no value.

    None means "-\t-" for a property asked for by name and "left out" in `zfs get all`: the
    property does not apply to this type, is an unset user property, or is a read-only one
    the dataset layer gave no value for (origin of a non-clone, clones of a snapshot without
    any, keystatus, encryptionroot, receive_resume_token, redact_snaps).

    computed: raw values of the read-only properties (used, available, referenced, creation,
    compressratio (hundredths), mounted (bool), origin, guid, createtxg, objsetid, userrefs,
    clones (list), defer_destroy (bool), written, written@SNAP, logical*, usedby*,
    refcompressratio, filesystem_count, snapshot_count). type and name come from ds_type and
    chain[0].
    """
    computed = computed or {}
    levels = [_level(x) for x in chain]
    if is_user(name):
        r = resolve(name, levels)
        return None if r.value is None else (str(r.value), r.source)
    if is_written(name) or is_userquota(name):
        raw = computed.get(name)
        return None if raw is None else (format_value(name, raw, parsable), "-")
    p = get(name)
    if not applies(p.name, ds_type, head_type):
        return None
    if p.name == "type":
        return computed.get("type", ds_type), "-"
    if p.name in ("volsize", "volblocksize") and p.name in computed:
        # a volume's geometry is its data object's (volumes.py), as OpenZFS reads volsize
        # from the zvol's ZAP and volblocksize from the object: a snapshot has its own
        raw = computed[p.name]
        if p.name == "volsize":
            source = "-" if ds_type == SNAPSHOT else "local"
        else:
            source = "default" if raw == p.default else "-"
        return format_value(p.name, raw, parsable), source
    if p.name == "name":
        return levels[0].name, "-"
    if p.attr == READONLY and p.name not in ("filesystem_count", "snapshot_count"):
        raw = computed.get(p.name)
        if raw is None or (p.name == "clones" and not raw):
            return None
        return format_value(p.name, raw, parsable), "-"
    if p.name in ("filesystem_count", "snapshot_count"):
        raw = computed.get(p.name, UINT64_MAX)
        return format_value(p.name, raw, parsable), "default" if raw == UINT64_MAX else "local"
    r = resolve(p.name, levels)
    if p.name == "mountpoint":
        return mountpoint_value(str(r.value), r.setpoint, levels[0].name, altroot), r.source
    return format_value(p.name, r.value, parsable), r.source


# ---- usage text ----------------------------------------------------------------------------------
def usage_properties() -> str:
    """The property part of zfs's usage text for set, get, inherit and list."""
    def key(p: Prop):
        return (p.attr != READONLY, p.name)

    lines = ["", "The following properties are supported:", "",
             "\t%-14s %s  %s   %s" % ("PROPERTY", "EDIT", "INHERIT", "VALUES"), ""]
    for p in sorted((p for p in _TABLE if p.visible), key=key):
        lines.append("\t%-15s %s%s%s" % (p.name, " NO    " if p.readonly else "YES    ",
                                          "  YES   " if p.inheritable else "   NO   ",
                                          p.values or "-"))
    for name, rest in (("userused@...", " NO       NO   <size>"),
                       ("groupused@...", " NO       NO   <size>"),
                       ("userquota@...", "YES       NO   <size> | none"),
                       ("groupquota@...", "YES       NO   <size> | none"),
                       ("written@<snap>", " NO       NO   <size>"),
                       ("written#<bookmark>", " NO       NO   <size>")):
        lines.append("\t%-15s %s" % (name, rest))
    lines += ["", "Sizes are specified in bytes with standard units such as K, M, G, etc.", "",
              "User-defined properties can be specified by using a name containing a colon (:).",
              "", "The {user|group}{used|quota}@ properties must be appended with",
              "a user or group specifier of one of these forms:",
              '    POSIX name      (eg: "matt")',
              '    POSIX id        (eg: "126829")',
              '    SMB name@domain (eg: "matt@sun")',
              '    SMB SID         (eg: "S-1-234-567-89")']
    return "\n".join(lines) + "\n"
