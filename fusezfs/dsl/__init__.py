"""The dataset layer: names, the dataset directory (snapshots, clones, deadlists, space),
properties and their inheritance, object sets, feature flags. ZFS's DSL."""
