"""The pool: labels, the uberblock ring, the MOS, the allocator and transaction groups.

Theory of operation. All state reachable from the newest valid uberblock is the pool. Changes
gather in the open txg: data blocks are written at once into free space (space no committed
uberblock reaches), tree nodes stay dirty in memory. `sync()` commits the txg:

  1. sync hooks push buffered data of upper layers into their trees;
  2. every dirty object tree writes its dirty nodes (new blocks, free space only) and its new
     root goes into the MOS (meta object set) tree, which is then written the same way;
     a tree tells the pool when it first goes dirty (Tree.on_dirty), so a commit visits the
     trees its txg changed, not every tree open (a pool of many datasets, clones, containers);
  3. the space map, describing every allocation including its own block, is written (kept up
     to date as blocks come and go and re-encoded only where the txg changed it: mapview.py);
  4. every device is flushed;                       <- crash before here: the old txg stands
  5. the uberblock for this txg goes to slot txg % 128 of both labels of every device;
  6. every device is flushed;                       <- crash after here: the new txg stands
  7. frees deferred during the txg become allocatable.

A crash between 5 and 6 leaves each slot either whole (checksum good: the new txg, whose blocks
were all flushed in step 4) or torn (checksum bad: ignored, so the previous txg is chosen).
Nothing a committed uberblock reaches is ever written, because frees of blocks born before the
open txg are deferred until step 7. Import takes the valid uberblock with the highest txg.

Pipelining (`pipeline`, which the FUSE daemon turns on): when a full dirty budget or the timer
asks for a sync, steps 1-3 run under the pool lock as always, the next txg opens at once, and
steps 4-7 (device flushes and the uberblock: waiting on the disk) run on a commit thread while
writers go on filling the new txg, as ZFS overlaps its open and syncing txgs. That stays safe
because the new txg only writes into space free in both the committing txg and the one before
(its frees are deferred; the committing txg's own frees are released only after step 6), and
the next sync waits for the commit in flight before it begins, so uberblocks stay in order. A
caller that needs durability (fsync, commands, close) syncs with `wait`, which commits inline.

One owner: every device file is locked (flock) while a Pool object has it open.
"""
from __future__ import annotations

import fcntl
import json
import random
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

from fusezfs.engine import poolprops
from fusezfs.engine.allocator import REWIND_TXGS, Allocator
from fusezfs.engine.blocks import BlockIO, ChecksumError, Policy
from fusezfs.engine.dedup import DedupTable
from fusezfs.engine.devices import Device, FileDevice
from fusezfs.formats import label as fl
from fusezfs.formats import spacemap
from fusezfs.formats.bp import (
    BT_NODE,
    BT_SPACEMAP,
    CKSUM_XXH3_128,
    COMP_ZSTD,
    BlockPointer,
    decode_bp,
    encode_bp,
)
from fusezfs.engine.tree import REF_TREE, NodeCache, Tree
from fusezfs.engine.vdevs import Leaf, MissingDevice, TopVdev

MIN_DEVICE_SIZE = 64 << 20          # what the command line demands, as zpool does
ENGINE_MIN_SIZE = 2 << 20
NODE_CACHE_NODES = 2048             # decoded tree nodes kept per pool (at most ~64 MiB)           # what the format needs (tests use small in-memory devices)
# Metadata is compressed and kept in two copies (ZFS's ditto blocks): a flipped bit in a tree
# node or the space map is healed from the other copy instead of losing a whole subtree.
META_POLICY = Policy(COMP_ZSTD, 1, CKSUM_XXH3_128, 2)
OBJSET_PREFIX = b"objset\0"
PROP_PREFIX = b"prop\0"


class PoolError(Exception):
    """A failed pool operation; the message is in zpool's words."""


def new_guid() -> int:
    return random.SystemRandom().getrandbits(63) or 1


@dataclass
class NodeStore:
    """The block layer as an object tree sees it (fusezfs.engine.tree.NodeStore)."""

    blocks: BlockIO
    policy: Policy

    def read_node(self, bp: BlockPointer) -> bytes:
        return self.blocks.read(bp, cache=False)

    def write_node(self, data: bytes, level: int) -> BlockPointer:
        return self.blocks.write(data, BT_NODE, self.policy, level)

    def free(self, bp: BlockPointer) -> None:
        self.blocks.free(bp)


def lock_device(device: Device, name_hint: str = "") -> None:
    if isinstance(device, FileDevice):
        try:
            fcntl.flock(device.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PoolError(f"cannot open '{device.path}': device is in use by another process"
                            + (f" (pool '{name_hint}')" if name_hint else "")) from None


def read_label(device: Device) -> dict | None:
    """The newest valid label config of a device, or None if it holds no pool."""
    leaf = Leaf(device, 0)
    configs = leaf.read_configs()
    if not configs:
        return None
    return max(configs, key=lambda c: c[1])[0]


class OnePerPool:
    """Base of the layers that must exist once per open pool (the dataset directory, the
    POSIX handles): `Cls(pool)` returns the pool's instance, set up once by `_setup`. Two
    would each cache state of the same pool and undo each other's changes at sync."""

    def __new__(cls, pool: "Pool"):
        existing = pool.attached.get(cls)
        if existing is not None:
            return existing
        self = super().__new__(cls)
        pool.attached[cls] = self
        self._setup(pool)
        return self

    def __init__(self, pool: "Pool") -> None:
        pass            # set up once, by __new__

    def _setup(self, pool: "Pool") -> None:
        raise NotImplementedError


class Pool:
    """An open (imported) pool. Not thread safe by itself: callers hold `lock`."""

    def __init__(self, name: str, guid: int, tops: list[TopVdev], config_gen: int) -> None:
        self.name = name
        self.guid = guid
        self.tops = {t.id: t for t in tops}
        self.config_gen = config_gen
        self.allocator = Allocator({t.id: (t.start, t.end) for t in tops})
        self.blocks = BlockIO(self.tops, self.allocator)
        # one cache of decoded tree nodes for every tree of the pool: memory stays bounded
        # however many datasets and snapshots are open (entries are keyed by block identity)
        self.node_cache = NodeCache(NODE_CACHE_NODES)
        self.lock = threading.RLock()
        self.synced_txg = 0
        self.mos: Tree | None = None
        self.spacemap_bp: BlockPointer | None = None
        self.trees: dict[bytes, Tree] = {}
        self.attached: dict[type, object] = {}   # OnePerPool instances of upper layers
        self._roots: dict[bytes, BlockPointer | None] = {}   # roots recorded in the MOS
        self._dirtied: set[bytes] = set()   # open trees gone dirty since their last sync
        self._moved: set[bytes] = set()     # trees synced since their root went into the MOS
        self.sync_hooks: list = []          # callables(pool) run at the start of every sync
        self.txg_bytes = 0                  # bytes written in the open txg (dirty budget)
        self.dirty_max = 256 << 20
        self.pipeline = False               # budget syncs commit on a thread (module comment)
        self._committer: ThreadPoolExecutor | None = None
        self._commit: tuple[int, Future] | None = None     # (txg, its steps 4-6 in flight)
        self.created = 0
        self._timer: threading.Thread | None = None
        self._closing = threading.Event()
        self.closed = False
        self.state = "active"
        self.rewound: tuple[fl.Uberblock, fl.Uberblock] | None = None   # (loaded, given up)
        self.blocks.ddt = DedupTable(self)  # dedup.py: reference counts of deduped blocks

    # ---- properties of the open txg --------------------------------------------------------
    @property
    def txg(self) -> int:
        return self.blocks.txg

    def leaves(self) -> list[Leaf]:
        return [leaf for t in self.tops.values() for leaf in t.leaves]

    def config(self, leaf: Leaf, top: TopVdev) -> dict:
        return {"name": self.name, "pool_guid": self.guid, "state": self.state,
                "version": fl.FORMAT_VERSION, "guid": leaf.guid, "top_guid": top.guid,
                "hostname": socket.gethostname(), "created": self.created,
                "vdev_tree": [t.describe() for t in self.tops.values()]}

    def write_labels(self) -> None:
        """The configuration, to every live leaf (an offline or missing one keeps an older
        generation, which the newest config on the others outranks at import)."""
        self.config_gen += 1
        for top in self.tops.values():
            for leaf in top.live:
                leaf.write_config(self.config(leaf, top), self.config_gen)

    def live_leaves(self) -> list[Leaf]:
        return [leaf for t in self.tops.values() for leaf in t.live]

    # ---- create and import ----------------------------------------------------------------
    @classmethod
    def create(cls, name: str, topology: list[tuple[str, list[Device]]],
               props: dict[str, str] | None = None, root_props: dict[str, str] | None = None) -> "Pool":
        """Make a new pool on `topology`: [("file", [dev]) | ("mirror", [dev, dev, ...]), ...].
        Validation that concerns the devices' previous owners is the caller's (cli)."""
        tops = []
        for i, (kind, devices) in enumerate(topology):
            for d in devices:
                if d.size < ENGINE_MIN_SIZE:
                    raise PoolError(f"cannot create '{name}': one or more devices is less than "
                                    f"the minimum size ({ENGINE_MIN_SIZE >> 20}M)")
            tops.append(TopVdev(i, kind, new_guid(), [Leaf(d, new_guid()) for d in devices]))
        pool = cls(name, new_guid(), tops, 0)
        for leaf in pool.leaves():
            lock_device(leaf.device)
        pool.created = int(time.time())
        pool.mos = Tree(NodeStore(pool.blocks, META_POLICY), None, cache=pool.node_cache)
        for key, value in (props or {}).items():
            pool.mos.put(PROP_PREFIX + key.encode(), value.encode())
        if root_props:
            pool.mos.put(b"rootprops", poolprops.encode_json(root_props))
        pool.write_labels()
        pool.sync(force=True)
        return pool

    @classmethod
    def open(cls, devices: list[Device], *, name: str | None = None, rewind: int = 0,
             dry_run: bool = False) -> "Pool":
        """Import the pool whose labels these devices carry, at its newest txg. If that one
        cannot be loaded, `rewind` older txgs may be tried (zpool import -F: REWIND_TXGS, the
        ones whose blocks frees never reused; -X: every uberblock the ring holds): the newest
        whose whole tree verifies is loaded, `rewound` says from where to where, and the next
        txg outranks the ones given up. `dry_run` only finds out (-n): nothing is written, and
        the caller closes the pool without syncing."""
        configs = []
        for d in devices:
            got = Leaf(d, 0).read_configs()
            if got:
                configs.append((d, *max(got, key=lambda c: c[1])))
        if not configs:
            raise PoolError("no pools available to import")
        newest = max(configs, key=lambda c: c[2])[1]
        pool_guid = newest["pool_guid"]
        by_guid = {c[1]["guid"]: c[0] for c in configs if c[1]["pool_guid"] == pool_guid}
        tops = []
        for t in newest["vdev_tree"]:
            leaves = []
            for child in t["children"]:
                dev = by_guid.get(child["guid"])
                if dev is None:             # a mirror side may be missing: DEGRADED
                    size = child.get("size") or max(d.size for d in by_guid.values())
                    dev = MissingDevice(child["path"], size)
                leaves.append(Leaf(dev, child["guid"], offline=bool(child.get("offline")),
                                   resilvering=bool(child.get("resilvering"))))
            top = TopVdev(t["id"], t["type"], t["guid"], leaves)
            if not top.live:
                missing = next(leaf.path for leaf in leaves if not leaf.live)
                raise PoolError(f"cannot import '{newest['name']}': one or more devices is "
                                f"currently unavailable ({missing})")
            tops.append(top)
        pool = cls(name or newest["name"], pool_guid, tops, max(c[2] for c in configs))
        pool.created = newest.get("created", 0)
        for leaf in pool.leaves():
            if not leaf.missing:
                lock_device(leaf.device, pool.name)
        by_txg: dict[int, fl.Uberblock] = {}
        for leaf in pool.live_leaves():
            for ub in leaf.read_uberblocks():
                if ub.pool_guid == pool_guid:
                    by_txg[ub.txg] = ub
        if not by_txg:
            raise PoolError(f"cannot import '{pool.name}': no valid uberblock found")
        ubs = [by_txg[t] for t in sorted(by_txg, reverse=True)]
        try:
            pool._load(ubs[0])
        except (ChecksumError, ValueError) as e:
            older = pool._rewind_target(ubs[1:1 + max(rewind, REWIND_TXGS)])
            if not rewind or older is None:
                pool.blocks.close()
                raise PoolError(f"cannot import '{pool.name}': I/O error ({e})"
                                + explain_recover(pool.name, ubs[0], older)) from None
            pool.rewound = (older, ubs[0])
            if dry_run:
                return pool
            pool._load(older)
            pool.blocks.txg = ubs[0].txg + 1    # new txgs outrank the ones given up
        if dry_run:
            return pool
        if pool.mos.get(b"zil") is not None:
            from fusezfs.engine.zil import IntentLog
            IntentLog(pool)     # claims the intent log's blocks before anything allocates
        if pool.state != "active" or name or pool.rewound:
            pool.state = "active"
            pool.write_labels()
        if pool.rewound:
            pool.sync(force=True)               # the rewind is durable before anything else
        return pool

    def _rewind_target(self, candidates: list[fl.Uberblock]) -> fl.Uberblock | None:
        """The newest of `candidates` (older uberblocks, newest first) whose whole tree reads
        back with every checksum right, found without repairing anything: a copy that no
        longer matches an older txg may be a block a newer txg wrote there."""
        from fusezfs.engine.verify import intact
        saved = [(leaf.read_errors, leaf.write_errors, leaf.cksum_errors) for leaf in self.leaves()]
        self.blocks.healing = False
        try:
            for ub in candidates:
                try:
                    self._load(ub)
                except (ChecksumError, ValueError, PoolError):
                    continue
                if intact(self):
                    return ub
            return None
        finally:
            self.blocks.healing = True
            self.blocks.permanent_errors.clear()
            self.blocks.drop_cache()
            self.node_cache.clear()
            for leaf, counts in zip(self.leaves(), saved):
                leaf.read_errors, leaf.write_errors, leaf.cksum_errors = counts

    def _load(self, ub: fl.Uberblock) -> None:
        self.synced_txg = ub.txg
        self.blocks.txg = ub.txg + 1
        self.spacemap_bp = ub.spacemap
        if ub.spacemap is None:
            raise PoolError(f"cannot import '{self.name}': space map missing")
        self.allocator.load(spacemap.decode(self.blocks.read(ub.spacemap, cache=False)))
        self.mos = Tree(NodeStore(self.blocks, META_POLICY), ub.mos, cache=self.node_cache)
        self._synced_changes = self.allocator.changes
        raw = self.mos.get(b"errors")
        self._saved_errors = json.loads(raw) if raw else {}
        for leaf in self.leaves():     # added to what this import's own reads have counted
            r, w, c = self._saved_errors.get("devices", {}).get(str(leaf.guid), (0, 0, 0))
            leaf.read_errors += r
            leaf.write_errors += w
            leaf.cksum_errors += c
        self.blocks.permanent_errors.update(self._saved_errors.get("blocks", {}))

    def error_counts(self) -> dict:
        """Per-device error counters and the blocks found damaged beyond repair, kept in the
        MOS so that `pool status` in a later process still shows what a verify or a read found
        (ZFS keeps its error log the same way, until `zpool clear`)."""
        devices = {str(leaf.guid): [leaf.read_errors, leaf.write_errors, leaf.cksum_errors]
                   for leaf in self.leaves()
                   if leaf.read_errors or leaf.write_errors or leaf.cksum_errors}
        out: dict = {}
        if devices:
            out["devices"] = devices
        if self.blocks.permanent_errors:
            out["blocks"] = dict(self.blocks.permanent_errors)
        return out

    def clear_errors(self) -> None:
        for leaf in self.leaves():
            leaf.read_errors = leaf.write_errors = leaf.cksum_errors = 0
        self.blocks.permanent_errors.clear()

    # ---- named object trees in the MOS ------------------------------------------------------
    def objset(self, name: bytes, *, create: bool = True, store=None,
               root: BlockPointer | None = None) -> Tree:
        """The object tree called `name`, kept open and synced with every txg; if absent and
        `create`, made with `root` (empty by default; a clone starts from a snapshot's root).
        `store` decides how its blocks are written and freed (a dataset's store sends frees
        to its deadlist); by default the pool frees them."""
        tree = self.trees.get(name)
        if tree is not None:
            return tree
        raw = self.mos.get(OBJSET_PREFIX + name)
        if raw is None and not create:
            raise KeyError(name)
        if raw is not None:
            root = decode_bp(raw)
        tree = Tree(store or NodeStore(self.blocks, META_POLICY), root, cache=self.node_cache)
        tree.on_dirty = partial(self._dirtied.add, name)
        if raw is None:
            self.mos.put(OBJSET_PREFIX + name, encode_bp(root), REF_TREE)
        self.trees[name] = tree
        self._roots[name] = root
        return tree

    def objset_root(self, name: bytes) -> BlockPointer | None:
        """The committed (or, if open, current) root of an object tree."""
        tree = self.trees.get(name)
        if tree is not None:
            return tree.root
        raw = self.mos.get(OBJSET_PREFIX + name)
        if raw is None:
            raise KeyError(name)
        return decode_bp(raw)

    def put_objset_root(self, name: bytes, root: BlockPointer | None) -> None:
        """Record a tree root that no open Tree manages (a snapshot shares its head's root)."""
        assert name not in self.trees
        self.mos.put(OBJSET_PREFIX + name, encode_bp(root), REF_TREE)

    def has_objset(self, name: bytes) -> bool:
        return name in self.trees or self.mos.get(OBJSET_PREFIX + name) is not None

    def objset_names(self) -> list[bytes]:
        return [k[len(OBJSET_PREFIX):] for k, _ in self.mos.scan(OBJSET_PREFIX, OBJSET_PREFIX[:-1] + b"\1")]

    def forget_objset(self, name: bytes) -> None:
        """Drop the entry (the caller has freed or handed over the tree's blocks)."""
        self.trees.pop(name, None)
        self._roots.pop(name, None)
        self.mos.delete(OBJSET_PREFIX + name)

    def destroy_objset(self, name: bytes) -> None:
        tree = self.objset(name, create=False)
        tree.destroy()
        self.forget_objset(name)

    # ---- pool properties ------------------------------------------------------------------
    def get_prop(self, name: str) -> str:
        """Value of a settable/stored pool property (default if never set)."""
        raw = self.mos.get(PROP_PREFIX + name.encode()) if self.mos else None
        if raw is not None:
            return raw.decode()
        return poolprops.PROPS[name].default

    def set_prop(self, name: str, value: str) -> None:
        self.mos.put(PROP_PREFIX + name.encode(), value.encode())

    # ---- transaction groups ---------------------------------------------------------------
    def dirty_bytes(self) -> int:
        trees = (self.trees.get(n) for n in self._dirtied)
        return self.txg_bytes + sum(t.dirty_bytes for t in trees if t is not None) + \
            self.mos.dirty_bytes

    def note_written(self, nbytes: int) -> None:
        """Upper layers report data written in the open txg; a full budget forces a sync, so
        the writer waits for it (ZFS's dirty-data throttle, simplified)."""
        self.txg_bytes += nbytes
        if self.txg_bytes >= self.dirty_max:
            self.sync(wait=False)

    def settle(self) -> None:
        """Wait for the commit in flight (if any): its frees become allocatable and its txg
        durable; its failure is raised here (its frees then wait for the next commit)."""
        pending, self._commit = self._commit, None
        if pending is None:
            return
        txg, future = pending
        self._land(txg, future.result)

    def _land(self, txg: int, commit) -> None:
        """Run (or wait for) `commit`, steps 4-6 of `txg`; then step 7 and the txg is durable.
        If it fails, the txg's frees wait for the next commit and the error goes up."""
        try:
            commit()
        except BaseException:
            self.allocator.finish_release(durable=False)
            raise
        self.allocator.finish_release(durable=True)
        self.synced_txg = txg

    def sync(self, *, force: bool = False, wait: bool = True) -> int:
        """Commit the open txg (see the module comment); returns the txg now durable. With
        `wait` false and `pipeline` on, the commit's device flushes and uberblock go on in
        the background (the returned txg is then the last one already durable)."""
        with self.lock:
            if self.closed:
                raise PoolError(f"pool '{self.name}' is closed")
            self.settle()
            # Upper layers' hooks push buffered data into trees and records into the MOS;
            # syncing a tree may change other trees (a dataset's frees land in its deadlist)
            # and records, so repeat until nothing is dirty: all of it belongs to this txg.
            for _round in range(16):
                for hook in list(self.sync_hooks):
                    hook(self)
                if not self._sync_dirty_trees():
                    break
            else:
                raise AssertionError("sync did not converge")
            self.blocks.forget_ahead()      # early writes no buffer took: free before the map
            counts = self.error_counts()
            if counts != self._saved_errors:
                self.mos.put(b"errors", json.dumps(counts, sort_keys=True).encode())
                self._saved_errors = counts
            for name in sorted(self._moved):
                tree = self.trees.get(name)
                if tree is not None and tree.root != self._roots[name]:
                    self.mos.put(OBJSET_PREFIX + name, encode_bp(tree.root), REF_TREE)
                    self._roots[name] = tree.root
            self._moved.clear()
            changed = self.mos.dirty or self.allocator.changes != self._synced_changes
            if not (changed or force):
                return self.synced_txg
            txg = self.txg
            mos_root = self.mos.sync()
            if self.spacemap_bp is not None:
                self.blocks.free(self.spacemap_bp)
            self.spacemap_bp = self.blocks.write_self_describing(
                self.allocator.view.encode, BT_SPACEMAP,
                META_POLICY)
            ub = fl.Uberblock(txg, self.guid, int(time.time()), mos_root, self.spacemap_bp)
            self.allocator.begin_release()
            self.blocks.txg = txg + 1           # the next txg is open from here on
            self.txg_bytes = 0
            self._synced_changes = self.allocator.changes
            if wait or not self.pipeline:
                self._land(txg, lambda: self._write_uberblock(ub))
                return txg
            if self._committer is None:
                self._committer = ThreadPoolExecutor(1, thread_name_prefix=f"txg-{self.name}")
            self._commit = (txg, self._committer.submit(self._write_uberblock, ub))
            return self.synced_txg

    def _sync_dirty_trees(self) -> bool:
        """Write every tree dirtied since its last sync (step 2); False if none was. A tree
        that a failed write leaves dirty stays listed for the next try; one that another tree's
        sync dirties again (its deadlist) lists itself again, for the next round."""
        synced = False
        for name in sorted(self._dirtied):
            self._dirtied.discard(name)
            tree = self.trees.get(name)
            if tree is None or not tree.dirty:
                continue
            try:
                tree.sync()
            except BaseException:
                self._dirtied.add(name)
                raise
            self._moved.add(name)
            synced = True
        return synced

    def _write_uberblock(self, ub: fl.Uberblock) -> None:
        """Steps 4-6: everything the txg wrote reaches the disk, then its uberblock does. On
        the commit thread this never takes the pool lock (the next sync holds it while it
        waits for us)."""
        leaves = self.live_leaves()
        for leaf in leaves:
            leaf.device.flush()
        for leaf in leaves:
            leaf.write_uberblock(ub)
        for leaf in leaves:
            leaf.device.flush()

    _synced_changes = -1
    _saved_errors: dict = {}

    def start_sync_timer(self, interval: float = 5.0) -> None:
        """Sync every `interval` seconds in a background thread (zfs_txg_timeout)."""
        def run() -> None:
            while not self._closing.wait(interval):
                with self.lock:
                    if not self.closed:
                        self.sync()
        self._timer = threading.Thread(target=run, name=f"txg-sync-{self.name}", daemon=True)
        self._timer.start()

    # ---- shutting down --------------------------------------------------------------------
    def close(self, *, export: bool = False, destroy: bool = False) -> None:
        with self.lock:
            if self.closed:
                return
            self.sync()
            if export or destroy:
                self.state = "destroyed" if destroy else "exported"
                self.write_labels()
            self.closed = True
        self._closing.set()
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.join()
        self._stop_committer()
        self.blocks.close()
        for leaf in self.leaves():
            leaf.device.close()

    def _stop_committer(self) -> None:
        if self._committer is not None:
            self._committer.shutdown(wait=True)     # a commit in flight ends first
            self._committer = None

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        else:  # an exception (a power cut in tests): release files without writing
            self.abandon()

    def abandon(self) -> None:
        """Release the devices without writing anything (a dry-run import, a failure)."""
        self.closed = True
        self._closing.set()
        self._stop_committer()
        self.blocks.close()
        for leaf in self.leaves():
            leaf.device.close()

    # ---- space ----------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return self.allocator.size

    @property
    def free(self) -> int:
        # early writes (BlockIO.prepare_ahead) hold space for data the upper layers still
        # count as dirty, and ask space for: counting it here too would halve what fits
        return self.allocator.free_bytes + self.allocator.deferred_bytes + self.blocks.ahead_bytes

    @property
    def allocated(self) -> int:
        return self.size - self.free


def explain_recover(name: str, newest: fl.Uberblock, older: fl.Uberblock | None) -> str:
    """What zpool import says after a failed import (libzfs's zpool_explain_recover)."""
    if older is None:
        return "\n\tDestroy and re-create the pool from\n\ta backup source."
    text = ("\n\tRecovery is possible, but will result in some data loss.\n"
            f"\tReturning the pool to its state as of {time.strftime('%c', time.localtime(older.timestamp))}\n"
            "\tshould correct the problem.  ")
    loss = newest.timestamp - older.timestamp
    if loss > 120:
        text += f"Approximately {(loss + 30) // 60} minutes of data\n\tmust be discarded, irreversibly.  "
    elif loss > 0:
        text += f"Approximately {loss} seconds of data\n\tmust be discarded, irreversibly.  "
    return text + (f"Recovery can be attempted\n\tby executing 'zpool import -F {name}'.  "
                   "A scrub of the pool\n\tis strongly recommended after recovery.")


def rewind_exclaim(name: str, pool: "Pool", dry_run: bool) -> str:
    """What a rewinding import says (libzfs's zpool_rewind_exclaim); "" if it did not rewind."""
    if pool.rewound is None:
        return ""
    older, newest = pool.rewound
    when = time.strftime("%c", time.localtime(older.timestamp))
    text = (f"Would be able to return {name} to its state as of {when}.\n" if dry_run else
            f"Pool {name} returned to its state as of {when}.\n")
    loss = newest.timestamp - older.timestamp
    verb = "Would discard" if dry_run else "Discarded"
    if loss > 120:
        text += f"{verb} approximately {(loss + 30) // 60} minutes of transactions.\n"
    elif loss > 0:
        text += f"{verb} approximately {loss} seconds of transactions.\n"
    return text


def open_files(paths: list[str], *, readonly: bool = False) -> list[FileDevice]:
    return [FileDevice(p, readonly=readonly) for p in paths]
