"""Docker itself reads what fusezfs writes and writes what fusezfs reads: a private dockerd
(Debian's docker.io, --storage-driver=vfs, its data, exec root and socket under the test's
temporary directory, no iptables, no bridge) `docker load`s an image fusezfs imported and
exported, and `docker image inspect` shows the same layers (rootfs diff ids) and image id as
fusezfs's export and `image inspect`; then `docker save` of that image piped into `fusezfs
image import STORE -` gives back the same trees and the same layers.

Skipped, with the reason, where dockerd cannot run here (not installed: `apt-get install
docker.io`; not root; the daemon does not come up). CI does not install docker.io: starting a
Docker daemon in CI's machine is one more service to trust; `tools/check-docker-load` runs this
file with the skip turned into a failure (FUSEZFS_TEST_DOCKER=1)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import pytest

from imagekit import D, E, F, L, OPQ, S, WH, docker_save, layer_tar
from test_images_export import trees
from test_images_import import env, ok  # noqa: F401  (env: the fixture)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MUST = os.environ.get("FUSEZFS_TEST_DOCKER", "") == "1"
T0 = 1_700_000_000_250_000_000


def unavailable(reason: str) -> None:
    if MUST:
        pytest.fail(f"{reason} (FUSEZFS_TEST_DOCKER=1)", pytrace=False)
    pytest.skip(reason)


class Dockerd:
    """A private Docker daemon, stopped by its pid (only the one this test started)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.sock = os.path.join(root, "docker.sock")
        self.log = open(os.path.join(root, "dockerd.log"), "w+")
        # its containerd is started and stopped by dockerd, in its own namespace
        self.proc = subprocess.Popen(
            ["dockerd", "--storage-driver=vfs", f"--data-root={root}/data",
             f"--exec-root={root}/exec", f"--pidfile={root}/dockerd.pid", f"--host=unix://{self.sock}",
             "--iptables=false", "--ip6tables=false", "--ip-masq=false", "--bridge=none",
             "--userland-proxy=false", "--containerd-namespace=fusezfs-test",
             "--containerd-plugins-namespace=fusezfs-test-plugins"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def docker(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["docker", "-H", f"unix://{self.sock}", *args],
                              capture_output=True, timeout=120, **kw)

    def wait_ready(self, seconds: float = 30) -> str | None:
        """None once the daemon answers, else why not."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                break
            if os.path.exists(self.sock) and self.docker("version").returncode == 0:
                return None
            time.sleep(0.2)
        self.log.seek(0)
        tail = self.log.read()[-600:]
        return f"dockerd did not come up (exit {self.proc.poll()}): {tail.strip()}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()
        # vfs layers may hold files only root may remove; the daemon is gone
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def dockerd(tmp_path_factory):
    if shutil.which("dockerd") is None or shutil.which("docker") is None:
        unavailable("dockerd or docker not installed (apt-get install docker.io)")
    if os.geteuid() != 0:
        unavailable("dockerd needs root")
    d = Dockerd(str(tmp_path_factory.mktemp("dockerd")))
    try:
        why = d.wait_ready()
        if why is not None:
            unavailable(why)
        yield d
    finally:
        d.stop()


def docker_layers() -> list[bytes]:
    """Every kind of entry Docker's applier takes (xattrs small enough for the ext4 under
    its vfs directories), whiteouts, an opaque directory and a hard link into a lower layer."""
    return [
        layer_tar([D("etc", mtime=T0), F("etc/hostname", b"fz\n", mtime=T0),
                   F("etc/shadow", b"root:*:1::::::\n", mode=0o640, gid=42),
                   D("bin"), F("bin/tool", b"\x7fELF" + bytes(3000), mode=0o755, mtime=T0),
                   S("bin/sh", "tool"), L("bin/hard", "bin/tool"),
                   D("srv"), F("srv/old", b"old"), D("srv/cache"), F("srv/cache/x", b"x"),
                   E("dev/null", "chr", mode=0o666, major=1, minor=3),
                   E("run/fifo", "fifo", mode=0o600),
                   F("attrs", b"a", xattrs={"user.fz": b"one", "user.bin": bytes(range(64))}),
                   D("home/u", uid=1000, gid=1000, mode=0o700)]),
        layer_tar([WH("srv/old"), OPQ("srv/cache"), F("srv/cache/y", b"y", mtime=T0 + 7),
                   L("etc/hard2", "bin/tool"), F("etc/hostname", b"changed\n")]),
        layer_tar([WH("home"), F("new", b"top layer\n", mode=0o600, uid=7)]),
    ]


def test_docker_loads_the_export_and_fusezfs_imports_docker_save(env, capsys, dockerd):
    tars = docker_layers()
    docker_save(str(env / "src.tar"), [(tars, ["fz/app:1"])])
    ok(capsys, "image", "import", "-q", "tank/images", "src.tar")
    ok(capsys, "image", "export", "fz/app:1", str(env / "out.tar"))
    r = dockerd.docker("load", "-i", str(env / "out.tar"), text=True)
    assert r.returncode == 0, r.stderr
    assert "Loaded image: fz/app:1" in r.stdout
    r = dockerd.docker("image", "inspect", "fz/app:1", text=True)
    assert r.returncode == 0, r.stderr
    theirs = json.loads(r.stdout)[0]
    with tarfile.open(env / "out.tar") as t:
        manifest = json.load(t.extractfile("manifest.json"))[0]
        config = t.extractfile(manifest["Config"]).read()
    exported = json.loads(config)["rootfs"]["diff_ids"]
    assert theirs["RootFS"]["Layers"] == exported
    assert theirs["Id"] == "sha256:" + hashlib.sha256(config).hexdigest()
    ours = json.loads(ok(capsys, "image", "inspect", "fz/app:1"))[0]
    assert len(ours["RootFS"]["Layers"]) == len(exported) == len(tars)
    # and back: docker save piped into fusezfs image import, on standard input
    save = subprocess.Popen(["docker", "-H", f"unix://{dockerd.sock}", "save", "fz/app:1"],
                            stdout=subprocess.PIPE)
    imp = subprocess.run([sys.executable, "-m", "fusezfs.cli", "image", "import", "-q",
                          "tank/back", "-"], stdin=save.stdout, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=REPO), timeout=300)
    save.stdout.close()
    assert save.wait(timeout=120) == 0
    assert imp.returncode == 0, imp.stderr
    back = json.loads(ok(capsys, "image", "inspect", "-s", "tank/back", "fz/app:1"))[0]
    assert back["RootFS"]["Layers"] == exported
    assert back["Id"] == theirs["Id"]
    assert trees("tank/back", "fz/app:1", capsys) == trees("tank/images", "fz/app:1", capsys)
