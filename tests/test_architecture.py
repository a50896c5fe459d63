"""The architecture as rules on the source: the import graph of sdk/, export/ and serving/ has no
cycle, the runtime never imports the build side or PyTorch, the manifest is parsed in one place,
and no module imports another's private names.

Read from the source with ``ast`` (nothing is imported), so the rules hold for every code path,
including the imports done lazily inside functions. Imports under ``if TYPE_CHECKING:`` are left
out: they name types for the checker and never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from helpers.shared_data import REPO

PACKAGES = ("sdk", "export", "serving")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources(packages=PACKAGES) -> dict[str, Path]:
    """{dotted module name: file} for every module of ``packages``."""
    return {module_name(p): p for pkg in packages for p in sorted((REPO / pkg).rglob("*.py"))}


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for each import statement in the module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_lines(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, [alias.name for alias in node.names], node.lineno))
    return found


def import_graph(packages=PACKAGES) -> dict[str, set[str]]:
    """Module -> the project modules it imports (``from pkg import submodule`` counts as the submodule)."""
    mods = sources(packages)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for target, names, _ in imports(name, path):
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in mods]
            if subs:
                graph[name].update(subs)
            elif target in mods:
                graph[name].add(target)
            else:  # a name imported from a module of a package: the longest project prefix
                parts = target.split(".")
                while parts and ".".join(parts) not in mods:
                    parts.pop()
                if parts:
                    graph[name].add(".".join(parts))
        graph[name].discard(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


# --------------------------------------------------------------------------- the checker itself


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_relative_imports_resolve_to_modules(tmp_path, monkeypatch):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("from .sub import b\nfrom . import sub\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import f\nfrom .. import a\n"
    )
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
    assert import_graph(("pkg",)) == {
        "pkg": {"pkg.a"},
        "pkg.a": {"pkg.sub.b", "pkg.sub"},
        "pkg.sub": set(),
        "pkg.sub.b": {"pkg.a"},
    }
    assert cycles(import_graph(("pkg",))) == [["pkg.a", "pkg.sub.b"]]


# --------------------------------------------------------------------------- the rules


def test_no_import_cycles():
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("package", ["sdk", "serving"])
def test_the_runtime_never_imports_the_build_side_or_torch(package):
    """sdk/ and serving/ run without PyTorch; a lazy import inside a function counts too."""
    bad = [
        f"{path.relative_to(REPO)}:{line} imports {target}"
        for name, path in sources((package,)).items()
        for target, _, line in imports(name, path)
        if target.split(".")[0] in ("export", "torch", "torchvision")
    ]
    assert bad == []


def test_the_manifest_is_parsed_in_one_place():
    """Only sdk/manifest.py reads the raw manifest dictionary (``<bundle>.manifest.raw``)."""
    bad = []
    for name, path in sources(("sdk", "serving")).items():
        if name == "sdk.manifest":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr == "raw" and "manifest" in ast.unparse(node.value):
                bad.append(f"{path.relative_to(REPO)}:{node.lineno} {ast.unparse(node)}")
    assert bad == []


def test_no_module_imports_private_names_of_another():
    """``from x import _name`` across modules couples to an implementation detail: make it public."""
    bad = [
        f"{path.relative_to(REPO)}:{line} takes {n} from {target}"
        for name, path in sources().items()
        for target, names, line in imports(name, path)
        for n in names
        if n.startswith("_") and not n.startswith("__") and target.split(".")[0] in PACKAGES
    ]
    assert bad == []
