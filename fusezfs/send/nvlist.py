"""XDR-packed nvlists (libnvpair's NV_ENCODE_XDR), as `zfs send -R` and resume tokens use them.

Theory of operation
-------------------
A packed nvlist is a 4-byte header (encoding 1 = XDR, the packer's endianness, two zero bytes)
and the list in XDR, which is big-endian and 4-byte aligned whatever the host: the list's
version (0) and flags (NV_UNIQUE_NAME = 1), then each pair as: the encoded size of the pair,
the size the pair takes unpacked in memory (libnvpair allocates by it, so it must be right:
NVP_SIZE_CALC of module/nvpair/nvpair.c), the name as an XDR string, the data type, the number
of elements and the value; two zero words end a list (embedded lists too). XDR strings are a
length and the bytes padded to 4; integers of 8, 16 and 32 bits take a 4-byte word, 64-bit ones
8 bytes; arrays are a count and the elements; an nvlist value is an embedded list.

Python values map to types as follows when encoding (`encode`): bool -> BOOLEAN_VALUE, int ->
UINT64 (INT64 if negative), str -> STRING, bytes -> BYTE_ARRAY (UINT8_ARRAY with `Typed`), dict
-> NVLIST, list of int -> UINT64_ARRAY, list of str -> STRING_ARRAY, list of dict ->
NVLIST_ARRAY, None -> BOOLEAN (a flag with no value). `Typed(type, value)` forces a type.
`decode` gives back the same Python shapes (BOOLEAN as True, every integer type as int).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

NV_VERSION = 0
NV_ENCODE_XDR = 1
NV_UNIQUE_NAME = 1

(BOOLEAN, BYTE, INT16, UINT16, INT32, UINT32, INT64, UINT64, STRING, BYTE_ARRAY, INT16_ARRAY,
 UINT16_ARRAY, INT32_ARRAY, UINT32_ARRAY, INT64_ARRAY, UINT64_ARRAY, STRING_ARRAY, HRTIME,
 NVLIST, NVLIST_ARRAY, BOOLEAN_VALUE, INT8, UINT8, BOOLEAN_ARRAY, INT8_ARRAY,
 UINT8_ARRAY) = range(1, 27)

_WORD = {BYTE: ">I", INT8: ">i", UINT8: ">I", INT16: ">i", UINT16: ">I", INT32: ">i",
         UINT32: ">I", BOOLEAN_VALUE: ">i", INT64: ">q", UINT64: ">Q", HRTIME: ">q"}
_ARRAY = {INT8_ARRAY: (">i", 1), UINT8_ARRAY: (">I", 1), INT16_ARRAY: (">i", 2),
          UINT16_ARRAY: (">I", 2), INT32_ARRAY: (">i", 4), UINT32_ARRAY: (">I", 4),
          BOOLEAN_ARRAY: (">i", 4), INT64_ARRAY: (">q", 8), UINT64_ARRAY: (">Q", 8)}
_NATIVE = {BOOLEAN: 0, BYTE: 1, INT8: 1, UINT8: 1, INT16: 2, UINT16: 2, INT32: 4, UINT32: 4,
           BOOLEAN_VALUE: 4, INT64: 8, UINT64: 8, HRTIME: 8}
NVLIST_T_SIZE = 24                  # sizeof (nvlist_t), 8-aligned
NVPAIR_T_SIZE = 16                  # sizeof (nvpair_t)


class NvlistError(ValueError):
    """Bytes that are not a packed XDR nvlist."""


@dataclass
class Typed:
    """A value with an explicit nvpair data type."""
    type: int
    value: Any


def _align8(n: int) -> int:
    return (n + 7) & ~7


def _xdr_string(s: bytes) -> bytes:
    return struct.pack(">I", len(s)) + s + bytes(-len(s) % 4)


def _classify(value: Any) -> tuple[int, Any]:
    if isinstance(value, Typed):
        return value.type, value.value
    if value is None:
        return BOOLEAN, None
    if isinstance(value, bool):
        return BOOLEAN_VALUE, int(value)
    if isinstance(value, int):
        return (INT64 if value < 0 else UINT64), value
    if isinstance(value, str):
        return STRING, value
    if isinstance(value, (bytes, bytearray)):
        return BYTE_ARRAY, bytes(value)
    if isinstance(value, dict):
        return NVLIST, value
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, dict) for v in value):
            return NVLIST_ARRAY, list(value)
        if all(isinstance(v, str) for v in value):
            return STRING_ARRAY, list(value)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return UINT64_ARRAY, list(value)
    raise TypeError(f"no nvpair type for {value!r}")


def _native_value_size(dtype: int, value: Any, nelem: int) -> int:
    """i_get_value_size: the bytes a value takes in an unpacked nvpair."""
    if dtype in _NATIVE:
        return _NATIVE[dtype]
    if dtype == STRING:
        return len(value.encode()) + 1
    if dtype == BYTE_ARRAY:
        return nelem
    if dtype in _ARRAY:
        return nelem * _ARRAY[dtype][1]
    if dtype == STRING_ARRAY:
        return nelem * 8 + sum(len(s.encode()) + 1 for s in value)
    if dtype == NVLIST:
        return NVLIST_T_SIZE
    if dtype == NVLIST_ARRAY:
        return nelem * 8 + nelem * NVLIST_T_SIZE
    raise NvlistError(f"unknown data type {dtype}")


def _encode_list(nvl: dict) -> bytes:
    parts = [struct.pack(">iI", NV_VERSION, NV_UNIQUE_NAME)]
    for name, value in nvl.items():
        dtype, v = _classify(value)
        body = _encode_value(dtype, v)
        nelem = _nelem(dtype, v)
        raw_name = name.encode()
        head = _xdr_string(raw_name) + struct.pack(">ii", dtype, nelem)
        encoded = 8 + len(head) + len(body)
        decoded = _align8(NVPAIR_T_SIZE + len(raw_name) + 1) + \
            _align8(_native_value_size(dtype, v, nelem))
        parts.append(struct.pack(">ii", encoded, decoded) + head + body)
    parts.append(bytes(8))
    return b"".join(parts)


def _nelem(dtype: int, v: Any) -> int:
    if dtype == BOOLEAN:
        return 0
    if dtype == BYTE_ARRAY:
        return len(v)
    if dtype in _ARRAY or dtype in (STRING_ARRAY, NVLIST_ARRAY):
        return len(v)
    return 1


def _encode_value(dtype: int, v: Any) -> bytes:
    if dtype == BOOLEAN:
        return b""
    if dtype in _WORD:
        return struct.pack(_WORD[dtype], v)
    if dtype == STRING:
        return _xdr_string(v.encode())
    if dtype == BYTE_ARRAY:
        return v + bytes(-len(v) % 4)
    if dtype in _ARRAY:
        fmt = _ARRAY[dtype][0]
        return struct.pack(">I", len(v)) + b"".join(struct.pack(fmt, x) for x in v)
    if dtype == STRING_ARRAY:
        return b"".join(_xdr_string(s.encode()) for s in v)
    if dtype == NVLIST:
        return _encode_list(v)
    if dtype == NVLIST_ARRAY:
        return b"".join(_encode_list(x) for x in v)
    raise NvlistError(f"cannot encode data type {dtype}")


def encode(nvl: dict) -> bytes:
    """nvlist_pack(nvl, NV_ENCODE_XDR) on a little-endian host."""
    return bytes((NV_ENCODE_XDR, 1, 0, 0)) + _encode_list(nvl)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise NvlistError("packed nvlist is truncated")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def string(self) -> str:
        n, = self.unpack(">I")
        raw = self.take(n)
        self.take(-n % 4)
        return raw.decode(errors="surrogateescape")


def _decode_list(r: _Reader, depth: int = 0) -> dict:
    if depth > 64:
        raise NvlistError("nvlists nested too deep")
    version, _flags = r.unpack(">iI")
    if version != NV_VERSION:
        raise NvlistError(f"unknown nvlist version {version}")
    out: dict = {}
    while True:
        encoded, decoded = r.unpack(">ii")
        if encoded == 0 and decoded == 0:
            return out
        start = r.pos - 8
        name = r.string()
        dtype, nelem = r.unpack(">ii")
        out[name] = _decode_value(r, dtype, nelem, depth)
        if r.pos - start != encoded:
            raise NvlistError(f"pair {name!r}: encoded size {encoded}, read {r.pos - start}")


def _decode_value(r: _Reader, dtype: int, nelem: int, depth: int) -> Any:
    if dtype == BOOLEAN:
        return True
    if dtype in _WORD:
        v, = r.unpack(_WORD[dtype])
        return bool(v) if dtype == BOOLEAN_VALUE else v
    if dtype == STRING:
        return r.string()
    if dtype == BYTE_ARRAY:
        raw = r.take(nelem)
        r.take(-nelem % 4)
        return raw
    if dtype in _ARRAY:
        n, = r.unpack(">I")
        fmt = _ARRAY[dtype][0]
        vals = [r.unpack(fmt)[0] for _ in range(n)]
        return [bool(v) for v in vals] if dtype == BOOLEAN_ARRAY else vals
    if dtype == STRING_ARRAY:
        return [r.string() for _ in range(nelem)]
    if dtype == NVLIST:
        return _decode_list(r, depth + 1)
    if dtype == NVLIST_ARRAY:
        return [_decode_list(r, depth + 1) for _ in range(nelem)]
    raise NvlistError(f"unknown data type {dtype}")


def decode(data: bytes) -> dict:
    """nvlist_unpack of an XDR-packed nvlist (a native one is refused)."""
    if len(data) < 4:
        raise NvlistError("packed nvlist is truncated")
    if data[0] != NV_ENCODE_XDR:
        raise NvlistError("not an XDR-encoded nvlist")
    r = _Reader(bytes(data[4:]))
    return _decode_list(r)
