"""No two modules of fm9g_deploy import each other, directly or around a longer loop, counting the
imports inside functions: a deferred import hides a cycle from Python, not from the reader.

A cycle means a fact has two homes or sits in the wrong layer; move the shared code down into the
lower module instead of deferring an import.
"""

import ast
from pathlib import Path

from tests.conftest import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "fm9g_deploy"


def _modules(package: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (its file, whether it is a package's __init__)."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def import_graph(package: Path) -> dict[str, dict[str, int]]:
    """module -> {module of the same package it imports: line of the first such import}, for every
    `import` and `from ... import` anywhere in the file (top level, functions, TYPE_CHECKING)."""
    modules = _modules(package)

    def owner(name: str) -> str | None:  # `from pkg.mod import func` imports pkg.mod
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, dict[str, int]] = {}
    for name, (path, is_package) in modules.items():
        here = name if is_package else name.rpartition(".")[0]
        edges = graph[name] = {}
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = here
                    for _ in range(node.level - 1):
                        anchor = anchor.rpartition(".")[0]
                    base = f"{anchor}.{node.module}" if node.module else anchor
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                if target.split(".")[0] != package.name:
                    continue
                imported = owner(target)
                if imported and imported != name:
                    edges.setdefault(imported, node.lineno)
    return graph


def import_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.get(module, {}):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def describe(cycle: list[str], graph: dict[str, dict[str, int]], package: Path) -> str:
    members = set(cycle)
    modules = _modules(package)
    lines = ["a cycle among " + ", ".join(cycle) + ":"]
    for module in cycle:
        path = modules[module][0].relative_to(package.parent)
        lines += [f"    {path}:{line} imports {imported}"
                  for imported, line in sorted(graph[module].items()) if imported in members]
    return "\n".join(lines)


def test_no_module_of_the_package_imports_itself_around_a_cycle():
    graph = import_graph(PACKAGE)
    cycles = import_cycles(graph)
    assert not cycles, "import cycles in fm9g_deploy (move the shared code into the lower module):\n" + \
        "\n".join(describe(cycle, graph, PACKAGE) for cycle in cycles)


def test_the_graph_sees_the_package():
    graph = import_graph(PACKAGE)
    assert "fm9g_deploy.artifacts.resolve" in graph["fm9g_deploy.artifacts.add"]
    assert "fm9g_deploy.profiles" in graph["fm9g_deploy.artifacts.lock"]  # an import inside a method


def test_a_deferred_cycle_is_found_and_named(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "low.py").write_text("def shared():\n    from pkg.sub.high import helper\n    return helper()\n")
    (package / "sub" / "high.py").write_text("from ..low import shared\n\ndef helper():\n    return 1\n")
    (package / "alone.py").write_text("import pkg.low\nimport os\n")
    graph = import_graph(package)
    assert graph["pkg.alone"] == {"pkg.low": 1}
    cycles = import_cycles(graph)
    assert cycles == [["pkg.low", "pkg.sub.high"]]
    text = describe(cycles[0], graph, package)
    assert text.startswith("a cycle among pkg.low, pkg.sub.high:")
    assert "pkg/low.py:2 imports pkg.sub.high" in text and "pkg/sub/high.py:1 imports pkg.low" in text
