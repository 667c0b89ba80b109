"""Pool feature flags as `zpool get` shows them (`feature@NAME`: disabled, enabled or active).

OpenZFS 2.1.11 lists every feature it knows in `zpool get all`, in spa_feature_t order, and
scripts probe some of them before they use what needs them (bookmarks before `zfs bookmark`
and `send -i FS#BM`, extensible_dataset before resumable receives, zstd_compress before
compression=zstd). fusezfs reports a feature enabled only where it has the behaviour the
feature stands for, and active while the pool holds what uses it, by OpenZFS's rules:

- extensible_dataset: dataset records that take new fields (fusezfs's are JSON); active, as on
  a new OpenZFS pool, whose datasets are made extensible at once;
- bookmarks: active while any filesystem has a bookmark (one count per filesystem there);
- bookmark_v2: the larger bookmark that the bookmark_written fields need; every fusezfs
  bookmark records them, so it is active exactly when bookmarks is;
- bookmark_written: bookmarks record the referenced sizes, so `written#BM` is known; OpenZFS
  never counts it up: enabled;
- zstd_compress: active while a dataset has compression=zstd or zstd-N set (it is per dataset
  in OpenZFS too).

Every other feature is "disabled": the pool has no such behaviour.
"""
from __future__ import annotations

from fusezfs.dsl.datasets import ROOT_ID, Datasets

# spa_feature_t, in order (include/zfeature_common.h)
ALL = ("async_destroy", "empty_bpobj", "lz4_compress", "multi_vdev_crash_dump",
       "spacemap_histogram", "enabled_txg", "hole_birth", "extensible_dataset", "embedded_data",
       "bookmarks", "filesystem_limits", "large_blocks", "large_dnode", "sha512", "skein",
       "edonr", "userobj_accounting", "encryption", "project_quota", "device_removal",
       "obsolete_counts", "zpool_checkpoint", "spacemap_v2", "allocation_classes",
       "resilver_defer", "bookmark_v2", "redaction_bookmarks", "redacted_datasets",
       "bookmark_written", "log_spacemap", "livelist", "device_rebuild", "zstd_compress",
       "draid")
IMPLEMENTED = ("extensible_dataset", "bookmarks", "bookmark_v2", "bookmark_written",
               "zstd_compress")


def _has_bookmarks(dsl: Datasets) -> bool:
    heads = [dsl.record(ROOT_ID)] + dsl.descendants(ROOT_ID)
    return any(dsl.bookmarks(h.id) for h in heads)


def _uses_zstd(dsl: Datasets) -> bool:
    heads = [dsl.record(ROOT_ID)] + dsl.descendants(ROOT_ID)
    for head in heads:
        for values in (head.props, head.received):
            if str(values.get("compression", "")).startswith("zstd"):
                return True
    return False


def state(dsl: Datasets, name: str) -> str | None:
    """"disabled", "enabled" or "active" for a feature OpenZFS knows; None for another name
    (zpool get prints nothing for it)."""
    if name not in ALL:
        return None
    if name not in IMPLEMENTED:
        return "disabled"
    if name == "extensible_dataset":
        active = True
    elif name in ("bookmarks", "bookmark_v2"):
        active = _has_bookmarks(dsl)
    elif name == "zstd_compress":
        active = _uses_zstd(dsl)
    else:
        active = False
    return "active" if active else "enabled"
