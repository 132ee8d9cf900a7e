"""The pass manager: what a pass is, the pipeline that runs passes, and the trace it keeps.

A pass is any object with a `name` and `run(graph, ctx) -> Graph` (it may mutate the graph in place
and return it). It writes its statistics into `ctx.stats`, a fresh dict the manager hands it for
each run and then files in the trace. Pass-specific settings live in `ctx.options` under dotted
keys named after the pass (`"constant_fold.max_elements"`); `ctx.option(key, default)` reads one.

Decisions:
- The trace prints the IR once per pass: the text after pass i is the text before pass i+1, so an
  N-pass pipeline prints N+1 times. `PassRecord`s hold plain data (str, float, dicts of JSON types)
  so `Trace.to_json()`/`from_json()` round-trip exactly; the artifact stores it, `inspect` reads it.
- With `verify` on (tests, debug mode) the input graph is verified first, so a broken input is not
  blamed on the first pass; after each pass a `VerifyError` is re-raised as `PassVerifyError`
  naming the pass. The failing pass's record (IR after, as far as it prints) is kept in the trace.
- Passes register themselves in `PASSES` with `@register_pass`; `fxforge.passes` imports the core
  passes, and `build_pipeline` imports the package's other modules (quantize, fuse, ...) the first
  time it meets a name it does not know, so a pass anywhere in `fxforge/passes/` is found by name.
- The default pipeline is canonicalize, constant_fold, cse, canonicalize, dce, shape_prop:
  canonicalize first, while the aten patterns (matmul of a transposed const, RMSNorm written out)
  are intact and before folding could touch them; constant_fold next, so scalar arithmetic on
  `full`s and masks built from constants collapse; cse then merges the duplicates the frontend and
  folding leave (the per-call `full` scalars, repeated casts and views); canonicalize again because
  merging exposes patterns that were split across equal-but-distinct values (`x * sigmoid(x')` with
  x' a copy of x); dce removes what the rewrites left dead and drops unused weights; shape_prop last
  re-infers every type on the final graph, simplifying symbolic dims and checking declared types.
"""

from __future__ import annotations

import difflib
import importlib
import json
import pkgutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from fxforge.ir.errors import VerifyError
from fxforge.ir.graph import Graph
from fxforge.ir.printer import print_graph
from fxforge.ir.verify import verify as verify_graph


class PassVerifyError(VerifyError):
    """A pass left the graph broken; the message names the pass and the broken invariant."""


@dataclass
class PassContext:
    """What a pass run gets beside the graph: options, checking flags, and its statistics dict."""

    options: dict[str, Any] = field(default_factory=dict)
    verify: bool = False
    debug: bool = False
    stats: dict[str, Any] = field(default_factory=dict)

    def option(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)


class Pass(Protocol):
    name: str

    def run(self, graph: Graph, ctx: PassContext) -> Graph: ...


PassFactory = Callable[[], Pass]
PASSES: dict[str, PassFactory] = {}


def register_pass(name: str) -> Callable[[PassFactory], PassFactory]:
    """Class decorator: `@register_pass("cse")` puts a pass factory in the registry."""

    def add(factory: PassFactory) -> PassFactory:
        if name in PASSES:
            raise ValueError(f"pass {name!r} registered twice")
        PASSES[name] = factory
        return factory

    return add


def default_pipeline() -> list[str]:
    """The pass names `compile` runs when the config names none (order explained in the docstring)."""
    return ["canonicalize", "constant_fold", "cse", "canonicalize", "dce", "shape_prop"]


def _discover() -> None:
    """Import every module of this package, so passes defined outside `__init__`'s list register."""
    import fxforge.passes as package

    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")


def build_pipeline(names: Sequence[str], disabled: Iterable[str] = ()) -> list[Pass]:
    """Pass objects for `names`, skipping `disabled`; a typo raises ValueError listing known names."""
    names, disabled = list(names), list(disabled)
    if any(n not in PASSES for n in [*names, *disabled]):
        _discover()
    unknown = [n for n in [*names, *disabled] if n not in PASSES]
    if unknown:
        raise ValueError(f"unknown pass name(s) {unknown}; known passes: {sorted(PASSES)}")
    return [PASSES[n]() for n in names if n not in disabled]


@dataclass
class PassRecord:
    """One pass run: its name, IR text before and after, wall time, statistics and op counts."""

    name: str
    ir_before: str
    ir_after: str
    seconds: float
    stats: dict[str, Any]
    ops_before: dict[str, int]
    ops_after: dict[str, int]

    def diff(self) -> str:
        return "".join(difflib.unified_diff(
            self.ir_before.splitlines(keepends=True), self.ir_after.splitlines(keepends=True),
            fromfile=f"before {self.name}", tofile=f"after {self.name}"))


@dataclass
class Trace:
    """The records of one pipeline run, in order (a pass listed twice has two records)."""

    records: list[PassRecord] = field(default_factory=list)

    def names(self) -> list[str]:
        return [r.name for r in self.records]

    def record(self, name: str, occurrence: int = 0) -> PassRecord:
        """The `occurrence`-th record of the pass called `name` (0: its first run, -1: its last)."""
        found = [r for r in self.records if r.name == name]
        try:
            return found[occurrence]
        except IndexError:
            raise KeyError(f"no run #{occurrence} of pass {name!r} in the trace; it ran: {self.names()}") from None

    def diff(self, name: str, occurrence: int = 0) -> str:
        """Unified diff of the IR text before/after that pass run ('' when it changed nothing)."""
        return self.record(name, occurrence).diff()

    def summary(self) -> str:
        lines = [f"{'pass':<16}{'ms':>9}{'ops':>7}  stats"]
        for r in self.records:
            n = sum(r.ops_after.values())
            lines.append(f"{r.name:<16}{r.seconds * 1e3:>9.2f}{n:>7}  {json.dumps(r.stats, sort_keys=True)}")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({"records": [asdict(r) for r in self.records]}, indent=1)

    @staticmethod
    def from_json(text: str) -> Trace:
        """Reads `to_json`'s output (or a bare list of records: `[]` is an empty trace)."""
        data = json.loads(text)
        records = data["records"] if isinstance(data, dict) else data
        return Trace([PassRecord(**r) for r in records])


def jsonable(value: Any) -> Any:
    """Statistics as plain JSON data: tuples become lists, keys strings, other objects their str."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


class PassManager:
    """Runs passes in order, verifying after each when asked, and keeps a `Trace` of the run."""

    def __init__(self, passes: Sequence[Pass | str], verify: bool = False) -> None:
        self.passes: list[Pass] = [build_pipeline([p])[0] if isinstance(p, str) else p for p in passes]
        self.verify = verify
        self.trace = Trace()

    def run(self, graph: Graph, ctx: PassContext | None = None) -> Graph:
        ctx = ctx if ctx is not None else PassContext(verify=self.verify)
        checking = self.verify or ctx.verify or ctx.debug
        self.trace = Trace()
        if checking:
            try:
                verify_graph(graph)
            except VerifyError as e:
                raise PassVerifyError(f"the input graph (before any pass) is broken: {e}") from None
        text, counts = print_graph(graph), graph.op_counts()
        for p in self.passes:
            ctx.stats = {}
            start = time.perf_counter()
            graph = p.run(graph, ctx)
            seconds = time.perf_counter() - start
            try:
                after = print_graph(graph)
            except Exception as e:  # a broken graph may not even print; keep what we can
                after = f"<IR does not print: {type(e).__name__}: {e}>"
            record = PassRecord(p.name, text, after, seconds, jsonable(ctx.stats), counts, graph.op_counts())
            self.trace.records.append(record)
            if checking:
                try:
                    verify_graph(graph)
                except VerifyError as e:
                    raise PassVerifyError(
                        f"pass {p.name!r} broke the graph: {e}\n(fix the pass; `trace.diff({p.name!r})` shows "
                        "what it changed)") from None
            text, counts = after, record.ops_after
        return graph
