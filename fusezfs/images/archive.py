"""Image archives: `docker save` tarballs and OCI image layouts, as a directory or a tar.

Theory of operation
-------------------
Both formats are a set of files found by path: a directory, or the members of a tar (opened
for random access: a member is read where it lies, nothing is unpacked to disk). `Archive`
hides which, and `images()` reads the index of whichever format it holds:

- `docker save` (manifest.json at the top): a list of {Config, RepoTags, Layers}, each a path.
  Docker up to 24 names the config `<sha256>.json` and layers `<v1 id>/layer.tar`; Docker 25
  and later write an OCI layout beside manifest.json and name blobs `blobs/sha256/<hex>`.
  manifest.json wins when both are there, because it carries the tags.
- An OCI image layout (oci-layout and index.json): the index lists manifests (or nested
  indexes, multi-platform: the one for this machine's architecture is taken, else the first),
  a manifest names its config and layer blobs by digest, `blobs/<alg>/<hex>`.

Every blob is checked against the digest that names it: configs and manifests here, as they
are read (they are small); layers by the importer while it applies them (layertar.LayerStream),
against the blob digest where the format names one and always against the diff id the config
lists. A docker-save `<id>/layer.tar` has no blob digest of its own; its diff id is its digest.

Tags: docker-save RepoTags as written; for OCI, `io.containerd.image.name` or a reference
annotation that is a whole name (has ":" or "/"), made familiar (`docker.io/library/alpine:3`
is `alpine:3`) as Docker shows it. A bare tag annotation ("latest") names no repository, and
Docker loads such an image untagged; so does `image import` (tags can be given with -t).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import tarfile
from dataclasses import dataclass, field
from typing import BinaryIO

from fusezfs.images.layertar import LayerError

HEX64 = re.compile(r"[0-9a-f]{64}")
INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
ARCHES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386",
          "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def familiar(ref: str) -> str:
    """A reference as Docker shows it: no docker.io/ nor library/, and :latest if untagged."""
    for prefix in ("docker.io/library/", "index.docker.io/library/", "docker.io/",
                   "index.docker.io/"):
        if ref.startswith(prefix):
            ref = ref[len(prefix):]
            break
    last = ref.rpartition("/")[2]
    if ":" not in last and "@" not in last:
        ref += ":latest"
    return ref


@dataclass
class LayerSource:
    """One layer blob of an image: where it is, and the digest naming it (None if its path
    is not content-addressed, as docker-save's <id>/layer.tar)."""
    path: str
    digest: str | None
    media_type: str | None = None


@dataclass
class ImageSource:
    config: bytes                       # verified: sha256(config) is the image id
    layers: list[LayerSource]
    tags: list[str] = field(default_factory=list)
    manifest: dict | None = None        # the OCI manifest, or docker save's manifest.json entry

    @property
    def id(self) -> str:
        return sha256(self.config)


class Archive:
    """An image archive opened for reading (a context manager)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._tar: tarfile.TarFile | None = None
        self._members: dict[str, tarfile.TarInfo] = {}
        if os.path.isdir(path):
            return
        try:
            self._tar = tarfile.open(path, mode="r:", errors="surrogateescape")
        except (OSError, tarfile.TarError) as e:
            raise LayerError(f"cannot read '{path}': {getattr(e, 'strerror', None) or e}") from None
        for m in self._tar.getmembers():
            if m.isfile():
                self._members[_clean(m.name)] = m
            elif m.islnk():             # a blob stored twice: the second copy as a hard link
                self._members[_clean(m.name)] = m

    def __enter__(self) -> "Archive":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()

    # ---- files ------------------------------------------------------------------------------
    def exists(self, name: str) -> bool:
        if self._tar is None:
            return os.path.isfile(os.path.join(self.path, name))
        return _clean(name) in self._members

    def open(self, name: str) -> BinaryIO:
        if self._tar is None:
            try:
                return open(os.path.join(self.path, _clean(name)), "rb")
            except OSError as e:
                raise LayerError(f"cannot read '{name}' in '{self.path}': {e.strerror}") from None
        m = self._members.get(_clean(name))
        if m is None:
            raise LayerError(f"'{self.path}' has no file '{name}'")
        if m.islnk():
            m = self._members.get(_clean(m.linkname), m)
        f = self._tar.extractfile(m)
        assert f is not None
        return f

    def size(self, name: str) -> int | None:
        """The size of a file of the archive, None if it cannot be told."""
        try:
            with self.open(name) as f:
                return f.seek(0, os.SEEK_END)
        except (OSError, LayerError):
            return None

    def canonical(self, name: str) -> str:
        """The name a file is stored under (a hard link's target): two names of one blob."""
        m = self._members.get(_clean(name))
        if m is not None and m.islnk():
            return _clean(m.linkname)
        return _clean(name)

    def read(self, name: str, digest: str | None = None, limit: int = 64 << 20) -> bytes:
        """A small file (manifest, config, index), checked against `digest` if given."""
        with self.open(name) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise LayerError(f"'{name}' in '{self.path}' is too large")
        if digest is not None and sha256(data) != digest:
            raise LayerError(f"'{name}' in '{self.path}' does not match its digest {digest} "
                             f"(it has {sha256(data)})")
        return data

    def blob_path(self, digest: str) -> str:
        alg, _, hexd = digest.partition(":")
        if alg != "sha256" or not HEX64.fullmatch(hexd):
            raise LayerError(f"unsupported digest '{digest}' (only sha256)")
        return f"blobs/{alg}/{hexd}"

    # ---- the index ----------------------------------------------------------------------------
    def images(self) -> list[ImageSource]:
        if self.exists("manifest.json"):
            return self._docker_images()
        if self.exists("index.json"):
            return self._oci_images()
        raise LayerError(f"'{self.path}' is neither a `docker save` archive (no manifest.json) "
                         "nor an OCI image layout (no index.json)")

    def _docker_images(self) -> list[ImageSource]:
        entries = _json(self.read("manifest.json"), "manifest.json")
        if not isinstance(entries, list):
            raise LayerError("manifest.json is not a list of images")
        out = []
        for entry in entries:
            cfg_path = entry.get("Config")
            if not isinstance(cfg_path, str):
                raise LayerError("manifest.json: an image without Config")
            out.append(ImageSource(self.read(cfg_path, _path_digest(cfg_path)),
                                   [LayerSource(p, _path_digest(p)) for p in entry.get("Layers") or []],
                                   [familiar(t) for t in entry.get("RepoTags") or []], entry))
        return out

    def _oci_images(self) -> list[ImageSource]:
        index = _json(self.read("index.json"), "index.json")
        out = []
        for desc in index.get("manifests") or []:
            ann = desc.get("annotations") or {}
            manifest = self._manifest_for(desc)
            tags = []
            name = ann.get(CONTAINERD_NAME) or ann.get(REF_NAME)
            if name and (":" in name or "/" in name):
                tags.append(familiar(name))
            cfg = manifest.get("config") or {}
            config = self.read(self.blob_path(cfg.get("digest", "")), cfg.get("digest"))
            layers = [LayerSource(self.blob_path(d["digest"]), d["digest"], d.get("mediaType"))
                      for d in manifest.get("layers") or []]
            out.append(ImageSource(config, layers, tags, manifest))
        return out

    def _manifest_for(self, desc: dict, depth: int = 0) -> dict:
        digest = desc.get("digest", "")
        doc = _json(self.read(self.blob_path(digest), digest), digest)
        mtype = desc.get("mediaType") or doc.get("mediaType")
        if mtype in INDEX_TYPES or ("manifests" in doc and "layers" not in doc):
            if depth > 4:
                raise LayerError("image indexes nested too deep")
            subs = doc.get("manifests") or []
            if not subs:
                raise LayerError(f"image index {digest} lists no manifest")
            arch = ARCHES.get(platform.machine(), platform.machine())
            pick = next((m for m in subs if (m.get("platform") or {}).get("architecture") == arch
                         and (m.get("platform") or {}).get("os", "linux") == "linux"), subs[0])
            return self._manifest_for(pick, depth + 1)
        return doc


def _clean(name: str) -> str:
    return "/".join(p for p in name.split("/") if p and p != ".")


def _path_digest(path: str) -> str | None:
    """The digest a content-addressed path names (blobs/sha256/HEX, HEX.json), else None."""
    base = os.path.basename(path)
    stem = base[:-5] if base.endswith(".json") else base
    if HEX64.fullmatch(stem) and (base != stem or "/sha256/" in "/" + _clean(path)):
        return "sha256:" + stem
    return None


def _json(data: bytes, what: str):
    try:
        return json.loads(data)
    except ValueError as e:
        raise LayerError(f"{what} is not valid JSON: {e}") from None
