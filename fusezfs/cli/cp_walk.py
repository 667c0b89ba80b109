"""The walk of `fusezfs cp` (cli_cp.py): one `Copier` per command copies each operand between
two sides (cp_sides.py), as GNU cp does it, so that scripts written for cp behave the same.

What it keeps and follows is set by the options: -r makes new FIFOs, sockets and device nodes
and copies symbolic links as links (never opening or following them: a FIFO waits for a writer
when opened), -p keeps modes, owners and times, -a also xattrs and hard links within the copy.
Contents move as data extents, so holes stay holes, and a source that looks sparse has its
runs of zeros turned into holes too (cp's --sparse=auto). Every failure names its file in cp's
words, the walk goes on with the rest, and `status` becomes 1. A directory is never copied into
itself: the walk would never end, each level it makes being inside what it copies.
"""
from __future__ import annotations

import errno
import os
import stat

from fusezfs.cli.common import error
from fusezfs.cli.cp_sides import CHUNK, AttrError, Meta

SPECIAL = (stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK)


def quote(label: str) -> str:
    """A name quoted as cp quotes it in messages."""
    return "'" + label.replace("'", "'\\''") + "'"


class Copier:
    """One cp run's walk: what it preserves and follows, what it made, and its exit status."""

    def __init__(self, recursive: bool = False, deref: str | None = None,
                 preserve: bool = False, xattrs: bool = False, links: bool = False) -> None:
        self.recursive = recursive
        self.deref = deref              # "always", "never", or "args" (-H)
        self.preserve = preserve        # modes, owners, times (-p, -a)
        self.xattrs = xattrs            # -a
        self.links = links              # hard links within the copy (-a, -d)
        self.status = 0
        self.copies: dict[tuple, bytes] = {}    # source identity -> its first copy's path
        self.made: set[tuple] = set()           # identities of the directories made so far

    def fail(self, message: str) -> None:
        error(message)
        self.status = 1

    def copy_operand(self, src, spath: bytes, dst, target: bytes) -> None:
        """Copy one SOURCE operand to `target`, refusing a directory into itself (the walk
        would never end: each level it makes is inside what it copies)."""
        try:
            st = src.stat(spath, follow=self.deref != "never")
        except OSError as e:
            return self.fail(f"cp: cannot stat {quote(src.label(spath))}: {e.strerror}")
        if stat.S_ISDIR(st.mode) and self.recursive:
            try:
                inside = st.ident in dst.chain(target)
            except OSError:
                inside = False
            if inside:
                return self.fail(f"cp: cannot copy a directory, {quote(src.label(spath))}, into "
                                 f"itself, {quote(dst.label(target))}")
        self.copy(src, spath, dst, target, st)

    def copy(self, src, spath: bytes, dst, dpath: bytes, st: Meta) -> None:
        """Copy one file or tree whose `st` is known. Every failure the steps foresee is told
        in cp's words; any other OSError still names the file and ends only its own copy."""
        try:
            self._copy(src, spath, dst, dpath, st)
        except OSError as e:
            self.fail(f"cp: cannot copy {quote(src.label(spath))} to "
                      f"{quote(dst.label(dpath))}: {e.strerror or e}")

    def _copy(self, src, spath: bytes, dst, dpath: bytes, st: Meta) -> None:
        s, d = quote(src.label(spath)), quote(dst.label(dpath))
        try:
            old = dst.stat(dpath)
        except (FileNotFoundError, NotADirectoryError):
            old = None              # (creating it says why it cannot be, if it cannot)
        except OSError as e:
            return self.fail(f"cp: cannot stat {d}: {e.strerror}")
        fmt = stat.S_IFMT(st.mode)
        if fmt == stat.S_IFDIR:
            return self.copy_dir(src, spath, dst, dpath, st, old)
        if old is not None and stat.S_ISDIR(old.mode):
            return self.fail(f"cp: cannot overwrite directory {d} with non-directory")
        if old is not None and old.ident == st.ident:
            return self.fail(f"cp: {s} and {d} are the same file")
        if self.links and st.nlink > 1 and st.ident in self.copies:
            return self.copy_link(dst, self.copies[st.ident], dpath, old)
        made = (self.copy_symlink(src, spath, dst, dpath, old) if fmt == stat.S_IFLNK
                else self.copy_special(dst, dpath, st, old) if fmt in SPECIAL and self.recursive
                else self.copy_file(src, spath, dst, dpath, st))
        if not made:
            return
        if self.links and st.nlink > 1:
            self.copies[st.ident] = dpath
        self.finish(src, spath, dst, dpath, st)

    def copy_dir(self, src, spath: bytes, dst, dpath: bytes, st: Meta, old: Meta | None) -> None:
        s, d = quote(src.label(spath)), quote(dst.label(dpath))
        if not self.recursive:
            return self.fail(f"cp: -r not specified; omitting directory {s}")
        if st.ident in self.made:
            return self.fail(f"cp: cannot copy a directory, {s}, into itself, {d}")
        if old is not None and stat.S_ISLNK(old.mode):
            try:                        # a link to a directory is merged into, as cp does
                old = dst.stat(dpath, follow=True)
            except OSError:
                pass
        if old is not None and not stat.S_ISDIR(old.mode):
            return self.fail(f"cp: cannot overwrite non-directory {d} with directory {s}")
        created = old is None
        if created:
            try:                        # writable by us until its contents are in
                dst.mkdir(dpath, stat.S_IMODE(st.mode) | stat.S_IRWXU)
                self.made.add(dst.stat(dpath).ident)
            except OSError as e:
                return self.fail(f"cp: cannot create directory {d}: {e.strerror}")
        try:
            names = src.listdir(spath)
        except OSError as e:
            self.fail(f"cp: cannot access {s}: {e.strerror}")
            names = []
        for name in names:
            child, target = os.path.join(spath, name), os.path.join(dpath, name)
            try:
                cst = src.stat(child, follow=self.deref == "always")
            except OSError as e:
                self.fail(f"cp: cannot stat {quote(src.label(child))}: {e.strerror}")
                continue
            self.copy(src, child, dst, target, cst)
        self.finish(src, spath, dst, dpath, st)
        if created and not self.preserve:
            try:
                dst.chmod(dpath, _new_mode(st.mode))
            except OSError as e:
                self.fail(f"cp: preserving permissions for {d}: {e.strerror}")

    def _clear(self, dst, dpath: bytes, old: Meta | None) -> bool:
        """Make room for a link or special file: cp -r/-a removes the file it replaces."""
        if old is None:
            return True
        try:
            dst.unlink(dpath)
            return True
        except OSError as e:
            self.fail(f"cp: cannot remove {quote(dst.label(dpath))}: {e.strerror}")
            return False

    def copy_link(self, dst, first: bytes, dpath: bytes, old: Meta | None) -> None:
        if not self._clear(dst, dpath, old):
            return
        try:
            dst.link(first, dpath)
        except OSError as e:
            self.fail(f"cp: cannot create hard link {quote(dst.label(dpath))} to "
                      f"{quote(dst.label(first))}: {e.strerror}")

    def copy_symlink(self, src, spath: bytes, dst, dpath: bytes, old: Meta | None) -> bool:
        try:
            target = src.readlink(spath)
        except OSError as e:
            self.fail(f"cp: cannot read symbolic link {quote(src.label(spath))}: {e.strerror}")
            return False
        if not self._clear(dst, dpath, old):
            return False
        try:
            dst.symlink(target, dpath)
            return True
        except OSError as e:
            self.fail(f"cp: cannot create symbolic link {quote(dst.label(dpath))}: {e.strerror}")
            return False

    def copy_special(self, dst, dpath: bytes, st: Meta, old: Meta | None) -> bool:
        if not self._clear(dst, dpath, old):
            return False
        mode = st.mode if self.preserve else stat.S_IFMT(st.mode) | _new_mode(st.mode)
        try:
            dst.mknod(dpath, mode, st.rdev)
            return True
        except OSError as e:
            what = "fifo" if stat.S_ISFIFO(st.mode) else "special file"
            self.fail(f"cp: cannot create {what} {quote(dst.label(dpath))}: {e.strerror}")
            return False

    def copy_file(self, src, spath: bytes, dst, dpath: bytes, st: Meta) -> bool:
        """The contents: data extents only, zero runs of a sparse source as holes too."""
        s, d = quote(src.label(spath)), quote(dst.label(dpath))
        try:
            reader = src.reader(spath, st.sparse)
        except OSError as e:
            self.fail(f"cp: cannot open {s} for reading: {e.strerror}")
            return False
        try:
            try:
                writer = dst.writer(dpath, _new_mode(st.mode))
            except OSError as e:
                self.fail(f"cp: cannot create regular file {d}: {e.strerror}")
                return False
            try:
                return self._contents(reader, writer, st.sparse, s, d)
            finally:
                writer.close()
        finally:
            reader.close()

    def _contents(self, reader, writer, sparse: bool, s: str, d: str) -> bool:
        """Move the data extents; a read error (the extents' too) names the source, a write
        error the destination."""
        end = 0
        try:
            for start, stop in reader.extents():
                off = start
                while stop is None or off < stop:
                    data = reader.read(off, CHUNK if stop is None else min(CHUNK, stop - off))
                    if not data:
                        break
                    try:
                        _write_sparse(writer, off, data, sparse)
                    except OSError as e:
                        self.fail(f"cp: error writing {d}: {e.strerror}")
                        return False
                    off += len(data)
                end = max(end, off)
        except OSError as e:
            self.fail(f"cp: error reading {s}: {e.strerror}")
            return False
        try:
            writer.finish(max(end, reader.size))
        except OSError as e:
            self.fail(f"cp: error writing {d}: {e.strerror}")
            return False
        return True

    def finish(self, src, spath: bytes, dst, dpath: bytes, st: Meta) -> None:
        """-a: xattrs; -p/-a: owners, mode, times (last: nothing may change them after)."""
        d = quote(dst.label(dpath))
        if self.xattrs:
            try:
                attrs = src.xattrs(spath)
            except OSError:
                attrs = {}
            for name, value in attrs.items():
                try:
                    dst.set_xattr(dpath, name, value)
                except OSError as e:
                    # -a keeps what the destination can hold, as cp -a does: no complaint
                    # when it supports no such attribute or refuses it (security.*, ACLs)
                    if e.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM,
                                       errno.EACCES):
                        self.fail(f"cp: setting attributes for {d}: {e.strerror}")
        if self.preserve:
            try:
                dst.set_attrs(dpath, st, owners=True)
            except AttrError as e:
                self.fail(f"cp: preserving {e.what} for {d}: {e.error.strerror}")


def _new_mode(mode: int) -> int:
    """The mode cp gives a file it makes without -p: the source's less the umask (the POSIX
    layer applies none, and chmod of a directory made writable for the copy neither)."""
    return stat.S_IMODE(mode) & ~_umask()


def _umask() -> int:
    """The process's umask, read without changing it (os.umask sets it, which would race
    with the other threads of a daemon running commands)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _write_sparse(writer, offset: int, data: bytes, sparse: bool) -> None:
    """Write `data` at `offset`; from a sparse source, the blocks (the writer's: a record in a
    dataset, st_blksize on the host) that are all zeros are left out, and stay holes: the
    destination was truncated, so a byte not written reads as zero."""
    if not sparse:
        writer.write(offset, data)
        return
    bs = writer.block
    zeros = bytes(bs)
    mv = memoryview(data)
    pos, end = 0, len(data)
    run = None                          # start of the run of data being gathered
    while pos < end:
        nxt = min(end, (offset + pos) // bs * bs + bs - offset)     # the next block boundary
        zero = mv[pos:nxt] == zeros[:nxt - pos]
        if zero and run is not None:
            writer.write(offset + run, mv[run:pos])
            run = None
        elif not zero and run is None:
            run = pos
        pos = nxt
    if run is not None:
        writer.write(offset + run, mv[run:])
