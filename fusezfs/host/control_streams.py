"""The binary streams of the control socket (control.py), both ends: what `send` and
`receive` need when they run in the service.

Client: `StdinRelay` answers the daemon's {"read": n} with binary frames of the client's
stdin, on a thread of its own; `write_bytes` writes the daemon's binary frames to the client's
stdout. Daemon: a streaming command gets `sessions.Stdio` made of a `Channel` (its connection,
shared by its threads): `RemoteStdin` asks for a chunk ahead of the one it hands out,
`RemoteStdout` sends binary frames of at most CHUNK bytes with blocking sends (backpressure),
`RemoteText` sends each text write at once. The wire format is wire.py's module comment.
"""
from __future__ import annotations

import io
import os
import socket
import sys
import threading

from fusezfs.host.wire import CHUNK, MAX_FRAME, ControlError, recv_frame, send, send_bytes


# ---- the client's end ---------------------------------------------------------------------------
def isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def write_bytes(data: bytes) -> None:
    """Stream bytes for our stdout, after any text already written there."""
    sys.stdout.flush()
    out = getattr(sys.stdout, "buffer", None)
    if out is None:
        sys.stdout.write(data.decode("utf-8", "surrogateescape"))
    else:
        out.write(data)
        out.flush()


class StdinRelay:
    """The client's stdin for the daemon: each {"read": n} is answered, on a thread of its own,
    with one binary frame of what stdin has (at least one byte, at most n; none at its end).
    The main thread keeps reading the daemon's frames meanwhile, so a command that ends while
    a read waits for input still ends here at once."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.asks: list[int] = []
        self.cond = threading.Condition()
        self.thread: threading.Thread | None = None

    def ask(self, n: int) -> None:
        with self.cond:
            self.asks.append(max(1, min(n, MAX_FRAME)))
            self.cond.notify()
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="fusezfs-stdin", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        fd = 0
        grow_pipe(fd)
        eof = False
        while True:
            with self.cond:
                while not self.asks:
                    self.cond.wait()
                n = self.asks.pop(0)
            data = b"" if eof else read_some(fd, n)
            eof = eof or not data
            try:
                send_bytes(self.sock, data)
            except OSError:
                return


def grow_pipe(fd: int) -> None:
    """A pipe on stdin holds 64 KiB by default; ask for 1 MiB (as libzfs_set_pipe_max does),
    so the writer is woken less often."""
    import fcntl
    import stat as stat_
    try:
        if stat_.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, 1031, 1 << 20)          # F_SETPIPE_SZ
    except OSError:
        pass


def read_some(fd: int, n: int) -> bytes:
    """Up to n bytes of fd: one blocking read, then whatever more is ready at once."""
    import select
    try:
        data = os.read(fd, n)
    except OSError:
        return b""
    if not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        try:
            ready, _w, _x = select.select([fd], [], [], 0)
            if not ready:
                break
            more = os.read(fd, n - got)
        except OSError:
            break
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


# ---- the streams of a streaming command, in the daemon ----------------------------------------
class Channel:
    """One streaming command's connection: frames go out one at a time, from the command's
    thread and from its helpers (send -v's progress reporter). `cut` (the daemon stops) makes
    every later use fail, so the command ends, and cleans up, instead of waiting."""

    def __init__(self, sock: socket.socket, server, compact: bool = False) -> None:
        self.compact = compact          # answer in marshal's encoding (wire.py)
        self.sock = sock
        self.server = server
        self.lock = threading.Lock()
        self.lost: str | None = None

    def _check(self) -> None:
        if self.lost is None and self.server.stopping:
            self.lost = "the fusezfs service is stopping"
        if self.lost is not None:
            raise OSError(self.lost)

    def send_obj(self, obj: dict) -> None:
        with self.lock:
            self._check()
            try:
                send(self.sock, obj, self.compact)
            except OSError as e:
                self.lost = f"lost the client: {e.strerror or e}"
                raise

    def send_data(self, data) -> None:
        with self.lock:
            self._check()
            try:
                send_bytes(self.sock, data)
            except OSError as e:
                self.lost = f"lost the client: {e.strerror or e}"
                raise

    def recv_data(self) -> bytes:
        """The client's next binary frame (an answer to {"read": n})."""
        self._check()
        try:
            frame = recv_frame(self.sock)
        except (OSError, ValueError, ControlError) as e:
            self.lost = f"lost the client: {e}"
            raise OSError(self.lost) from None
        if not isinstance(frame, bytes):
            self.lost = "lost the client" if frame is None else "unexpected frame from the client"
            raise OSError(self.lost)
        return frame

    def cut(self) -> None:
        self.lost = self.lost or f"the fusezfs daemon serving '{self.server.pool_name}' is stopping"
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class RemoteStdin(io.RawIOBase):
    """The client's stdin: a chunk asked for ahead of the one being consumed (module comment)."""

    def __init__(self, chan: Channel) -> None:
        self.chan = chan
        self.buf = b""
        self.pos = 0
        self.asked = False
        self.eof = False

    def readable(self) -> bool:
        return True

    def _ask(self) -> None:
        self.chan.send_obj({"read": CHUNK})
        self.asked = True

    def read(self, n: int = -1) -> bytes:
        while self.pos >= len(self.buf) and not self.eof:
            if not self.asked:
                self._ask()
            data = self.chan.recv_data()
            self.asked = False
            if not data:
                self.eof = True
                break
            self.buf, self.pos = data, 0
            self._ask()                     # the next chunk comes while this one is used
        if n is None or n < 0:
            n = len(self.buf) - self.pos
        out = self.buf[self.pos:self.pos + n]
        self.pos += len(out)
        return out

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


class RemoteStdout(io.RawIOBase):
    """The client's stdout, for stream bytes: binary frames of at most CHUNK bytes."""

    def __init__(self, chan: Channel) -> None:
        self.chan = chan

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        view = memoryview(b).cast("B")
        for off in range(0, len(view), CHUNK):
            self.chan.send_data(view[off:off + CHUNK])
        return len(view)


class RemoteText(io.TextIOBase):
    """The client's stdout or stderr, for text: each write is a frame, sent at once."""

    def __init__(self, chan: Channel, which: str) -> None:
        self.chan = chan
        self.which = which

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if s:
            self.chan.send_obj({self.which: s})
        return len(s)

    def isatty(self) -> bool:
        return False
