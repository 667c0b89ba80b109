"""tools/bench's kernel target and report files (tools/benchtargets.py): the real ZFS is found
through the passthrough backend (here zfs-fuse, started by tools/with-zfs-fuse and named by
FUSEZFS_ZFS/FUSEZFS_ZPOOL), and the run writes its table as markdown and a bar chart per
workload as SVG beside it. Timings are never judged: only that every figure is reported,
the ratios are the figures' quotients, and the chart draws what the table says."""
from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))

import benchtargets

ROWS = [("rand_iops", "4 KiB random writes + fsync", "IOPS", "rate", None),
        ("cp_s", "cp -a source tree", "s", "time", ("<=", 1.0)),
        ("snapshot_ms", "snapshot, CLI command", "ms", "time", None)]
SVG = "{http://www.w3.org/2000/svg}"


def test_targets_are_checked():
    assert benchtargets.parse_targets("kernel, fusezfs,kernel") == ["kernel", "fusezfs"]
    with pytest.raises(ValueError, match="unknown target.*zfs"):
        benchtargets.parse_targets("fusezfs,zfs")


def test_report_files(tmp_path, capsys):
    results = {"fusezfs": {"rand_iops": 2000.0, "cp_s": 0.5},
               "kernel": {"rand_iops": 8000.0, "cp_s": 0.25, "snapshot_ms": 9.5},
               "native": {"rand_iops": 10000.0, "cp_s": 0.125}}
    md, svg = benchtargets.write_report(str(tmp_path / "r.md"), ROWS, results,
                                        ["fusezfs", "zfs-fuse", "kernel", "native"], ["a run"])
    with open(md) as f:
        text = f.read()
    assert "| workload | unit | fusezfs | kernel | native | fusezfs/kernel |" in text
    assert "| 4 KiB random writes + fsync | IOPS | 2000 | 8000 | 10000 | 0.25 |" in text
    assert "| cp -a source tree | s | 0.500 | 0.250 | 0.125 | 2.00 t |" in text
    assert "| snapshot, CLI command | ms | - | 9.50 | - | - |" in text
    assert "![bar chart per workload](r.svg)" in text and svg == str(tmp_path / "r.svg")
    assert "fusezfs/kernel" in capsys.readouterr().out
    root = ET.parse(svg).getroot()
    bars = [r for r in root.iter(f"{SVG}rect") if r.get("fill") != "white"]
    widths = [float(r.get("width")) for r in bars]
    assert len(bars) == 7                       # 3 + 3 + 1 figures: one bar each
    assert widths[0] / widths[2] == pytest.approx(0.2, rel=0.01)       # 2000 of 10000
    assert widths[3] / widths[4] == pytest.approx(2.0, rel=0.01)       # 0.5 s against 0.25 s


def test_kernel_target_through_passthrough(tmp_path):
    from zfsfuse import available, require
    require()
    assert available() is None
    report = tmp_path / "bench.md"
    r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "with-zfs-fuse"),
                        sys.executable, os.path.join(REPO, "tools", "bench"), "--targets",
                        "kernel,native", "--files-only", "--rand-count", "20", "--rand-file",
                        "1M", "--files", "20", "--tree", os.path.join(REPO, "fusezfs", "send"),
                        "--dir", str(tmp_path), "--report", str(report)],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "kernel (real ZFS through passthrough) zfs-unknown-passthrough" in r.stdout
    table = report.read_text()
    assert "| workload | unit | kernel | native |" in table
    rows = [line for line in table.splitlines() if line.startswith("| create 4 KiB files |")]
    assert len(rows) == 2 and all(cell.strip() not in ("", "-") for row in rows
                                  for cell in row.split("|")[3:5])
    assert ET.parse(tmp_path / "bench.svg").getroot().tag == f"{SVG}svg"
    assert [p for p in os.listdir(tmp_path) if p.startswith("fusezfs-bench-")] == []
