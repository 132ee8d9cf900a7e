"""Kernel counts and planned intermediate memory: fxforge beside TorchInductor, per zoo model, same graph.

For each zoo model (`fxforge.testing`, small sizes, input batch 2 x seq 16; HF models called with
`use_cache=False` by both compilers, so both see the same forward graph) it reports:

- ATen ops: call_function nodes of fxforge's torch.export capture (the `aten_ops` of the compile record);
- IR ops: ops of fxforge's final IR graph after the passes;
- fxforge kernels (from `fxforge.codegen.module.generate_source` of that graph): generated Triton kernels
  (pointwise, row), template calls (gemm, attention), and host ops (torch calls on the host; split into
  views/sources, which launch nothing, and the rest, which are torch calls that may launch kernels);
- TorchInductor kernels for the same model and input on CPU, from the code that
  `torch._inductor.utils.run_and_get_code` returns: fused C++ kernels (`cpp_fused_*` definitions and
  their calls in `call()`) and extern calls (`extern_kernels.*`, `torch.ops.*` fallbacks), reported apart;
- peak intermediate memory (bytes) of the fxforge module at this input size: naive (every intermediate
  its own buffer, all alive: the sum of all intermediate results), no-reuse liveness (each its own buffer,
  freed after its last read), and planned (the module writer's `fxforge.codegen.buffers.BufferPlan`:
  steps in graph order, alias roots through views/externs, last reads; a dead buffer is taken by a later
  result (generated kernel, template with `out=`, `out=` host op) of the same element count and dtype;
  the peak counts a buffer from its first use to where it falls idle, while `planned_pool_bytes` is what
  the run-time pool keeps, every buffer for the module's life); results torch still allocates are freed
  (`del`) after their last read. Graph outputs, inputs and
  weights are not intermediates (outputs are reported apart).

Every model and compiler runs in a fresh subprocess (inductor: fresh TORCHINDUCTOR_CACHE_DIR, FX graph
cache off). Inductor's cold compile takes ~30-100 s per model on a small machine.

    .venv/bin/python benchmarks/kernel_counts.py [--models llama mistral gpt2 bert mlp] [--batch 2] [--seq 16]
        [--out benchmarks/results/kernel_counts-<date>]   # writes <out>.json and <out>.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

MODELS = ["llama", "mistral", "gpt2", "bert", "mlp"]
VIEWS = ("reshape", "permute", "expand", "slice")  # no storage of their own
SOURCES = ("const", "full", "arange")  # weights and uniform/iota sources: no compute kernel


# -- fxforge: kernel counts and memory plan -----------------------------------------------------------


def _nbytes(v: Any, bindings: dict) -> int:
    from fxforge.ir.evaluate import substitute

    return (int(substitute(v.type.numel(), bindings)) * v.type.dtype.bits + 7) // 8


def memory_plan(graph: Any, part: Any, bindings: dict) -> dict[str, int]:
    """Peak intermediate bytes of the generated module at `bindings`: naive, no-reuse liveness, planned.

    Reads the module writer's own `fxforge.codegen.buffers.BufferPlan` (no rule copied here)."""
    from fxforge.codegen.buffers import BufferPlan
    from fxforge.ir.graph import Op

    plan = BufferPlan.build(graph, part)
    live = plan.live
    steps, needed, last_read, keep = live.steps, live.needed, live.last_read, live.keep
    outputs = {id(v) for v in graph.outputs}
    n = len(steps)
    events: list[tuple[int, int, int]] = []  # (alloc step, free step, bytes) of non-pool intermediates
    naive_events: list[tuple[int, int, int]] = []  # every intermediate its own buffer, freed after last read
    outputs_bytes = 0

    def result_values(s: Any) -> list:
        if isinstance(s, Op):
            if s.opcode in VIEWS or s.opcode == "const":
                return []
            if s.opcode == "full" and not any(id(r) in needed for r in s.results):
                return []
            return list(s.results)  # host results with storage of their own (externs counted as new)
        return list(s.outputs)

    for i, s in enumerate(steps):
        if not isinstance(s, Op) and not s.outputs:
            continue
        for v in result_values(s):
            b = _nbytes(v, bindings)
            r = live.root_of(v)
            if id(v) in outputs or r in keep:
                outputs_bytes += b
                continue
            end = last_read.get(r, n)  # never read: its name lives until run() returns
            naive_events.append((i, end, b))
            if id(v) not in plan.buffer_of:  # storage torch allocates (the plan's buffers are counted below)
                events.append((i, end, b))
    pool = {buf: (plan.allocated_at[buf], _nbytes(v, bindings)) for buf, v in plan.allocated_for.items()
            if id(v) not in outputs and live.root_of(v) not in keep}  # outputs are not intermediates
    pool_events = [(a, plan.idle_after.get(buf, n), b) for buf, (a, b) in pool.items()]

    def peak(evs: list[tuple[int, int, int]]) -> int:
        """Most bytes alive at any step, from (alloc step, last step alive, bytes) events."""
        return max([sum(b for a, e, b in evs if a <= i <= e) for i in range(n)] or [0])

    return {
        "naive_sum_bytes": sum(b for _, _, b in naive_events),
        "no_reuse_peak_bytes": peak(naive_events),
        "planned_peak_bytes": peak(events + pool_events),
        "planned_pool_bytes": sum(b for _, b in pool.values()),
        "planned_buffers": len(pool),
        "intermediates": len(naive_events),
        "outputs_bytes": outputs_bytes,
    }


def run_fxforge(name: str, batch: int, seq: int) -> dict[str, Any]:
    import torch

    import fxforge
    from fxforge import testing as zoo
    from fxforge.codegen.module import generate_source
    from fxforge.ir.evaluate import bind_symbols
    from fxforge.passes.fuse import fuse
    from fxforge.runtime.module import flatten_inputs

    model = zoo.build(name)
    x = zoo.example_input(name, batch, seq)
    kwargs = {} if name == "mlp" else {"use_cache": False}
    t = time.perf_counter()
    with torch.no_grad():
        compiled = fxforge.compile_aot(model, (x,), kwargs)
    compile_s = time.perf_counter() - t
    rec = compiled.fxforge_report.graphs[0]
    graph = compiled.graph
    _source, infos, part, _symbols = generate_source(graph if graph.partition is not None else fuse(graph))
    kinds = Counter(i.kind for i in infos)
    host = Counter(op.opcode for op in graph.ops if id(op) in part.host)
    views = sum(c for k, c in host.items() if k in VIEWS or k in SOURCES)

    # bind the dynamic dims as the runtime does (Program.__call__)
    prog = compiled.program
    flat = flatten_inputs(prog.inputs, compiled.in_spec, compiled.arg_names, (x,), dict(kwargs))
    tensors, bindings = [], {}
    for slot, arg in zip(prog.inputs, flat):
        if slot.kind == "tensor":
            tensors.append(arg)
        elif slot.kind == "symbol" and slot.symbol is not None:
            bindings[slot.symbol] = int(arg)
    bindings.update(bind_symbols([v.type for v in graph.inputs], tensors, [v.name for v in graph.inputs]))
    return {
        "aten_ops": rec.aten_ops,
        "ir_ops": len(graph.ops),
        "fxforge_kernels": len(infos),
        "fxforge_generated": kinds.get("pointwise", 0) + kinds.get("row", 0),
        "fxforge_templates": kinds.get("gemm", 0) + kinds.get("attention", 0),
        "fxforge_kinds": dict(sorted(kinds.items())),
        "fxforge_host_ops": sum(host.values()),
        "fxforge_host_views_sources": views,
        "fxforge_host_calls": sum(host.values()) - views,
        "fxforge_host_by_op": dict(sorted(host.items())),
        "fxforge_compile_s": compile_s,
        "bindings": {str(k): int(v) for k, v in bindings.items()},
        "memory": memory_plan(graph, part, bindings),
    }


# -- TorchInductor ------------------------------------------------------------------------------------

_DEF = re.compile(r"^(\w+) = async_compile\.cpp(?:_pybinding)?\(", re.M)
_EXTERN = re.compile(r"\b(extern_kernels\.\w+|(?:torch\.ops\.)?(?:aten|mkldnn|quantized|prims)\.\w+(?:\.\w+)?)\(")
_STRING = re.compile(r"r?'''.*?'''|r?\"\"\".*?\"\"\"", re.S)


def count_inductor(sources: list[str]) -> dict[str, Any]:
    """Fused C++ kernels (defined, and calls in `call()`) and extern calls in inductor's output code."""
    defined: set[str] = set()
    calls: Counter = Counter()
    externs: Counter = Counter()
    for src in sources:
        names = set(_DEF.findall(src))
        defined |= names
        code = _STRING.sub("''", src)  # drop the C++ kernel sources and docstrings
        code = re.split(r"\ndef (?:get_args|benchmark_compiled_module)\(", code)[0]  # the runner, not the benchmark harness
        for line in code.splitlines():
            m = re.match(r"\s+(\w+)\(", line)
            if m and m.group(1) in names:
                calls[m.group(1)] += 1
            for e in _EXTERN.findall(line):
                externs[e] += 1
    return {
        "inductor_graphs": len(sources),
        "inductor_fused_defined": len(defined),
        "inductor_fused_calls": sum(calls.values()),
        "inductor_extern_calls": sum(externs.values()),
        "inductor_externs": dict(sorted(externs.items())),
    }


def run_inductor(name: str, batch: int, seq: int) -> dict[str, Any]:
    import torch
    import torch._inductor.config as cfg
    from torch._inductor.utils import run_and_get_code

    from fxforge import testing as zoo

    cfg.fx_graph_cache = False
    model = zoo.build(name)
    x = zoo.example_input(name, batch, seq)
    kwargs = {} if name == "mlp" else {"use_cache": False}
    compiled = torch.compile(model)
    t = time.perf_counter()
    with torch.no_grad():
        _, sources = run_and_get_code(compiled, x, **kwargs)
    return {**count_inductor(sources), "inductor_compile_s": time.perf_counter() - t}


# -- driver -------------------------------------------------------------------------------------------


def child(tool: str, name: str, batch: int, seq: int) -> dict[str, Any]:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=tempfile.mkdtemp(prefix="inductor-cold-"))
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import json, kernel_counts as k; " \
           f"print('RESULT ' + json.dumps(k.run_{tool}({name!r}, {batch}, {seq})))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=1800)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {f"{tool}_error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"}
    return json.loads(lines[-1][len("RESULT "):])


COLUMNS = [
    ("model", "model"), ("aten_ops", "ATen ops"), ("ir_ops", "IR ops"),
    ("fxforge_kernels", "fxf kernels"), ("fxforge_generated", "fxf gen"), ("fxforge_templates", "fxf tmpl"),
    ("fxforge_host_calls", "fxf host calls"), ("fxforge_host_views_sources", "fxf views/src"),
    ("inductor_fused_calls", "ind fused"), ("inductor_extern_calls", "ind extern"),
    ("naive_sum_bytes", "naive B"), ("no_reuse_peak_bytes", "no-reuse peak B"), ("planned_peak_bytes", "planned peak B"),
]


def flat_row(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, **row.get("memory", {})}


def table(rows: list[dict[str, Any]]) -> str:
    head = "| " + " | ".join(h for _, h in COLUMNS) + " |"
    sep = "|" + "|".join("---" if k == "model" else "---:" for k, _ in COLUMNS) + "|"
    body = ["| " + " | ".join(str(flat_row(r).get(k, "err")) for k, _ in COLUMNS) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Kernel counts: fxforge vs TorchInductor ({result['date']})", "",
             f"Machine: {result['machine']}, {result['cpu_count']} CPUs, Python {result['python']}, torch {result['torch']}. "
             f"Input: batch {result['batch']}, seq {result['seq']} (zoo default sizes; HF models with use_cache=False).", "",
             "Command: `.venv/bin/python benchmarks/kernel_counts.py" + "".join(f" {a}" for a in result["argv"]) + "`", "",
             table(result["rows"]), "",
             "- ATen ops: fxforge's torch.export capture; IR ops: fxforge's graph after passes.",
             "- fxf kernels = fxf gen (generated Triton pointwise/row kernels) + fxf tmpl (GEMM / attention template "
             "calls). fxf host calls: torch calls on the host other than views and sources (embedding, cat, "
             "externs, ...); fxf views/src: reshape/permute/expand/slice views and const/full/arange (no kernel).",
             "- ind fused: calls of inductor's fused C++ kernels (`cpp_fused_*`) in `call()`; ind extern: "
             "`extern_kernels.*` and `torch.ops.*` calls (GEMMs, SDPA, fallbacks). Inductor compiles on CPU, so its "
             "kernel choice is its CPU one (no Triton), from the same model, input and forward kwargs.",
             "- Memory (bytes, fxforge module at this input): naive = sum of all intermediate results (each its own "
             "buffer, all alive); no-reuse peak = each its own buffer, freed after its last read; planned peak = "
             "codegen's BufferPlan (pool buffers reused by element count and dtype, deleted once no later kernel "
             "takes them; template and host results freed after last read). Graph outputs, inputs and weights "
             "excluded. Computed by `memory_plan` from `fxforge.codegen.buffers.BufferPlan`.", ""]
    for r in result["rows"]:
        extra = {k: r[k] for k in ("fxforge_kinds", "fxforge_host_by_op", "inductor_externs", "memory") if k in r}
        errs = {k: v for k, v in r.items() if k.endswith("_error")}
        lines.append(f"- **{r['model']}**: `{json.dumps({**extra, **errs})}`")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=16)
    ap.add_argument("--no-inductor", action="store_true", help="skip TorchInductor (fxforge counts only)")
    ap.add_argument("--out", default=f"benchmarks/results/kernel_counts-{date.today()}",
                    help="output path without extension: writes OUT.json and OUT.md")
    args = ap.parse_args()
    import torch

    rows = []
    for name in args.models:
        t = time.perf_counter()
        row: dict[str, Any] = {"model": name, **child("fxforge", name, args.batch, args.seq)}
        if not args.no_inductor:
            row.update(child("inductor", name, args.batch, args.seq))
        rows.append(row)
        m = row.get("memory", {})
        print(f"{name:8s} aten {row.get('aten_ops')}  ir {row.get('ir_ops')}  fxforge {row.get('fxforge_kernels')} kernels "
              f"({row.get('fxforge_generated')} gen + {row.get('fxforge_templates')} tmpl, {row.get('fxforge_host_calls')} host calls)  "
              f"inductor {row.get('inductor_fused_calls')} fused + {row.get('inductor_extern_calls')} extern  "
              f"mem naive {m.get('naive_sum_bytes')} / planned {m.get('planned_peak_bytes')} B  "
              f"[{time.perf_counter() - t:.0f} s]", flush=True)
    result = {"benchmark": "kernel_counts", "date": str(date.today()), "machine": platform.platform(),
              "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
              "batch": args.batch, "seq": args.seq, "argv": sys.argv[1:], "rows": rows}
    out = Path(args.out.removesuffix(".json").removesuffix(".md"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown(result))
    print()
    print(table(rows))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
