"""tools/bench's target selection and its report files: the `kernel` target (any real ZFS,
reached through fusezfs's passthrough backend), `--targets`, and the results written as a
markdown table and an SVG bar chart per workload.

`kernel` is whatever real ZFS the passthrough backend finds (fusezfs/backends): the kernel
module's own zfs/zpool where it is loaded, else the commands FUSEZFS_ZFS/FUSEZFS_ZPOOL name,
prefix included (`tools/with-zfs-fuse tools/bench --targets fusezfs,kernel` runs it on a
private zfs-fuse). Its pool is made on a sparse file in the run's temporary directory, with a
name of its own (never `bench`: a real host may have one), and destroyed at the end; the
workloads run where its mounts are (the command prefix). Nothing else of the host is touched.

The report is a function of the results alone: no timing is judged here.
"""
from __future__ import annotations

import html
import os
import subprocess
import sys
import uuid

TOOLS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TOOLS)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from fusezfs.backends import BackendError, module_loaded, real_commands
from fusezfs.backends.library import PassthroughBackend

ALL_TARGETS = ("fusezfs", "zfs-fuse", "kernel", "floor", "native")
DEFAULT_TARGETS = "fusezfs,zfs-fuse,floor,native"
REAL_ZFS = ("zfs-fuse", "kernel")           # the denominators of the ratio columns
COLOURS = {"fusezfs": "#1f77b4", "zfs-fuse": "#ff7f0e", "kernel": "#2ca02c",
           "floor": "#9467bd", "native": "#7f7f7f"}


def parse_targets(text: str) -> list[str]:
    """`--targets a,b,...` -> the names, in the order given (ValueError for unknown ones)."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in names if t not in ALL_TARGETS]
    if unknown or not names:
        raise ValueError(f"unknown target(s) {', '.join(unknown) or '(none)'}: choose from "
                         f"{','.join(ALL_TARGETS)}")
    return list(dict.fromkeys(names))


def kernel_unavailable() -> str | None:
    """Why the kernel target cannot run here, or None."""
    named = os.environ.get("FUSEZFS_ZFS") or os.environ.get("FUSEZFS_ZPOOL")
    if not module_loaded() and not named:
        return ("no ZFS kernel module is loaded and FUSEZFS_ZFS/FUSEZFS_ZPOOL name no real "
                "ZFS (tools/with-zfs-fuse runs a private zfs-fuse as one)")
    if real_commands() is None:
        return "the real zfs and zpool commands were not found"
    return None


class KernelSide:
    """A real ZFS through the passthrough backend, with tools/bench's target interface."""
    name = "kernel"

    def __init__(self, tmp: str, pool_bytes: int, work, drop_caches) -> None:
        found = real_commands()
        if found is None:
            raise BackendError("kernel target: no real zfs and zpool commands")
        self.backend = PassthroughBackend(*found, mount_root="")
        self.prefix = self.backend.zfs[:-1]       # where its mounts are
        self.work, self.drop_caches = work, drop_caches
        self.pool = "fzbench" + uuid.uuid4().hex[:6]
        self.dir = os.path.join(tmp, "kernel")
        self.mnt = os.path.join(self.dir, "mnt")
        os.makedirs(self.mnt)
        self.dev = os.path.join(self.dir, "bench.img")
        with open(self.dev, "wb") as f:
            f.truncate(pool_bytes)
        self.created = False

    def setup(self) -> None:
        b = self.backend
        b.create_pool(self.pool, [self.dev], mountpoint=self.mnt)
        self.created = True
        b.create(f"{self.pool}/off", {"compression": "off"})
        b.create(f"{self.pool}/zc", {"compression": "on"})
        for ds in ("meta", "tree", "snap"):
            b.create(f"{self.pool}/{ds}")

    def path(self, ds: str) -> str:
        return os.path.join(self.mnt, ds)

    def run(self, action: str, args: dict, label: str | None = None) -> dict:
        return self.work([], action, args, runner=lambda argv: subprocess.run(
            self.prefix + argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
            timeout=3600))

    def snapshots(self, reps: int) -> dict:
        """Workload 6: `zfs snapshot`/`zfs clone` timed where the real ZFS runs."""
        return self.run("zfssnap", {"ds": f"{self.pool}/snap", "reps": reps,
                                    "zfs": self.backend.zfs[-1]})

    def cold(self) -> None:
        self.backend.export_pool(self.pool)
        self.drop_caches()
        self.backend.import_pool(self.pool, self.dir)

    def version(self) -> str:
        return self.backend.version()

    def close(self) -> None:
        if self.created:
            self.backend.destroy_pool(self.pool, force=True)
            self.created = False


# ---- the report files -------------------------------------------------------------------
def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.0f}" if v >= 1000 else f"{v:.1f}" if v >= 10 else f"{v:.2f}" if v >= 1 \
        else f"{v:.3f}"


def table_rows(rows: list, results: dict, targets: list[str]) -> tuple[list[str], list[list[str]]]:
    """The header and rows of the all-targets table: each target's figure, then fusezfs /
    each real ZFS present ('t' after the ratio: a time, lower is better for fusezfs)."""
    present = [t for t in targets if results.get(t)]
    ratios = [t for t in REAL_ZFS if t in present] if "fusezfs" in present else []
    head = ["workload", "unit"] + present + [f"fusezfs/{t}" for t in ratios]
    out = []
    for key, label, unit, kind, _goal in rows:
        values = [results.get(t, {}).get(key) for t in present]
        if all(v is None for v in values):
            continue
        cells = [label.strip(), unit] + [fmt(v) for v in values]
        for t in ratios:
            a, b = results["fusezfs"].get(key), results[t].get(key)
            cells.append(f"{a / b:.2f}{' t' if kind == 'time' else ''}" if a is not None and b
                         else "-")
        out.append(cells)
    return head, out


def print_table(head: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(head)]
    for r in [head] + rows:
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(r, widths))).rstrip())


def markdown(head: list[str], rows: list[list[str]], info: list[str], svg_name: str) -> str:
    lines = ["# tools/bench results", ""] + [f"- {line}" for line in info] + [""]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2)) + "|")
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "fusezfs/X: fusezfs's figure divided by X's in the same run (rates: higher is "
              "better for fusezfs; 't': times, lower is better).", "",
              f"![bar chart per workload]({svg_name})", ""]
    return "\n".join(lines)


def svg_chart(rows: list, results: dict, targets: list[str]) -> str:
    """A bar chart per workload (one panel each, its own scale), every target a bar."""
    present = [t for t in targets if results.get(t)]
    panels = [(key, label.strip(), unit, kind) for key, label, unit, kind, _g in rows
              if any(results[t].get(key) is not None for t in present)]
    cols, pw, bar_h, gap, label_w = 2, 440, 16, 4, 70
    ph = 34 + len(present) * (bar_h + gap) + 8
    width = cols * pw + 20
    height = 40 + ((len(panels) + cols - 1) // cols) * ph + 10
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           '<text x="10" y="22" font-size="15" font-weight="bold">tools/bench: every target '
           'per workload</text>']
    for n, (key, label, unit, kind) in enumerate(panels):
        x0, y0 = 10 + (n % cols) * pw, 36 + (n // cols) * ph
        values = {t: results[t].get(key) for t in present}
        top = max(v for v in values.values() if v is not None) or 1.0
        better = "lower is better" if kind == "time" else "higher is better"
        out.append(f'<text x="{x0}" y="{y0 + 14}" font-weight="bold">'
                   f'{html.escape(label)} ({html.escape(unit)}, {better})</text>')
        span = pw - label_w - 80
        for i, t in enumerate(present):
            y = y0 + 22 + i * (bar_h + gap)
            out.append(f'<text x="{x0 + label_w - 4}" y="{y + bar_h - 4}" '
                       f'text-anchor="end">{html.escape(t)}</text>')
            v = values[t]
            if v is None:
                out.append(f'<text x="{x0 + label_w}" y="{y + bar_h - 4}" fill="#999">'
                           f'not run</text>')
                continue
            w = max(1.0, span * v / top)
            out.append(f'<rect x="{x0 + label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" '
                       f'fill="{COLOURS.get(t, "#444")}"/>')
            out.append(f'<text x="{x0 + label_w + w + 4:.1f}" y="{y + bar_h - 4}">'
                       f'{fmt(v)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_report(path: str, rows: list, results: dict, targets: list[str],
                 info: list[str]) -> tuple[str, str]:
    """Print the all-targets table, write it as markdown at PATH and the chart beside it
    (PATH with .svg). Returns both paths."""
    head, body = table_rows(rows, results, targets)
    print()
    print("all targets (" + ", ".join(t for t in targets if results.get(t)) + "):")
    print_table(head, body)
    svg_path = os.path.splitext(path)[0] + ".svg"
    with open(svg_path, "w") as f:
        f.write(svg_chart(rows, results, targets))
    with open(path, "w") as f:
        f.write(markdown(head, body, info, os.path.basename(svg_path)))
    print(f"table: {path}; chart: {svg_path}")
    return path, svg_path
