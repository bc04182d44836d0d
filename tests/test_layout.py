"""The house rules of the package layout, read from the source with ``ast`` (nothing is imported):

- the deployment side (``runtime/``) never imports the PyTorch side (``export/``), so a deployment
  machine needs only the engines and the manifest (ARCHITECTURE.md);
- no two modules import each other, directly or round a longer circle: a circle makes the import
  order matter and hides which module owns what. Imports inside functions count too (a lazy import
  only postpones the circle).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "export", "kernels", "benchmarks")


def module_name(path: Path) -> str:
    """runtime/backends/ort.py -> runtime.backends.ort; runtime/__init__.py -> runtime."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imported_names(path: Path, module: str | None = None) -> set[str]:
    """Every dotted name an import statement in the file names, relative imports resolved
    against ``module`` (default: the file's own dotted name).

    ``from a.b import c`` yields both ``a.b`` and ``a.b.c`` (c may be a submodule); the caller
    keeps the names that are modules of the project."""
    tree = ast.parse(path.read_text(), filename=str(path))
    module = module or module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (itself excluded)."""
    modules = project_modules()
    return {m: {n for n in imported_names(p) if n in modules and n != m} for m, p in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_runtime_never_imports_export() -> None:
    files = sorted((ROOT / "runtime").rglob("*.py"))
    assert len(files) > 10, "the runtime package was not found"
    export_modules = {m for m in project_modules() if m.split(".")[0] == "export"}
    offenders = [
        f"{p.relative_to(ROOT)} imports {n}" for p in files for n in sorted(imported_names(p) & export_modules)
    ]
    assert not offenders, "runtime/ must not import export/: " + "; ".join(offenders)


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert "runtime.modes" in graph and "export.synthetic" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_checks_can_fail(tmp_path: Path) -> None:
    """The helpers see what they must: a lazy import of export, and a circle of three."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from export.synthetic import render_clip\n")
    assert "export.synthetic" in imported_names(src, "runtime.m")
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize(
    ("stmt", "want"),
    [
        ("from . import errors", "runtime.errors"),
        ("from .backends import ort", "runtime.backends.ort"),
        ("from ..kernels import warp", "kernels.warp"),
    ],
)
def test_relative_imports_resolve(tmp_path: Path, stmt: str, want: str) -> None:
    src = tmp_path / "m.py"
    src.write_text(stmt + "\n")
    assert want in imported_names(src, "runtime.modes")
