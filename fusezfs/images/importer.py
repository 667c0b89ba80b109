"""`image import`: an archive's images become clone chains in a store.

Theory of operation
-------------------
For each image of the archive (archive.py), the config's rootfs.diff_ids give the chain ids of
its layers (store.chain_id). Walking up from the base: a layer whose `@layer` snapshot exists
is shared, already built by another image (its blob is still read and checked against its
digest, so that every blob of the archive is verified, but nothing is written); otherwise the
layer is built: a filesystem for the base, else a clone of the layer below's snapshot; its tar
is applied through the POSIX layer (applier.py) while the blob's digest and the diff id are
computed from the very bytes applied; if either differs from what the archive says, or the
tar cannot be applied, the new dataset is destroyed and the import fails. Then the layer's
properties are set and its `@layer` snapshot taken: the snapshot is the mark of a finished
layer (store.py), so an import cut short by a crash or a kill leaves nothing that a later
import would mistake for a layer; it finds the unfinished dataset and builds it again.

Only then is the image record written (config and image.json, then tags): an image is listed
once all its layers are there. Progress goes to the command's stderr, per layer, redrawn in
place on a terminal (bytes of the blob read so far, of how many).
"""
from __future__ import annotations

import json
import os
import time
from typing import BinaryIO, Callable, TextIO

from fusezfs.dsl import properties
from fusezfs.dsl.datasets import DatasetError
from fusezfs.zpl.posix import ROOT_INO
from fusezfs.images.applier import Applier
from fusezfs.images.archive import Archive, ImageSource, LayerSource
from fusezfs.images.layertar import HashingReader, LayerError, LayerStream
from fusezfs.images.store import (
    LEGACY,
    P_DIFF,
    P_LAYER,
    P_PARENT,
    P_SIZE,
    Image,
    LayerRef,
    Store,
    chain_id,
    short,
)


def _nice(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.3g}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1000
    return f"{n}"


class Progress:
    """Per-layer progress on a text stream (stderr): one line per layer, or redrawn in place
    on a terminal at most five times a second."""

    def __init__(self, out: TextIO | None, tty: bool = False) -> None:
        self.out = out
        self.tty = tty
        self._last = 0.0
        self._line = ""

    def start(self, index: int, count: int, digest: str, size: int | None) -> None:
        self._head = f"{short(digest)}: layer {index}/{count}"
        self._size = size
        self._t0 = time.monotonic()
        self.update(0)

    def update(self, done: int) -> None:
        if not self.tty or self.out is None:
            return
        now = time.monotonic()
        if now - self._last < 0.2 and done:
            return
        self._last = now
        total = f"/{_nice(self._size)}" if self._size else ""
        self._line = f"{self._head} {_nice(done)}{total}"
        self.out.write("\r" + self._line + "\x1b[K")
        self.out.flush()

    def done(self, what: str) -> None:
        if self.out is None:
            return
        took = time.monotonic() - self._t0
        line = f"{self._head} {what} ({took:.3f}s)"
        self.out.write(("\r" + line + "\x1b[K\n") if self.tty else line + "\n")
        self.out.flush()


def import_archive(store: Store, path: str, tags: list[str] | None = None,
                   progress: Progress | None = None,
                   stream: BinaryIO | None = None) -> list[tuple[Image, list[str]]]:
    """Import every image of the archive at `path` (or read from `stream`: stream.py);
    returns (image, its tags) for each."""
    progress = progress or Progress(None)
    out = []
    if stream is not None:
        from fusezfs.images.stream import StreamArchive
        opened: Archive = StreamArchive(stream, path)
    else:
        opened = Archive(path)
    verified: Verified = {}
    with opened as archive:
        sources = archive.images()
        if tags and len(sources) != 1:
            raise LayerError(f"'{path}' holds {len(sources)} images: -t names one")
        for src in sources:
            image = import_image(store, archive, src, progress, verified)
            names = list(dict.fromkeys(src.tags + list(tags or [])))
            if names:
                store.set_tags(names, image.id)
            out.append((image, names))
    return out


# blobs of this archive read and checked already: name -> (blob digest, diff id) (an archive
# read from a pipe cannot give a blob twice: a layer two images share is checked once)
Verified = dict[str, tuple[str, str]]


def import_image(store: Store, archive: Archive, src: ImageSource,
                 progress: Progress, verified: Verified | None = None) -> Image:
    try:
        config = json.loads(src.config)
        diff_ids = list(config["rootfs"]["diff_ids"])
    except (ValueError, KeyError, TypeError):
        raise LayerError(f"image {src.id}: its config has no rootfs.diff_ids") from None
    if not src.layers:
        raise LayerError(f"image {src.id} has no layers")
    if len(diff_ids) != len(src.layers):
        raise LayerError(f"image {src.id}: {len(src.layers)} layers but {len(diff_ids)} "
                         "diff ids in its config")
    refs: list[LayerRef] = []
    parent = None
    for i, (layer, diff_id) in enumerate(zip(src.layers, diff_ids), 1):
        chain = chain_id(parent, diff_id)
        progress.start(i, len(src.layers), diff_id, archive.size(layer.path))
        seen = verified.get(archive.canonical(layer.path)) if verified is not None else None
        if seen is not None:
            _check(layer.path, layer.digest, diff_id, *seen)
        if store.layer_done(chain):
            if seen is None:
                seen = verify_blob(archive, layer, diff_id, progress.update)
            size = int(store.layer_props(chain).get(P_SIZE) or 0)
            progress.done("already present")
        else:
            with archive.open(layer.path) as raw:
                size, seen = build_layer(store, raw, layer.path, layer.digest, chain, parent,
                                         diff_id, progress.update)
            progress.done(f"loaded {_nice(size)}")
        if verified is not None:
            verified[archive.canonical(layer.path)] = seen
        refs.append(LayerRef(diff_id, chain, size))
        parent = chain
    image = Image(src.id, refs, str(config.get("created") or ""), store.now(),
                  {"archive": os.path.basename(os.path.abspath(archive.path)),
                   "blobs": [l.digest for l in src.layers],
                   "media_types": [l.media_type for l in src.layers],
                   **({"manifest": src.manifest} if src.manifest else {})})
    store.save_image(image, src.config, [])
    return image


def _check(what: str, digest: str | None, diff_id: str, blob: str, plain: str) -> None:
    if digest is not None and blob != digest:
        raise LayerError(f"layer {what}: its content does not match its digest {digest} "
                         f"(it has {blob})")
    if plain != diff_id:
        raise LayerError(f"layer {what}: its uncompressed content does not match the diff id "
                         f"{diff_id} the image config lists (it has {plain})")


def verify_blob(archive: Archive, layer: LayerSource, diff_id: str,
                update: Callable[[int], None]) -> tuple[str, str]:
    """Check a blob that is not applied (its layer is shared): the blob digest where the
    archive names one, else the diff id of its uncompressed bytes. Returns (blob digest,
    diff id) as checked."""
    with archive.open(layer.path) as raw:
        if layer.digest is not None:
            h = HashingReader(raw)
            try:
                while h.read(1 << 20):
                    update(h.count)
            except Exception as e:          # a cut stream (tar's ReadError), a read error
                raise LayerError(f"layer {layer.path}: cannot read it: {e}") from None
            _check(layer.path, layer.digest, diff_id, h.digest, diff_id)
            return h.digest, diff_id
        try:
            blob, _n, plain, _m = LayerStream(raw).finish()
        except Exception as e:
            raise LayerError(f"layer {layer.path}: cannot read it: {e}") from None
        _check(layer.path, None, diff_id, blob, plain)
        return blob, plain


def build_layer(store: Store, raw: BinaryIO, what: str, digest: str | None, chain: str,
                parent: str | None, diff_id: str,
                update: Callable[[int], None]) -> tuple[int, tuple[str, str]]:
    """Build one layer from the blob `raw` (see the module comment); returns the size of its
    uncompressed tar and (blob digest, diff id) as checked. `what` names the blob in
    messages; `digest` is the blob's, if known."""
    dsl, h = store.dsl, store.h
    name = store.layer_name(chain)
    stale = dsl.lookup(name)
    if stale is not None:                   # an import interrupted while building it
        h.drop(stale.id)
        dsl.destroy_filesystem(stale)
    props = store._props({P_LAYER: chain, P_DIFF: diff_id, P_PARENT: parent or "-", **LEGACY})
    try:
        rec = dsl.clone(store.layer_snap(parent), name, props) if parent else \
            dsl.create(name, props)
    except DatasetError as e:
        raise LayerError(f"cannot create '{name}': {e.message}") from None
    try:
        fs = h.filesystem_of(rec)
        if parent is None:                  # the root a layer tar's entries are relative to
            fs.setattr(ROOT_INO, mode=0o755, uid=0, gid=0, atime=0, mtime=0)
        try:
            stream = LayerStream(raw)
            Applier(fs, lambda _n: update(stream.blob.count)).apply(stream.tar)
            blob, _n, plain, size = stream.finish()
        except LayerError:
            raise
        except Exception as e:          # tar, gzip, zstd: a damaged or truncated blob
            raise LayerError(f"layer {what}: cannot read it: {e}") from None
        _check(what, digest, diff_id, blob, plain)
        properties.set_props(dsl, rec, store._props({P_SIZE: str(size)}))
        h.forget(rec.id)                    # flushed into its tree, and not kept open
        dsl.snapshot([store.layer_snap(chain)])
        return size, (blob, plain)
    except BaseException:
        h.drop(rec.id)
        if dsl.lookup(store.layer_snap(chain)) is None:
            dsl.destroy_filesystem(rec)
        raise
