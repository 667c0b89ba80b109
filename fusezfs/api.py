"""The library surface front ends use: an open pool with its datasets and the POSIX
filesystems of those datasets.

A filesystem object buffers dirty file data; it is flushed into its tree by the pool's sync
hook, so every txg commits a consistent state of every open filesystem. Operations that replace
a dataset's tree (rollback, destroy) go through `Handle`, which drops the filesystem objects
that would otherwise keep looking at the old tree.
"""
from __future__ import annotations

from fusezfs import sessions
from fusezfs.dsl.datasets import Datasets
from fusezfs.dsl.objset import DatasetIO
from fusezfs.engine.pool import OnePerPool, Pool
from fusezfs.zpl.posix import Posix


def format_filesystem(dsl: Datasets, rec) -> None:
    """Give a new filesystem its root directory now, as zfs create does, so that it and its
    first snapshot show a real root (owner, mode, times) and its `referenced` is honest."""
    uid, gid = sessions.credentials()
    fs = Posix(DatasetIO(dsl, rec), root_uid=uid, root_gid=gid)
    fs.flush()


class Handle(OnePerPool):
    """One per open pool: `Handle(pool)` returns the existing one (it owns the pool's Posix
    objects and the sync hook that flushes them)."""

    def _setup(self, pool: Pool) -> None:
        self.pool = pool
        self.dsl = Datasets(pool)
        self.dsl.format_hook = lambda rec: format_filesystem(self.dsl, rec)
        self.dsl.replaced_hook = self._replaced
        from fusezfs.zpl.volumes import geometry
        self.dsl.geometry_hook = geometry
        self._open: dict[int, Posix] = {}
        self._log_barriers: dict[int, int] = {}     # ds id -> txg (filesystem_of)
        pool.sync_hooks.insert(0, self._flush)
        with pool.lock:
            # fsync'ed changes an import found in the intent log, before anything else
            from fusezfs.zpl.posix_log import replay_all
            replay_all(self)
            # receives a crash interrupted leave no hidden dataset behind (send/incoming.py;
            # its module is imported only when one did: its MARK_PREFIX is this key)
            if pool.mos.first_item(b"recvtmp\0", b"recvtmp\1") is not None:
                from fusezfs.send.incoming import cleanup
                cleanup(self.dsl)

    def _flush(self, pool: Pool) -> None:
        for fs in self._open.values():
            fs.flush()

    def filesystem(self, name: str, *, track_lookups: bool = False) -> Posix:
        """The POSIX view of filesystem or snapshot `name` (DatasetError if it does not exist).
        One dataset has one Posix object, whoever asks (the FUSE adapter asks with
        `track_lookups`, to count the kernel's lookups)."""
        return self.filesystem_of(self.dsl.get(name), track_lookups=track_lookups)

    def filesystem_of(self, rec, *, track_lookups: bool = False) -> Posix:
        fs = self._open.get(rec.id)
        if fs is None:
            fs = self._open[rec.id] = Posix(DatasetIO(self.dsl, rec), track_lookups=track_lookups)
            # a predecessor dropped with changes noted for the intent log and not yet durable:
            # this one never saw them, so it logs nothing until their txg is durable
            fs._barrier = self._log_barriers.get(rec.id, 0)
        return fs

    def _dropped(self, ds_id: int, fs: Posix) -> None:
        if fs.pending_itxs:
            self._log_barriers[ds_id] = self.pool.txg

    def _replaced(self, rec) -> None:
        """A rollback gave `rec` another tree: an open Posix object forgets what it cached
        and buffered (the rollback discards it) and reads the new tree."""
        fs = self._open.get(rec.id)
        if fs is not None:
            fs.io.tree = self.dsl.tree(rec)
            fs.reload(fs.io.tree)

    def drop(self, ds_id: int) -> None:
        """Forget a dataset's Posix object without flushing it (it was closed by its owner)."""
        fs = self._open.pop(ds_id, None)
        if fs is not None:
            self._dropped(ds_id, fs)

    def forget(self, name_or_id) -> None:
        """Drop cached filesystem objects (after rollback/destroy/property changes)."""
        if isinstance(name_or_id, int):
            fs = self._open.pop(name_or_id, None)
        else:
            rec = self.dsl.lookup(name_or_id)
            fs = self._open.pop(rec.id, None) if rec else None
        if fs is not None:
            fs.flush()
            self._dropped(fs.io.rec.id, fs)

    def forget_all(self) -> None:
        for ds_id in list(self._open):
            self.forget(ds_id)

    def close(self) -> None:
        self.pool.close()
