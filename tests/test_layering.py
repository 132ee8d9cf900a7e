"""The import graph of the package, read from the code (ast), against the layers of docs/architecture.md.

Every `import` of an fxforge module counts, wherever it stands: a function-level import is still a
dependency, and one that closes a cycle between modules only hides the cycle from the interpreter. So
"no module-level import cycle" means no cycle in the graph whose nodes are modules and whose edges are
all their imports; the module-level edges alone are kept too (`TOP`), to tell the two kinds apart in
messages. `if TYPE_CHECKING:` blocks count for nothing.

A new top-level module or package must be given a row in `MAY_IMPORT`: this test fails until it is.
Arrows and cycles that other branches are removing are marked xfail(strict=True), naming the branch,
so the test turns green (and the xfail red) the moment the fix lands; then the mark goes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1] / "fxforge"

# layer -> the layers it may import (besides itself). A layer is a top-level module or package of
# fxforge ("" is fxforge/__init__.py). Leaf records every layer may import live in ir/ (Trace,
# PassRecord, InputSlot) or are errors/version; config is the options record the runtime stores.
BASE = {"ir", "errors", "version", "progress"}
MAY_IMPORT: dict[str, set[str]] = {
    "ir": set(),
    "errors": {"ir"},  # re-exports the IR's exceptions beside the user-facing ones
    "version": set(),
    "progress": {"errors", "ir"},  # progress bars and FXFORGE_LOGS, used by every layer
    "config": BASE,
    "frontend": BASE,
    "passes": BASE,
    "codegen": BASE,
    "runtime": {"codegen", "config", "export"} | BASE,  # CompiledModule.export calls the export layer
    "export": BASE,  # checkpoint formats of other runtimes (compressed-tensors), export and import
    "costmodel": {"passes", "codegen", "config"} | BASE,
    "pipeline": {"frontend", "passes", "codegen", "runtime", "costmodel", "config", "export"} | BASE,
    "jit": {"pipeline", "frontend", "runtime", "config"} | BASE,  # the torch.compile backend and its wrapper
    "api": {"jit", "pipeline", "frontend", "passes", "codegen", "runtime", "costmodel", "config", "export"} | BASE,
    "cli": {"", "api", "pipeline", "frontend", "passes", "codegen", "runtime", "costmodel", "config", "export"} | BASE,
    "": {"api", "config"} | BASE,
    "inspect": {"runtime", "codegen", "passes", "costmodel", "config"} | BASE,  # notebook pictures; nothing in the compiler imports it
    "testing": set(),  # fixtures for the demo, notebook and tests: nothing of fxforge, and nothing imports it
}

PENDING_ARROWS: dict[str, str] = {}
PENDING_CYCLES: dict[str, str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _resolve(name: str) -> str:
    """The fxforge module an imported name belongs to (`fxforge.ir.graph.Graph` -> `fxforge.ir.graph`)."""
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _targets(node: ast.AST, module: str) -> list[str]:
    if isinstance(node, ast.Import):
        return [_resolve(a.name) for a in node.names if a.name.split(".")[0] == "fxforge"]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:  # relative: from the package of `module`
        package = module.split(".")[: len(module.split(".")) - node.level + (MODULES[module].name == "__init__.py")]
        base = ".".join([*package, *([base] if base else [])])
    if base.split(".")[0] != "fxforge":
        return []
    return [_resolve(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base) for a in node.names]


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _module_level(body: list[ast.stmt]) -> list[ast.stmt]:
    """Statements that run when the module is imported: the body, and the bodies of if/try/with/class
    statements in it (not of functions: those run when called)."""
    out = []
    for node in body:
        if _is_type_checking(node):
            continue
        out.append(node)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for field in ("body", "orelse", "finalbody"):
            out += _module_level(getattr(node, field, []) or [])
        for handler in getattr(node, "handlers", []) or []:
            out += _module_level(handler.body)
    return out


def import_edges() -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(every import edge, module-level import edges) between fxforge modules."""
    every, top = set(), set()
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        checking = {id(n) for stmt in tree.body if _is_type_checking(stmt) for n in ast.walk(stmt)}
        level = {id(n) for n in _module_level(tree.body)}
        for node in ast.walk(tree):
            if id(node) in checking:
                continue
            for target in _targets(node, module):
                if target != module:
                    every.add((module, target))
                    if id(node) in level:
                        top.add((module, target))
    return every, top


EVERY, TOP = import_edges()


def test_every_layer_has_a_row():
    unknown = sorted({layer(m) for m in MODULES} - set(MAY_IMPORT))
    assert not unknown, f"new top-level module(s) {unknown}: add a row to MAY_IMPORT and to docs/architecture.md"


def _pending(table: dict[str, str], key: str) -> list:
    return [pytest.mark.xfail(strict=True, reason=table[key])] if key in table else []


@pytest.mark.parametrize("name", [pytest.param(n, marks=_pending(PENDING_ARROWS, n)) for n in MAY_IMPORT])
def test_layer_imports_only_what_it_may(name):
    allowed = MAY_IMPORT[name] | {name}
    wrong = sorted(f"{a} -> {b}" for a, b in EVERY if layer(a) == name and layer(b) not in allowed)
    assert not wrong, f"{name or 'fxforge/__init__'} may import only {sorted(allowed)}; found:\n" + "\n".join(wrong)


def test_nothing_in_the_package_imports_the_test_fixtures():
    users = sorted(a for a, b in EVERY if b == "fxforge.testing")
    assert not users, f"fxforge.testing is for the demo, notebook and tests only; imported by {users}"


def _cycles() -> list[list[str]]:
    """Each set of modules that import each other (directly or around a loop), with its edges marked
    `(lazy)` where the import stands inside a function."""
    graph = nx.DiGraph(sorted(EVERY))
    found = []
    for component in nx.strongly_connected_components(graph):
        if len(component) > 1:
            edges = sorted(graph.subgraph(component).edges)
            found.append([f"{a} -> {b}" + ("" if (a, b) in TOP else " (lazy)") for a, b in edges])
    return found


PACKAGES = sorted({layer(m) for m in MODULES if m.count(".") >= 2})  # runtime/ has no __init__.py


@pytest.mark.parametrize("package", [pytest.param(p, marks=_pending(PENDING_CYCLES, p)) for p in PACKAGES])
def test_no_module_level_import_cycle_inside(package):
    cycles = [c for c in _cycles() if all(layer(e.split()[0]) == package and layer(e.split()[2]) == package for e in c)]
    assert not cycles, f"module-level import cycles in fxforge.{package}: {cycles}"


def test_no_module_level_import_cycle_across_layers():
    cycles = [c for c in _cycles() if len({layer(e.split()[i]) for e in c for i in (0, 2)}) > 1]
    assert not cycles, f"module-level import cycles across layers: {cycles}"


def test_the_reader_sees_known_edges():
    # the test reads real imports: a few arrows that must be there, or the checks above prove nothing
    assert ("fxforge.pipeline", "fxforge.passes.quantize") in TOP
    assert ("fxforge.runtime.program", "fxforge.ir.calling") in TOP
    assert ("fxforge.runtime.executors", "fxforge.runtime.triton_executor") in EVERY - TOP  # imported inside a function
    assert len(MODULES) > 60
