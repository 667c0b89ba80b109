"""What the command-line tests share: running `fusezfs` in-process, pool files in a test's own
state directory, and files of random bytes copied into a dataset."""
from __future__ import annotations

import random

from fusezfs import cli

MiB = 1 << 20


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """`fusezfs ARGV` in this process: (exit code, stdout, stderr)."""
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def pool_files(tmp_path, monkeypatch, n: int, mib: int = 128, prefix: str = "disk") -> list[str]:
    """A private state directory and `n` sparse pool files of `mib` MiB in tmp_path."""
    monkeypatch.setenv("FUSEZFS_STATE_DIR", str(tmp_path / "state"))
    files = []
    for i in range(n):
        p = tmp_path / f"{prefix}{i}"
        with open(p, "wb") as f:
            f.truncate(mib * MiB)
        files.append(str(p))
    return files


def random_files(tmp, capsys, dataset: str, n: int, seed: int,
                 largest: int = 300_000) -> dict[str, bytes]:
    """`n` files of random bytes (1000 to `largest` bytes) copied into `dataset` as
    /f{seed}_{i}; path -> bytes."""
    rng = random.Random(seed)
    files = {}
    for i in range(n):
        data = rng.randbytes(rng.randrange(1000, largest))
        src = tmp / f"src{seed}_{i}"
        src.write_bytes(data)
        assert run(capsys, "cp", str(src), f"{dataset}:/f{seed}_{i}")[0] == 0
        files[f"/f{seed}_{i}"] = data
    return files


def ok(capsys, *argv: str) -> str:
    """`fusezfs ARGV`, which must succeed: its stdout."""
    code, out, err = run(capsys, *argv)
    assert code == 0, (argv, out, err)
    return out


def check_pools(skip_exported: bool = False) -> None:
    """The consistency checker after a test: every imported pool's space accounting recounts
    right and `verify` finds everything reachable whole and allocated exactly once."""
    from fusezfs.host import registry
    from fusezfs.cli.cli_pool import open_pool
    from fusezfs.dsl.datasets import Datasets
    from fusezfs.engine.verify import verify
    for name, entry in registry.load().items():
        if skip_exported and entry.get("state") == "exported":
            continue
        pool = open_pool(name)
        try:
            assert Datasets(pool).check() == []
            report = verify(pool)
            assert report.ok, report.faults
        finally:
            pool.close()
