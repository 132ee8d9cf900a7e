"""Code generation: graph -> one readable Python module of Triton kernels and a `run(...)` launcher.

`generate_module(graph)` -> `GeneratedModule(source, run, kernels)`; `generate_source(graph)` gives
the text alone without importing triton. Pointwise and row kernels are generated here (`expr.py`,
`kernels.py`, `module.py`); GEMM and attention come from `templates/`. Nothing here imports the
runtime, and triton is imported only when a generated module is loaded (so `TRITON_INTERPRET` can
still be set first).
"""

from fxforge.codegen.module import GeneratedModule, KernelInfo, generate_module, generate_source

__all__ = ["GeneratedModule", "KernelInfo", "generate_module", "generate_source"]
