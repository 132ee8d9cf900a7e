"""One profiling job of `fxforge costmodel profile | eval`: a model x scheme x example input, compiled for
the interpreter with static shapes, its kernels recorded and built (`fxforge.costmodel.profile`).

A top-level function of its own module, so local worker processes and Ray workers can import it.
Quantization uses round-to-nearest (`quantize_method="rtn"`): the methods change weights, not kernels,
and rtn keeps profiling cheap.
"""

from __future__ import annotations

from typing import Any


def jobs_for(models: list[str], inputs: list[str], schemes: list[str], archs: list[int], mlir: bool) -> list[dict]:
    return [{"model": m, "input": i, "scheme": s, "archs": archs, "mlir": mlir}
            for m in models for i in inputs for s in schemes]


def profile_job(job: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of one job (features and build specs; `costmodel.profile.attach_figures` builds them); a model
    that does not take this input gives one row with "skipped" (why)."""
    import os

    import torch

    import fxforge
    from fxforge.cli import inputs as ci
    from fxforge.costmodel.profile import kernel_rows, record_kernels

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.manual_seed(0)
    model = ci.load_model(job["model"])
    x = ci.random_tensor(job["input"], torch.Generator().manual_seed(0), ci.int_high_of_model(model))
    tags = {"model": job["model"], "scheme": job["scheme"], "input": job["input"]}
    scheme = None if job["scheme"] == "dense" else job["scheme"]
    try:
        compiled = fxforge.compile_aot(model, (x,), executor="interpret", dynamic=False, quantize=scheme,
                                       quantize_method="rtn")
        kernels, untied = record_kernels(compiled, (x,))
    except (fxforge.FxforgeError, RuntimeError, IndexError, TypeError, ValueError) as e:
        return [{**tags, "skipped": f"{type(e).__name__}: {str(e)[:300]}"}]
    rows = kernel_rows(kernels, job["archs"], tags, mlir=job["mlir"])
    if untied:
        rows.append({**tags, "skipped": f"{untied} launches not tied to a kernel group"})
    return rows
