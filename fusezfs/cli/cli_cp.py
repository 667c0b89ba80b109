"""`fusezfs cp [-aHLPprRd] SRC... DST`: copy files and trees in and out of datasets, no FUSE.

Either side may be `DATASET[@SNAP]:PATH` (a snapshot is read-only) or a host path, as with
`docker cp` or scp: an operand is a dataset's if it has a colon and does not start with `/`,
`./` or `../`. A dataset that does not exist (or whose pool is not imported) is an error in
zfs's words, never taken for a host file whose name has a colon: that one is written `./a:b`.

Semantics are GNU cp's (cp_walk.py says what that means for links, special files, holes,
attributes and errors); the options are cp's: -r/-R, -p, -a (-rp, no dereference, xattrs and
hard links too), -d, -P, -L, -H. Contents move as data extents (cp_sides.py): holes stay holes.
A volume's operand is `POOL/VOL:` (or `POOL/VOL@SNAP:`): its bytes as one file (volumes.py).
"""
from __future__ import annotations

import os
import stat
import sys

from fusezfs import sessions
from fusezfs.host import registry
from fusezfs.errors import Failed, Usage
from fusezfs.cli.common import error, parse
from fusezfs.cli.cp_sides import DatasetSide, LocalSide
from fusezfs.cli.cp_walk import Copier, quote
from fusezfs.dsl.names import dataset_name_error

USAGE = ("usage: fusezfs cp [-aHLPprRd] SOURCE... DEST\n"
         "  SOURCE and DEST: a local path or DATASET[@SNAPSHOT]:PATH\n"
         "  (a local path with a colon in it: ./a:b)")


def split_spec(spec: str) -> tuple[str | None, str]:
    """'tank/fs@s:/a/b' -> ('tank/fs@s', '/a/b'); a local path -> (None, path). Decided by
    the operand's form alone (the dataset may not exist: opening it says so), so that the
    client routing a command (control.py) and the command agree."""
    if spec.startswith(("/", "./", "../")) or spec in (".", ".."):
        return None, spec
    head, colon, path = spec.partition(":")
    if not colon or not head:
        return None, spec
    return head, path or "/"


def main(args: list[str]) -> int:
    try:
        return _main(args)
    except Usage as e:
        if e.message:
            error(f"cp: {e.message}")
        error(USAGE)
        return 2
    except Failed as e:
        if e.message:
            error(e.message)
        return e.code


def _options(args: list[str]) -> tuple[Copier, list[str]]:
    opts, rest = parse(args, "adHLPprR")
    c = Copier()
    for o, _v in opts:                  # in order: a later -L overrides -a's -P
        if o == "-a":
            c.recursive = c.preserve = c.xattrs = c.links = True
            c.deref = "never"
        elif o in ("-r", "-R"):
            c.recursive = True
        elif o == "-p":
            c.preserve = True
        elif o == "-d":
            c.deref, c.links = "never", True
        else:
            c.deref = {"-L": "always", "-P": "never", "-H": "args"}[o]
    if c.deref is None:
        c.deref = "never" if c.recursive else "always"
    return c, rest


class Sides:
    """The datasets a command names, opened once each (the pool provided by the daemon that
    serves it, else opened here and closed at the end)."""

    def __init__(self) -> None:
        self.handles: dict[str, object] = {}
        self.borrowed: set[str] = set()

    def side(self, ds: str | None):
        """A LocalSide, or the DatasetSide of `ds`; Failed, in zfs's words, if there is none."""
        if ds is None:
            return LocalSide()
        why = dataset_name_error(ds, snapshot=None)
        if why is not None:
            raise Failed(f"cp: cannot open '{ds}': {why}")
        pool = ds.split("/")[0].split("@")[0]
        entry = registry.load().get(pool)
        if entry is None or entry.get("state") == "exported":
            raise Failed(f"cp: cannot open '{ds}': dataset does not exist")
        h = self.handles.get(pool)
        if h is None:
            from fusezfs.api import Handle
            from fusezfs.cli.cli_pool import open_pool
            provided = sessions.handle(pool)    # inside the daemon serving it (sessions.py)
            if provided is not None:
                self.borrowed.add(pool)
            try:
                h = self.handles[pool] = provided or Handle(open_pool(pool))
            except Failed as e:
                raise Failed(f"cp: {e.message}") from None
        from fusezfs.dsl.datasets import DatasetError
        from fusezfs.cli.cp_volumes import VolumeSide
        from fusezfs.zpl.volumes import is_volume
        try:
            with h.pool.lock:
                rec = h.dsl.get(ds)
                if is_volume(h.dsl, rec):       # POOL/VOL: is the volume's bytes
                    return VolumeSide(h, rec, ds)
                fs = h.filesystem(ds)
        except DatasetError as e:
            raise Failed(f"cp: cannot open '{ds}': {e.message}") from None
        return DatasetSide(fs, ds, sessions.credentials())

    def close(self) -> None:
        for pool, h in self.handles.items():
            if pool in self.borrowed:       # the daemon's: commit, leave it open
                with h.pool.lock:
                    h.pool.sync()
            else:
                h.close()


def _open(sides: Sides, ds: str | None, operand: str):
    """sides.side(ds), with a hint when the operand that named no dataset is a local file."""
    try:
        return sides.side(ds)
    except Failed as e:
        if ds is not None and os.path.lexists(operand):
            e.message += f" (the local file is ./{operand})"
        raise


def _main(args: list[str]) -> int:
    copier, rest = _options(args)
    if len(rest) < 2:
        raise Usage(f"missing destination file operand after {quote(rest[0])}" if rest
                    else "missing file operand")
    *sources, dest = rest
    sides = Sides()
    try:
        dds, dpath_s = split_spec(dest)
        dst = _open(sides, dds, dest)
        dpath = os.fsencode(dpath_s)
        try:
            into = stat.S_ISDIR(dst.stat(dpath, follow=True).mode)
        except OSError:
            into = False
        if len(sources) > 1 and not into:
            raise Failed(f"cp: target {quote(dst.label(dpath))} is not a directory")
        for operand in sources:
            sds, spath_s = split_spec(operand)
            try:
                src = _open(sides, sds, operand)
            except Failed as e:
                copier.fail(e.message)
                continue
            spath = os.fsencode(spath_s)
            target = (os.path.join(dpath, os.path.basename(spath.rstrip(b"/")) or b".")
                      if into else dpath)
            if dds is not None:
                sessions.note_changed(dds, target)
            copier.copy_operand(src, spath, dst, target)
        return copier.status
    finally:
        sides.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
