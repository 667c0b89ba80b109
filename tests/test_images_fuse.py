"""Containers through FUSE: with the pool mounted, a container's root filesystem is a mount of
its own at STORE's mountpoint/<id> (the graph directory), readable, writable, and (as root) a
process can chroot into it and run a program from the image; image and container commands
given while the pool is mounted run in its daemon and the mount shows their effect at once;
image layers are not mounted."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from imagekit import D, F, S, docker_save, layer_tar
from test_mount import Env, is_fuse_mount

pytestmark = pytest.mark.usefixtures("needs_fuse")       # tests/conftest.py


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    e.env["FUSEZFS_IMAGE_STORE"] = "tank/images"
    try:
        yield e
    finally:
        e.teardown()


def program_layer() -> bytes:
    """/bin/cat and the libraries it loads, copied from this machine."""
    cat = shutil.which("cat")
    out = subprocess.run(["ldd", cat], capture_output=True, text=True, check=True).stdout
    libs = [w for line in out.splitlines() for w in line.split() if w.startswith("/")]
    entries = [D("bin"), F("bin/cat", open(os.path.realpath(cat), "rb").read(), mode=0o755)]
    for lib in libs:
        entries.append(F(lib.lstrip("/"), open(os.path.realpath(lib), "rb").read(), mode=0o755))
    return layer_tar(entries)


def test_container_rootfs_is_a_mount(env):
    env.create_pool(512 << 20)
    tars = [program_layer(),
            layer_tar([D("etc"), F("etc/hostname", b"from the image\n"), S("etc/alias", "hostname")])]
    docker_save(str(env.tmp / "app.tar"), [(tars, ["app:1"])])
    env.run("image", "import", "-q", "tank/images", "app.tar")
    cid = env.run("container", "create", "app:1", "web").stdout.strip()
    info = json.loads(env.run("image", "inspect", "app:1").stdout)[0]
    env.mount()
    rootfs = os.path.join(env.mnt, "images", cid)
    # as root a mount of its own (an ordinary user's daemon covers the directory instead)
    assert is_fuse_mount(rootfs) if os.geteuid() == 0 else os.path.isdir(rootfs)
    with open(os.path.join(rootfs, "etc/hostname")) as f:
        assert f.read() == "from the image\n"
    assert {"bin", "etc", ".dockerenv", "proc", "sys", "dev"} <= set(os.listdir(rootfs))
    for layer in info["Layers"]:                  # layers are never mounted
        assert not os.path.exists(os.path.join(env.mnt, "images", layer["ChainID"][7:], "etc"))
    with open(os.path.join(rootfs, "etc/motd"), "w") as f:
        f.write("written through the mount\n")
    if os.geteuid() == 0:
        r = subprocess.run(["chroot", rootfs, "/bin/cat", "/etc/alias", "/etc/motd"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout == "from the image\nwritten through the mount\n"
    # commands while mounted run in the daemon; the mount shows their effect at once
    cid2 = env.run("container", "create", "app:1", "web2").stdout.strip()
    with open(os.path.join(env.mnt, "images", cid2, "etc/hostname")) as f:
        assert f.read() == "from the image\n"
    assert not os.path.exists(os.path.join(env.mnt, "images", cid2, "etc/motd"))
    new = env.run("container", "commit", "web", "app:2").stdout.strip()
    rows = env.run("image", "ls", "-H").stdout.splitlines()
    assert sorted(r.split("\t")[1] for r in rows) == ["1", "2"]
    assert new[7:19] in {r.split("\t")[2] for r in rows}
    env.run("container", "create", "app:2", "web3")
    listed = {r.split("\t")[6]: r.split("\t")[5]
              for r in env.run("container", "ls", "-H").stdout.splitlines()}
    ds3 = listed["web3"]
    with open(os.path.join(env.mnt, ds3.split("/", 1)[1], "etc/motd")) as f:
        assert f.read() == "written through the mount\n"
    env.run("container", "rm", "web2")
    assert not os.path.exists(os.path.join(env.mnt, "images", cid2, "etc"))
    # an export while mounted writes the archive where the client asked
    env.run("image", "export", "app:2", "out.tar")
    assert (env.tmp / "out.tar").stat().st_size > 0
    env.unmount()
