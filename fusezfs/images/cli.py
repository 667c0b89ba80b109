"""`fusezfs image VERB` and `fusezfs container VERB`: images and containers on a pool, no FUSE.

    fusezfs image import [-q] [-g GRAPH] [-m MOUNTPOINT] [-t REF]... DATASET [ARCHIVE | -]
    fusezfs image ls [-Hp] [-s STORE]
    fusezfs image inspect [-s STORE] IMAGE...
    fusezfs image rm [-f] [-s STORE] IMAGE...
    fusezfs image export [-s STORE] IMAGE... ARCHIVE
    fusezfs container create [-s STORE] IMAGE NAME
    fusezfs container ls [-Hp] [-s STORE]
    fusezfs container rm [-f] [-s STORE] NAME...
    fusezfs container commit [-m MESSAGE] [-s STORE] NAME IMAGE[:TAG]

The store (store.py) is the dataset `image import` is given; the other verbs find it from
`-s STORE`, else from $FUSEZFS_IMAGE_STORE. IMAGE is a tag (`alpine` is alpine:latest), an
image id or a unique prefix of one. Messages and exit codes as the zfs verbs: 0, 1 for a
command that failed, 2 for bad usage.

`image import` reads the archive from standard input when ARCHIVE is "-" or left out, as
`docker load` does without -i (`docker save IMAGE | fusezfs image import STORE`): a tar
stream, read forward once (stream.py: layers applied as they stream in where the archive's
order allows, else spooled to a temporary file); `image export IMAGE... -` writes to standard
output.

A pool served by a mount daemon runs these commands in the daemon, as every other command
(control.py): `route_argv` makes the client's implicit things explicit first (the store from
its environment, archive paths absolute), since the daemon has neither its environment nor
its working directory.
"""
from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

from fusezfs.errors import Failed, Usage
from fusezfs.cli.image_usage import USAGE
from fusezfs.cli.common import error, nicenum, parse, print_table

if TYPE_CHECKING:           # (imported where used: a command loads only what it needs)
    from fusezfs.images.store import Store

STORE_ENV = "FUSEZFS_IMAGE_STORE"
OPTS = {("image", "import"): "qg:m:t:", ("image", "ls"): "Hps:", ("image", "list"): "Hps:",
        ("image", "inspect"): "s:", ("image", "rm"): "fs:", ("image", "export"): "s:",
        ("container", "create"): "s:", ("container", "ls"): "Hps:",
        ("container", "list"): "Hps:", ("container", "rm"): "fs:",
        ("container", "commit"): "m:s:"}


# ---- the client's side (control.py) --------------------------------------------------------
def _split(argv: list[str]) -> tuple[list[tuple[str, str]], list[str]] | None:
    if len(argv) < 2 or (argv[0], argv[1]) not in OPTS:
        return None
    try:
        return parse(argv[2:], OPTS[(argv[0], argv[1])])
    except Usage:
        return None


def store_of(argv: list[str]) -> str | None:
    """The store a command works on: import's DATASET, -s, else $FUSEZFS_IMAGE_STORE."""
    found = _split(argv)
    if found is None:
        return None
    opts, rest = found
    if argv[1] == "import":
        return rest[0] if rest else None
    for o, v in opts:
        if o == "-s":
            return v
    return os.environ.get(STORE_ENV) or None


def route_argv(argv: list[str], cwd: str) -> list[str]:
    """argv for the daemon: the store explicit, archive paths absolute."""
    found = _split(argv)
    if found is None:
        return argv
    opts, rest = found
    verb = argv[1]
    archive_given = len(rest) >= (2 if verb == "import" else 1)
    if verb in ("import", "export") and archive_given and rest[-1] != "-":
        rest = rest[:-1] + [os.path.join(cwd, rest[-1])]
    flat = [x for o, v in opts if o != "-s" for x in ((o, v) if v else (o,))]
    store = store_of(argv)
    if verb != "import" and store:
        flat += ["-s", store]
    return argv[:2] + flat + ["--"] + rest


def _binary_stdio(what: str):
    """The command's standard streams, if they carry bytes. A service that runs this command
    without relaying its client's streams as bytes (only its streaming verbs get them) hands
    over text streams: say so, rather than write an archive into text or read its own stdin."""
    import io as _io
    from fusezfs import sessions
    std = sessions.stdio()
    if isinstance(std.stdout, _io.TextIOBase) or isinstance(std.stdin, _io.TextIOBase):
        raise Failed(f"cannot {what} standard {'input' if what == 'read' else 'output'} here: "
                     "the fusezfs service does not relay it for image commands; give a file, "
                     "or run with FUSEZFS_NO_SERVICE=1")
    return std


# ---- opening a store -------------------------------------------------------------------------
@contextmanager
def opened(name: str | None, *, create: bool = False,
           mountpoint: str | None = None, graph: str | None = None) -> Iterator[Store]:
    from fusezfs import sessions
    from fusezfs.api import Handle
    from fusezfs.cli.cli_pool import imported_names, open_pool
    from fusezfs.images.store import Store, StoreError
    if not name:
        raise Failed(f"no image store: give -s STORE or set {STORE_ENV}")
    pool_name = name.split("/")[0]
    if pool_name not in imported_names():
        raise Failed(f"cannot open '{name}': dataset does not exist")
    provided = sessions.handle(pool_name)
    pool = provided.pool if provided is not None else open_pool(pool_name)
    try:
        with pool.lock:
            h = provided or Handle(pool)
            try:
                yield Store(h, name, create=create, mountpoint=mountpoint, graph=graph)
            except StoreError as e:
                raise Failed(str(e)) from None
    finally:
        if provided is not None:
            with pool.lock:
                pool.sync()
        else:
            pool.close()


def _store_opt(opts: list[tuple[str, str]]) -> str | None:
    for o, v in opts:
        if o == "-s":
            return v
    return os.environ.get(STORE_ENV) or None


def _errors(fn):
    """LayerError and StoreError raised below become Failed (exit 1, the message)."""
    def wrapper(args: list[str]) -> int:
        from fusezfs.images.layertar import LayerError
        from fusezfs.images.store import StoreError
        try:
            return fn(args)
        except (LayerError, StoreError) as e:
            raise Failed(str(e)) from None
    return wrapper


def _when(t: int | str) -> str:
    if isinstance(t, str):
        return t[:16].replace("T", " ") if t else "-"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def _size(n: int, parsable: bool) -> str:
    return str(n) if parsable else nicenum(n)


# ---- image verbs ---------------------------------------------------------------------------
@_errors
def image_import(args: list[str]) -> int:
    from fusezfs import sessions
    from fusezfs.images.importer import Progress, import_archive
    opts, rest = parse(args, OPTS[("image", "import")])
    if not rest or len(rest) > 2:
        raise Usage("missing dataset" if not rest else "too many arguments")
    store_name, path = rest[0], (rest[1] if len(rest) == 2 else "-")
    stream = None
    if path == "-":
        io = _binary_stdio("read")
        if io.stdin_tty:            # docker load's words for a terminal on its stdin
            raise Failed("requested load from stdin, but stdin is empty")
        stream = io.stdin
    quiet = any(o == "-q" for o, _v in opts)
    tags = [v for o, v in opts if o == "-t"]
    mountpoint = next((v for o, v in opts if o == "-m"), None)
    graph = next((v for o, v in opts if o == "-g"), None)
    try:
        tty = sessions.handle(store_name.split("/")[0]) is None and sys.stderr.isatty()
    except (AttributeError, ValueError):
        tty = False
    from fusezfs.images.archive import familiar
    with opened(store_name, create=True, mountpoint=mountpoint, graph=graph) as store:
        done = import_archive(store, path, [familiar(t) for t in tags],
                              Progress(None if quiet else sys.stderr, tty), stream)
    for image, names in done:
        for n in names:
            print(f"Loaded image: {n}")
        if not names:
            print(f"Loaded image ID: {image.id}")
    return 0


@_errors
def image_ls(args: list[str]) -> int:
    opts, rest = parse(args, OPTS[("image", "ls")])
    if rest:
        raise Usage("too many arguments")
    flags = {o for o, _v in opts}
    rows = []
    with opened(_store_opt(opts)) as store:
        for img in store.images():
            size = sum(l.size for l in img.layers)
            for tag in img.tags or ["<none>:<none>"]:
                repo, _, t = tag.rpartition(":")
                rows.append([repo, t, img.id[7:19], _when(img.created), str(len(img.layers)),
                             _size(size, "-p" in flags)])
    print_table(["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "LAYERS", "SIZE"], rows,
                scripted="-H" in flags, right={4, 5})
    return 0


def inspect_image(store, img) -> dict:
    """What `image inspect` prints of one image (docker inspect's fields, and the layers)."""
    cfg = json.loads(store.config(img))
    layers, parent = [], None
    for l in img.layers:
        name = store.layer_name(l.chain_id)
        layers.append({"DiffID": l.diff_id, "ChainID": l.chain_id, "Parent": parent,
                       "Dataset": name, "Snapshot": store.layer_snap(l.chain_id),
                       "Size": l.size, "Used": store.used(name),
                       "Referenced": store.referenced(store.layer_snap(l.chain_id))})
        parent = l.chain_id
    return {
        "Id": img.id, "RepoTags": img.tags, "Created": img.created or cfg.get("created"),
        "Architecture": cfg.get("architecture"), "Os": cfg.get("os"),
        "Config": cfg.get("config") or {},
        "RootFS": {"Type": "layers", "Layers": [l.diff_id for l in img.layers]},
        "Size": sum(l.size for l in img.layers),
        "GraphDriver": {"Name": "fusezfs", "Data": {"Dataset": store.layer_name(img.top),
                                                     "Snapshot": store.layer_snap(img.top)}},
        "Layers": layers,
        "Space": {"SumOfLayerSizes": sum(l["Size"] for l in layers),
                  "SumOfReferenced": sum(l["Referenced"] for l in layers),
                  "Used": sum(l["Used"] for l in layers)},
        "Loaded": img.loaded, "Source": {k: v for k, v in img.source.items() if k != "manifest"},
    }


@_errors
def image_inspect(args: list[str]) -> int:
    opts, rest = parse(args, OPTS[("image", "inspect")])
    if not rest:
        raise Usage("missing image argument")
    out, status = [], 0
    with opened(_store_opt(opts)) as store:
        from fusezfs.images.store import StoreError
        for ref in rest:
            try:
                out.append(inspect_image(store, store.find(ref)))
            except StoreError as e:
                error(f"Error: {e}")
                status = 1
    print(json.dumps(out, indent=4))
    return status


@_errors
def image_rm(args: list[str]) -> int:
    from fusezfs.images.gc import remove_image
    from fusezfs.images.store import StoreError
    opts, rest = parse(args, OPTS[("image", "rm")])
    if not rest:
        raise Usage("missing image argument")
    force = any(o == "-f" for o, _v in opts)
    status = 0
    with opened(_store_opt(opts)) as store:
        for ref in rest:
            try:
                lines, notes = remove_image(store, ref, force)
            except StoreError as e:
                error(str(e))
                status = 1
                continue
            for line in lines:
                print(line)
            for note in notes:
                error(note)
    return status


@_errors
def image_export(args: list[str]) -> int:
    from fusezfs import sessions
    from fusezfs.images.exporter import export_images
    opts, rest = parse(args, OPTS[("image", "export")])
    if len(rest) < 2:
        raise Usage("missing image or archive")
    *refs, path = rest
    io = _binary_stdio("write") if path == "-" else sessions.stdio()
    if path == "-" and io.stdout_tty:
        raise Failed("cowardly refusing to write an image archive to a terminal")
    with opened(_store_opt(opts)) as store:
        images = [store.find(r) for r in refs]
        try:
            export_images(store, images, path, io.stdout, None)
        except OSError as e:
            raise Failed(f"cannot write '{path}': {e.strerror or e}") from None
    return 0


# ---- container verbs -----------------------------------------------------------------------
@_errors
def container_create(args: list[str]) -> int:
    from fusezfs.images import containers
    opts, rest = parse(args, OPTS[("container", "create")])
    if len(rest) != 2:
        raise Usage("missing image or name" if len(rest) < 2 else "too many arguments")
    with opened(_store_opt(opts)) as store:
        c = containers.create(store, rest[0], rest[1])
    print(c.id)
    return 0


@_errors
def container_ls(args: list[str]) -> int:
    from fusezfs.images import containers
    opts, rest = parse(args, OPTS[("container", "ls")])
    if rest:
        raise Usage("too many arguments")
    flags = {o for o, _v in opts}
    rows = []
    with opened(_store_opt(opts)) as store:
        tags = {}
        for t, i in sorted(store.tags().items()):
            tags.setdefault(i, t)
        for c in store.containers():
            used, refer = containers.space(store, c)
            rows.append([c.id[:12], tags.get(c.image, c.image[7:19]), _when(c.created),
                         _size(used, "-p" in flags), _size(refer, "-p" in flags),
                         f"{store.name}/{c.id}", c.name])
    print_table(["CONTAINER ID", "IMAGE", "CREATED", "USED", "REFER", "DATASET", "NAME"], rows,
                scripted="-H" in flags, right={3, 4})
    return 0


@_errors
def container_rm(args: list[str]) -> int:
    from fusezfs.images import containers
    from fusezfs.images.store import StoreError
    opts, rest = parse(args, OPTS[("container", "rm")])
    if not rest:
        raise Usage("missing container name")
    force = any(o == "-f" for o, _v in opts)
    status = 0
    with opened(_store_opt(opts)) as store:
        for name in rest:
            try:
                containers.remove(store, name, force)
                print(name)
            except StoreError as e:
                error(str(e))
                status = 1
    return status


@_errors
def container_commit(args: list[str]) -> int:
    from fusezfs.images import containers
    opts, rest = parse(args, OPTS[("container", "commit")])
    if len(rest) != 2:
        raise Usage("missing container or image name" if len(rest) < 2 else "too many arguments")
    message = next((v for o, v in opts if o == "-m"), "")
    with opened(_store_opt(opts)) as store:
        image = containers.commit(store, rest[0], rest[1], message)
    print(image.id)
    return 0


VERBS = {"image": {"import": image_import, "ls": image_ls, "list": image_ls,
                   "inspect": image_inspect, "rm": image_rm, "export": image_export},
         "container": {"create": container_create, "ls": container_ls, "list": container_ls,
                       "rm": container_rm, "commit": container_commit}}


def _run(noun: str, args: list[str]) -> int:
    if not args or args[0] not in VERBS[noun]:
        error(f"unrecognized command '{args[0]}'" if args else "missing command")
        error("usage:\n" + USAGE[noun])
        return 2
    try:
        return VERBS[noun][args[0]](args[1:])
    except Usage as e:
        if e.message:
            error(e.message)
        error("usage:\n" + USAGE[noun])
        return 2
    except Failed as e:
        if e.message:
            error(e.message)
        return e.code


COMMANDS = {"image": lambda a: _run("image", a), "container": lambda a: _run("container", a)}
