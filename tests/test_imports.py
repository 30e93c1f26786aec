"""The package's layering, read from its source: every import statement of every module under audiothink/
(top-level and lazy ones inside functions alike, found with ``ast``; docstring examples are text, not imports).

- The library never imports its plugin folder: nothing under audiothink/ imports ``rewards`` / ``audiothink.rewards``
  (audiothink/rewards is the repository's rewards/ linked into the package; the rewards themselves are plugins
  written against audiothink.reward_api and may import the library, not the other way round).
- No import circles among the audiothink modules (the rewards included).
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "audiothink"
PLUGINS = "audiothink.rewards"


def _modules() -> dict[str, Path]:
    """Module name -> file, for every .py file of the package (the linked rewards/ included, configs/ has none)."""
    out = {}
    files = [Path(d) / f for d, _, names in os.walk(PACKAGE, followlinks=True) for f in names if f.endswith(".py")]
    for path in sorted(files):  # os.walk: the rewards link is followed (Path.rglob would skip it)
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import in the file; ``from a import b`` gives a.b when that is a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from its package, one level up per extra dot
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.append((node.lineno, sub if sub in MODULES else module))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and (getattr(node.func, "attr", None) == "import_module" or getattr(node.func, "id", None) == "__import__")):
            found.append((node.lineno, node.args[0].value))  # importlib.import_module("...") / __import__("...")
    return found


def _library() -> dict[str, Path]:
    return {n: p for n, p in MODULES.items() if n != PLUGINS and not n.startswith(PLUGINS + ".")}


def _is_plugin(module: str) -> bool:
    return module in ("rewards", PLUGINS) or module.startswith(("rewards.", PLUGINS + "."))


def test_the_walk_sees_lazy_imports_and_the_package():
    # the checks below are only as good as the walk: it must see imports inside functions, and every module
    assert {"audiothink.reward_api", "audiothink.trainer", "audiothink.plumbing.errors", PLUGINS} <= set(MODULES)
    lazy = [m for _, m in _imports("audiothink.reward_api", MODULES["audiothink.reward_api"])]
    assert "audiothink.formula" in lazy  # imported inside build_rewards


def test_the_library_never_imports_the_rewards_folder():
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: imports {module}"
        for name, path in _library().items()
        for line, module in _imports(name, path)
        if _is_plugin(module)
    ]
    assert not offenders, "\n".join(offenders)


def _graph() -> dict[str, set[str]]:
    return {
        name: {m for _, m in _imports(name, path) if m in MODULES and m != name}
        for name, path in MODULES.items()
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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


def test_no_import_circles():
    cycles = _cycles(_graph())
    assert not cycles, "import circles (lazy imports count): " + "; ".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("graph,expected", [
    ({"a": {"b"}, "b": {"a"}, "c": set()}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, [["a", "b", "c"]]),
    ({"a": {"b"}, "b": set()}, []),
])
def test_the_cycle_finder(graph, expected):
    assert _cycles(graph) == expected
