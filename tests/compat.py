"""Shared machinery for the scripted sessions run against zfs-fuse and against fusezfs.

A session is a list of `Step`s. Each step runs on both sides, each with its own sparse files and
state: zfs-fuse in a private daemon (tests/zfsfuse.py), fusezfs in-process (`fusezfs.cli.main`)
with its own FUSEZFS_STATE_DIR. The work directory is written `{D}` in the steps and in the
compared output. Each step names a comparison rule: a function from a `Result` to anything
comparable with ==; the default, `exact`, compares exit code, stdout and stderr. All mismatches
are collected and reported together, as unified diffs (- zfs-fuse, + fusezfs).

Where zfs-fuse (pool version 23) lacks a feature that OpenZFS has, a step can give `alt`: the
commands to run on the zfs-fuse side instead, whose results are concatenated (for instance one
`zfs set` per property where OpenZFS takes several at once). Where zfs-fuse has nothing
equivalent, or answers differently from current OpenZFS, a step gives `expect`: the Result
OpenZFS gives (from its sources), compared with fusezfs's instead of zfs-fuse's; zfs-fuse then
runs only the `alt` commands, if any, to stay in the same state.

A step marked `pending` (a reason naming the file to fix) differs for a known reason outside
the test's reach: its mismatch is reported as a warning, not a failure.
"""
from __future__ import annotations

import contextlib
import difflib
import io
import re
import shlex
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from fusezfs import cli
from zfsfuse import ZfsFuse

MiB = 1 << 20
NOISE = re.compile(r"^Defaulting to 4K blocksize \(ashift=12\) for '[^']*'\n", re.MULTILINE)


@dataclass(frozen=True)
class Result:
    code: int | str
    out: str
    err: str

    def render(self) -> list[str]:
        return ([f"exit {self.code}", "--- stdout ---"] + self.out.splitlines()
                + ["--- stderr ---"] + self.err.splitlines())


# ---- comparison rules: what of a Result must agree --------------------------------------------
def exact(r: Result):
    return r


def usage(r: Result):
    """Usage errors: exit code, stdout and the first stderr line (the usage texts differ)."""
    return Result(r.code, r.out, r.err.splitlines()[0] if r.err else "")


def table(r: Result):
    """Tables whose column widths differ: compare the whitespace-split cells."""
    return (r.code, [line.split() for line in r.out.splitlines()], r.err)


def merged(r: Result):
    """Same text and exit code, either stream (zfs-fuse and OpenZFS chose different streams)."""
    return (r.code, r.out + r.err)


def exit_code(r: Result):
    return r.code


def stdout_only(r: Result):
    return r.out


def no_stderr(r: Result):
    """Exit code and stdout; stderr differs in wording only (the step says why)."""
    return (r.code, r.out)


def first_err_line(r: Result):
    """Exit code, stdout and the first stderr line (the hints after it differ)."""
    return (r.code, r.out, r.err.splitlines()[:1])


def head(n: int) -> Callable[[Result], object]:
    """Exit code, stdout and the first `n` stderr lines (a usage text follows)."""
    def rule(r: Result):
        return (r.code, r.out, r.err.splitlines()[:n])
    rule.__name__ = f"head({n})"
    return rule


def words(*pairs: tuple[str, str], base: Callable[[Result], object] = exact,
          name: str = "words") -> Callable[[Result], object]:
    """`base` after rewriting zfs-fuse's older wording (regex, replacement) into current
    OpenZFS's, in both outputs (fusezfs's already has OpenZFS's words, so it is unchanged)."""
    rxs = [(re.compile(p, re.MULTILINE), r) for p, r in pairs]

    def rule(r: Result):
        out, err = r.out, r.err
        for rx, repl in rxs:
            out, err = rx.sub(repl, out), rx.sub(repl, err)
        return base(Result(r.code, out, err))
    rule.__name__ = name
    return rule


def sorted_lists(r: Result):
    """Lists of datasets after a "use '-r' ..." or "use '-R' ..." line, sorted: ZFS walks
    siblings in its directories' hash order, which differs from run to run."""
    def fix(text: str) -> str:
        out, block = [], []
        listing = False
        for line in text.splitlines():
            if listing and not line.startswith(("cannot ", "use ", "Output limited")):
                block.append(line)
                continue
            out += sorted(block)
            block = []
            out.append(line)
            listing = line.startswith("use '-")
        return "\n".join(out + sorted(block))
    return Result(r.code, fix(r.out), fix(r.err))


def sub(pattern: str, repl: str, base: Callable[[Result], object] = exact,
        name: str | None = None) -> Callable[[Result], object]:
    """`base` after replacing `pattern` (a multiline regex) by `repl` in stdout and stderr."""
    rx = re.compile(pattern, re.MULTILINE)

    def rule(r: Result):
        return base(Result(r.code, rx.sub(repl, r.out), rx.sub(repl, r.err)))
    rule.__name__ = name or f"sub({pattern!r})"
    return rule


def both(*rules: Callable[[Result], object]) -> Callable[[Result], object]:
    """Apply rules that return Results one after another."""
    def rule(r: Result):
        for f in rules:
            r = f(r)
        return r
    rule.__name__ = "+".join(getattr(f, "__name__", "?") for f in rules)
    return rule


@dataclass(frozen=True)
class Step:
    argv: tuple[str, ...]
    rule: Callable[[Result], object] = exact
    why: str = ""        # why the rule is not `exact` where it is not obvious
    alt: tuple[tuple[str, ...], ...] = ()   # what zfs-fuse runs instead, if it lacks the feature
    expect: Result | None = None    # OpenZFS's answer, where zfs-fuse's is not the reference
    pending: str = ""               # a known difference someone else has to fix (a warning)


def S(cmd: str, rule: Callable[[Result], object] = exact, why: str = "",
      alt: Sequence[str] = (), expect: Result | None = None, pending: str = "") -> Step:
    """A step from a shell-like command line (shlex rules: quote arguments with spaces)."""
    return Step(tuple(shlex.split(cmd)), rule, why, tuple(tuple(shlex.split(a)) for a in alt),
                expect, pending)


def R(code: int, out: str = "", err: str = "") -> Result:
    """An expected Result, lines given without their final newline."""
    return Result(code, out + "\n" if out else "", err + "\n" if err else "")


# ---- running a step on each side --------------------------------------------------------------
def expand(argv: Sequence[str], workdir: Path) -> list[str]:
    return [a.replace("{D}", str(workdir)) for a in argv]


def normalize(code, out: str, err: str, workdir: Path) -> Result:
    d = str(workdir)
    return Result(code, out.replace(d, "{D}"), NOISE.sub("", err).replace(d, "{D}"))


def run_zfsfuse(zf: ZfsFuse, tool: str, step: Step, workdir: Path) -> Result:
    """Run the step (or its `alt` commands) with zfs-fuse's `tool` (zfs or zpool)."""
    code, out, err = 0, "", ""
    for argv in step.alt or (() if step.expect else (step.argv,)):
        run = zf.zpool if tool == "zpool" else zf.zfs
        r = run(*expand(argv, workdir), busy_retries=10)
        out, err = out + r.stdout, err + r.stderr
        code = code or r.returncode
    return normalize(code, out, err, workdir)


def run_fusezfs(prefix: Sequence[str], step: Step, workdir: Path) -> Result:
    """Run `fusezfs PREFIX... ARGV...` in-process, capturing its streams and exit code."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main([*prefix, *expand(step.argv, workdir)])
        except SystemExit as e:
            code = e.code
        except Exception:
            code = "exception"
            err.write(traceback.format_exc())
    return normalize(code, out.getvalue(), err.getvalue(), workdir)


def report(i: int, tool: str, step: Step, a: Result, b: Result) -> str:
    rule = getattr(step.rule, "__name__", repr(step.rule))
    title = f"step {i}: {tool} {shlex.join(step.argv)}   [rule: {rule}]"
    if step.alt:
        title += "\n  (zfs-fuse ran: " + "; ".join(shlex.join(a) for a in step.alt) + ")"
    if step.why:
        title += f"\n  ({step.why})"
    if step.pending:
        title += f"\n  (pending: {step.pending})"
    diff = difflib.unified_diff(a.render(), b.render(), "OpenZFS" if step.expect else "zfs-fuse",
                                "fusezfs", lineterm="", n=20)
    return title + "\n" + "\n".join("    " + line for line in diff)


def run_session(zf: ZfsFuse, tool: str, prefix: Sequence[str], session: Sequence[Step],
                dirs: dict[str, Path], verbose: bool = False) -> tuple[list[str], list[str]]:
    """Run every step on both sides (dirs: "zfs-fuse" and "fusezfs" work directories);
    return the reports of the steps that differ: (failures, pending ones)."""
    failures, pending = [], []
    for i, step in enumerate(session):
        a = run_zfsfuse(zf, tool, step, dirs["zfs-fuse"])
        if step.expect is not None:
            a = step.expect
        b = run_fusezfs(prefix, step, dirs["fusezfs"])
        if verbose:
            print(f"\n#{i} {tool} {shlex.join(step.argv)}\n  reference: {a}\n  fusezfs:   {b}")
        if step.rule(a) != step.rule(b):
            (pending if step.pending else failures).append(report(i, tool, step, a, b))
    return failures, pending


def make_files(d: Path, names: Sequence[str], size: int = 128 * MiB) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for name in names:
        with open(d / name, "wb") as f:
            f.truncate(size)


# ---- what every session test does around its steps --------------------------------------------
def work_dirs(tmp_path: Path, monkeypatch, files: Sequence[str], empty: str | None = None
              ) -> dict[str, Path]:
    """Each side's work directory with the same sparse `files` (and an `empty` directory), and
    fusezfs's state in the test's own directory, run from its work directory."""
    dirs = {"zfs-fuse": tmp_path / "zf", "fusezfs": tmp_path / "fz"}
    for d in dirs.values():
        make_files(d, files)
        if empty:
            (d / empty).mkdir()
    monkeypatch.setenv("FUSEZFS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(dirs["fusezfs"])
    return dirs


def assert_same(session: Sequence[Step], failures: list[str], pending: list[str]) -> None:
    """Pending differences as warnings; any other difference fails, all of them listed."""
    import warnings
    for text in pending:
        warnings.warn("known difference, pending a fix elsewhere:\n" + text)
    assert not failures, f"{len(failures)} of {len(session)} steps differ " \
                         f"(- reference, + fusezfs):\n\n" + "\n\n".join(failures)

