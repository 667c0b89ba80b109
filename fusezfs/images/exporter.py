"""`image export`: a `docker load`-able tarball, each layer's tar made from its snapshot.

Theory of operation
-------------------
Nothing of the archive an image came from is kept but its config: each layer's tar is made
anew from the difference between the layer's `@layer` snapshot and its parent's (layerdiff.py:
the `zfs diff` walk by birth time, then path by path), deletions written as whiteouts. The tar
is a function of the two trees alone, written deterministically: entries in tar order, PAX
format, owner ids without names, mtimes exact to the nanosecond (a PAX record when not whole
seconds), no atime or ctime, xattrs as `SCHILY.xattr.*` records in name order, whiteouts as
empty files of mode 0 and time 0, hard links to the first path of their file. So exporting the
same layer twice gives the same bytes, and so does exporting a layer imported from such an
export (import -> export -> import -> export: the same digests).

The layer tars are uncompressed, as `docker save` writes them; their digests are the diff ids.
When those differ from the diff ids in the image's config (they do the first time: the tar an
image arrived in is rarely the one fusezfs writes), the config is rewritten with the new ones
(and only that changed), which gives the exported image a new id, as any rebuilt image has.

The archive is Docker 25's `docker save` layout, which is an OCI image layout too: blobs under
blobs/sha256/, index.json and oci-layout, and manifest.json (Config, RepoTags, Layers as paths)
that `docker load` of every version reads. Members come in a fixed order with fixed owners,
modes and times: manifest.json, index.json and oci-layout first, then the configs and manifests,
then the layer tars in the order they are applied (each image's base first), so that an import
reading the archive from a pipe applies each layer as it streams in, with nothing to spool
(stream.py); `docker load` and skopeo read members in any order. Layer tars are spooled to temporary files beside the archive (their size is
needed before their bytes in a tar), and the archive is written under a temporary name and
renamed into place, so a failed export leaves nothing half written.
"""
from __future__ import annotations

import io
import json
import os
import stat
import tarfile
import tempfile
from typing import BinaryIO

from fusezfs.zpl.posix import Posix
from fusezfs.images.archive import sha256
from fusezfs.images.layerdiff import DELETE, Change, changes
from fusezfs.images.layertar import NS, WH_PREFIX, format_ns, set_xattrs, split
from fusezfs.images.store import Image, Store, hexof

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
TAR_OPTS = dict(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")


class HashingWriter:
    """A write-only stream that hashes and counts what passes through it."""

    def __init__(self, out: BinaryIO) -> None:
        import hashlib
        self.out = out
        self.sha = hashlib.sha256()
        self.count = 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.count += len(data)
        self.out.write(data)
        return len(data)

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


class _FileReader(io.RawIOBase):
    """A file of a POSIX view, read as a stream (for tarfile.addfile)."""

    def __init__(self, fs: Posix, ino: int) -> None:
        super().__init__()
        self.fs, self.fh, self.off = fs, fs.open(ino), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        data = self.fs.read(self.fh, self.off, len(buf))
        buf[:len(data)] = data
        self.off += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self.fs.release(self.fh)
        super().close()


def _name(path: bytes) -> str:
    return os.fsdecode(path) if path else "."


def write_layer(chs: list[Change], child: Posix, out: BinaryIO) -> tuple[str, int]:
    """The tar of `chs` (read from `child`) into `out`; returns (diff id, size)."""
    hw = HashingWriter(out)
    emitted: set[bytes] = set()
    with tarfile.open(fileobj=hw, mode="w|", **TAR_OPTS) as tar:   # type: ignore[arg-type]
        for ch in chs:
            if ch.kind == DELETE:
                d, base = split(ch.path)
                ti = tarfile.TarInfo(_name(d + b"/" + WH_PREFIX + base if d else WH_PREFIX + base))
                ti.mode = 0
                tar.addfile(ti)
                continue
            e = ch.entry
            assert e is not None
            ti = tarfile.TarInfo(_name(ch.path))
            ti.uid, ti.gid, ti.uname, ti.gname = e.uid, e.gid, "", ""
            ti.mode = 0o777 if e.kind == stat.S_IFLNK else e.mode
            ti.mtime = e.mtime // NS
            if e.mtime % NS or e.mtime < 0:
                ti.pax_headers["mtime"] = format_ns(e.mtime)
            set_xattrs(ti, dict(e.xattrs))
            data = None
            if e.kind == stat.S_IFDIR:
                ti.type = tarfile.DIRTYPE
            elif e.kind == stat.S_IFREG:
                leader = next((p for p in (e.group or ()) if p in emitted), None)
                if leader is not None:
                    ti.type, ti.linkname = tarfile.LNKTYPE, os.fsdecode(leader)
                else:
                    ti.type, ti.size = tarfile.REGTYPE, e.size
                    data = _FileReader(child, ch.ino)
                    emitted.add(ch.path)
            elif e.kind == stat.S_IFLNK:
                ti.type, ti.linkname = tarfile.SYMTYPE, os.fsdecode(e.target)
            elif e.kind in (stat.S_IFCHR, stat.S_IFBLK):
                ti.type = tarfile.CHRTYPE if e.kind == stat.S_IFCHR else tarfile.BLKTYPE
                ti.devmajor, ti.devminor = os.major(e.rdev), os.minor(e.rdev)
            elif e.kind == stat.S_IFIFO:
                ti.type = tarfile.FIFOTYPE
            else:
                continue                    # a socket: a tar cannot hold one (nor does Docker's)
            try:
                tar.addfile(ti, data)
            finally:
                if data is not None:
                    data.close()
    return hw.digest, hw.count


def layer_changes(store: Store, parent: str | None, child_snap: str) -> tuple[list[Change], Posix]:
    """The changes of snapshot `child_snap` over snapshot `parent` (None: the empty root)."""
    h, dsl = store.h, store.dsl
    child = h.filesystem(child_snap)
    pfs, ptxg = None, 0
    if parent is not None:
        prec = dsl.get(parent)
        pfs, ptxg = h.filesystem_of(prec), prec.createtxg
    return changes(pfs, child, ptxg), child


def full_name(tag: str) -> str:
    """docker.io/library/alpine:3 for alpine:3 (containerd's image name annotation)."""
    first = tag.split("/", 1)[0]
    if "/" not in tag:
        return f"docker.io/library/{tag}"
    if "." in first or ":" in first or first == "localhost":
        return tag
    return f"docker.io/{tag}"


def _dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def export_images(store: Store, images: list[Image], out_path: str,
                  stdout: BinaryIO | None = None, progress=None) -> list[str]:
    """Write `images` to `out_path` ("-": `stdout`); returns the exported image ids."""
    where = os.path.dirname(os.path.abspath(out_path)) if out_path != "-" else None
    spool: dict[str, BinaryIO] = {}         # diff id -> its tar, each layer once
    entries, blobs, ids = [], [], []
    try:
        for image in images:
            diff_ids = []
            parent = None
            for i, layer in enumerate(image.layers, 1):
                snap = store.layer_snap(layer.chain_id)
                chs, child = layer_changes(store, parent, snap)
                tmp = tempfile.TemporaryFile(dir=where)
                diff_id, _size = write_layer(chs, child, tmp)
                if progress is not None:
                    progress(f"{hexof(layer.chain_id)[:12]}: layer {i}/{len(image.layers)} "
                             f"exported, {len(chs)} changes, {_size} bytes")
                if diff_id in spool:
                    tmp.close()
                else:
                    spool[diff_id] = tmp
                diff_ids.append(diff_id)
                parent = snap
            config = store.config(image)
            cfg = json.loads(config)
            if list(cfg["rootfs"]["diff_ids"]) != diff_ids:
                cfg["rootfs"]["diff_ids"] = diff_ids
                config = _dumps(cfg)
            manifest = _dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                               "config": {"mediaType": OCI_CONFIG, "digest": sha256(config),
                                          "size": len(config)},
                               "layers": [{"mediaType": OCI_LAYER, "digest": d,
                                           "size": _length(spool[d])} for d in diff_ids]})
            blobs += [(sha256(config), config), (sha256(manifest), manifest)]
            ids.append(sha256(config))
            entries.append((image, config, manifest, diff_ids))
        _write_archive(entries, blobs, spool, out_path, stdout)
    finally:
        for f in spool.values():
            f.close()
    return ids


def _length(f: BinaryIO) -> int:
    return f.seek(0, os.SEEK_END)


def _write_archive(entries, blobs, spool, out_path: str, stdout) -> None:
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    docker = []
    for image, config, manifest, diff_ids in entries:
        desc = {"mediaType": OCI_MANIFEST, "digest": sha256(manifest), "size": len(manifest)}
        for tag in image.tags or [None]:
            d = dict(desc)
            if tag:
                d["annotations"] = {"io.containerd.image.name": full_name(tag),
                                    "org.opencontainers.image.ref.name": tag.rpartition(":")[2]}
            index["manifests"].append(d)
        docker.append({"Config": f"blobs/sha256/{hexof(sha256(config))}",
                       "RepoTags": list(image.tags),
                       "Layers": [f"blobs/sha256/{hexof(d)}" for d in diff_ids]})
    if out_path == "-":
        _members(stdout, spool, blobs, index, docker)
        return
    fd, tmp = tempfile.mkstemp(prefix=".export-", dir=os.path.dirname(os.path.abspath(out_path)))
    try:
        with os.fdopen(fd, "wb") as f:
            _members(f, spool, blobs, index, docker)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.rename(tmp, out_path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _members(out: BinaryIO, spool, blobs, index, docker) -> None:
    def info(name: str, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = 0, 0, 0, "", ""
        ti.mode = 0o755 if directory else 0o644
        ti.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
        ti.size = size
        return ti

    with tarfile.open(fileobj=out, mode="w|", **TAR_OPTS) as tar:   # type: ignore[arg-type]
        for name, data in (("manifest.json", _dumps(docker)), ("index.json", _dumps(index)),
                           ("oci-layout", _dumps({"imageLayoutVersion": "1.0.0"}))):
            tar.addfile(info(name, len(data)), io.BytesIO(data))
        tar.addfile(info("blobs", directory=True))
        tar.addfile(info("blobs/sha256", directory=True))
        done = set()
        for digest, data in sorted(blobs):
            if digest not in done:
                done.add(digest)
                tar.addfile(info(f"blobs/sha256/{hexof(digest)}", len(data)), io.BytesIO(data))
        applied = [p.rpartition("/")[2] for entry in docker for p in entry["Layers"]]
        for hexd in dict.fromkeys(applied):          # in the order applied, each once
            digest = "sha256:" + hexd
            if digest in done:
                continue
            done.add(digest)
            f = spool[digest]
            size = _length(f)
            f.seek(0)
            tar.addfile(info(f"blobs/sha256/{hexd}", size), f)
