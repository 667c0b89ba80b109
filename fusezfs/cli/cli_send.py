"""`fusezfs send` and `fusezfs receive` (`recv`): OpenZFS 2.1.11's zfs send and zfs receive,
with its options, its lines and messages, streams on stdout and stdin (fusezfs/send/).

send [-DnPpVvLecw] [-i SNAP|-I SNAP] SNAP
  A full stream of SNAP, or with -i the changes from an earlier snapshot (`@a` for one of the
  same filesystem, a clone's origin too) or a bookmark (`FS#bm`); with -I one incremental
  substream per snapshot from the source to SNAP, in a compound stream as libzfs writes it.
  A filesystem operand sends its current state (`FS@--head--`), when no daemon serves it.
  -n: nothing is sent; with -v or -P the estimate goes to stdout. -v: the estimate ("full send
  of ... estimated size is ...", "total estimated size is ...") on stderr first, then one
  progress line a second while the stream is written. -P: the estimate as tab-separated lines
  (`full FS@s SIZE`, `incremental FROM FS@s SIZE`, `size SIZE`), and progress without the
  header. The estimate is the stream's exact size: the same walk, without reading file data.
  -c sends zstd and gzip blocks as stored, without recompressing them (send/compressed.py:
  ZFS's zstd header put in front of the frame), in WRITE records flagged with their
  compression and a BEGIN with the COMPRESSED and ZSTD features; a file's last, shorter block
  and records above 128 KiB go uncompressed. -L, -e, -w are accepted and change nothing, which
  is what they mean here: fusezfs writes blocks of at most 128 KiB whatever the recordsize (-L
  would allow larger ones: leaving them out keeps every stream receivable, by zfs-fuse too);
  it has no embedded block pointers (-e embeds blocks that are); -w sends blocks as stored,
  and fusezfs encrypts nothing. -D is OpenZFS's warning and a plain stream.
  A stream is never written to a terminal.
receive [-vnFhMu] [-o prop=value] ... [-x prop] ... [-d|-e] FS|SNAP, receive -A FS
  The stream on stdin into FS (FS@ the sent snapshot's name), SNAP, or with -d/-e a name made
  from the sent one. All or nothing (send/incoming.py): a hidden dataset is built and switched
  into place when the stream's END is right; a failed or killed receive leaves the target as
  it was. -F overwrites a filesystem with no snapshots with a full stream, and for an
  incremental one discards the target's changes since the source and its snapshots after it.
  -n reads the stream and changes nothing. -u leaves a new filesystem unmounted (in a mount
  daemon; nothing is mounted otherwise). -o sets properties as `zfs set` would first, -x keeps
  a property's received value out. -v says what it receives, and how fast. -h (skip holds) and
  -M (force unmounts) are accepted: streams fusezfs takes carry no holds, and it never needs
  to unmount. -A destroys what an interrupted receive into FS left.
  -p: the filesystem's properties (set on it or received) go along, in a compound stream as
  libzfs writes it (send/props.py); a receiver sets them as received values.
  -R: a replication stream (send/replicate.py): the filesystem, its descendants, their
  snapshots and properties, clones after their origins (as clones); with -i/-I the changes
  since. Receiving one makes the whole tree; with -F, an incremental one first destroys the
  snapshots and filesystems the source no longer has.
Not yet: send -t, -s, --redact, --saved, -b, -h, -p of a filesystem operand; receive -s.

Messages and exit codes are OpenZFS's (libzfs_sendrecv.c, zfs_main.c): 1 for a failure, 2 for
bad usage (the usage text follows).
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

from fusezfs.dsl import dsprops
from fusezfs import sessions
from fusezfs.errors import Failed, Usage
from fusezfs.cli.common import error, parse
from fusezfs.cli.cli_pool import imported_names, open_pool

USAGE = {
    "send": "\tsend [-DnPpRVvLecwhb] [-[i|I] snapshot] <snapshot>\n"
            "\tsend [-DnVvPLecw] [-i snapshot|bookmark] <filesystem|volume|snapshot>\n"
            "\tsend [-DnPpVvLec] [-i bookmark|snapshot] --redact <bookmark> <snapshot>\n"
            "\tsend [-nVvPe] -t <receive_resume_token>\n"
            "\tsend [-PnVv] --saved filesystem",
    "receive": "\treceive [-vMnsFhu] [-o <property>=<value>] ... [-x <property>] ...\n"
               "\t    <filesystem|volume|snapshot>\n"
               "\treceive [-vMnsFhu] [-o <property>=<value>] ... [-x <property>] ... \n"
               "\t    [-d | -e] <filesystem>\n"
               "\treceive -A <filesystem|volume>",
}
NOT_YET = {"t": "-t (resume tokens)",
           "s": "-s (resumable streams)", "b": "-b (received properties)", "h": "-h (holds)",
           "d": "--redact", "S": "--saved"}
TERMINAL_OUT = "Error: Stream can not be written to a terminal.\nYou must redirect standard output."
TERMINAL_IN = ("Error: Backup stream can not be read from a terminal.\n"
               "You must redirect standard input.")


def usage_text(verb: str) -> str:
    return ("usage:\n" + USAGE[verb] + "\n\nFor the property list, run: zfs set|get\n"
            "\nFor the delegated permission list, run: zfs allow|unallow")


def pool_of(name: str) -> str:
    return name.split("/")[0].split("@")[0].split("#")[0]


@contextmanager
def opened(pool_name: str) -> Iterator[tuple[object, object]]:
    """(pool, Handle) of an imported pool: the serving daemon's, or opened here until the
    block ends (closing commits). The caller takes the pool lock for each step itself."""
    from fusezfs.api import Handle
    provided = sessions.handle(pool_name)
    if provided is not None:
        yield provided.pool, provided
        return
    pool = open_pool(pool_name)
    try:
        yield pool, Handle(pool)
    finally:
        pool.close()


@contextmanager
def opened_dataset_pool(name: str) -> Iterator[tuple[object, object]]:
    """(pool, Datasets) of the pool of dataset `name`, which must be imported."""
    if pool_of(name) not in imported_names():
        raise Failed(f"cannot open '{name}': dataset does not exist")
    with opened(pool_of(name)) as (pool, handle):
        yield pool, handle.dsl


# ---- send -----------------------------------------------------------------------------------
class Progress:
    """send -v: a line a second on stderr while a substream is written (send_progress_thread:
    a header first unless -P, then the time, the bytes written and the snapshot)."""

    def __init__(self, err, name: str, parsable: bool, verbosity: int, stream) -> None:
        self.err, self.name, self.parsable, self.verbosity = err, name, parsable, verbosity
        self.stream = stream
        self.sent = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="fusezfs-send-progress",
                                       daemon=True)

    def __enter__(self) -> "Progress":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    def _run(self) -> None:
        first = True
        while not self.stop.wait(1):
            if first and not self.parsable:
                blocks = "   BLOCKS    " if self.verbosity >= 2 else ""
                self._say(f"TIME        SENT   {blocks}SNAPSHOT {self.name}\n")
            first = False
            t = time.strftime("%H:%M:%S", time.localtime())
            n, blocks = self.sent, self.stream.blocks
            if self.verbosity >= 2 and self.parsable:
                self._say(f"{t}\t{n}\t{blocks}\t{self.name}\n")
            elif self.verbosity >= 2:
                self._say(f"{t}   {dsprops.nicenum(n):>5}    {blocks:8d}    {self.name}\n")
            elif self.parsable:
                self._say(f"{t}\t{n}\t{self.name}\n")
            else:
                self._say(f"{t}   {dsprops.nicebytes(n):>5}   {self.name}\n")

    def _say(self, text: str) -> None:
        try:
            self.err.write(text)
            self.err.flush()
        except (OSError, ValueError):
            self.stop.set()


def print_verbose(out, tosnap: str, fromsnap: str | None, size: int, parsable: bool) -> None:
    """send_print_verbose."""
    if parsable:
        line = f"incremental\t{fromsnap}\t{tosnap}" if fromsnap else f"full\t{tosnap}"
        line += f"\t{size}"
    else:
        if fromsnap is None:
            line = f"full send of {tosnap}"
        elif "@" not in fromsnap and "#" not in fromsnap:
            line = f"send from @{fromsnap} to {tosnap}"
        else:
            line = f"send from {fromsnap} to {tosnap}"
        if size:
            line += f" estimated size is {dsprops.nicebytes(size)}"
    out.write(line + "\n")


def cmd_send(args: list[str]) -> int:
    from fusezfs.send.outgoing import SendError
    opts, rest = parse(args, "i:I:RsDpVvnPLeht:cwbd:S")
    fromname: str | None = None
    doall = dry = parsable = props = replicate = compressed = False
    verbosity = 0
    io_ = sessions.stdio()
    for o, v in opts:
        flag = o[1:]
        if flag in ("i", "I"):
            if fromname is not None:
                raise Usage()
            fromname, doall = v, flag == "I"
        elif flag in NOT_YET:
            raise Failed(f"fusezfs does not implement zfs send {NOT_YET[flag]} yet")
        elif flag == "D":
            io_.err.write("WARNING: deduplicated send is no longer supported.  A regular,\n"
                          "non-deduplicated stream will be generated.\n\n")
        elif flag == "v":
            verbosity += 1
        elif flag == "n":
            dry = True
        elif flag == "P":
            parsable = True
        elif flag == "p":
            props = True
        elif flag == "R":
            replicate = True
        elif flag == "c":
            compressed = True
        elif flag == "V" and verbosity == 0:
            verbosity = 1           # (-V's process title is not set: no meaning here)
    if parsable and verbosity == 0:
        verbosity = 1
    progress = any(o == "-v" for o, _v in opts)
    if not rest:
        raise Usage("missing snapshot argument")
    if len(rest) > 1:
        raise Usage("too many arguments")
    if not dry and io_.stdout_tty:
        raise Failed(TERMINAL_OUT)
    target = rest[0]
    try:
        if replicate:
            return _send_replicate(target, fromname, doall, dry, verbosity, parsable,
                                   progress, io_, compressed)
        if doall:
            return _send_all(target, fromname, dry, verbosity, parsable, progress, io_, props,
                             compressed)
        return _send_one(target, fromname, dry, verbosity, parsable, progress, io_, props,
                         compressed)
    except SendError as e:
        raise Failed(f"warning: cannot send '{target}': {e.message}") from None


def _open_dataset(dsl, name: str):
    rec = dsl.lookup(name) if "#" not in name else None
    if rec is None:
        raise Failed(f"cannot open '{name}': dataset does not exist")
    return rec


def _send_one(target: str, fromname: str | None, dry: bool, verbosity: int, parsable: bool,
              progress: bool, io_, props: bool = False, compressed: bool = False) -> int:
    """zfs_do_send's path for everything but -I (and -R): zfs_send_one."""
    from fusezfs.send import records as R
    from fusezfs.send.outgoing import SendError, Stream, source_of
    from fusezfs.send.props import package
    from fusezfs.send.sender import Source
    if fromname is not None and "#" not in fromname and "@" not in fromname:
        io_.err.write("Warning: incremental source didn't specify type, assuming snapshot. "
                      "Use '@' or '#' prefix to avoid ambiguity.\n")
        fromname = "@" + fromname
    if fromname is not None and fromname[0] in "@#":
        fromname = target.partition("@")[0] + fromname
    with opened_dataset_pool(target) as (pool, dsl):
        with pool.lock:
            snap = _open_dataset(dsl, target)
            if snap.kind == "filesystem" and sessions.handle(pool_of(target)) is not None:
                raise SendError("target is busy; if a filesystem, it must not be mounted")
            if snap.kind == "filesystem" and props:
                raise Failed("fusezfs does not implement zfs send -p of a filesystem yet")
            source, keep = None, []
            if fromname is not None and "@" in fromname:
                if pool_of(fromname) != pool_of(target):
                    raise Failed(f"cannot open '{fromname}': dataset does not exist")
                src = _open_dataset(dsl, fromname)
                if not _is_before(dsl, snap, src.parent, src.createtxg, src):
                    raise SendError("not an earlier snapshot from the same fs")
                source, keep = source_of(dsl, src), [src]
            elif fromname is not None:
                book = getattr(dsl, "lookup_bookmark", lambda _n: None)(fromname)
                if book is None or pool_of(fromname) != pool_of(target):
                    raise SendError(f"incremental source ({fromname}) does not exist")
                if not _is_before(dsl, snap, book.parent, book.createtxg, book):
                    raise SendError("not an earlier snapshot from the same fs")
                source = Source(book.guid, book.createtxg, None)
        if verbosity:
            size = Stream(dsl, snap, source, pool.lock, keep=keep, dry=True,
                          compressed=compressed).size()
            if progress or parsable:
                out = io_.out if dry else io_.err
                print_verbose(out, dsl.name(snap.id), fromname, size, parsable)
                out.write(f"size\t{size}\n" if parsable else
                          f"total estimated size is {dsprops.nicenum(size)}\n")
                out.flush()
        if dry:
            return 0
        if props:           # send_prelim_records: the package's head, with the properties
            with pool.lock:
                head = dsl.record(snap.parent)
                io_.stdout.write(R.package_header(dsl.name(snap.id), package(
                    dsl, head, snap, None, [snap])))
        stream = Stream(dsl, snap, source, pool.lock, keep=keep, compressed=compressed)
        _write(stream, io_, dsl.name(snap.id), parsable, verbosity, progress)
        if props:
            io_.stdout.write(R.PACKAGE_END)
            io_.stdout.flush()
    return 0


def _is_before(dsl, later, earlier_head: int, earlier_txg: int, earlier) -> bool:
    """snapshot_is_before: an earlier snapshot (or bookmark) of `later`'s filesystem or of a
    filesystem it was cloned from, at or before the origin."""
    fn = getattr(dsl, "is_before", None)
    if fn is not None:
        return fn(later, earlier_head, earlier_txg)
    head = dsl.record(later.parent) if later.kind == "snapshot" else later
    if later.kind == "snapshot" and earlier_txg >= later.createtxg:
        return False
    while True:
        if head.id == earlier_head:
            return True
        if not head.origin:
            return False
        origin = dsl.record(head.origin)
        if origin.id == earlier.id:
            return True
        if earlier_txg > origin.createtxg:
            return False
        head = dsl.record(origin.parent)


def _write(stream, io_, name: str, parsable: bool, verbosity: int, progress: bool) -> None:
    """Write a substream to stdout, with send -v's progress lines."""
    out = io_.stdout
    if progress:
        with Progress(io_.err, name, parsable, verbosity, stream) as p:
            for chunk in stream.chunks():
                out.write(chunk)
                p.sent += len(chunk)
    else:
        for chunk in stream.chunks():
            out.write(chunk)
    out.flush()


def _incremental_short(fs: str, fromname: str) -> str:
    """zfs_do_send's check of -i/-I's source for a multi-snapshot send: the short name."""
    ffs, _, short = fromname.rpartition("@") if "@" in fromname else ("", "", fromname)
    if ffs and ffs != fs:
        raise Usage("incremental source must be in same filesystem")
    if "@" in short or "/" in short:
        raise Usage("invalid incremental source")
    if not short:
        raise Failed(f"cannot send '{fs}': zero-length incremental source")
    return short


def _open_head(dsl, fs: str):
    head = dsl.lookup(fs)
    if head is None or head.kind != "filesystem":
        raise Failed(f"cannot open '{fs}': dataset does not exist")
    return head


def _send_all(target: str, fromname: str, dry: bool, verbosity: int, parsable: bool,
              progress: bool, io_, props: bool = False, compressed: bool = False) -> int:
    """send -I: zfs_do_send's path to zfs_send (dump_filesystem, dump_snapshot): a compound
    stream of one incremental substream per snapshot after the source, up to the target."""
    from fusezfs.send.replicate import Part
    if "#" in fromname:
        raise Failed("Error: multiple snapshots cannot be sent from a bookmark.")
    fs, at, tosnap = target.partition("@")
    if not at:
        raise Failed("Error: Unsupported flag with filesystem or bookmark.")
    with opened_dataset_pool(fs) as (pool, dsl):
        with pool.lock:
            head = _open_head(dsl, fs)
            origin = dsl.name(head.origin) if head.origin else None
            first = None                        # the source, when it is the clone's origin
            if "@" in fromname and fromname == origin:
                first = dsl.record(head.origin)
                short = None
            else:
                short = _incremental_short(fs, fromname)
                first = _open_dataset(dsl, f"{fs}@{short}")
            last = _open_dataset(dsl, target)
            snaps = [s for s in dsl.snapshots(head.id)
                     if s.createtxg > first.createtxg and s.createtxg <= last.createtxg]
            if not snaps or snaps[-1].id != last.id:
                return 1                        # !sdd.seento: ENOENT, nothing said
            parts, prev, prev_short = [], first, short
            for s in snaps:
                parts.append(Part(s, prev, False, prev_short))
                prev, prev_short = s, s.component
            payload = b""
            if props:
                from fusezfs.send.props import package
                payload = package(dsl, head, last, short, [p.snap for p in parts])
        _send_package(dsl, pool, target, parts, payload, dry, verbosity, parsable, progress,
                      io_, compressed)
    return 0


def _send_replicate(target: str, fromname: str | None, doall: bool, dry: bool,
                    verbosity: int, parsable: bool, progress: bool, io_,
                    compressed: bool = False) -> int:
    """send -R: zfs_send with `replicate` (send/replicate.py): the nvlist of every filesystem
    below the target's, then their substreams, parents and origins first."""
    from fusezfs.send.replicate import ReplicateError, gather, package_nvlist, plan
    fs, at, tosnap = target.partition("@")
    if not at:
        raise Failed("Error: Unsupported flag with filesystem or bookmark.")
    if fromname is not None and "#" in fromname:
        raise Failed("Error: multiple snapshots cannot be sent from a bookmark.")
    short = _incremental_short(fs, fromname) if fromname is not None else None
    with opened_dataset_pool(fs) as (pool, dsl):
        with pool.lock:
            head = _open_head(dsl, fs)
            if short is not None:
                _open_dataset(dsl, f"{fs}@{short}")
            _open_dataset(dsl, target)
            try:
                fss, order = gather(dsl, head, tosnap, short)
                parts = plan(dsl, order, tosnap, short, doall or short is None)
            except ReplicateError as e:
                io_.err.write(e.lines)
                raise Failed(f"warning: cannot send '{target}': invalid backup stream") \
                    from None
            payload = package_nvlist(fss, tosnap, short)
        _send_package(dsl, pool, target, parts, payload, dry, verbosity, parsable, progress,
                      io_, compressed)
    return 0


def _send_package(dsl, pool, target: str, parts: list, payload: bytes, dry: bool,
                  verbosity: int, parsable: bool, progress: bool, io_,
                  compressed: bool = False) -> None:
    """A compound stream of `parts` (replicate.Part) with the BEGIN nvlist `payload`; with
    -v, the estimate of each part first (zfs_send's dry run)."""
    from fusezfs.send import records as R
    from fusezfs.send.outgoing import Stream, source_of

    def stream(p, dry_run: bool) -> Stream:
        source = source_of(dsl, p.source) if p.source is not None else None
        return Stream(dsl, p.snap, source, pool.lock, keep=[p.source] if p.source else [],
                      dry=dry_run, flags=R.DRR_FLAG_CLONE if p.clone else 0,
                      compressed=compressed)

    if verbosity:
        out = io_.out if dry else io_.err
        total = 0
        for p in parts:
            size = stream(p, True).size()
            print_verbose(out, dsl.name(p.snap.id), p.fromshort, size, parsable)
            total += size
        out.write(f"size\t{total}\n" if parsable else
                  f"total estimated size is {dsprops.nicebytes(total)}\n")
        out.flush()
    if dry:
        return
    io_.stdout.write(R.package_header(target, payload))
    for p in parts:                     # (zfs_send runs these with verbosity 0)
        _write(stream(p, False), io_, dsl.name(p.snap.id), parsable, 0, progress)
    io_.stdout.write(R.PACKAGE_END)
    io_.stdout.flush()


# ---- receive --------------------------------------------------------------------------------
def cmd_receive(args: list[str]) -> int:
    from fusezfs.send.incoming import Options
    opts, rest = parse(args, "o:x:dehMnuvFsA")
    o = Options()
    verbose = abort = False
    seen: set[str] = set()
    for flag, v in opts:
        if flag == "-o":
            if "=" not in v:
                raise Usage("missing '=' for property=value argument")
            name, value = v.split("=", 1)
            if name in seen:
                raise Usage(f"property '{name}' specified multiple times")
            seen.add(name)
            o.props[name] = value
        elif flag == "-x":
            if "=" in v:
                raise Usage("invalid character '=' in property argument")
            if v in seen:
                raise Usage(f"property '{v}' specified multiple times")
            seen.add(v)
            o.excluded.append(v)
        elif flag in ("-d", "-e"):
            if (o.istail if flag == "-d" else o.isprefix):
                raise Usage("invalid option combination: -d and -e are mutually exclusive")
            if flag == "-d":
                o.isprefix = True
            else:
                o.istail = True
        elif flag == "-n":
            o.dryrun = True
        elif flag == "-u":
            o.nomount = True
        elif flag == "-v":
            verbose = True
        elif flag == "-F":
            o.force = True
        elif flag == "-A":
            abort = True
        elif flag == "-s":
            raise Failed("fusezfs does not implement zfs receive -s (resumable streams) yet")
    if o.istail:
        o.isprefix = True
    if not rest:
        raise Usage("missing snapshot argument")
    if len(rest) > 1:
        raise Usage("too many arguments")
    target = rest[0]
    if abort:
        if o.isprefix or o.dryrun or o.nomount:
            raise Usage("invalid option")
        return _abort(target)
    io_ = sessions.stdio()
    if io_.stdin_tty:
        raise Failed(TERMINAL_IN)
    from fusezfs.send.receiver import ReceiveError
    try:
        return _receive(target, o, verbose, io_)
    except ReceiveError as e:
        raise Failed(str(e)) from None


def _receive(target: str, o, verbose: bool, io_) -> int:
    from fusezfs.send import records as R
    from fusezfs.send.incoming import Receive, ReceiveError, check_props, destination, run, substreams
    check_props(o.props, o.excluded)
    pool_name = pool_of(target)
    reader = R.StreamReader(io_.stdin)
    if pool_name not in imported_names():
        if o.isprefix:
            raise ReceiveError(f"specified fs ({target}) does not exist", action="cannot receive")
        begin, sendfs, _props = next(substreams(reader))
        dest = destination(target, begin.toname, sendfs, o)
        fs = dest.partition("@")[0]
        if begin.fromguid or "/" not in fs:
            raise ReceiveError(f"destination '{fs}' does not exist", incremental=bool(
                begin.fromguid))
        raise ReceiveError("unable to restore to destination",
                           before=f"cannot open '{fs.rpartition('/')[0]}': dataset does not "
                                  "exist\n")
    with opened(pool_name) as (pool, handle):
        dsl = handle.dsl
        if o.isprefix:
            with pool.lock:
                if dsl.lookup(target) is None:
                    raise ReceiveError(f"specified fs ({target}) does not exist",
                                       action="cannot receive")
        def on_replication(head: R.Begin, props) -> None:
            """recv_incremental_replication's first pass (replicate.prune)."""
            from fusezfs.send.replicate import prune
            if "fromsnap" not in props.nvl or o.dryrun:
                return
            tofs = target
            if o.isprefix:
                name = head.toname
                if o.istail:
                    cut = name.rfind("/")
                    tail = "/" + name if cut < 0 else name[cut:]
                else:
                    cut = min((i for i in (name.find("/"), name.find("@")) if i >= 0))
                    tail = name[cut:]
                tofs = (target + tail).partition("@")[0]
            with pool.lock:
                prune(dsl, tofs, props.nvl, o.force,
                      say=lambda text: (io_.err.write(text), io_.err.flush()))

        for begin, sendfs, received in substreams(reader, target, on_replication):
            t0, off0 = time.time(), reader.offset - R.RECORD_SIZE - len(begin.payload)
            dest = destination(target, begin.toname, sendfs, o)

            def started(rx: Receive) -> None:
                if not verbose:
                    return
                if rx.clone and rx.source is not None:
                    io_.out.write(f"found clone origin {dsl.name(rx.source.id)}\n")
                if rx.skip:
                    io_.out.write(f"snap {rx.dest} already exists; ignoring\n")
                else:
                    io_.out.write(f"{'would receive' if o.dryrun else 'receiving'} "
                                  f"{'incremental' if begin.fromguid else 'full'} stream of "
                                  f"{begin.toname} into {rx.dest}\n")
                io_.out.flush()

            rx = Receive(dsl, dest, begin, o,
                         on_new=(lambda rec: sessions.leave_unmounted(rec.id)) if o.nomount
                         else None, received=received)
            run(rx, reader, pool.lock,
                lambda fn: sessions.critical(pool, fn, "receive"), started)
            if verbose and not o.dryrun and not rx.skip:
                nbytes = reader.offset - off0
                delta = max(1, int(time.time() - t0))
                io_.out.write(f"received {dsprops.nicebytes(nbytes)} stream in {delta} seconds "
                              f"({dsprops.nicebytes(nbytes // delta)}/sec)\n")
                io_.out.flush()
    return 0


def _abort(target: str) -> int:
    """receive -A: destroy what an interrupted receive into `target` left (its %recv)."""
    from fusezfs.dsl.datasets import HIDDEN
    from fusezfs.send.incoming import cleanup_one
    pool_name = pool_of(target)
    if pool_name not in imported_names():
        raise Usage()
    with opened(pool_name) as (pool, handle):
        with pool.lock:
            dsl = handle.dsl
            if dsl.lookup(target) is None:
                raise Usage()
            leftover = dsl.lookup(f"{target}/{HIDDEN}recv")
            if leftover is None:
                raise Failed(f"'{target}' does not have any resumable receive state to abort")
            if not cleanup_one(dsl, leftover):
                raise Failed(f"cannot destroy '{target}/{HIDDEN}recv': dataset is busy")
    return 0


COMMANDS = {"send": lambda a: run_verb("send", a), "receive": lambda a: run_verb("receive", a),
            "recv": lambda a: run_verb("receive", a)}
VERBS = {"send": cmd_send, "receive": cmd_receive}


def run_verb(verb: str, argv: list[str]) -> int:
    try:
        return VERBS[verb](argv)
    except Usage as e:
        if e.message:
            error(e.message)
        error(usage_text(verb))
        return 2
    except Failed as e:
        if e.message:
            error(e.message)
        return e.code

