"""FUSE requests pyfuse3 has no handler for: FALLOCATE and LSEEK (SEEK_DATA / SEEK_HOLE).

Theory of operation
-------------------
pyfuse3 (3.x) fills libfuse's `struct fuse_lowlevel_ops` with its own handlers and leaves
`fallocate` and `lseek` empty, so libfuse answers ENOSYS: the kernel then answers fallocate(2)
with EOPNOTSUPP for good, and SEEK_DATA/SEEK_HOLE by its generic rule (all data, the only hole
at the end of the file). Without forking pyfuse3, `install` gives a session both handlers
after `init`: libfuse's `fuse_session_new` copied pyfuse3's table into the session, so the copy
is found there (the bytes of pyfuse3's static table, `__pyx_v_7pyfuse3_fuse_ops`, found inside
the session that its static `__pyx_v_7pyfuse3_session` points to: the table itself tells where
it is, whatever the layout of `struct fuse_session`) and the two slots, empty until then, get
ctypes callbacks. Symbols come from the extension's own symbol table (it is not stripped when
built by pip); the load address of each instance (fuse_sessions loads copies) from
dl_iterate_phdr. Every check failing (another libfuse layout, a stripped build) leaves the
session as pyfuse3 made it, with a warning: fallocate is then EOPNOTSUPP and SEEK_HOLE sees no
holes, as before.

A callback runs inside pyfuse3's request loop, on the trio thread, holding the GIL (libfuse
dispatches while pyfuse3 processes the request buffer); it only reads its arguments and starts
a trio task, which runs the operation as every other handler does (fuse_ops: under the pool's
lock, on a worker thread if a sync holds it) and replies through libfuse (fuse_reply_err,
fuse_reply_lseek). Nothing here touches the pool.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import struct

import trio

log = logging.getLogger("fusezfs.fuse")

SLOTS = 44                  # pointers in struct fuse_lowlevel_ops (libfuse 3.8 and later)
FALLOCATE, READDIRPLUS, LSEEK = 40, 41, 43      # their indexes (fuse_lowlevel.h)
FH_OFFSET = 16              # fuse_file_info.fh: after int flags and two 32-bit bitfield words
SESSION_SYM = b"__pyx_v_7pyfuse3_session"
OPS_SYM = b"__pyx_v_7pyfuse3_fuse_ops"

_FALLOCATE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int,
                              ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)
_LSEEK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int64,
                          ctypes.c_int, ctypes.c_void_p)
_keep: dict[int, tuple] = {}      # module instance -> its callbacks (alive as long as we are)
_symbols: dict[str, dict[bytes, tuple[int, int]] | None] = {}
_libfuse = None


def elf_symbols(path: str, names: set[bytes]) -> dict[bytes, tuple[int, int]]:
    """(value, size) of the named symbols in an ELF64 little-endian file's .symtab."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return {}
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)
                for i in range(shnum)]
    out: dict[bytes, tuple[int, int]] = {}
    for _name, stype, _fl, _addr, off, size, link, _info, _al, entsize in sections:
        if stype != 2 or not entsize:           # SHT_SYMTAB
            continue
        stroff = sections[link][4]
        for i in range(size // entsize):
            st_name, _stinfo, _other, _shndx, value, ssize = struct.unpack_from(
                "<IBBHQQ", data, off + i * entsize)
            end = data.index(b"\0", stroff + st_name)
            name = data[stroff + st_name:end]
            if name in names:
                out[name] = (value, ssize)
    return out


class _PhdrInfo(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_size_t), ("name", ctypes.c_char_p)]


def load_base(path: str) -> int | None:
    """Where the shared object loaded from `path` lies in this process (dl_iterate_phdr)."""
    found: list[int] = []
    want = os.fsencode(path)
    cb_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(_PhdrInfo), ctypes.c_size_t,
                               ctypes.c_void_p)

    def each(info, _size, _data) -> int:
        if info.contents.name == want:
            found.append(info.contents.addr)
            return 1
        return 0
    libc = ctypes.CDLL(None)
    libc.dl_iterate_phdr(cb_type(each), None)
    return found[0] if found else None


def libfuse():
    global _libfuse
    if _libfuse is None:
        lib = ctypes.CDLL(ctypes.util.find_library("fuse3") or "libfuse3.so.3")
        lib.fuse_reply_err.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.fuse_reply_lseek.argtypes = [ctypes.c_void_p, ctypes.c_int64]
        lib.fuse_session_fd.argtypes = [ctypes.c_void_p]
        lib.fuse_session_exited.argtypes = [ctypes.c_void_p]
        _libfuse = lib
    return _libfuse


def _reply(req: int, result: int | None, errno_: int) -> None:
    lib = libfuse()
    if result is not None:
        lib.fuse_reply_lseek(req, result)
    else:
        lib.fuse_reply_err(req, errno_)


async def _serve(req: int, call, *args) -> None:
    """Run the operation (fuse_ops) and reply: 0 or the result, or the FUSE error's errno."""
    result, code = None, 0
    try:
        result = await call(*args)
    except BaseException as e:      # noqa: BLE001 - a system task must never raise
        code = getattr(e, "errno", None) or 5           # EIO
        if not isinstance(e, Exception):
            _reply(req, None, 4)                        # EINTR: the loop is ending
            raise
    _reply(req, result if code == 0 else None, code)


def session_of(mod) -> tuple[int, int, dict]:
    """(load address, libfuse session pointer, symbols) of pyfuse3 instance `mod` after its
    init; LookupError when they cannot be found."""
    import pyfuse3
    src = pyfuse3.__file__              # copies (fuse_sessions.instance) are the same bytes
    if src not in _symbols:
        _symbols[src] = elf_symbols(src, {SESSION_SYM, OPS_SYM})
    syms = _symbols[src] or {}
    base = load_base(mod.__file__)
    if base is None or SESSION_SYM not in syms:
        raise LookupError("pyfuse3's symbols or load address not found")
    session = ctypes.c_void_p.from_address(base + syms[SESSION_SYM][0]).value
    if not session:
        raise LookupError("no session (install after init)")
    return base, session, syms


def install(mod, core) -> bool:
    """Give the session of pyfuse3 instance `mod` (after its init) FALLOCATE and LSEEK
    handlers calling `core.fallocate(fh, mode, offset, length)` and `core.lseek(fh, offset,
    whence)` (fuse_ops.Operations, with the handle numbers all sessions share), and the
    request wait of fuse_loop. False, with a warning, when the session cannot be patched
    safely (module comment)."""
    try:
        base, session, syms = session_of(mod)
    except (OSError, LookupError, ValueError, struct.error) as e:
        log.warning("fallocate, SEEK_DATA/SEEK_HOLE and the fast request wait not installed: "
                    "%s", e)
        return False
    from fusezfs.fuse import fuse_loop
    fuse_loop.install(mod, session, libfuse())
    try:
        if OPS_SYM not in syms:
            raise LookupError("pyfuse3's table of operations not found")
        ops_at, ops_size = syms[OPS_SYM]
        if ops_size != SLOTS * 8:
            raise LookupError(f"struct fuse_lowlevel_ops of {ops_size} bytes, not {SLOTS * 8}")
        table = ctypes.string_at(base + ops_at, ops_size)
        slots = struct.unpack(f"<{SLOTS}Q", table)
        if slots[FALLOCATE] or slots[LSEEK] or not slots[READDIRPLUS]:
            raise LookupError("pyfuse3's table is not the one expected")
        window = ctypes.string_at(session, 512)     # the table is near the start, in any 3.x
        at = window.find(table)
        while at >= 0 and at % 8:
            at = window.find(table, at + 1)
        if at < 0:
            raise LookupError("the session's copy of the table not found")
    except (OSError, LookupError, ValueError, struct.error) as e:
        log.warning("fallocate and SEEK_DATA/SEEK_HOLE not served through FUSE: %s", e)
        return False

    def fallocate(req, _ino, mode, offset, length, fi):
        try:
            fh = ctypes.c_uint64.from_address(fi + FH_OFFSET).value
            trio.lowlevel.spawn_system_task(_serve, req, core.fallocate, fh, mode, offset,
                                            length)
        except BaseException:           # noqa: BLE001 - never into libfuse's C frames
            _reply(req, None, 5)

    def lseek(req, _ino, offset, whence, fi):
        try:
            fh = ctypes.c_uint64.from_address(fi + FH_OFFSET).value
            trio.lowlevel.spawn_system_task(_serve, req, core.lseek, fh, offset, whence)
        except BaseException:           # noqa: BLE001
            _reply(req, None, 5)

    callbacks = (_FALLOCATE(fallocate), _LSEEK(lseek))
    _keep[id(mod)] = callbacks
    ctypes.c_void_p.from_address(session + at + FALLOCATE * 8).value = \
        ctypes.cast(callbacks[0], ctypes.c_void_p).value
    ctypes.c_void_p.from_address(session + at + LSEEK * 8).value = \
        ctypes.cast(callbacks[1], ctypes.c_void_p).value
    return True
