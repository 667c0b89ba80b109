"""Container images as clone chains, the way Docker's ZFS storage driver lays them out.

The top layer of fusezfs (../../shared/DESIGN.md: "images"), a front end over the library: it
only uses `api.Handle`, the dataset directory and the POSIX views of filesystems, so that it
works on a pool file with no FUSE and no root, and a FUSE mount shows what it built.

Modules, bottom up:

- `archive.py`: reading `docker save` tarballs and OCI image layouts (directory or tar),
  every blob checked against its sha256 digest;
- `layertar.py`: the tar side of a layer: entry paths, whiteout names, PAX times and xattrs,
  the hashing and decompressing readers;
- `applier.py`: applying one layer's tar to a filesystem through the POSIX layer (whiteouts,
  opaque directories, hard links, devices, owners, modes, times, xattrs);
- `store.py`: where images, layers and containers live in a pool (datasets, snapshots, user
  properties, the metadata filesystem) and the records that describe them;
- `importer.py`: `image import`, building the clone chain layer by layer;
- `layerdiff.py`: what changed between a layer's snapshot and its parent's, path by path;
- `exporter.py`: `image export` and the tar of a layer from that difference;
- `containers.py`: `container create/rm/ls/commit`;
- `cli.py`: the `fusezfs image ...` and `fusezfs container ...` verbs.
"""
