"""pytest plugin (entry point `pytest11: fusezfs`): ZFS pools for a downstream project's tests,
on the emulation where there is no ZFS and on a real ZFS where asked.

Fixtures:

* `fusezfs_backend` — a `fusezfs.backends` library object on the backend this run uses; the
  emulated backend keeps its registry in a state directory of the session's own (one service
  serves the session's tests and is stopped at its end: `fusezfs_state_dir`); the
  environment of the test (FUSEZFS_BACKEND, FUSEZFS_STATE_DIR, FUSEZFS_ZFS, ...) is set so
  that in-process calls of fusezfs reach the same backend.
* `zfs_commands` — a directory of `zfs`, `zpool` and `fusezfs` wrappers put first on PATH, so
  the test's subprocesses (the tool under test) run them as they would on a ZFS machine; the
  wrappers carry the backend's settings. Returns the directory.
* `fusezfs_pool` — a fresh pool on a sparse file in tmp_path, mounted where FUSE works (the
  emulation: `fusezfs mount`; a real ZFS mounts its own), `zfs_commands` on PATH. A
  `FusezfsPool`: `.name`, `.backend`, `.files`, `.mounted`, `.path(DATASET)` (the local
  directory of a mounted dataset), `.dataset(REL)`.
* `fusezfs_mounted_pool` — the same, skipped where it cannot be mounted.

The backend: `--fusezfs-backend=auto|emulated|passthrough` (default: FUSEZFS_BACKEND, else
auto, which is what the `zfs` command itself would choose here). `@pytest.mark.fusezfs_backend(
"emulated", ...)` limits a test to the backends named. A test is skipped, with the reason,
where the backend asked for cannot run (passthrough without real zfs/zpool commands).

Teardown destroys only what the test made: the pools that appeared during the test and whose
files lie in the test's tmp_path (other pools — the machine's, another test's — are never
touched). A pool that cannot be destroyed is a teardown error, never silently left.
"""
from __future__ import annotations

import os
import shlex
import shutil
import sys
import uuid
from dataclasses import dataclass, field

import pytest

from fusezfs.backends import BackendError, choose
from fusezfs.backends.library import Backend, connect

POOL_SIZE = 256 << 20
SETTINGS = ("FUSEZFS_BACKEND", "FUSEZFS_STATE_DIR", "FUSEZFS_ZFS", "FUSEZFS_ZPOOL",
            "FUSEZFS_MOUNT_ROOT", "PYTHONPATH")      # what the wrappers and the test inherit


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fusezfs", "ZFS pools from fusezfs")
    group.addoption("--fusezfs-backend", choices=("auto", "emulated", "passthrough"),
                    default=None, help="backend of the fusezfs fixtures: the emulation, a real "
                    "ZFS through its commands (FUSEZFS_ZFS/FUSEZFS_ZPOOL), or auto (default: "
                    "$FUSEZFS_BACKEND, else auto)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fusezfs_backend(*names): run the test only on these "
                            "fusezfs backends ('emulated', 'passthrough')")


def backend_name(config: pytest.Config) -> str:
    """The backend this run uses (BackendError when auto cannot decide)."""
    asked = config.getoption("--fusezfs-backend") or os.environ.get("FUSEZFS_BACKEND") or "auto"
    return choose().name if asked == "auto" else asked


@pytest.fixture(scope="session")
def fusezfs_state_dir(tmp_path_factory):
    """The emulated backend's state directory for the session (its registry, its service:
    one service serves every test, started by the first command and stopped at the end)."""
    state = tmp_path_factory.mktemp("fusezfs-state")
    yield state
    connect("emulated", state_dir=state).stop_service()


@pytest.fixture
def fusezfs_backend(request: pytest.FixtureRequest, tmp_path, monkeypatch) -> Backend:
    try:
        name = backend_name(request.config)
        marker = request.node.get_closest_marker("fusezfs_backend")
        if marker is not None and name not in marker.args:
            pytest.skip(f"fusezfs: runs on the {' and '.join(marker.args)} backend only "
                        f"(this run: {name})")
        state = request.getfixturevalue("fusezfs_state_dir") if name == "emulated" else None
        backend = connect(name, state_dir=state)
    except BackendError as e:
        pytest.skip(f"fusezfs: {e}")
    for key in SETTINGS:
        if key in backend.env:
            monkeypatch.setenv(key, backend.env[key])
    before = set(backend.pools())
    yield backend
    _destroy_made(backend, before, str(tmp_path))


def _destroy_made(backend: Backend, before: set[str], tmp: str) -> None:
    """Destroy the pools the test made: new since setup, on files in the test's tmp_path."""
    made = [p for p in backend.pools() if p not in before
            and tmp + "/" in backend.run("pool", "status", p, check=False).stdout]
    for pool in made:
        backend.destroy_pool(pool, force=True)


@pytest.fixture
def zfs_commands(fusezfs_backend: Backend, tmp_path, monkeypatch) -> str:
    bindir = tmp_path / "fusezfs-bin"
    bindir.mkdir(exist_ok=True)
    exports = " ".join(f"{k}={shlex.quote(fusezfs_backend.env[k])}" for k in SETTINGS
                       if k in fusezfs_backend.env)
    for program, entry in (("zfs", "zfs_main"), ("zpool", "zpool_main"), ("fusezfs", "main")):
        code = (f"import sys; from fusezfs.cli import {entry}; sys.argv[0] = {program!r}; "
                f"sys.exit({entry}())")
        script = bindir / program
        script.write_text(f"#!/bin/sh\nexport {exports}\n"
                          f"exec {shlex.quote(sys.executable)} -c {shlex.quote(code)} \"$@\"\n")
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    return str(bindir)


@dataclass
class FusezfsPool:
    """A pool made for one test."""
    name: str
    backend: Backend
    files: list[str]
    mounted: bool
    datasets: list[str] = field(default_factory=list)

    def dataset(self, rel: str = "") -> str:
        """The full name of a dataset of this pool ('' : the root)."""
        return f"{self.name}/{rel}" if rel else self.name

    def path(self, rel: str = "") -> str:
        """The local directory of a mounted dataset of this pool."""
        local = self.backend.mounted_path(self.dataset(rel))
        if local is None:
            raise FileNotFoundError(f"'{self.dataset(rel)}' is not mounted where this process "
                                    f"can see it")
        return local


def fuse_unusable(backend: Backend) -> str | None:
    """Why the emulation cannot mount here, or None."""
    if backend.env.get("FUSEZFS_NO_SERVICE"):
        return "FUSEZFS_NO_SERVICE is set: commands run without the service that mounts"
    if shutil.which("fusermount3") is None:
        return "fusermount3 not found (apt-get install fuse3)"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as e:
        return f"/dev/fuse: {e.strerror}"
    try:
        import pyfuse3  # noqa: F401
    except ImportError as e:
        return f"pyfuse3 cannot be imported: {e}"
    return None


def _make_pool(backend: Backend, tmp_path, mount: bool) -> FusezfsPool:
    name = "t" + uuid.uuid4().hex[:10]
    disk = tmp_path / "fusezfs-pool" / "disk0"
    disk.parent.mkdir(exist_ok=True)
    mnt = tmp_path / "fusezfs-mnt"
    mnt.mkdir(exist_ok=True)
    backend.create_pool(name, [disk], size=POOL_SIZE, mountpoint=str(mnt))
    mounted = backend.mounted_path(name) is not None     # ZFS and fusezfs's service mount it
    if not mounted and backend.name == "emulated" and mount:
        backend.mount(name, str(mnt))
        mounted = backend.mounted_path(name) is not None
    return FusezfsPool(name, backend, [str(disk)], mounted)


@pytest.fixture
def fusezfs_pool(fusezfs_backend: Backend, zfs_commands, tmp_path) -> FusezfsPool:
    mount = fusezfs_backend.name != "emulated" or fuse_unusable(fusezfs_backend) is None
    return _make_pool(fusezfs_backend, tmp_path, mount)


@pytest.fixture
def fusezfs_mounted_pool(fusezfs_backend: Backend, zfs_commands, tmp_path) -> FusezfsPool:
    if fusezfs_backend.name == "emulated" and (why := fuse_unusable(fusezfs_backend)) is not None:
        pytest.skip(f"fusezfs: the pool cannot be mounted here: {why}")
    pool = _make_pool(fusezfs_backend, tmp_path, True)
    if not pool.mounted:
        pytest.skip(f"fusezfs: pool '{pool.name}' is not mounted where this process can see it "
                    f"(a real ZFS in another mount namespace: set FUSEZFS_MOUNT_ROOT)")
    return pool
