"""Code generation: graph -> one readable Python module of Triton kernels and a `run(...)` launcher.

`generate_module(graph)` -> `GeneratedModule(source, run, kernels)`; `generate_source(graph)` gives
the text alone without importing triton. Both need a partitioned graph (`graph.partition`, from the
`fuse` pass); codegen never partitions. The modules, one job each: `expr.py` (index math, printers),
`expr_ops.py` (pointwise renderers), `kernels.py` (pointwise/row kernels, row renderers),
`host_ops.py` (host-op renderers), `template_calls.py` (GEMM/attention template calls),
`buffers.py` (`BufferPlan`: liveness, buffer reuse, what still allocates), `pool.py` (the buffers and
workspace a generated `run()` reuses per size key), `assemble.py` (imports and helpers a module
uses), `module.py` (the walk over the steps). GEMM and attention kernels come from `templates/`.
Nothing here imports the passes or the runtime, and triton is imported only when a generated module
is loaded (so `TRITON_INTERPRET` can still be set first).
"""

from fxforge.codegen.module import GeneratedModule, KernelInfo, generate_module, generate_source

__all__ = ["GeneratedModule", "KernelInfo", "generate_module", "generate_source"]
