"""No import cycle inside the IR and the frontend (issue #8), read from the code: every import
statement counts (function-level ones too: a lazy import only hides a cycle), except those under
`if TYPE_CHECKING:`, which never run."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[2] / "fxforge"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Modules of `known` that `path` imports anywhere, except under `if TYPE_CHECKING:`."""
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            return
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known)
            if node.module in known:
                out.add(node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return out


def import_graph(*packages: str) -> nx.DiGraph:
    files = [p for pkg in packages for p in (ROOT / pkg).rglob("*.py")]
    known = {module_name(p) for p in files}
    g = nx.DiGraph()
    for p in files:
        name = module_name(p)
        g.add_node(name)
        for dep in imports_of(p, known):
            if dep != name and not name.startswith(dep + "."):  # a package's own __init__ is not a dependency
                g.add_edge(name, dep)
    return g


@pytest.mark.parametrize("a, b", [("fxforge.ir.graph", "fxforge.ir.printer"),
                                  ("fxforge.frontend.aten_structural", "fxforge.frontend.aten_table")])
def test_named_cycles_are_broken(a, b):
    g = import_graph("ir", "frontend")
    cyclic = nx.has_path(g, a, b) and nx.has_path(g, b, a)
    assert not cyclic, f"{a} and {b} import each other: {nx.shortest_path(g, a, b)}, {nx.shortest_path(g, b, a)}"


def test_no_import_cycle_in_ir_and_frontend():
    cycles = list(nx.simple_cycles(import_graph("ir", "frontend")))
    assert not cycles, f"import cycles: {cycles}"
