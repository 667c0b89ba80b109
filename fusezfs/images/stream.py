"""An image archive read from a pipe: `docker save IMAGE | fusezfs image import STORE -`.

Theory of operation
-------------------
A tar read from a pipe can only be read forward, once, but the importer asks for the
archive's files by name and in its own order (the index first, then each image's config, then
its layers base first: importer.py over archive.Archive). `StreamArchive` answers those
questions by reading the stream forward until the file asked for comes by ("pulling"):

- the member asked for is handed to the importer straight from the pipe, read as it arrives
  (a layer is applied while it streams in, and never stored anywhere else);
- every member met before it that is still to come is kept: small ones (up to SMALL bytes:
  configs, manifests, the index) in memory, up to MEMORY bytes in all, the others in one
  temporary file (TMPDIR, unlinked at once, so it vanishes with the process), each remembered
  by offset and size, and read back from there when asked for.

So how much is spooled depends only on the order of the tar. An archive whose index and
configs come before the layers, in the order the layers are applied, streams through with
nothing spooled: `fusezfs image export` writes its archives that way (manifest.json first,
configs, then the layers base first), so `fusezfs image export IMG - | fusezfs image import
STORE -` holds no layer anywhere. `docker save` writes manifest.json last (and Docker 25's
blobs/ in digest order): every layer is then spooled to the temporary file before the index
names it, and the import applies them from there, as it would from a file. Memory stays
bounded either way.

Two differences from an archive on disk, both documented for the user: the index is whichever
of manifest.json and index.json comes first in the stream (on disk manifest.json wins when both
exist; Docker 25's archives have both, describing the same images), and a member can be read
once from the pipe: asking again for a member that was streamed (a layer two images share,
listed twice) is answered by the importer from what it verified the first time
(importer.Verified), never by reading again.
"""
from __future__ import annotations

import io
import os
import tarfile
import tempfile
from typing import BinaryIO

from fusezfs.images.archive import Archive, _clean
from fusezfs.images.layertar import LayerError

SMALL = 1 << 20             # members kept in memory when not asked for yet
MEMORY = 64 << 20           # at most this much of them; the rest goes to the spool file
CHUNK = 1 << 20


class _SpoolSlice(io.RawIOBase):
    """One spooled member: a read-only window onto the spool file."""

    def __init__(self, f: BinaryIO, offset: int, size: int) -> None:
        self.f, self.start, self.size, self.pos = f, offset, size, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        n = min(len(buf), self.size - self.pos)
        if n <= 0:
            return 0
        data = os.pread(self.f.fileno(), n, self.start + self.pos)
        buf[:len(data)] = data
        self.pos += len(data)
        return len(data)


class StreamArchive(Archive):
    """An archive read forward from `stream` (see the module comment); `label` names it in
    messages ("-" for standard input)."""

    def __init__(self, stream: BinaryIO, label: str = "-") -> None:
        self.path = label
        self._tar = None
        self._members = {}
        try:
            self._stream = tarfile.open(fileobj=stream, mode="r|", errors="surrogateescape")
        except (OSError, tarfile.TarError) as e:
            raise LayerError(f"cannot read the archive on standard input: {e}") from None
        self._small: dict[str, bytes] = {}
        self._small_bytes = 0
        self._spooled: dict[str, tuple[int, int]] = {}       # name -> (offset, size)
        self._spool: BinaryIO | None = None
        self._links: dict[str, str] = {}                      # hard link -> its target
        self._current: tarfile.TarInfo | None = None          # read up to, not yet taken
        self._taken: set[str] = set()                         # streamed to the importer
        self._ended = False
        self.spooled_bytes = 0                                # (tests, progress)

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None

    # ---- reading forward --------------------------------------------------------------------
    def _keep(self, name: str, m: tarfile.TarInfo) -> None:
        """Keep member `m`, the current one, for later (memory or the spool file)."""
        try:
            self._copy(name, m)
        except (tarfile.TarError, EOFError) as e:
            raise LayerError(f"cannot read '{name}' from standard input: {e}") from None

    def _copy(self, name: str, m: tarfile.TarInfo) -> None:
        f = self._stream.extractfile(m)
        assert f is not None
        if m.size <= SMALL and self._small_bytes + m.size <= MEMORY:
            self._small[name] = f.read()
            self._small_bytes += m.size
            return
        if self._spool is None:
            self._spool = self._new_spool()
        offset = self._spool.seek(0, os.SEEK_END)
        while chunk := f.read(CHUNK):
            self._spool.write(chunk)
        self._spool.flush()
        self._spooled[name] = (offset, m.size)
        self.spooled_bytes += m.size

    def _next(self) -> tarfile.TarInfo | None:
        """The next member of the stream (hard links noted), None at its end."""
        if self._ended:
            return None
        try:
            m = self._stream.next()
        except (OSError, tarfile.TarError, EOFError) as e:
            raise LayerError(f"cannot read the archive on standard input: {e}") from None
        if m is None:
            self._ended = True
        elif m.islnk():
            self._links[_clean(m.name)] = _clean(m.linkname)
        return m

    def _put_current_aside(self) -> None:
        if self._current is not None:
            self._keep(_clean(self._current.name), self._current)
            self._current = None

    @staticmethod
    def _new_spool() -> BinaryIO:
        """The temporary file members wait in (TMPDIR; unlinked at once)."""
        return tempfile.TemporaryFile(prefix="fusezfs-import-")

    def _advance(self, want: str) -> bool:
        """Read forward until member `want` is the current one (True) or the stream ends
        (False), keeping every file passed on the way."""
        if self._current is not None and _clean(self._current.name) == want:
            return True
        self._put_current_aside()
        while (m := self._next()) is not None:
            name = _clean(m.name)
            if m.islnk() and name == want:
                return True
            if m.isfile():
                if name == want:
                    self._current = m
                    return True
                self._keep(name, m)
        return False

    def _resolve(self, name: str) -> str:
        name = _clean(name)
        for _ in range(8):
            if name not in self._links:
                break
            name = self._links[name]
        return name

    def _find(self, name: str) -> str | None:
        """The member's own name, pulled forward to where it can be read; None if absent."""
        want = _clean(name)
        if want in self._small or want in self._spooled or want in self._taken:
            return want
        if want in self._links:
            return self._find(self._links[want])
        if self._current is not None and _clean(self._current.name) == want:
            return want
        if not self._advance(want):
            return None
        return self._find(want) if want in self._links else want

    # ---- Archive's questions -------------------------------------------------------------------
    def exists(self, name: str) -> bool:
        return self._find(name) is not None

    def canonical(self, name: str) -> str:
        return self._resolve(name)

    def size(self, name: str) -> int | None:
        found = self._find(name)
        if found is None:
            return None
        if found in self._small:
            return len(self._small[found])
        if found in self._spooled:
            return self._spooled[found][1]
        if self._current is not None and _clean(self._current.name) == found:
            return self._current.size
        return None

    def open(self, name: str) -> BinaryIO:
        found = self._find(name)
        if found is None:
            raise LayerError(f"the archive on standard input has no file '{name}'")
        if found in self._small:
            return io.BytesIO(self._small[found])
        if found in self._spooled:
            offset, size = self._spooled[found]
            assert self._spool is not None
            return io.BufferedReader(_SpoolSlice(self._spool, offset, size), CHUNK)
        if found in self._taken:
            raise LayerError(f"'{name}' was read from standard input already and cannot be "
                             "read again")
        assert self._current is not None
        f = self._stream.extractfile(self._current)
        assert f is not None
        self._taken.add(found)
        self._current = None        # the caller reads it before asking for anything else
        return f

    def images(self):
        """The index is whichever of manifest.json and index.json comes first (module
        comment): looking for one must not read the whole stream past the other."""
        self._put_current_aside()
        while not (self._known("manifest.json") or self._known("index.json")):
            m = self._next()
            if m is None:
                break
            if m.isfile():
                self._keep(_clean(m.name), m)
        if self._known("manifest.json"):
            return self._docker_images()
        if self._known("index.json"):
            return self._oci_images()
        raise LayerError("the archive on standard input is neither a `docker save` archive "
                         "(no manifest.json) nor an OCI image layout (no index.json)")

    def _known(self, name: str) -> bool:
        return name in self._small or name in self._spooled or name in self._links
