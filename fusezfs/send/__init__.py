"""Replication: `zfs send` / `zfs receive` in OpenZFS's stream format (the "replication" layer
of ../shared/DESIGN.md, above posix and datasets, below the api and the command line).

Modules, bottom up:

- `fletcher.py`: the fletcher-4 checksum a stream carries, fast in pure Python;
- `records.py`: the dmu_replay_record records (BEGIN, OBJECT, FREEOBJECTS, WRITE, FREE, SPILL,
  END, ...), a writer that keeps the running checksum and a reader that checks it;
- `nvlist.py`: XDR-packed nvlists (the compound streams of -R and resume tokens use them);
- `zap.py`: ZAP objects (microzap and fatzap) as ZFS lays them out;
- `znode.py`: the ZPL objects of a ZPL version 4 filesystem (master node, znode_phys_t
  bonus buffers, directory entries) and the mapping from fusezfs inodes to object numbers;
- `sender.py`: a fusezfs snapshot (or the changes between two) as a stream;
- `receiver.py`: a stream into a fusezfs dataset, atomically.

The stream format, bit-exact, is in docs/FORMAT.md, section 8.
"""
