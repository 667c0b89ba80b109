"""The control socket's wire format, shared by the thin client (client.py) and the service
(control.py); it imports nothing heavy, because every command's client imports it.

Frames: a 4-byte big-endian length and a payload. A length with bit 31 clear is a JSON object;
with bit 31 set, the low 31 bits count raw bytes (a binary frame). Request {"argv": [...],
"cwd": str, "env": {...}, "tty": [stdin is a terminal, stdout is one]}; replies {"out": text},
{"err": text}, binary frames (bytes for the client's stdout, written in order with the text),
{"read": n} (the client answers with one binary frame holding 1 to n bytes of its stdin, or none
at its end), then {"exit": code}. A frame announcing more than the reader's limit is refused
before any of it is read.
"""
from __future__ import annotations

import json
import os
import socket
import struct

MAX_FRAME = 64 << 20
BINARY = 1 << 31                 # in a frame's length: raw bytes follow, not JSON
CHUNK = 1 << 20                  # bytes of a stream in one binary frame
SOCKET_NAME = "service.sock"


class ControlError(Exception):
    pass


def send(sock: socket.socket, obj: dict) -> None:
    data = json.dumps(obj).encode()
    sock.sendall(struct.pack(">I", len(data)) + data)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
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


def send_bytes(sock: socket.socket, data: bytes | memoryview) -> None:
    """A binary frame; b"" is a frame too (the end of stdin)."""
    sock.sendall(struct.pack(">I", BINARY | len(data)))
    if len(data):
        sock.sendall(data)


def recv_frame(sock: socket.socket, limit: int = MAX_FRAME) -> dict | bytes | None:
    """The next frame: a JSON object, or the bytes of a binary frame; None at end of input."""
    head = _recv_exact(sock, 4)
    if head is None:
        return None
    (n,) = struct.unpack(">I", head)
    binary = bool(n & BINARY)
    n &= ~BINARY
    if n > limit:
        raise ControlError("frame too large")
    body = _recv_exact(sock, n)
    if body is None:
        return None
    if binary:
        return body
    obj = json.loads(body)
    if not isinstance(obj, dict):
        raise ControlError("bad frame")
    return obj


def recv(sock: socket.socket, limit: int = MAX_FRAME) -> dict | None:
    """The next frame, which must be a JSON object."""
    frame = recv_frame(sock, limit)
    if isinstance(frame, bytes):
        raise ControlError("unexpected binary frame")
    return frame


def address(path: str) -> tuple[str, int | None]:
    """An address for `path` short enough for sun_path (108 bytes): a long one is reached
    through /proc/self/fd of its directory (the caller closes the returned fd)."""
    if len(os.fsencode(path)) < 100:
        return path, None
    fd = os.open(os.path.dirname(path), os.O_PATH | os.O_DIRECTORY)
    return f"/proc/self/fd/{fd}/{os.path.basename(path)}", fd


def connect(path: str) -> socket.socket:
    """A connection to the unix socket at `path` (OSError if nobody listens there)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
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
