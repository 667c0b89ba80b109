"""Test kit for the image tests: layer tars the tests describe entry by entry, archives in both
formats (`docker save` and OCI layouts, directory or tar), a reference applier, and a dump of
a filesystem's tree in the same shape as the reference's.

The reference applier is written from the OCI image spec's changeset rules and the rules
fusezfs's applier documents (docs/DESIGN.md, "Container images"), over plain Python objects
and independently of fusezfs/images: a tree is a dict of paths, files are objects (two paths
holding the same object are hard links), a directory's mtime changes only when an entry of a
layer sets it. Nothing here imports fusezfs.images.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
from dataclasses import dataclass, field

import zstandard

NS = 10**9


# ---- describing layers ---------------------------------------------------------------------
@dataclass
class E:
    """One tar entry. kind: dir, file, symlink, link (hard), chr, blk, fifo."""
    path: str
    kind: str = "file"
    data: bytes = b""
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    mtime: int = 1_700_000_000 * NS       # nanoseconds
    target: str = ""                      # symlink target, hard link's path
    major: int = 0
    minor: int = 0
    xattrs: dict = field(default_factory=dict)


def D(path, **kw) -> E:
    return E(path, "dir", **kw)


def F(path, data=b"", **kw) -> E:
    return E(path, "file", data, **kw)


def S(path, target, **kw) -> E:
    return E(path, "symlink", target=target, **kw)


def L(path, target, **kw) -> E:
    return E(path, "link", target=target, **kw)


def WH(path) -> E:
    head, _, base = path.rpartition("/")
    return E((head + "/" if head else "") + ".wh." + base, "file", mode=0o644)


def OPQ(dirpath) -> E:
    return E(dirpath.rstrip("/") + "/.wh..wh..opq", "file", mode=0o644)


TYPES = {"dir": tarfile.DIRTYPE, "file": tarfile.REGTYPE, "symlink": tarfile.SYMTYPE,
         "link": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE,
         "fifo": tarfile.FIFOTYPE}
DEFAULT_MODES = {"dir": 0o755, "symlink": 0o777}


def layer_tar(entries: list[E]) -> bytes:
    """An uncompressed PAX tar of the entries, times to the nanosecond as PAX records."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for e in entries:
            ti = tarfile.TarInfo(e.path)
            ti.type = TYPES[e.kind]
            ti.mode = e.mode if e.mode is not None else DEFAULT_MODES.get(e.kind, 0o644)
            ti.uid, ti.gid = e.uid, e.gid
            ti.mtime = e.mtime // NS
            if e.mtime % NS:
                ti.pax_headers["mtime"] = f"{e.mtime // NS}.{e.mtime % NS:09d}"
            for k, v in e.xattrs.items():
                ti.pax_headers["SCHILY.xattr." + k] = v.decode("utf-8", "surrogateescape")
            if e.kind in ("symlink", "link"):
                ti.linkname = e.target
            if e.kind in ("chr", "blk"):
                ti.devmajor, ti.devminor = e.major, e.minor
            data = None
            if e.kind == "file":
                ti.size = len(e.data)
                data = io.BytesIO(e.data)
            t.addfile(ti, data)
    return buf.getvalue()


def compress(data: bytes, how: str | None) -> bytes:
    if how == "gzip":
        return gzip.compress(data, mtime=0)
    if how == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def config_for(tars: list[bytes], created: str = "2024-01-01T00:00:00Z") -> bytes:
    return json.dumps({"architecture": "amd64", "os": "linux", "created": created,
                       "config": {"Cmd": ["/bin/sh"]},
                       "rootfs": {"type": "layers", "diff_ids": [sha(t) for t in tars]},
                       "history": [{"created_by": f"layer {i}"} for i in range(len(tars))]}
                      ).encode()


# ---- archives ------------------------------------------------------------------------------
def _add(t: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    t.addfile(ti, io.BytesIO(data))


def docker_save(path: str, images: list[tuple[list[bytes], list[str]]]) -> None:
    """A `docker save` tarball of Docker up to 24: <id>.json configs, <v1 id>/layer.tar."""
    with tarfile.open(path, "w") as t:
        manifest, written = [], set()
        for tars, tags in images:
            cfg = config_for(tars)
            _add(t, sha(cfg)[7:] + ".json", cfg)
            paths = []
            for tar in tars:
                v1 = hashlib.sha256(b"v1" + tar).hexdigest()
                if v1 not in written:
                    written.add(v1)
                    _add(t, f"{v1}/VERSION", b"1.0")
                    _add(t, f"{v1}/layer.tar", tar)
                paths.append(f"{v1}/layer.tar")
            manifest.append({"Config": sha(cfg)[7:] + ".json", "RepoTags": tags, "Layers": paths})
        _add(t, "manifest.json", json.dumps(manifest).encode())


def oci_files(images: list[tuple[list[bytes], list[str]]], compression: str | None = None
              ) -> dict[str, bytes]:
    """The files of an OCI image layout holding the images (layers compressed as asked)."""
    files: dict[str, bytes] = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}'}
    index = {"schemaVersion": 2, "manifests": []}
    mt = "application/vnd.oci.image.layer.v1.tar" + (f"+{compression}" if compression else "")
    for tars, tags in images:
        cfg = config_for(tars)
        files["blobs/sha256/" + sha(cfg)[7:]] = cfg
        layers = []
        for tar in tars:
            blob = compress(tar, compression)
            files["blobs/sha256/" + sha(blob)[7:]] = blob
            layers.append({"mediaType": mt, "digest": sha(blob), "size": len(blob)})
        man = json.dumps({"schemaVersion": 2,
                          "mediaType": "application/vnd.oci.image.manifest.v1+json",
                          "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                     "digest": sha(cfg), "size": len(cfg)},
                          "layers": layers}).encode()
        files["blobs/sha256/" + sha(man)[7:]] = man
        for tag in tags or [None]:
            d = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(man),
                 "size": len(man)}
            if tag:
                d["annotations"] = {"org.opencontainers.image.ref.name": tag}
            index["manifests"].append(d)
    files["index.json"] = json.dumps(index).encode()
    return files


def write_layout(files: dict[str, bytes], path: str, as_tar: bool) -> None:
    if as_tar:
        with tarfile.open(path, "w") as t:
            for name in sorted(files):
                _add(t, name, files[name])
        return
    for name, data in files.items():
        p = os.path.join(path, name)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)


# ---- the reference applier ----------------------------------------------------------------
class Obj:
    """A file system object of the reference tree (files shared by hard links)."""

    def __init__(self, kind, mode, uid, gid, mtime, data=b"", target=b"", rdev=0, xattrs=None):
        self.kind, self.mode, self.uid, self.gid, self.mtime = kind, mode, uid, gid, mtime
        self.data, self.target, self.rdev = data, target, rdev
        self.xattrs = dict(xattrs or {})


class RefTree:
    """A tree as the layers describe it: path (bytes, "" the root) -> Obj."""

    def __init__(self) -> None:
        self.t: dict[bytes, Obj] = {b"": Obj("dir", 0o755, 0, 0, 0)}

    def copy(self) -> "RefTree":
        r = RefTree()
        objs: dict[int, Obj] = {}
        for p, o in self.t.items():
            if id(o) not in objs:
                objs[id(o)] = Obj(o.kind, o.mode, o.uid, o.gid, o.mtime, o.data, o.target,
                                  o.rdev, o.xattrs)
            r.t[p] = objs[id(o)]
        return r

    # -- paths --
    @staticmethod
    def clean(name: str) -> bytes:
        return b"/".join(p for p in os.fsencode(name).split(b"/") if p and p != b".")

    def real(self, path: bytes, depth: int = 0) -> bytes:
        """`path` with symlinks in its directory part resolved (inside the root)."""
        if depth > 40:
            raise OSError("loop")
        parts = [p for p in path.split(b"/") if p]
        out: list[bytes] = []
        for i, part in enumerate(parts):
            cur = b"/".join(out + [part])
            o = self.t.get(cur)
            if o is not None and o.kind == "symlink" and i < len(parts) - 1:
                base = [] if o.target.startswith(b"/") else out
                resolved = self.real(b"/".join(base + [o.target.lstrip(b"/")]) + b"/x",
                                     depth + 1)
                out = [p for p in resolved.split(b"/")[:-1] if p]
                continue
            if part == b"..":
                out = out[:-1]
            elif part != b".":
                out.append(part)
        return b"/".join(out)

    def remove(self, path: bytes) -> None:
        for p in [p for p in self.t if p == path or p.startswith(path + b"/")]:
            del self.t[p]

    def ensure_dirs(self, path: bytes, mtime: int) -> None:
        parts = path.split(b"/") if path else []
        for i in range(1, len(parts) + 1):
            p = self.real(b"/".join(parts[:i]))
            if p not in self.t:
                self.t[p] = Obj("dir", 0o755, 0, 0, mtime)

    # -- a layer --
    def apply(self, tar_bytes: bytes) -> None:
        written: set[bytes] = set()
        opaque: list[bytes] = []
        dir_times: list[tuple[bytes, int]] = []
        with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:*") as t:
            for ti in t:
                path = self.clean(ti.name)
                head, _, base = path.rpartition(b"/")
                mtime = _mtime(ti)
                if path.split(b"/")[0].startswith(b".wh..wh.") and not \
                        path.split(b"/")[0] == b".wh..wh..opq":
                    continue
                if base == b".wh..wh..opq":
                    self.ensure_dirs(head, mtime)
                    opaque.append(self.real(head + b"/x")[:-2] if head else b"")
                    continue
                if base.startswith(b".wh."):
                    victim = (head + b"/" if head else b"") + base[4:]
                    if victim not in written:
                        self.remove(self.real(victim))
                    continue
                written.add(path)
                xattrs = {k[13:].encode("utf-8", "surrogateescape"):
                          v.encode("utf-8", "surrogateescape")
                          for k, v in ti.pax_headers.items() if k.startswith("SCHILY.xattr.")}
                if path == b"":
                    root = self.t[b""]
                    root.mode, root.uid, root.gid, root.xattrs = ti.mode & 0o7777, ti.uid, \
                        ti.gid, xattrs
                    dir_times.append((b"", mtime))
                    continue
                self.ensure_dirs(head, mtime)
                real = self.real(path)
                old = self.t.get(real)
                if old is not None and old.kind == "dir" and ti.isdir():
                    old.mode, old.uid, old.gid, old.xattrs = ti.mode & 0o7777, ti.uid, ti.gid, \
                        xattrs
                    dir_times.append((real, mtime))
                    continue
                if old is not None:
                    self.remove(real)
                if ti.islnk():
                    self.t[real] = self.t[self.real(self.clean(ti.linkname))]
                    continue
                kind = ("dir" if ti.isdir() else "symlink" if ti.issym() else "chr" if ti.ischr()
                        else "blk" if ti.isblk() else "fifo" if ti.isfifo() else "file")
                data = t.extractfile(ti).read() if kind == "file" else b""
                rdev = os.makedev(ti.devmajor, ti.devminor) if kind in ("chr", "blk") else 0
                self.t[real] = Obj(kind, 0o777 if kind == "symlink" else ti.mode & 0o7777,
                                   ti.uid, ti.gid, mtime, data,
                                   os.fsencode(ti.linkname) if kind == "symlink" else b"",
                                   rdev, xattrs)
                if kind == "dir":
                    dir_times.append((real, mtime))
        for d in opaque:
            below = [p for p in self.t if p != d and (not d or p.startswith(d + b"/"))]
            for p in below:
                if p in written or any(w.startswith(p + b"/") for w in written):
                    continue
                self.remove(p)
        for p, m in dir_times:
            if p in self.t:
                self.t[p].mtime = m

    def dump(self) -> tuple[dict, set]:
        """(path -> description, hard link groups) in the shape `dump_fs` gives."""
        out, groups = {}, {}
        for p, o in self.t.items():
            out[p] = (o.kind, o.mode, o.uid, o.gid, o.mtime, o.data if o.kind == "file" else None,
                      o.target, o.rdev, tuple(sorted(o.xattrs.items())))
            if o.kind == "file":
                groups.setdefault(id(o), set()).add(p)
        return out, {frozenset(g) for g in groups.values() if len(g) > 1}


def _mtime(ti: tarfile.TarInfo) -> int:
    raw = ti.pax_headers.get("mtime")
    if raw is None:
        return int(ti.mtime) * NS
    whole, _, frac = raw.partition(".")
    return int(whole) * NS + int((frac + "000000000")[:9])


KINDS = {stat.S_IFDIR: "dir", stat.S_IFREG: "file", stat.S_IFLNK: "symlink",
         stat.S_IFCHR: "chr", stat.S_IFBLK: "blk", stat.S_IFIFO: "fifo"}


def dump_fs(fs) -> tuple[dict, set]:
    """A fusezfs filesystem's tree (a Posix view), as RefTree.dump describes trees."""
    out, groups = {}, {}
    stack = [(b"", 1)]
    while stack:
        path, ino = stack.pop()
        a = fs.getattr(ino)
        kind = KINDS[stat.S_IFMT(a.st_mode)]
        data = None
        if kind == "file":
            fh = fs.open(ino)
            data = fs.read(fh, 0, a.st_size + 1)
            fs.release(fh)
            groups.setdefault(ino, set()).add(path)
        xattrs = tuple(sorted((n, fs.getxattr(ino, n)) for n in fs.listxattr(ino)))
        out[path] = (kind, stat.S_IMODE(a.st_mode), a.st_uid, a.st_gid, a.st_mtime_ns, data,
                     fs.readlink(ino) if kind == "symlink" else b"",
                     a.st_rdev if kind in ("chr", "blk") else 0, xattrs)
        if kind == "dir":
            for e in fs.readdir(ino, 2):
                stack.append(((path + b"/" if path else b"") + e.name, e.ino))
    return out, {frozenset(g) for g in groups.values() if len(g) > 1}


def diff_trees(got: tuple[dict, set], want: tuple[dict, set]) -> list[str]:
    """Human-readable differences (empty when equal)."""
    g, w = got[0], want[0]
    out = [f"missing {p!r}" for p in sorted(set(w) - set(g))]
    out += [f"unexpected {p!r}" for p in sorted(set(g) - set(w))]
    out += [f"{p!r}: got {g[p]!r:.300} want {w[p]!r:.300}" for p in sorted(set(g) & set(w))
            if g[p] != w[p]]
    if got[1] != want[1]:
        out.append(f"hard links: got {sorted(map(sorted, got[1]))} want "
                   f"{sorted(map(sorted, want[1]))}")
    return out
