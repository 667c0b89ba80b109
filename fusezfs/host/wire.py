"""The control socket's wire format, shared by the thin client (client.py) and the service
(control.py); it imports nothing heavy, because every command's client imports it.

Frames: a 4-byte big-endian length and a payload. A length with bit 31 set counts raw bytes (a
binary frame, in its low 31 bits); else the payload is an object: with bit 30 set in marshal's
encoding (what the thin client speaks: it needs no import, where JSON costs the client the
`json` and `re` modules, a fifth of its start-up), else in JSON (any other client). The service
answers a request in the encoding it came in. Request {"argv": [...],
"cwd": str, "env": {...}, "tty": [stdin is a terminal, stdout is one]}; replies {"out": text},
{"err": text}, binary frames (bytes for the client's stdout, written in order with the text),
{"read": n} (the client answers with one binary frame holding 1 to n bytes of its stdin, or none
at its end), then {"exit": code}. A frame announcing more than the reader's limit is refused
before any of it is read.
"""
from __future__ import annotations

import marshal
import os
import struct

MAX_FRAME = 64 << 20
BINARY = 1 << 31                 # in a frame's length: raw bytes follow, not an object
MARSHAL = 1 << 30                # in a frame's length: the object is marshal's, not JSON
CHUNK = 1 << 20                  # bytes of a stream in one binary frame
SOCKET_NAME = "service.sock"


class ControlError(Exception):
    pass


def send(sock, obj: dict, compact: bool = False) -> None:
    """An object frame: marshal's encoding if `compact`, else JSON."""
    if compact:
        data = marshal.dumps(obj)
        sock.sendall(struct.pack(">I", MARSHAL | len(data)) + data)
        return
    import json
    data = json.dumps(obj).encode()
    sock.sendall(struct.pack(">I", len(data)) + data)


def _recv_exact(sock, n: int) -> bytes | None:
    if not n:
        return b""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if not k:
            return None
        got += k
    return bytes(buf)


def send_bytes(sock, data: bytes | memoryview) -> None:
    """A binary frame; b"" is a frame too (the end of stdin)."""
    sock.sendall(struct.pack(">I", BINARY | len(data)))
    if len(data):
        sock.sendall(data)


def _frame(sock, limit: int) -> tuple[dict | bytes | None, bool]:
    head = _recv_exact(sock, 4)
    if head is None:
        return None, False
    (n,) = struct.unpack(">I", head)
    binary, compact = bool(n & BINARY), not n & BINARY and bool(n & MARSHAL)
    n &= ~(BINARY | MARSHAL) if not binary else ~BINARY
    if n > limit:
        raise ControlError("frame too large")
    body = _recv_exact(sock, n)
    if body is None:
        return None, False
    if binary:
        return body, False
    try:
        if compact:
            obj = marshal.loads(body)
        else:
            import json
            obj = json.loads(body)
    except (ValueError, EOFError, TypeError) as e:
        raise ControlError(f"bad frame: {e}") from None
    if not isinstance(obj, dict):
        raise ControlError("bad frame")
    return obj, compact


def recv_frame(sock, limit: int = MAX_FRAME) -> dict | bytes | None:
    """The next frame: an object, or the bytes of a binary frame; None at end of input."""
    return _frame(sock, limit)[0]


def recv(sock, limit: int = MAX_FRAME) -> dict | None:
    """The next frame, which must be an object."""
    frame = recv_frame(sock, limit)
    if isinstance(frame, bytes):
        raise ControlError("unexpected binary frame")
    return frame


def recv_request(sock, limit: int) -> tuple[dict | None, bool]:
    """A request: (the object or None at end of input, whether it came in marshal's
    encoding, which the answer then uses too)."""
    frame, compact = _frame(sock, limit)
    if isinstance(frame, bytes):
        raise ControlError("unexpected binary frame")
    return frame, compact


def address(path: str) -> tuple[str, int | None]:
    """An address for `path` short enough for sun_path (108 bytes): a long one is reached
    through /proc/self/fd of its directory (the caller closes the returned fd)."""
    if len(os.fsencode(path)) < 100:
        return path, None
    fd = os.open(os.path.dirname(path), os.O_PATH | os.O_DIRECTORY)
    return f"/proc/self/fd/{fd}/{os.path.basename(path)}", fd


def connect(path: str):
    """A connection to the unix socket at `path` (OSError if nobody listens there): the
    built-in _socket's object, whose import costs nothing (the socket module's costs the
    client a few milliseconds)."""
    import _socket
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        addr, fd = address(path)
        try:
            sock.connect(addr)
        finally:
            if fd is not None:
                os.close(fd)
    except OSError:
        sock.close()
        raise
    return sock
