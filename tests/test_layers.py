"""The package's folders are its layers, and a module imports only from its own layer and the
layers below it (docs/DESIGN.md, "Layers"). Every import counts, the ones inside functions too:
a lazy import is still a dependency, only a later one.

A layer is named by module prefixes; the longest prefix that matches a module decides. The test
fails naming each import that reaches up, so a new one is seen the day it is written.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "fusezfs"

# bottom to top; a module may import from its own layer and the ones before it
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("context", ("fusezfs.errors", "fusezfs.sessions", "fusezfs")),
    ("formats", ("fusezfs.formats",)),
    ("engine", ("fusezfs.engine",)),
    ("dsl", ("fusezfs.dsl",)),
    ("zpl", ("fusezfs.zpl",)),
    ("send", ("fusezfs.send",)),
    ("api", ("fusezfs.api",)),
    ("host state", ("fusezfs.host.registry", "fusezfs.host.paths", "fusezfs.host.mounts",
                    "fusezfs.host.prober", "fusezfs.host.wire")),
    ("fuse", ("fusezfs.fuse",)),
    ("host", ("fusezfs.host",)),
    ("cli", ("fusezfs.cli.",)),
    ("images", ("fusezfs.images",)),
    ("backends", ("fusezfs.backends",)),
    ("programs", ("fusezfs.cli", "fusezfs.cli.__main__", "fusezfs.host.service",
                  "fusezfs.host.volume_serve", "fusezfs.pytest_plugin")),
    ("testing", ("fusezfs.testing",)),
]


def layer_of(module: str) -> int:
    """The layer whose longest prefix names `module` (the package itself: only its __init__)."""
    best, index = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if p.endswith("."):
                hit = module.startswith(p)
            elif p == "fusezfs":
                hit = module == p
            else:
                hit = module == p or module.startswith(p + ".")
            if hit and len(p) > best:
                best, index = len(p), i
    assert index >= 0, f"{module} is in no layer: add its folder to LAYERS"
    return index


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[str, int]]:
    """(module imported, line) for every fusezfs import in `path`, relative ones resolved."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "fusezfs"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "fusezfs":
                continue
            for a in node.names:        # `from fusezfs.x import y`: y may be a module of x
                sub = f"{mod}.{a.name}"
                is_module = (PACKAGE.parent / Path(*sub.split("."))).with_suffix(".py").exists() \
                    or (PACKAGE.parent / Path(*sub.split(".")) / "__init__.py").exists()
                found.append((sub if is_module else mod, node.lineno))
    return found


def upward_imports() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        me = module_name(path)
        mine = layer_of(me)
        for target, line in imports(path):
            theirs = layer_of(target)
            if theirs > mine:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {me} ({LAYERS[mine][0]}) "
                           f"imports {target} ({LAYERS[theirs][0]})")
    return bad


def test_every_module_is_in_a_layer():
    for path in PACKAGE.rglob("*.py"):
        layer_of(module_name(path))


def test_no_module_imports_from_a_layer_above_its_own():
    bad = upward_imports()
    assert not bad, "imports that reach up a layer:\n" + "\n".join(bad)


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The check itself can fail: a formats module that imports the command line is caught."""
    fake = tmp_path / "fusezfs"
    (fake / "formats").mkdir(parents=True)
    (fake / "cli").mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "formats" / "__init__.py").write_text("")
    (fake / "cli" / "__init__.py").write_text("")
    (fake / "cli" / "cli_pool.py").write_text("")
    (fake / "formats" / "bp.py").write_text("def f():\n    from ..cli import cli_pool\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    assert upward_imports() == [
        "fusezfs/formats/bp.py:2: fusezfs.formats.bp (formats) imports fusezfs.cli.cli_pool (cli)"]
