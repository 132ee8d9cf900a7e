"""From a lowered graph to a runnable `Program`: the pass pipeline, then an executor.

Both entry points (the JIT backend and AOT compile) go through `compile_lowered`, so a graph is
optimised the same way whichever path captured it.
"""

from __future__ import annotations

import time

from fxforge.config import CompileConfig
from fxforge.errors import ConfigError
from fxforge.frontend.fx_to_ir import Lowered
from fxforge.passes.manager import PassContext, PassManager, Trace, build_pipeline, default_pipeline
from fxforge.runtime.executors import resolve_executor
from fxforge.runtime.program import Program
from fxforge.runtime.report import GraphRecord


def pipeline_names(config: CompileConfig, executor: str) -> list[str]:
    """The default pipeline, with the rewrites the config asks for placed after canonicalisation,
    and fusion last when the executor runs generated kernels (so the trace shows the partition)."""
    if config.passes is not None:
        return list(config.passes)
    names = default_pipeline()
    if config.quantize is not None:
        names.insert(names.index("dce"), "quantize")
    if config.sparsity is not None or any(v is not None for v in config.sparsity_overrides.values()):
        names.insert(names.index("quantize") if "quantize" in names else names.index("dce"), "sparsify")
    if executor in ("interpret", "triton"):
        names.append("fuse")
    return names


def run_passes(lowered: Lowered, config: CompileConfig, executor: str, calibration: list | None = None) -> Trace:
    names = pipeline_names(config, executor)
    try:
        passes = build_pipeline(names, disabled=config.disable)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    options = config.pass_context_options()
    if calibration is not None:
        options["calibration"] = calibration
    ctx = PassContext(options=options, verify=config.checks, debug=config.debug)
    manager = PassManager(passes, verify=config.checks)
    lowered.graph = manager.run(lowered.graph, ctx)
    return manager.trace


def compile_lowered(lowered: Lowered, config: CompileConfig, capture_seconds: float, aten_ops: int,
                    calibration: list | None = None) -> GraphRecord:
    """calibration: input lists for the graph (its tensor inputs, in order)."""
    start = time.perf_counter()
    executor = resolve_executor(config.executor)
    trace = run_passes(lowered, config, executor, calibration)
    program = Program(lowered.graph, lowered.inputs, lowered.outputs, executor)
    return GraphRecord(lowered.graph.name, program, capture_seconds, time.perf_counter() - start, aten_ops,
                       lowered.externs, lowered.notes, trace)
