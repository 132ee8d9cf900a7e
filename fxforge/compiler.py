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


def run_passes(lowered: Lowered, config: CompileConfig) -> Trace:
    names = list(config.passes) if config.passes is not None else default_pipeline()
    try:
        passes = build_pipeline(names, disabled=config.disable)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    ctx = PassContext(options=dict(config.pass_options), verify=config.checks, debug=config.debug)
    manager = PassManager(passes, verify=config.checks)
    lowered.graph = manager.run(lowered.graph, ctx)
    return manager.trace


def compile_lowered(lowered: Lowered, config: CompileConfig, capture_seconds: float, aten_ops: int) -> GraphRecord:
    start = time.perf_counter()
    trace = run_passes(lowered, config)
    program = Program(lowered.graph, lowered.inputs, lowered.outputs, resolve_executor(config.executor))
    return GraphRecord(lowered.graph.name, program, capture_seconds, time.perf_counter() - start, aten_ops,
                       lowered.externs, lowered.notes, trace)
