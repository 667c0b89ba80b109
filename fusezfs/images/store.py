"""Where images, layers and containers live in a pool: an image store.

Theory of operation
-------------------
A store is one filesystem, STORE (say tank/images), laid out as Docker's ZFS driver lays out
its graph (`zpool/docker/<id>`), with layers named by chain id:

    STORE                              the graph directory: containers mount below it
    STORE/<chain id hex>               one image layer: a filesystem for the first layer of a
                                       chain, else a clone of the layer below's snapshot
    STORE/<chain id hex>@layer         the finished layer (made after its tar was applied)
    STORE/<container id>-init          a container's init layer: a clone of its image's top
                                       layer with the files Docker's initlayer adds
    STORE/<container id>-init@layer
    STORE/<container id>               the container's root filesystem: a clone of -init@layer
    STORE/meta                         the store's metadata filesystem (canmount=noauto)

Naming layers by chain id (sha256 of the parent's chain id, a space, and the layer's diff id;
the first layer's chain id is its diff id) is what shares them: a layer is the same layer only
if everything below it is the same, and importing a second image on the same base finds the
base's datasets by name and builds only its own layers above them.

A layer is finished when its `@layer` snapshot exists: the snapshot is taken after the tar is
applied and verified, so a dataset without it is the debris of an interrupted import and is
destroyed and built again by the next one.

Mounting, as Docker's ZFS driver lays it out: every layer and init layer has
mountpoint=legacy (and canmount=noauto), as the driver gives every dataset it makes, so
nothing mounts them by their mountpoint; a container's dataset is the one mounted with the
pool (canmount=on), at `<graph directory>/<container id>`. The graph directory is the store's
`fusezfs:image.graph` property (`image import -g DIR`, or `zfs set fusezfs:image.graph=DIR
STORE`), e.g. Docker's /var/lib/docker/zfs/graph, anywhere outside the pool's tree: a
container made while it is set gets mountpoint=DIR/<id> of its own (where the driver mounts it
by hand, a host that mounts every dataset at its mountpoint puts it), and "legacy" gives
containers mountpoint=legacy as Docker's driver does (mounted only when asked for, by path).
Unset, a container inherits its mountpoint from STORE: the graph directory is STORE's
mountpoint, by default under the pool's (`image import -m` sets it). A container keeps the
mountpoint it was made with when the graph directory changes later (`zfs set mountpoint`
moves it, as any dataset).

Records are kept where `zfs` shows them and where they travel with the datasets:

- user properties on each layer dataset: `fusezfs:image.layer` (its chain id),
  `fusezfs:image.diff-id`, `fusezfs:image.parent` (the chain id below, "-" for a base) and
  `fusezfs:image.size` (bytes of its uncompressed tar); on each container dataset
  `fusezfs:container.name` and `fusezfs:container.image`; on STORE `fusezfs:image.store=on`;
- files in STORE/meta, written whole and renamed into place (one POSIX rename: a txg holds the
  old file or the new one, never half of one):
      images/<id hex>/config.json   the image config, byte for byte (its sha256 is the id)
      images/<id hex>/image.json    layers (diff id, chain id, size), when and from what
                                    archive it was imported, the archive's manifest
      tags.json                     {"repo:tag": "sha256:<id>"}
      containers/<name>.json        {name, id, image, created, top layer's chain id}
The image record is written last, after every layer is finished: an image is listed only once
it is whole.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import time
from dataclasses import asdict, dataclass, field

from fusezfs.dsl import dsprops, properties
from fusezfs.api import Handle
from fusezfs.dsl.datasets import DatasetError, Record
from fusezfs.zpl.posix import Posix

LAYER_SNAP = "layer"
META = "meta"
P_STORE = "fusezfs:image.store"
P_LAYER = "fusezfs:image.layer"
P_DIFF = "fusezfs:image.diff-id"
P_PARENT = "fusezfs:image.parent"
P_SIZE = "fusezfs:image.size"
P_CNAME = "fusezfs:container.name"
P_CIMAGE = "fusezfs:container.image"
P_GRAPH = "fusezfs:image.graph"
LEGACY = {"mountpoint": "legacy", "canmount": "noauto"}     # layers: never mounted by path


class StoreError(Exception):
    """A store operation that failed; the message is for the user."""


def chain_id(parent: str | None, diff_id: str) -> str:
    if parent is None:
        return diff_id
    return "sha256:" + hashlib.sha256(f"{parent} {diff_id}".encode()).hexdigest()


def hexof(digest: str) -> str:
    return digest.partition(":")[2] or digest


def short(digest: str) -> str:
    return hexof(digest)[:12]


@dataclass
class LayerRef:
    diff_id: str
    chain_id: str
    size: int


@dataclass
class Image:
    """An image's record (image.json), its tags from tags.json."""
    id: str
    layers: list[LayerRef]
    created: str = ""
    loaded: int = 0
    source: dict = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)

    @property
    def top(self) -> str:
        return self.layers[-1].chain_id

    def encode(self) -> dict:
        d = asdict(self)
        d.pop("tags")
        return d

    @classmethod
    def decode(cls, d: dict) -> "Image":
        d = dict(d)
        d["layers"] = [LayerRef(**x) for x in d.get("layers", [])]
        d.pop("tags", None)
        return cls(**d)


@dataclass
class Container:
    name: str
    id: str
    image: str
    created: int
    top: str = ""               # chain id of the image layer it stands on


class Store:
    """An open image store over a pool's Handle (caller holds the pool lock)."""

    def __init__(self, h: Handle, name: str, *, create: bool = False,
                 mountpoint: str | None = None, graph: str | None = None) -> None:
        self.h = h
        self.dsl = h.dsl
        self.name = name
        rec = self.dsl.lookup(name)
        meta = self.dsl.lookup(f"{name}/{META}")
        if meta is None:
            if not create:
                raise StoreError(f"cannot open '{name}': "
                                 + ("not an image store" if rec else "dataset does not exist"))
            props = {P_STORE: "on"}
            if mountpoint:
                props["mountpoint"] = mountpoint
            try:
                if rec is None:
                    rec = self.dsl.create(name, self._props(props), parents=True)
                else:
                    properties.set_props(self.dsl, rec, dsprops.validate_props(props))
                self.dsl.create(f"{name}/{META}", self._props({"canmount": "noauto"}))
            except (DatasetError, dsprops.PropError) as e:
                raise StoreError(f"cannot create image store '{name}': {e.message}") from None
        if rec is None or rec.kind != "filesystem":
            raise StoreError(f"cannot open '{name}': not a filesystem")
        if graph is not None:
            self.set_graph(graph)
        self.meta: Posix = h.filesystem(f"{name}/{META}")

    @staticmethod
    def _props(props: dict[str, str]) -> dict:
        return dsprops.validate_props(props, creating=True)

    # ---- the graph directory ------------------------------------------------------------------
    def set_graph(self, graph: str) -> None:
        """Where containers made from now on are mounted (module comment): an absolute
        directory, "legacy", or "" for STORE's own mountpoint."""
        if graph not in ("", "legacy") and not graph.startswith("/"):
            raise StoreError(f"bad graph directory '{graph}': must be an absolute path, "
                             "'legacy' or empty")
        rec = self.dsl.get(self.name)
        try:
            if graph:
                properties.set_props(self.dsl, rec, dsprops.validate_props({P_GRAPH: graph}))
            else:
                properties.inherit(self.dsl, rec, P_GRAPH)
        except (DatasetError, dsprops.PropError) as e:
            raise StoreError(f"cannot set the graph directory of '{self.name}': "
                             f"{e.message}") from None

    def container_props(self, container_id: str) -> dict[str, str]:
        """mountpoint and canmount of a new container's dataset (module comment)."""
        rec = self.dsl.get(self.name)
        graph = rec.props.get(P_GRAPH, "")
        if graph == "legacy":
            return {"mountpoint": "legacy", "canmount": "on"}
        if graph:
            return {"mountpoint": os.path.join(graph, container_id), "canmount": "on"}
        return {"canmount": "on"}

    # ---- names ------------------------------------------------------------------------------
    def layer_name(self, chain: str) -> str:
        return f"{self.name}/{hexof(chain)}"

    def layer_snap(self, chain: str) -> str:
        return f"{self.layer_name(chain)}@{LAYER_SNAP}"

    def layer_done(self, chain: str) -> bool:
        return self.dsl.lookup(self.layer_snap(chain)) is not None

    def layer_props(self, chain: str) -> dict:
        rec = self.dsl.lookup(self.layer_name(chain))
        return dict(rec.props) if rec is not None else {}

    # ---- the metadata filesystem ------------------------------------------------------------------
    def read_json(self, path: str, default=None):
        try:
            return json.loads(self.meta.read_file(path))
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                return default
            raise

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write `path` whole and rename it into place (see the module comment)."""
        d, _, base = path.rpartition("/")
        self.meta.makedirs(d or "/", 0o755)
        tmp = f"{d}/.{base}.tmp"
        self.meta.write_file(tmp, data, 0o644)
        pdir, tname = self.meta.parent_of(tmp)
        self.meta.rename(pdir, tname, pdir, base.encode())

    def write_json(self, path: str, obj) -> None:
        self.write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode() + b"\n")

    def remove(self, path: str) -> None:
        """rm -rf in the metadata filesystem."""
        try:
            st = self.meta.stat(path, follow=False)
        except OSError:
            return
        parent, name = self.meta.parent_of(path)
        if stat.S_ISDIR(st.st_mode):
            for child in self.meta.listdir(path):
                self.remove(f"{path}/{os.fsdecode(child)}")
            self.meta.rmdir(parent, name)
        else:
            self.meta.unlink(parent, name)

    # ---- images -----------------------------------------------------------------------------
    def tags(self) -> dict[str, str]:
        return self.read_json("/tags.json", {})

    def images(self) -> list[Image]:
        try:
            names = self.meta.listdir("/images")
        except OSError:
            return []
        tags = self.tags()
        out = []
        for n in sorted(names):
            raw = self.read_json(f"/images/{os.fsdecode(n)}/image.json")
            if raw is None:
                continue                    # an import that never finished
            img = Image.decode(raw)
            img.tags = sorted(t for t, i in tags.items() if i == img.id)
            out.append(img)
        return out

    def config(self, image: Image) -> bytes:
        return self.meta.read_file(f"/images/{hexof(image.id)}/config.json")

    def find(self, ref: str) -> Image:
        """An image by tag (`alpine` means alpine:latest), id, or unique id prefix."""
        from fusezfs.images.archive import familiar
        images = self.images()
        tags = self.tags()
        key = tags.get(ref) or (tags.get(familiar(ref)) if "@" not in ref else None)
        if key is not None:
            return next(i for i in images if i.id == key)
        want = ref[len("sha256:"):] if ref.startswith("sha256:") else ref
        found = [i for i in images if want and hexof(i.id).startswith(want.lower())]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise StoreError(f"image '{ref}' is ambiguous in '{self.name}'")
        raise StoreError(f"no such image: {ref}")

    def save_image(self, image: Image, config: bytes, tags: list[str]) -> None:
        d = f"/images/{hexof(image.id)}"
        self.write_bytes(f"{d}/config.json", config)
        self.write_json(f"{d}/image.json", image.encode())
        if tags:
            self.set_tags(tags, image.id)

    def set_tags(self, tags: list[str], image_id: str | None) -> None:
        """Point `tags` at `image_id` (None: untag them)."""
        current = self.tags()
        for t in tags:
            if image_id is None:
                current.pop(t, None)
            else:
                current[t] = image_id
        self.write_json("/tags.json", current)

    def delete_image(self, image: Image) -> None:
        self.set_tags([t for t, i in self.tags().items() if i == image.id], None)
        self.remove(f"/images/{hexof(image.id)}")

    # ---- containers -------------------------------------------------------------------------
    def containers(self) -> list[Container]:
        try:
            names = self.meta.listdir("/containers")
        except OSError:
            return []
        out = []
        for n in sorted(names):
            if n.endswith(b".json") and not n.startswith(b"."):
                raw = self.read_json(f"/containers/{os.fsdecode(n)}")
                if raw is not None:
                    out.append(Container(**raw))
        return out

    def container(self, name: str) -> Container | None:
        if not name or "/" in name or name.startswith("."):
            return None
        raw = self.read_json(f"/containers/{name}.json")
        return Container(**raw) if raw is not None else None

    def save_container(self, c: Container) -> None:
        self.write_json(f"/containers/{c.name}.json", asdict(c))

    def delete_container(self, c: Container) -> None:
        self.remove(f"/containers/{c.name}.json")

    # ---- space ------------------------------------------------------------------------------
    def used(self, name: str) -> int:
        rec = self.dsl.lookup(name)
        return self.dsl.used(rec) if rec is not None else 0

    def referenced(self, name: str) -> int:
        rec = self.dsl.lookup(name)
        return rec.refer if rec is not None else 0

    def dataset(self, name: str) -> Record | None:
        return self.dsl.lookup(name)

    def now(self) -> int:
        return int(time.time())
