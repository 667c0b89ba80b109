"""`image rm`: an image's record goes, then the layers nothing else needs.

Theory of operation
-------------------
Removing a tag of an image that has others only untags it (Docker's rule). Otherwise the
image's record goes (its tags, its config, image.json), and its layers are destroyed from the
top down, each snapshot then dataset, while nothing else needs them. A layer is needed when
another image lists its chain id (then so are all below it: a chain id includes everything
under it) or when its snapshot has clones: a container's init layer, or a layer of an image
no record lists any more. The walk stops at the first layer needed, and for a clone it says
why in ZFS's own words, the message `zfs destroy` gives for a snapshot with dependent clones,
listing what depends on it (cli_zfs.dependents: the order `zfs destroy -R` would take).

An image in use by a container is not removed at all unless -f (Docker's rule too); the refusal
is the same ZFS message for the top layer's snapshot. With -f the record goes and the layers
the containers stand on stay; `container rm` of the last of those containers then collects
them (`collect` walks down from the container's image by the layers' parent properties, so it
needs no image record). A layer is found by its chain id whoever asks, so an import of the
same image meanwhile simply finds them there again.
"""
from __future__ import annotations

from fusezfs.images.archive import familiar
from fusezfs.images.store import Store, StoreError


def dependency_message(store: Store, snap_name: str) -> str | None:
    """ZFS's refusal to destroy `snap_name` (it has clones), or None if it has none."""
    from fusezfs.cli.cli_zfs import dependents
    snap = store.dsl.lookup(snap_name)
    if snap is None or not snap.clones:
        return None
    names = [store.dsl.name(r.id) for r in dependents(store.dsl, snap)]
    return (f"cannot destroy '{snap_name}': snapshot has dependent clones\n"
            f"use '-R' to destroy the following datasets:\n" + "\n".join(names))


def remove_image(store: Store, ref: str, force: bool = False) -> tuple[list[str], list[str]]:
    """Remove (or untag) one image; returns (lines for stdout, notes for stderr)."""
    img = store.find(ref)
    tag = ref if ref in img.tags else familiar(ref) if familiar(ref) in img.tags else None
    if tag is not None and len(img.tags) > 1:
        store.set_tags([tag], None)
        return [f"Untagged: {tag}"], []
    users = sorted(c.name for c in store.containers() if c.image == img.id)
    if users and not force:
        why = dependency_message(store, store.layer_snap(img.top)) or ""
        raise StoreError(f"{why}\nimage {img.id[7:19]} is used by container(s) "
                         f"{', '.join(users)}: remove them first, or use -f")
    lines = [f"Untagged: {t}" for t in img.tags]
    store.delete_image(img)
    lines.append(f"Deleted: {img.id}")
    more, notes = collect(store, img.top)
    return lines + more, notes


def collect(store: Store, chain: str | None) -> tuple[list[str], list[str]]:
    """Destroy the layer `chain` and those below it, top down, while no image lists them and
    nothing is cloned from them; returns (a "Deleted:" line per layer, ZFS's message for the
    layer where it stopped because of clones)."""
    from fusezfs.images.store import P_PARENT
    dsl = store.dsl
    needed = {l.chain_id for other in store.images() for l in other.layers}
    lines: list[str] = []
    while chain and chain != "-" and chain not in needed:
        rec = dsl.lookup(store.layer_name(chain))
        if rec is None:
            break
        for snap in reversed(dsl.snapshots(rec.id)):
            why = dependency_message(store, dsl.name(snap.id))
            if why is not None:
                return lines, [why]
        parent = rec.props.get(P_PARENT)
        for snap in reversed(dsl.snapshots(rec.id)):
            dsl.destroy_snapshot(snap)
        store.h.drop(rec.id)
        dsl.destroy_filesystem(rec)
        lines.append(f"Deleted: {chain}")
        chain = parent
    return lines, []
