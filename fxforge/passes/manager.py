"""The pass manager: what a pass is, the context it runs in, and the manager that runs passes in order
and keeps a `Trace` (`fxforge.ir.trace`) of the run.

A pass is any object with a `name` and `run(graph, ctx) -> Graph` (it may mutate the graph in place
and return it). It writes its statistics into `ctx.stats`, a fresh dict the manager hands it for
each run and then files in the trace. Which passes exist, their default order and how compile
options reach them is `fxforge.pipeline`'s table, not this module's.

Options: one naming scheme. A pass's settings live in `ctx.options` under dotted keys named after
the pass, `"<pass>.<option>"` (`"constant_fold.max_elements"`, `"quantize.scheme"`); the pass reads
one with `ctx.option("<pass>.<option>", default)`. Data every pass may use is a field of the
context, not an option: `ctx.calibration` (example inputs of the graph).

Decisions:
- The trace keeps the IR once per pass: the text after pass i is the text before pass i+1, so an
  N-pass pipeline takes N+1 snapshots (`printer.GraphText`: names, types and attributes copied, not
  formatted); a text is printed when the trace is first read (the artifact stores the trace,
  `inspect` reads it), so a compile whose trace is not read does not pay for printing.
- With `verify` on (tests, debug mode) the input graph is verified first, so a broken input is not
  blamed on the first pass; after each pass a `VerifyError` is re-raised as `PassVerifyError`
  naming the pass. The failing pass's record (IR after, as far as it prints) is kept in the trace.
- `ctx.option` refuses an undotted key (ValueError): a pass reading `"quantize"` or `"calibration"`
  under the old names would otherwise get None and silently do nothing.
- No registry here: passes are classes, and `fxforge.pipeline.PASS_TABLE` names them (one line per
  pass). Registration by import side effect made the package and its modules import each other.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fxforge.ir.errors import VerifyError
from fxforge.ir.graph import Graph
from fxforge.ir.printer import GraphText
from fxforge.ir.trace import PassRecord, Trace, jsonable
from fxforge.ir.verify import verify as verify_graph

log = logging.getLogger(__name__)

__all__ = ["Pass", "PassContext", "PassManager", "PassRecord", "PassVerifyError", "Trace", "jsonable"]


class PassVerifyError(VerifyError):
    """A pass left the graph broken; the message names the pass and the broken invariant."""


@dataclass
class PassContext:
    """What a pass run gets beside the graph: options (`"<pass>.<option>"` keys), the calibration
    inputs (a list of input lists for the graph, or None), checking flags, and its statistics dict.
    `shared`: what a pass keeps across the graphs of one compile (JIT: every graph dynamo captures
    for one model), under its own name; e.g. ffn_skip's gates, fitted where calibration data reached
    a graph and reused by the decode graphs captured later."""

    options: dict[str, Any] = field(default_factory=dict)
    calibration: list | None = None
    verify: bool = False
    debug: bool = False
    stats: dict[str, Any] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)

    def option(self, key: str, default: Any = None) -> Any:
        """The option `key` ("<pass>.<option>"), or `default` when it is not set."""
        if "." not in key:
            raise ValueError(f"pass option {key!r} has no pass name: options are named '<pass>.<option>' "
                             "(e.g. 'quantize.scheme'); calibration inputs are ctx.calibration")
        return self.options.get(key, default)


class Pass(Protocol):
    name: str

    def run(self, graph: Graph, ctx: PassContext) -> Graph: ...


class PassManager:
    """Runs passes in order, verifying after each when asked, and keeps a `Trace` of the run."""

    def __init__(self, passes: Sequence[Pass], verify: bool = False) -> None:
        bad = [p for p in passes if not callable(getattr(p, "run", None)) or not isinstance(getattr(p, "name", None), str)]
        if bad:
            raise TypeError(f"PassManager takes pass objects (a `name` and `run(graph, ctx)`), got {bad!r}; "
                            "build them by name with fxforge.pipeline.build_passes([...])")
        self.passes: list[Pass] = list(passes)
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
        memo: dict[int, tuple] = {}  # the ops' copies, shared by the snapshots of this run (GraphText)
        text, counts = GraphText(graph, memo=memo), graph.op_counts()
        for p in self.passes:
            ctx.stats = {}
            start = time.perf_counter()
            graph = p.run(graph, ctx)
            seconds = time.perf_counter() - start
            after = _snapshot(graph, memo)
            record = PassRecord(p.name, text, after, seconds, jsonable(ctx.stats), counts, graph.op_counts())
            self.trace.records.append(record)
            log.debug("%s: %.1f ms, %d -> %d ops, %s", p.name, seconds * 1e3, sum(counts.values()), sum(record.ops_after.values()),
                      record.stats)
            if checking:
                try:
                    verify_graph(graph)
                except VerifyError as e:
                    raise PassVerifyError(
                        f"pass {p.name!r} broke the graph: {e}\n(fix the pass; `trace.diff({p.name!r})` shows "
                        "what it changed)") from None
            text, counts = after, record.ops_after
        return graph


def _snapshot(graph: Graph, memo: dict[int, tuple]) -> GraphText | str:
    """The IR text after a pass, unprinted; a broken graph may not even print: its text then says why."""
    try:
        return GraphText(graph, broken="IR does not print", memo=memo)
    except Exception as e:
        return f"<IR does not print: {type(e).__name__}: {e}>"
