"""The tree is the architecture (docs/architecture.md): every import inside the package, also one
inside a function, goes to its own layer or one below, and no module imports itself back
through a circle."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "qwen_worker"
# Floor of each top-level part of the package: an import may only go to a floor below, or
# within its own package.
FLOORS = {"base": 0, "engines": 1, "pipeline": 2, "jobs": 3, "startup": 3, "selftest": 3,
          "api": 4, "client": 5}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path.name}: relative import"
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n.startswith("qwen_worker.")}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {m for m in _imports(path) if m in modules and m != name}
            for name, path in modules.items()}


def _part(module: str) -> str:
    return module.split(".")[1]


def test_every_part_of_the_package_has_a_floor():
    assert {_part(m) for m in _modules() if m != "qwen_worker"} == set(FLOORS)


def test_imports_only_go_down():
    upward = [f"{a} -> {b}" for a, targets in _graph().items() if a != "qwen_worker"
              for b in targets
              if FLOORS[_part(b)] > FLOORS[_part(a)]
              or (FLOORS[_part(b)] == FLOORS[_part(a)] and _part(b) != _part(a))]
    assert upward == []


def test_no_module_imports_itself_through_a_circle():
    graph = _graph()
    circles = []

    def visit(node: str, path: list[str], seen: set[str]) -> None:
        for nxt in graph[node]:
            if nxt == path[0]:
                circles.append(" -> ".join(path + [nxt]))
            elif nxt not in seen:
                seen.add(nxt)
                visit(nxt, path + [nxt], seen)

    for start in graph:
        visit(start, [start], {start})
    assert circles == []


def test_the_entry_points_are_thin():
    for script in ("handler.py", "server.py"):
        text = (PACKAGE.parent / script).read_text()
        assert "sys.path" not in text  # the package is installed, not found by path edits
        imported = [n for n in _imports(PACKAGE.parent / script)]
        assert set(imported) <= {"qwen_worker.startup", "qwen_worker.startup.run",
                                 "qwen_worker.api.queue", "qwen_worker.api.queue.serve",
                                 "qwen_worker.api.http", "qwen_worker.api.http.serve_http"}
