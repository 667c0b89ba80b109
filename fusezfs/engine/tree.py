"""Objects layer: a copy-on-write B+-tree of items (key -> value) whose nodes are blocks.

Theory of operation
-------------------
Everything an upper layer stores (inodes, directory entries, file extents, xattrs, the MOS's
catalogue) is an item of some tree. Keys are byte strings compared lexicographically (callers
build them from big-endian integers so numeric order is key order); values are byte strings,
optionally flagged as holding the block pointer of a block the tree owns (REF_BLOCK) or of the
root of another tree (REF_TREE). The node format is in formats/node.py.

Crash safety comes from never changing a written node. A modification copies the path from the
root down to the leaf it touches into dirty in-memory nodes ("path copying"); everything else stays
shared with the last synced state. `sync()` writes the dirty nodes bottom-up as *new* blocks and
returns the new root's block pointer. Until the owner (the pool) commits that pointer in an
uberblock, the previous root and everything it reaches remain intact on disk, because:

* the tree only hands blocks to `store.free` inside `sync()`, after every new node is written:
  the nodes the new state replaced and the REF_BLOCK values it dropped. Between syncs the last
  synced root is fully readable (a snapshot, a diff or a reader may still be walking it);
* `store.free` is the owner's policy: a block born before the open txg is only deferred (reusable
  once the txg that stopped referencing it is durable) or put on a snapshot's deadlist.

Every block the tree stops referencing is passed to `free` exactly once, and nothing still
referenced is, so "allocated == reachable" holds after every sync (tests/test_tree.py checks it
against a fake store on random workloads).

Memory stays bounded: clean nodes are decoded on demand and kept in a bounded LRU (`NodeCache`,
keyed by what identifies a stored block, so one cache may be shared by several trees); a parent
refers to a clean child by its block pointer, never by the decoded object, so only dirty nodes are
pinned, and those are what `dirty_bytes` reports to the pool's dirty-data budget.

Nodes split when their encoded size exceeds NODE_MAX (32 KiB: about 210 extent items or 220
children, so a million extents sit three levels deep), in halves, or 7/8 + 1/8 when the overflow
came from appending at the node's end (files are mostly written in order, and even splits would
leave such trees half empty). They are merged with a sibling (then split again evenly if the union
is too big) when they fall under NODE_MIN (8 KiB), so a tree that lost most of its items shrinks
back. All leaves stay at the same depth: the tree grows and shrinks only at the root. Lookups use
`bisect` on each node's key list.

A Tree is not thread safe; the pool serialises access. Scans tolerate modification of the tree
between the items they yield (they re-find their place leaf by leaf).
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import OrderedDict
from typing import Callable, Iterator, Protocol

from fusezfs.formats import node as fmt
from fusezfs.formats.bp import BP_SIZE, BT_NODE, BlockPointer, decode_bp
from fusezfs.formats.node import MAX_KEY, MAX_VALUE, REF_BLOCK, REF_NONE, REF_TREE

__all__ = ["REF_NONE", "REF_BLOCK", "REF_TREE", "MAX_KEY", "MAX_VALUE", "NODE_MAX", "NODE_MIN",
           "NodeStore", "NodeCache", "Tree", "diff"]

NODE_MAX = 32 * 1024     # split a node whose encoded size exceeds this
NODE_MIN = NODE_MAX // 4  # rebalance a non-root node whose encoded size falls below this
RAW_LEAVES = 256          # encoded leaves kept per cache for re-encoding (NodeCache.put_raw)
_HEAD = fmt.HEADER_SIZE
_LEAF = fmt.LEAF_ENTRY_OVERHEAD
_INNER = fmt.INNER_ENTRY_OVERHEAD
_PENDING_COST = 200      # memory charged for each block pointer waiting to be freed at sync


class NodeStore(Protocol):
    """What a tree needs from the block layer (the pool implements it)."""

    def read_node(self, bp: BlockPointer) -> bytes:
        """Verified, decompressed bytes of a node block; raises on a checksum error."""

    def write_node(self, data: bytes, level: int) -> BlockPointer:
        """Write a node block now (free space only) and return its pointer (birth = open txg)."""

    def free(self, bp: BlockPointer) -> None:
        """The tree no longer references `bp` (immediate, deferred or deadlist: owner's choice)."""


class _Node:
    """A decoded node. Leaves: vals are values, refs the ref flags. Internal nodes: vals are the
    children, each a BlockPointer (clean child) or a _Node (dirty child), refs is None. keys[0] of
    an internal node is always b"". nbytes is the encoded size, kept up to date incrementally.
    A _Node in the cache is clean and never mutated; mutation happens on a private copy."""

    __slots__ = ("level", "keys", "vals", "refs", "nbytes", "base")

    def __init__(self, level: int, keys: list, vals: list, refs: list | None, nbytes: int) -> None:
        self.level = level
        self.keys = keys
        self.vals = vals
        self.refs = refs
        self.nbytes = nbytes
        # a dirty leaf copied from a clean one whose bytes are at hand: (bytes, keys, vals,
        # refs) of that one, so that writing it re-encodes only what changed (encode_leaf_from)
        self.base: tuple | None = None


def _cache_key(bp: BlockPointer) -> tuple:
    # A stored block is named by where it lives and what it holds; the checksum alone would
    # also do for honest data but not against crafted collisions of a non-cryptographic hash.
    return (bp.checksum, bp.dvas[0].offset, bp.birth)


class NodeCache:
    """Bounded LRU of decoded clean nodes. Entries are immutable and keyed by block identity, so
    one cache can safely serve every tree of a pool (snapshots and clones share nodes)."""

    def __init__(self, max_nodes: int = 4096) -> None:
        self.max_nodes = max(1, max_nodes)
        self._d: OrderedDict[tuple, _Node] = OrderedDict()
        # the encoded bytes of the leaves written or read last (RAW_LEAVES of them, a few MiB):
        # a leaf changed again soon (the hot ones, at every txg) is re-encoded from them
        self._raw: OrderedDict[tuple, bytes] = OrderedDict()

    def put_raw(self, key: tuple, data: bytes) -> None:
        self._raw[key] = data
        self._raw.move_to_end(key)
        while len(self._raw) > RAW_LEAVES:
            self._raw.popitem(last=False)

    def get_raw(self, key: tuple) -> bytes | None:
        return self._raw.get(key)

    def get(self, key: tuple) -> _Node | None:
        n = self._d.get(key)
        if n is not None:
            self._d.move_to_end(key)
        return n

    def put(self, key: tuple, node: _Node) -> None:
        self._d[key] = node
        self._d.move_to_end(key)
        while len(self._d) > self.max_nodes:
            self._d.popitem(last=False)

    def clear(self) -> None:
        self._d.clear()
        self._raw.clear()

    def __len__(self) -> int:
        return len(self._d)


def _decode(data: bytes, bp: BlockPointer) -> _Node:
    d = fmt.decode(data)
    if d.level != bp.level:
        raise ValueError(f"tree node level {d.level} disagrees with its block pointer ({bp.level})")
    return _Node(d.level, d.keys, d.values, d.refs, len(data))


def _as_key(key) -> bytes:
    if type(key) is bytes:
        return key
    if isinstance(key, (bytearray, memoryview)):
        return bytes(key)
    raise TypeError(f"tree keys are bytes, not {type(key).__name__}")


def _ref_bp(value: bytes) -> BlockPointer | None:
    """The block pointer at the start of a REF_BLOCK/REF_TREE value (None for a hole)."""
    return decode_bp(value, 0)


def _entry_size(node: _Node, i: int) -> int:
    if node.level:
        return _INNER + len(node.keys[i])
    return _LEAF + len(node.keys[i]) + len(node.vals[i])


class Tree:
    """One copy-on-write B+-tree. `root` is the last synced root (None: empty tree)."""

    def __init__(self, store: NodeStore, root: BlockPointer | None, *, cache_nodes: int = 4096,
                 cache: NodeCache | None = None, node_max: int = NODE_MAX) -> None:
        if root is not None and root.type != BT_NODE:
            raise ValueError("a tree root must point to a tree node block")
        if node_max < 4 * (_INNER + MAX_KEY):
            # an overfull internal node must split into halves of at least two children each
            raise ValueError(f"node_max must be at least {4 * (_INNER + MAX_KEY)}")
        self.node_max = node_max       # writer policy only: any node size is readable
        self.node_min = node_max // 4
        self.store = store
        self._root = root
        self._top: _Node | None = None          # dirty root node, None when nothing is dirty
        self._pending: list[BlockPointer] = []  # to free at the next sync
        self._dirty_bytes = 0
        self._cache = cache if cache is not None else NodeCache(cache_nodes)
        # called when the tree goes from clean to dirty: the pool's list of trees to write at
        # the next sync (Pool.objset), so that a commit need not ask every open tree
        self.on_dirty: Callable[[], None] | None = None

    # ---- state -------------------------------------------------------------------------------
    @property
    def root(self) -> BlockPointer | None:
        """The root written by the last sync (or given to the constructor)."""
        return self._root

    @property
    def dirty(self) -> bool:
        return self._top is not None

    @property
    def dirty_bytes(self) -> int:
        """Encoded size of the dirty nodes (what the next sync writes, before compression) plus
        a small charge per block waiting to be freed: this tree's share of the dirty budget."""
        return self._dirty_bytes

    # ---- node access -------------------------------------------------------------------------
    def _load(self, bp: BlockPointer) -> _Node:
        """A clean node through the cache (hot paths: lookups and modifications)."""
        key = (bp.checksum, bp.dvas[0].offset, bp.birth)
        n = self._cache.get(key)
        if n is None:
            data = self.store.read_node(bp)
            n = _decode(data, bp)
            self._cache.put(key, n)
            if not n.level:
                self._cache.put_raw(key, data)
        return n

    def _peek(self, bp: BlockPointer) -> _Node:
        """A clean node without filling the cache (whole-tree walks would only evict hot nodes)."""
        n = self._cache.get(_cache_key(bp))
        return n if n is not None else _decode(self.store.read_node(bp), bp)

    def _start(self) -> _Node | None:
        if self._top is not None:
            return self._top
        return None if self._root is None else self._load(self._root)

    def _cow(self, bp: BlockPointer) -> _Node:
        """A private, dirty copy of a clean node; the block is freed at the next sync."""
        n = self._load(bp)
        self._pending.append(bp)
        copy = _Node(n.level, n.keys.copy(), n.vals.copy(),
                     None if n.refs is None else n.refs.copy(), n.nbytes)
        if not n.level:
            raw = self._cache.get_raw(_cache_key(bp))
            if raw is not None:
                copy.base = (raw, n.keys, n.vals, n.refs)
        self._dirty_bytes += copy.nbytes + _PENDING_COST
        return copy

    def _dirty_child(self, parent: _Node, i: int) -> _Node:
        c = parent.vals[i]
        if type(c) is not _Node:
            c = self._cow(c)
            parent.vals[i] = c
        return c

    def _path(self, key: bytes) -> tuple[list[_Node], list[int]]:
        """Make the root-to-leaf path for `key` dirty; returns the nodes and the child index
        taken at each internal node."""
        top = self._top
        if top is None:
            if self._root is None:
                top = _Node(0, [], [], [], _HEAD)
                self._dirty_bytes += _HEAD
            else:
                top = self._cow(self._root)
            self._top = top
            if self.on_dirty is not None:
                self.on_dirty()
        path = [top]
        idxs: list[int] = []
        node = top
        while node.level:
            i = bisect_right(node.keys, key) - 1
            c = node.vals[i]
            if type(c) is not _Node:
                c = self._cow(c)
                node.vals[i] = c
            idxs.append(i)
            path.append(c)
            node = c
        return path, idxs

    def _walk(self, key: bytes) -> tuple[list[_Node], list[int], bool]:
        """The root-to-leaf path for `key` as it is, making nothing dirty (empty for an empty
        tree), the child index taken at each internal node, and whether every node on it is
        dirty already: then a removal may use it as it is, without _path's second descent."""
        node = self._top
        dirty = node is not None
        if node is None:
            if self._root is None:
                return [], [], False
            node = self._load(self._root)
        path = [node]
        idxs: list[int] = []
        while node.level:
            i = bisect_right(node.keys, key) - 1
            c = node.vals[i]
            if type(c) is not _Node:
                dirty = False
                c = self._load(c)
            idxs.append(i)
            path.append(c)
            node = c
        return path, idxs, dirty

    def _release(self, value: bytes) -> None:
        """The item holding this REF_BLOCK value is going away: free its block at sync."""
        bp = _ref_bp(value)
        if bp is not None:
            self._pending.append(bp)
            self._dirty_bytes += _PENDING_COST

    # ---- lookups -----------------------------------------------------------------------------
    def get_item(self, key: bytes) -> tuple[bytes, int] | None:
        """(value, ref flag) of `key`, or None."""
        key = _as_key(key)
        node = self._start()
        if node is None:
            return None
        load = self._load
        while node.level:
            c = node.vals[bisect_right(node.keys, key) - 1]
            node = c if type(c) is _Node else load(c)
        keys = node.keys
        i = bisect_left(keys, key)
        if i < len(keys) and keys[i] == key:
            return node.vals[i], node.refs[i]
        return None

    def get(self, key: bytes) -> bytes | None:
        item = self.get_item(key)
        return None if item is None else item[0]

    def _leaf(self, pos: bytes | None, before: bool) -> tuple[_Node | None, bytes | None, bytes | None]:
        """The leaf where `pos` belongs (before=False), or the one holding the greatest keys
        below `pos` (before=True; pos None = +infinity); with the separators bounding it."""
        node = self._start()
        low = high = None
        while node is not None and node.level:
            keys = node.keys
            if pos is None:
                i = len(keys) - 1
            elif before:
                i = max(bisect_left(keys, pos) - 1, 0)
            else:
                i = bisect_right(keys, pos) - 1
            if i > 0:
                low = keys[i]
            if i + 1 < len(keys):
                high = keys[i + 1]
            c = node.vals[i]
            node = c if type(c) is _Node else self._load(c)
        return node, low, high

    def first_item(self, lo: bytes, hi: bytes | None = None) -> tuple[bytes, bytes, int] | None:
        """The first (key, value, ref) with lo <= key < hi (None: unbounded), or None: what
        `next(scan_items(lo, hi), None)` gives, without a generator and a copied slice. Lookups
        by key range (a directory entry by its name's hash, an inode's first item) are mostly
        one such probe, and they are on the path of every create, lookup and unlink."""
        pos = _as_key(lo)
        hi = None if hi is None else _as_key(hi)
        while True:
            leaf, _low, high = self._leaf(pos, False)
            if leaf is None:
                return None
            keys = leaf.keys
            i = bisect_left(keys, pos)
            if i < len(keys):
                key = keys[i]
                return (key, leaf.vals[i], leaf.refs[i]) if hi is None or key < hi else None
            if high is None or (hi is not None and high >= hi):
                return None
            pos = high            # pos was past this leaf's last key: the next leaf's first

    def scan_items(self, lo: bytes | None = None, hi: bytes | None = None, *,
                   reverse: bool = False) -> Iterator[tuple[bytes, bytes, int]]:
        """(key, value, ref) for lo <= key < hi (None: unbounded), in key order or reversed.

        Works leaf by leaf: each leaf's slice is copied, then the next leaf is found again from
        the root by its separator. So the tree may be modified while a scan is suspended (e.g.
        deleting the items just yielded): every key present throughout the scan is yielded
        exactly once, keys added or removed meanwhile may or may not be."""
        lo = None if lo is None else _as_key(lo)
        hi = None if hi is None else _as_key(hi)
        if lo is not None and hi is not None and lo >= hi:
            return
        if not reverse:
            pos = b"" if lo is None else lo
            while True:
                leaf, _low, high = self._leaf(pos, False)
                if leaf is None:
                    return
                keys = leaf.keys
                i = bisect_left(keys, pos)
                j = len(keys) if hi is None else bisect_left(keys, hi, i)
                if i < j:
                    yield from list(zip(keys[i:j], leaf.vals[i:j], leaf.refs[i:j]))
                if high is None or (hi is not None and high >= hi):
                    return
                pos = high
        else:
            pos = hi
            while True:
                leaf, low, _high = self._leaf(pos, True)
                if leaf is None:
                    return
                keys = leaf.keys
                j = len(keys) if pos is None else bisect_left(keys, pos)
                i = 0 if lo is None else bisect_left(keys, lo, 0, j)
                if i < j:
                    chunk = list(zip(keys[i:j], leaf.vals[i:j], leaf.refs[i:j]))
                    chunk.reverse()
                    yield from chunk
                if low is None or (lo is not None and low <= lo):
                    return
                pos = low

    def scan(self, lo: bytes | None = None, hi: bytes | None = None, *,
             reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) for lo <= key < hi, in key order (or reversed)."""
        for k, v, _r in self.scan_items(lo, hi, reverse=reverse):
            yield k, v

    # ---- modifications -----------------------------------------------------------------------
    def put(self, key: bytes, value: bytes, ref: int = REF_NONE) -> None:
        """Insert or replace an item. A REF_BLOCK value hands the block to the tree: the block of
        the value it replaces (if that was REF_BLOCK) is freed at the next sync, even if it is
        the same block pointer (so a dedup hit, which took a new reference, stays balanced)."""
        key = _as_key(key)
        if type(value) is not bytes:
            if not isinstance(value, (bytearray, memoryview)):
                raise TypeError(f"tree values are bytes, not {type(value).__name__}")
            value = bytes(value)
        if len(key) > MAX_KEY:
            raise ValueError(f"key of {len(key)} bytes exceeds the limit of {MAX_KEY}")
        if len(value) > MAX_VALUE:
            raise ValueError(f"value of {len(value)} bytes exceeds the limit of {MAX_VALUE}")
        if ref:
            if ref not in (REF_BLOCK, REF_TREE):
                raise ValueError(f"unknown ref flag {ref}")
            if len(value) < BP_SIZE:
                raise ValueError("a reference value starts with a 128-byte block pointer")
            _ref_bp(value)   # raises ValueError if malformed: better now than at free time
        path, idxs = self._path(key)
        leaf = path[-1]
        keys = leaf.keys
        i = bisect_left(keys, key)
        if i < len(keys) and keys[i] == key:
            old = leaf.vals[i]
            if leaf.refs[i] == REF_BLOCK:
                self._release(old)
            delta = len(value) - len(old)
            leaf.vals[i] = value
            leaf.refs[i] = ref
            appended = False
        else:
            keys.insert(i, key)
            leaf.vals.insert(i, value)
            leaf.refs.insert(i, ref)
            delta = _LEAF + len(key) + len(value)
            appended = i == len(keys) - 1
        leaf.nbytes += delta
        self._dirty_bytes += delta
        if leaf.nbytes > self.node_max:
            self._split_up(path, idxs, appended)
        elif delta < 0 and leaf.nbytes < self.node_min:
            self._rebalance(path, idxs)

    def delete(self, key: bytes) -> bool:
        """Remove an item; True if it existed. A REF_BLOCK value's block is freed at sync."""
        key = _as_key(key)
        path, idxs, dirty = self._walk(key)     # do not dirty a path for nothing
        if not path:
            return False
        keys = path[-1].keys
        i = bisect_left(keys, key)
        if i == len(keys) or keys[i] != key:
            return False
        if not dirty:
            path, idxs = self._path(key)
        self._remove(path[-1], i, i + 1)
        self._rebalance(path, idxs)
        return True

    def delete_range(self, lo: bytes | None, hi: bytes | None) -> int:
        """Remove every item with lo <= key < hi (None: unbounded); returns how many. Works a
        leaf at a time, so truncating a large file costs O(leaves * depth), not O(items * depth)."""
        pos = b"" if lo is None else _as_key(lo)
        hi = None if hi is None else _as_key(hi)
        count = 0
        while True:
            path, idxs, dirty = self._walk(pos)
            keys = path[-1].keys if path else []
            i = bisect_left(keys, pos)
            if i == len(keys):              # nothing at or after pos in its leaf: the next
                first = self.first_item(pos, hi)
                if first is None:
                    return count
                pos = first[0]
                continue
            if hi is not None and keys[i] >= hi:
                return count
            if not dirty:
                path, idxs = self._path(pos)
            leaf = path[-1]
            n = len(leaf.keys)
            j = n if hi is None else bisect_left(leaf.keys, hi, i)
            self._remove(leaf, i, j)
            count += j - i
            self._rebalance(path, idxs)
            if j < n:       # this leaf holds a key at or past hi: the range is empty now
                return count

    def _remove(self, leaf: _Node, i: int, j: int) -> None:
        """Remove entries i..j-1 of a dirty leaf, queueing their REF_BLOCK blocks for freeing.
        All pointers are decoded before anything changes, so a malformed one (ValueError)
        leaves the tree as it was."""
        keys, vals, refs = leaf.keys, leaf.vals, leaf.refs
        ks, vs, rs = keys[i:j], vals[i:j], refs[i:j]
        doomed = [bp for v, r in zip(vs, rs) if r == REF_BLOCK
                  for bp in (_ref_bp(v),) if bp is not None] if REF_BLOCK in rs else []
        gone = _LEAF * len(ks) + sum(map(len, ks)) + sum(map(len, vs))
        del keys[i:j], vals[i:j], refs[i:j]
        self._pending += doomed
        leaf.nbytes -= gone
        self._dirty_bytes += _PENDING_COST * len(doomed) - gone

    # ---- shape -------------------------------------------------------------------------------
    def _split(self, node: _Node, at_end: bool = False) -> tuple[_Node, bytes]:
        """Split a dirty node in two; returns (right, separator). Normally the halves have about
        equal encoded size. When the node overflowed because an entry was appended at its end
        (sequential keys: a file written in order, inodes allocated in order), the left part is
        filled to 7/8 instead, or ascending inserts would leave every node half empty."""
        n = len(node.keys)
        sizes = [_entry_size(node, i) for i in range(n)]
        total = sum(sizes)
        acc = 0
        k = 1
        if at_end:
            # internal nodes keep >= 2 children on each side: a non-root node with a single
            # child could not be merged at its level when that child empties
            least = 2 if node.level else 1
            budget = self.node_max * 7 // 8 - _HEAD
            k = 0
            while k < n - least and (k < least or acc + sizes[k] <= budget):
                acc += sizes[k]
                k += 1
        else:
            for k in range(1, n):
                acc += sizes[k - 1]
                if 2 * acc >= total:
                    # take entry k-1 on the left only if that is closer to an even split
                    if 2 * acc - total > total - 2 * (acc - sizes[k - 1]) and k > 1:
                        k -= 1
                        acc -= sizes[k]
                    break
        right = _Node(node.level, node.keys[k:], node.vals[k:],
                      None if node.refs is None else node.refs[k:], _HEAD + total - acc)
        del node.keys[k:], node.vals[k:]
        if node.refs is not None:
            del node.refs[k:]
        sep = right.keys[0]
        if node.level:
            right.keys[0] = b""
            right.nbytes -= len(sep)
        self._dirty_bytes += _HEAD + acc + right.nbytes - node.nbytes
        node.nbytes = _HEAD + acc
        return right, sep

    def _split_all(self, node: _Node, at_end: bool = False) -> list[tuple[bytes, _Node]]:
        """Split an overfull node until every piece fits (a single entry always "fits"); returns
        the new right siblings with their separators, in key order. With the default NODE_MAX one
        split always suffices; smaller test sizes may need more."""
        if node.nbytes <= self.node_max or len(node.keys) < 2:
            return []
        right, sep = self._split(node, at_end)
        return self._split_all(node) + [(sep, right)] + self._split_all(right, at_end)

    def _adopt(self, parent: _Node, i: int, pieces: list[tuple[bytes, _Node]]) -> None:
        """Insert new children (with their separators) into a dirty parent at index i."""
        for sep, right in pieces:
            parent.keys.insert(i, sep)
            parent.vals.insert(i, right)
            parent.nbytes += _INNER + len(sep)
            self._dirty_bytes += _INNER + len(sep)
            i += 1

    def _split_up(self, path: list[_Node], idxs: list[int], at_end: bool) -> None:
        """Split overfull nodes from the leaf up; a split root makes the tree one level taller.
        at_end: the leaf overflowed by an append at its end (see _split)."""
        for d in range(len(path) - 1, 0, -1):
            pieces = self._split_all(path[d], at_end)
            if not pieces:
                return
            parent = path[d - 1]
            self._adopt(parent, idxs[d - 1] + 1, pieces)
            at_end = idxs[d - 1] + len(pieces) == len(parent.keys) - 1
        self._fix_root(at_end)

    def _rebalance(self, path: list[_Node], idxs: list[int]) -> None:
        """After removals: merge each underfull node on the path with a sibling (splitting the
        union again if it is too big), bottom-up. A merge can also make the parent overfull (a new
        separator may be longer than the one it replaces), so parents are split as needed. The
        root changes only when something was merged or split: most removals leave every node
        on the path full enough, and then cost no more than this loop."""
        changed = False
        for d in range(len(path) - 1, 0, -1):
            parent = path[d - 1]
            n = len(parent.keys)
            if path[d].nbytes < self.node_min and n >= 2:
                changed = True
                li = idxs[d - 1] if idxs[d - 1] + 1 < n else idxs[d - 1] - 1
                ri = li + 1
                left = self._dirty_child(parent, li)
                right = self._dirty_child(parent, ri)
                sep = parent.keys[ri]
                merged = left.nbytes + right.nbytes - _HEAD
                if left.level:
                    right.keys[0] = sep
                    merged += len(sep)
                else:
                    left.refs += right.refs
                left.keys += right.keys
                left.vals += right.vals
                self._dirty_bytes += merged - left.nbytes - right.nbytes
                left.nbytes = merged
                del parent.keys[ri], parent.vals[ri]
                parent.nbytes -= _INNER + len(sep)
                self._dirty_bytes -= _INNER + len(sep)
                if merged > self.node_max:
                    self._adopt(parent, ri, self._split_all(left))
            if d >= 2 and parent.nbytes > self.node_max:
                changed = True
                self._adopt(path[d - 2], idxs[d - 2] + 1, self._split_all(parent))
        if changed:
            self._fix_root()

    def _fix_root(self, at_end: bool = False) -> None:
        """Grow a new root above an overfull one; drop roots that have a single child."""
        top = self._top
        while True:
            pieces = self._split_all(top, at_end)
            if not pieces:
                break
            new = _Node(top.level + 1, [b""], [top], None, _HEAD + _INNER)
            self._dirty_bytes += new.nbytes
            self._adopt(new, 1, pieces)
            top = new
        while top.level and len(top.keys) == 1:
            child = self._dirty_child(top, 0)
            self._dirty_bytes -= top.nbytes
            top = child
        self._top = top

    # ---- sync --------------------------------------------------------------------------------
    def sync(self) -> BlockPointer | None:
        """Write the dirty nodes bottom-up, then free what the new state no longer references;
        returns the new root (None: empty). With nothing dirty, writes nothing. If a write fails
        the tree stays consistent (written children are simply clean) and sync can be retried."""
        top = self._top
        if top is None:
            return self._root
        root = self._write(top)
        free = self.store.free
        pending, self._pending = self._pending, []
        for bp in pending:
            free(bp)
        self._root = root
        self._top = None
        self._dirty_bytes = 0
        return root

    def _write(self, node: _Node) -> BlockPointer | None:
        if node.level:
            keys, vals = node.keys, node.vals
            for i, c in enumerate(vals):
                if type(c) is _Node:
                    vals[i] = self._write(c)
            if None in vals:   # an empty subtree (never made by this code; tolerated anyway)
                keep = [i for i, c in enumerate(vals) if c is not None]
                node.keys = keys = [keys[i] for i in keep]
                node.vals = vals = [vals[i] for i in keep]
                if keys:
                    keys[0] = b""
            if not keys:
                return None
            data = fmt.encode_internal(node.level, keys, vals)
        else:
            if not node.keys:
                return None
            data = None
            if node.base is not None:
                data = fmt.encode_leaf_from(node.keys, node.vals, node.refs, node.base)
                node.base = None
                if len(data) != node.nbytes:        # never expected: then encode it all
                    data = None
            if data is None:
                data = fmt.encode_leaf(node.keys, node.vals, node.refs)
        bp = self.store.write_node(data, node.level)
        node.nbytes = len(data)
        self._cache.put(_cache_key(bp), node)   # now clean: identical to what a read would give
        if not node.level:
            self._cache.put_raw(_cache_key(bp), data)
        return bp

    # ---- whole-tree operations ---------------------------------------------------------------
    def walk(self, seen: set | None = None, *,
             born_after: int = -1) -> Iterator[tuple[str, BlockPointer]]:
        """Every block pointer reachable from the synced root, depth first: ("node", bp) for each
        node (yielded before it is read), ("block", bp) for REF_BLOCK values and ("tree", bp)
        for REF_TREE values (not descended into). Holes in reference values are skipped. With
        `seen` (block identities), a node already in it is skipped with its whole subtree and
        every node visited is added: snapshots and clones share subtrees, walked once. With
        `born_after`, only blocks born after that txg, and only the subtrees of nodes born after
        it (copy-on-write rewrites every node above a change, so nothing under an older node
        is newer): the cost follows what changed since."""
        if self._root is None:
            return
        stack = [self._root]
        while stack:
            bp = stack.pop()
            if bp.birth <= born_after:
                continue
            if seen is not None:
                ident = bp.identity()
                if ident in seen:
                    continue
                seen.add(ident)
            yield "node", bp
            n = self._peek(bp)
            if n.level:
                stack.extend(reversed(n.vals))
                continue
            for v, r in zip(n.vals, n.refs):
                if r:
                    ref = _ref_bp(v)
                    if ref is not None and ref.birth > born_after:
                        yield ("block" if r == REF_BLOCK else "tree"), ref

    def destroy(self) -> None:
        """Free every node and REF_BLOCK block of the current state (dirty changes included) and
        everything waiting to be freed; the tree is then empty with no root. REF_TREE children
        are the caller's business."""
        free = self.store.free
        pending, self._pending = self._pending, []
        for bp in pending:
            free(bp)
        stack: list = [self._top] if self._top is not None else \
            [self._root] if self._root is not None else []
        while stack:
            item = stack.pop()
            if type(item) is _Node:
                n = item
            else:
                n = self._peek(item)
                free(item)
            if n.level:
                stack.extend(n.vals)
                continue
            for v, r in zip(n.vals, n.refs):
                if r == REF_BLOCK:
                    ref = _ref_bp(v)
                    if ref is not None:
                        free(ref)
        self._top = None
        self._root = None
        self._dirty_bytes = 0

    def check(self) -> dict:
        """Check the structure of the current state (ordering, separators, balance, sizes, dirty
        accounting) and return statistics; raises AssertionError. Reads every node: for tests
        and verification tools, not for hot paths."""
        stats = {"items": 0, "nodes": 0, "dirty_nodes": 0, "height": 0, "leaves": 0}
        top = self._start()
        if top is None:
            assert self._dirty_bytes == 0, "dirty bytes without dirty nodes"
            return stats
        stats["height"] = top.level + 1
        dirty_total = 0
        stack: list = [(top, self._top is not None, None, None, True)]
        while stack:
            n, is_dirty, lo, hi, is_root = stack.pop()
            stats["nodes"] += 1
            keys = n.keys
            assert n.nbytes == _HEAD + sum(_entry_size(n, i) for i in range(len(keys))), "nbytes"
            assert is_root or len(keys) >= (2 if n.level else 1), "non-root node too small"
            if is_dirty:
                stats["dirty_nodes"] += 1
                dirty_total += n.nbytes
            assert len(keys) <= 1 or n.nbytes <= self.node_max, "overfull node"
            assert all(a < b for a, b in zip(keys[1:], keys[2:])) if n.level else \
                all(a < b for a, b in zip(keys, keys[1:])), "keys out of order"
            if n.level == 0:
                stats["leaves"] += 1
                stats["items"] += len(keys)
                if keys:
                    assert lo is None or keys[0] >= lo, "leaf key below its separator"
                    assert hi is None or keys[-1] < hi, "leaf key at or above next separator"
                continue
            assert keys[0] == b"", "first separator of an internal node not empty"
            for i, c in enumerate(n.vals):
                clo = lo if i == 0 else keys[i]
                chi = keys[i + 1] if i + 1 < len(keys) else hi
                assert clo is None or chi is None or clo < chi, "separators out of order"
                if type(c) is _Node:
                    assert is_dirty, "clean node refers to a dirty child"
                    child = c
                else:
                    child = self._peek(c)
                assert child.level == n.level - 1, "unbalanced tree"
                stack.append((child, type(c) is _Node, clo, chi, False))
        assert dirty_total + _PENDING_COST * len(self._pending) == self._dirty_bytes, \
            "dirty byte accounting"
        return stats


# ---- diff ------------------------------------------------------------------------------------
def _expand(store: NodeStore, stack: list, entry: tuple) -> None:
    """Replace a subtree entry (1, lower bound, bp) by its contents, pushed in reverse order:
    children as subtree entries, leaf items as (0, key, (value, ref))."""
    _, lo, bp = entry
    n = _decode(store.read_node(bp), bp)
    keys, vals = n.keys, n.vals
    if n.level:
        for i in range(len(keys) - 1, 0, -1):
            stack.append((1, keys[i], vals[i]))
        stack.append((1, lo, vals[0]))
    else:
        refs = n.refs
        for i in range(len(keys) - 1, -1, -1):
            stack.append((0, keys[i], (vals[i], refs[i])))


def diff(store: NodeStore, old_root: BlockPointer | None, new_root: BlockPointer | None
         ) -> Iterator[tuple[bytes, tuple[bytes, int] | None, tuple[bytes, int] | None]]:
    """(key, old (value, ref) or None, new (value, ref) or None) for every key whose item differs
    between two synced trees, in key order.

    Both trees are consumed as ordered streams whose elements are items or unread subtrees.
    When the next element of both streams is the same block (BlockPointer.identity()), both
    streams continue with exactly that block's items, so it is skipped unread. Otherwise the
    taller subtree is opened first (the shorter one may match one of its children), and an item
    that sorts below the other stream's next subtree's lower bound is reported without opening
    it. Trees that share most nodes therefore cost time proportional to their difference."""
    a: list = [] if old_root is None else [(1, b"", old_root)]
    b: list = [] if new_root is None else [(1, b"", new_root)]
    while a and b:
        ea, eb = a[-1], b[-1]
        if ea[0] == 0 and eb[0] == 0:
            ka, kb = ea[1], eb[1]
            if ka == kb:
                a.pop()
                b.pop()
                if ea[2] != eb[2]:
                    yield ka, ea[2], eb[2]
            elif ka < kb:
                a.pop()
                yield ka, ea[2], None
            else:
                b.pop()
                yield kb, None, eb[2]
        elif ea[0] == 1 and eb[0] == 1:
            if ea[2].identity() == eb[2].identity():
                a.pop()
                b.pop()
                continue
            la, lb = ea[2].level, eb[2].level
            if la >= lb:
                a.pop()
                _expand(store, a, ea)
            if lb >= la:
                b.pop()
                _expand(store, b, eb)
        elif ea[0] == 0:
            if ea[1] < eb[1]:
                a.pop()
                yield ea[1], ea[2], None
            else:
                b.pop()
                _expand(store, b, eb)
        else:
            if eb[1] < ea[1]:
                b.pop()
                yield eb[1], None, eb[2]
            else:
                a.pop()
                _expand(store, a, ea)
    for stack, old in ((a, True), (b, False)):
        while stack:
            e = stack.pop()
            if e[0] == 1:
                _expand(store, stack, e)
            elif old:
                yield e[1], e[2], None
            else:
                yield e[1], None, e[2]
