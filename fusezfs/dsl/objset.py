"""A dataset as the POSIX layer sees it (posix.ObjsetIO): its tree, the properties that steer
writes, and space checks, all answered by the dataset layer.

Blocks a filesystem writes are accounted to its dataset as they are born (datasets.born) and
freed through its deadlist rules (datasets.kill, via the tree's store), so nothing here keeps
state of its own: it is a view, made again whenever properties may have changed.
"""
from __future__ import annotations

import time

from fusezfs.dsl import properties
from fusezfs.dsl.datasets import Datasets, Record
from fusezfs.formats.bp import BlockPointer


class DatasetIO:
    def __init__(self, dsl: Datasets, rec: Record) -> None:
        self.dsl = dsl
        self.rec = rec
        self.tree = dsl.tree(rec)
        self.lock = dsl.pool.lock
        head = dsl.record(rec.parent) if rec.kind == "snapshot" else rec
        value = lambda name: properties.value(dsl, head, name)  # noqa: E731
        self.readonly = rec.kind == "snapshot" or str(value("readonly")) == "on"
        self.recordsize = int(value("recordsize"))
        self.compress = str(value("compression")) != "off"
        self.atime = str(value("atime")) == "on"
        self.policy = properties.write_policy(dsl, head)
        # the intent log (posix_log.py): standard | always | disabled; latency | throughput
        self.sync_mode = "disabled" if self.readonly else str(value("sync"))
        self.logbias = str(value("logbias"))

    @property
    def txg(self) -> int:
        return self.dsl.pool.txg

    def write_blocks(self, datas: list) -> list[BlockPointer]:
        return self.dsl.write_blocks(self.rec, datas, self.policy)

    def prepare_ahead(self, data: bytes) -> None:
        self.dsl.pool.blocks.prepare_ahead(data, self.policy)

    def cancel_ahead(self, data: bytes) -> None:
        self.dsl.pool.blocks.cancel_ahead(data)

    def read_blocks(self, bps: list[BlockPointer]) -> list[bytes]:
        return self.dsl.pool.blocks.read_many(bps)

    def check_space(self, nbytes: int) -> None:
        properties.check_space(self.dsl, self.rec, nbytes)

    def note_written(self, nbytes: int) -> None:
        self.dsl.pool.note_written(nbytes)

    def now_ns(self) -> int:
        return time.time_ns()

    def space(self) -> tuple[int, int]:
        return self.rec.refer, properties.available(self.dsl, self.rec)

    def sync(self) -> None:
        self.dsl.pool.sync()

    def intent_log(self):
        """The pool's intent log (zil.IntentLog), made on first use."""
        from fusezfs.engine.zil import IntentLog
        return IntentLog(self.dsl.pool)
