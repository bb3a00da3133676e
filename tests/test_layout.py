"""The package layout: thin command modules that nothing imports, no import circles between segkit's modules,
and tests that mirror the package."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "segkit"
#: ``python -m segkit.<x>`` entry points: compose -> build -> run -> report, and nothing else imports them
COMMANDS = {"segkit.train", "segkit.plan", "segkit.eval", "segkit.predict", "segkit.tune_postprocess", "segkit.compare", "segkit.summarize",
            "segkit.merge",
            "segkit.export.__main__", "segkit.data.__main__", "segkit.analysis.__main__"}
COMMAND_MAX_LINES = 110


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path], top_level_only: bool) -> set[str]:
    """segkit modules imported by ``path`` (``from segkit.x import y`` counts ``segkit.x.y`` when that is a module)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("segkit"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("segkit"))
    return {m for m in found if m in modules}


def test_nothing_imports_a_command_module():
    """The package and the benchmarks import library modules only (tests may drive a command's main)."""
    modules = _modules()
    sources = {**{n: p for n, p in modules.items()}, **{str(p.relative_to(REPO)): p for p in (REPO / "benchmarks").glob("*.py")}}
    offenders = {name: sorted(bad) for name, path in sources.items() if (bad := _imports(path, modules, top_level_only=False) & COMMANDS)}
    assert offenders == {}


def test_command_modules_are_thin():
    modules = _modules()
    lengths = {c: len(modules[c].read_text().splitlines()) for c in COMMANDS}
    assert all(n <= COMMAND_MAX_LINES for n in lengths.values()), lengths


def test_no_import_circles_at_module_level():
    """Module-level imports between segkit modules form no cycle (a package's ``__init__`` importing its own
    submodules is not a cycle by itself: it is the edge package -> submodule)."""
    modules = _modules()
    graph = {name: _imports(path, modules, top_level_only=True) - {name} for name, path in modules.items()}
    # importing segkit.a.b first runs segkit/a/__init__: make that edge explicit
    for name in modules:
        parent = name.rpartition(".")[0]
        if parent in modules and parent != "segkit":
            graph[name].add(parent)
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1 and not nxt == node.rpartition(".")[0] and not node.startswith(nxt + "."):
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_tests_mirror_the_package():
    """Each package of segkit has its tests folder (tests/data tests segkit/data, ...)."""
    packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file() and p.name != "analysis")
    missing = [p for p in packages if not (REPO / "tests" / p).is_dir()]
    assert missing == []
