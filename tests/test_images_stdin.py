"""`fusezfs image import STORE -` (and with no archive operand, as `docker load`): the archive
read from standard input, a pipe read forward once. Layers arrive as the archive's order has
them: an export (manifest.json first, layers base first) streams through with nothing spooled;
a `docker save` tarball (manifest.json last) and an OCI tar are spooled to a temporary file and
imported from there; both give exactly the trees of a reference applier. Two images sharing
layers, damaged and cut streams, a terminal on stdin, the daemon's argv. Every pool is checked
at the end of every test."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import types

import pytest

from imagekit import D, F, WH, docker_save, layer_tar, oci_files, write_layout
from test_images_export import trees
from test_images_import import env, assert_layers, chains, every_kind, ok, run  # noqa: F401

from fusezfs.images import stream as stream_mod

MiB = 1 << 20
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def big_layers() -> list[bytes]:
    """Three layers of which two are larger than what the stream keeps in memory."""
    rnd = os.urandom
    return [layer_tar([D("usr"), F("usr/big", rnd(3 * MiB // 2)), F("usr/a", b"a")]),
            layer_tar([F("usr/b", rnd(2 * MiB)), WH("usr/a")]),
            layer_tar([F("usr/c", b"c" * 100)])]


def pipe_stdin(monkeypatch, data: bytes) -> None:
    """sys.stdin a real pipe (no seeking) fed `data` by a thread."""
    r, w = os.pipe()

    def feed() -> None:
        with os.fdopen(w, "wb") as f:
            try:
                f.write(data)
            except BrokenPipeError:
                pass
    threading.Thread(target=feed, daemon=True).start()
    reader = os.fdopen(r, "rb")
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=reader))


def spool_counter(monkeypatch, refuse: bool = False) -> list[int]:
    """Count (or refuse) the temporary files the stream spools to."""
    made: list[int] = []
    real = stream_mod.StreamArchive._new_spool

    def temporary():
        if refuse:
            raise AssertionError("spooled a member that streams in order")
        made.append(1)
        return real()
    monkeypatch.setattr(stream_mod.StreamArchive, "_new_spool", staticmethod(temporary))
    return made


def image_ids(capsys) -> list[str]:
    return [line.split("\t")[2] for line in ok(capsys, "image", "ls", "-H").splitlines()]


@pytest.mark.parametrize("operand", [["-"], []], ids=["dash", "no-archive-operand"])
def test_docker_save_on_stdin_is_spooled_and_imported(env, capsys, monkeypatch, operand):
    tars = every_kind() + big_layers()
    docker_save(str(env / "img.tar"), [(tars, ["app:1"])])
    made = spool_counter(monkeypatch)
    pipe_stdin(monkeypatch, (env / "img.tar").read_bytes())
    out = ok(capsys, "image", "import", "tank/images", *operand)
    assert out.splitlines() == ["Loaded image: app:1"]
    assert made == [1]                  # manifest.json last: the layers waited in one file
    assert_layers("tank/images", tars)
    info = json.loads(ok(capsys, "image", "inspect", "app:1"))[0]
    assert [l["ChainID"] for l in info["Layers"]] == chains(tars)
    assert info["Source"]["archive"] == "-"


def test_oci_tar_on_stdin(env, capsys, monkeypatch):
    tars = big_layers()
    files = oci_files([(tars, ["docker.io/library/oci:2"])], "gzip")
    write_layout(files, str(env / "oci.tar"), as_tar=True)
    pipe_stdin(monkeypatch, (env / "oci.tar").read_bytes())
    ok(capsys, "image", "import", "-t", "oci:2", "tank/images", "-")
    assert_layers("tank/images", tars)
    assert "oci" in ok(capsys, "image", "ls", "-H")


def test_export_streams_into_import_with_nothing_spooled(env, capsys, monkeypatch):
    """export writes manifest.json, configs, then layers base first: an import from that
    stream applies every layer as it arrives (no temporary file), and exporting the copy
    gives the same bytes."""
    tars = big_layers()
    docker_save(str(env / "img.tar"), [(tars, ["app:1"])])
    ok(capsys, "image", "import", "tank/images", str(env / "img.tar"))
    ok(capsys, "image", "export", "app:1", str(env / "out.tar"))
    with tarfile.open(env / "out.tar") as t:
        names = t.getnames()
    assert names[0] == "manifest.json"
    spool_counter(monkeypatch, refuse=True)
    pipe_stdin(monkeypatch, (env / "out.tar").read_bytes())
    ok(capsys, "image", "import", "tank/copy", "-")
    assert_layers("tank/images", tars)
    assert trees("tank/copy", "app:1", capsys) == trees("tank/images", "app:1", capsys)
    ok(capsys, "image", "export", "-s", "tank/copy", "app:1", str(env / "again.tar"))
    assert (env / "again.tar").read_bytes() == (env / "out.tar").read_bytes()


def test_pipe_between_two_processes(env, capsys):
    """`fusezfs image export IMG - | fusezfs image import STORE`: two commands, one pipe,
    two pools (without a daemon a pool has one process at a time)."""
    tars = every_kind()
    docker_save(str(env / "img.tar"), [(tars, ["app:1"])])
    ok(capsys, "image", "import", "tank/images", str(env / "img.tar"))
    with open(env / "disk2", "wb") as f:
        f.truncate(128 * MiB)
    ok(capsys, "pool", "create", "other", str(env / "disk2"))
    envv = dict(os.environ, PYTHONPATH=REPO)
    cmd = [sys.executable, "-m", "fusezfs.cli"]
    exp = subprocess.Popen(cmd + ["image", "export", "app:1", "-"], stdout=subprocess.PIPE,
                           env=envv)
    imp = subprocess.run(cmd + ["image", "import", "-q", "other/piped"], stdin=exp.stdout,
                         capture_output=True, text=True, env=envv, timeout=300)
    exp.stdout.close()
    assert exp.wait(timeout=300) == 0
    assert imp.returncode == 0, imp.stderr
    assert imp.stdout.splitlines() == ["Loaded image: app:1"]
    assert trees("other/piped", "app:1", capsys) == trees("tank/images", "app:1", capsys)


def test_two_images_sharing_layers_on_stdin(env, capsys, monkeypatch):
    """A layer listed by two images is read from the pipe once and checked once."""
    base = big_layers()[:2]
    a, b = base + [layer_tar([F("a", b"A")])], base + [layer_tar([F("b", b"B")])]
    docker_save(str(env / "two.tar"), [(a, ["a:1"]), (b, ["b:1"])])
    pipe_stdin(monkeypatch, (env / "two.tar").read_bytes())
    out = ok(capsys, "image", "import", "tank/images", "-")
    assert sorted(out.splitlines()) == ["Loaded image: a:1", "Loaded image: b:1"]
    assert_layers("tank/images", a)
    assert_layers("tank/images", b)
    # the same archive again: every layer is there already, and still checked
    pipe_stdin(monkeypatch, (env / "two.tar").read_bytes())
    ok(capsys, "image", "import", "tank/images", "-")
    assert len(image_ids(capsys)) == 2


def test_damaged_and_cut_streams_leave_nothing(env, capsys, monkeypatch):
    tars = big_layers()
    docker_save(str(env / "img.tar"), [(tars, ["app:1"])])
    data = (env / "img.tar").read_bytes()
    # a cut stream: the end (manifest.json) never comes
    pipe_stdin(monkeypatch, data[:len(data) // 2])
    code, _out, err = run(capsys, "image", "import", "tank/images", "-")
    assert code == 1 and "standard input" in err
    # a flipped byte inside a layer: its digest does not match the config's diff id
    bad = bytearray(data)
    at = bytes(data).index(b"c" * 100)
    bad[at] ^= 1
    pipe_stdin(monkeypatch, bytes(bad))
    code, _out, err = run(capsys, "image", "import", "tank/images", "-")
    assert code == 1 and "does not match the diff id" in err
    assert image_ids(capsys) == []
    names = ok(capsys, "list", "-H", "-o", "name", "-r", "tank/images").split()
    assert f"tank/images/{chains(tars)[2][7:]}" not in names
    # garbage
    pipe_stdin(monkeypatch, b"not a tar at all" * 100)
    code, _out, err = run(capsys, "image", "import", "tank/images", "-")
    assert code == 1 and err.strip()


def test_a_terminal_on_stdin_is_refused(env):
    """As docker load: a terminal is not an archive."""
    master, slave = os.openpty()
    try:
        r = subprocess.run([sys.executable, "-m", "fusezfs.cli", "image", "import",
                            "tank/images"], stdin=slave, capture_output=True, text=True,
                           env=dict(os.environ, PYTHONPATH=REPO), timeout=120)
    finally:
        os.close(slave)
        os.close(master)
    assert r.returncode == 1
    assert r.stderr.strip() == "requested load from stdin, but stdin is empty"


def test_daemon_argv_keeps_the_store_and_the_dash():
    """The client makes an archive path absolute for the daemon, never the store and never
    stdin's "-" (images.cli.route_argv)."""
    from fusezfs.images.cli import route_argv
    assert route_argv(["image", "import", "tank/images"], "/w") == \
        ["image", "import", "--", "tank/images"]
    assert route_argv(["image", "import", "tank/images", "-"], "/w") == \
        ["image", "import", "--", "tank/images", "-"]
    assert route_argv(["image", "import", "tank/images", "a.tar"], "/w") == \
        ["image", "import", "--", "tank/images", "/w/a.tar"]


def test_stream_keeps_small_members_in_memory_and_large_ones_spooled():
    """The stream archive's own bookkeeping: what was passed over is readable later (small
    ones from memory, large ones from the spool file), what was streamed cannot be read
    twice, and sizes are known before the bytes are read."""
    buf = io.BytesIO()
    big = os.urandom(2 * MiB)
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in (("a/big", big), ("small.json", b"{}"), ("b/next", b"x" * 10)):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
        link = tarfile.TarInfo("c/link")
        link.type, link.linkname = tarfile.LNKTYPE, "a/big"
        t.addfile(link)
    buf.seek(0)
    arch = stream_mod.StreamArchive(buf)
    try:
        assert arch.size("b/next") == 10
        assert arch.spooled_bytes == len(big)
        assert arch.open("b/next").read() == b"x" * 10
        with pytest.raises(Exception, match="read from standard input already"):
            arch.open("b/next")
        assert arch.read("small.json") == b"{}"
        assert arch.open("c/link").read() == big
        assert arch.canonical("c/link") == "a/big"
        assert not arch.exists("missing")
    finally:
        arch.close()


def test_streams_not_relayed_as_bytes_are_refused(env, capsys, monkeypatch):
    """Where the command's streams are text (a service that relays bytes only for its
    streaming verbs), import and export with "-" say so and change nothing."""
    from fusezfs import sessions
    text = sessions.Stdio(io.BytesIO(), io.StringIO(), io.StringIO(), io.StringIO(), False,
                          False)
    monkeypatch.setattr(sessions, "stdio", lambda: text)
    code, _out, err = run(capsys, "image", "import", "tank/images", "-")
    assert code == 1 and "does not relay it" in err and "give a file" in err
    code, _out, err = run(capsys, "image", "export", "nothing:1", "-")
    assert code == 1 and "cannot write standard output here" in err
    assert "tank/images" not in ok(capsys, "list", "-H", "-o", "name").split()
