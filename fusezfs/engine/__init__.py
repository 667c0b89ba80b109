"""The storage engine: devices, vdevs, the block pipeline (checksums, compression, dedup,
ditto copies), the allocator, transaction groups, object trees, scrub, the intent log and the
pool checker. ZFS's SPA, ZIO, metaslabs, DMU and ZIL. Imports only fusezfs.formats."""
