"""What the compiler did, for people: one record per compiled graph, gathered in a report.

`fxforge.compile` attaches a `CompileReport` to what it returns (`.fxforge_report`); each graph
record keeps the op counts, the ops that went extern (and why), the pass trace and the number of
times the compiled program ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fxforge.ir.trace import PassRecord, Trace
from fxforge.runtime.counters import merge_counts
from fxforge.runtime.program import Program

PLAN_RECORD = "select"


@dataclass
class GraphRecord:
    name: str
    program: Program
    capture_seconds: float
    compile_seconds: float
    aten_ops: int
    externs: dict[str, int]
    notes: list[str]
    trace: Trace | None = None

    @property
    def calls(self) -> int:
        return self.program.calls

    def add_check(self, name: str, stats: dict[str, Any], seconds: float) -> None:
        """File the result of a check that leaves the IR unchanged (the kernel build check) in the trace,
        as a record named `name` after the last pass (replacing an earlier one of that name)."""
        if self.trace is None:
            self.trace = Trace()
        records = [r for r in self.trace.records if r.name != name]
        record = records[-1].with_name(name, seconds, stats) if records else PassRecord(name, "", "", seconds, stats, {}, {})
        self.trace.records = [*records, record]

    @property
    def plan(self) -> dict[str, Any] | None:
        """The plan `budget` chose (`fxforge.costmodel.select`): its "select" record's statistics, or None."""
        found = [r for r in (self.trace.records if self.trace else []) if r.name == PLAN_RECORD]
        return found[-1].stats if found else None

    @property
    def weight_bytes(self) -> int:
        """Bytes of the weights the graph reads (`const` ops), as stored (encoded: values, scales, metadata)."""
        graph = self.program.graph
        return sum(graph.weight(n).nbytes() for n in {op.attrs["weight"] for op in graph.find("const")})

    def summary(self) -> str:
        ops = self.program.graph.op_counts()
        top = ", ".join(f"{k} x{v}" for k, v in sorted(ops.items(), key=lambda kv: -kv[1])[:8])
        lines = [f"graph {self.name}: {self.aten_ops} ATen ops -> {sum(ops.values())} fxforge ops ({top}); "
                 f"compiled in {self.compile_seconds:.2f} s; ran {self.calls} times on the {self.program.executor_name} executor"]
        if self.externs:
            lines.append("  through torch (extern): " + ", ".join(f"{k} x{v}" for k, v in sorted(self.externs.items())))
        if self.trace is not None:
            lines += [f"  pass {r.name}: {r.stats}" for r in self.trace.records if r.stats]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


@dataclass
class CompileReport:
    graphs: list[GraphRecord] = field(default_factory=list)

    @property
    def calls(self) -> int:
        return sum(g.calls for g in self.graphs)

    @property
    def externs(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for g in self.graphs:
            for k, v in g.externs.items():
                out[k] = out.get(k, 0) + v
        return out

    @property
    def ffn_skip(self) -> dict[str, Any]:
        """FFN skipping's run-time counters over every graph and call so far (`fxforge.passes.ffn_skip`):
        `{"rows", "skipped", "share", "per_layer": {site: {"rows", "skipped"}}}`; rows = FFN token-rows
        that would have run without skipping."""
        return merge_counts([g.program.counters for g in self.graphs])

    @property
    def plan(self) -> dict[str, Any] | None:
        """The budget plan of the last compiled graph that has one (None without `budget`)."""
        plans = [g.plan for g in self.graphs if g.plan is not None]
        return plans[-1] if plans else None

    @property
    def weight_bytes(self) -> int:
        return sum(g.weight_bytes for g in self.graphs)

    @property
    def sparse_paths(self) -> dict[str, str]:
        """Which path each N:M-pruned layer runs, by layer name, over every graph: the sparse template
        (`nm_linear` / `nm_qlinear`) or host torch on the decoded weight and why (the `fuse` pass's
        `sparse_paths`); under the `reference` executor (no `fuse`): `ir.evaluate` on the decoded weight."""
        out: dict[str, str] = {}
        for g in self.graphs:
            names = g.trace.names() if g.trace is not None else []
            if "fuse" in names:
                out.update(g.trace.record("fuse", -1).stats.get("sparse_paths", {}))
            elif "sparsify" in names:
                layers = g.trace.record("sparsify", -1).stats.get("layers", {})
                out.update(dict.fromkeys(layers, "reference executor: ir.evaluate on the decoded weight"))
        return out

    def __str__(self) -> str:
        if not self.graphs:
            return "fxforge: nothing compiled yet (compilation happens on the first call)"
        head = f"fxforge: {len(self.graphs)} graph(s) compiled, {self.calls} call(s) of compiled code"
        return "\n".join([head, *(g.summary() for g in self.graphs)])
