"""Profiling: the kernels a compiled module launches, each tied to its IR kernel group, built for sm_90 /
sm_80 on the CPU, as dataset rows (features + measured figures).

    kernels = record_kernels(compiled, inputs)          # an executor="interpret" CompiledModule, static shapes
    rows = measure(kernels, archs=(90, 80), tags={"model": "bert", "scheme": "dense", "input": "int64[1,16]"})

Decisions:
- A launch is tied to its kernel group through the generated module's `run()`: the launch's frame in that
  file names the kernel (`kN_opcode` of a generated kernel, or the `# kN_opcode:` comment of a template
  call), and kernel N is the N-th kernel step of `codegen.buffers.launch_steps` (the order `run()` is
  written in). A launch that cannot be tied (no generated frame) is dropped and counted, never guessed.
- Two phases: jobs record kernels and compute features (`kernel_rows`, under the interpreter), then each
  distinct (spec, arch) of all jobs is built once (`attach_figures`, batches over the same workers). A
  process that ran the interpreter cannot compile nested jit helpers reliably, so builds run in fresh
  workers in-process (no process start per kernel, which cost more than the compiles) or, where the
  interpreter is set, in subprocesses (`codegen.buildcheck.build_specs`). The figures are the build
  check's: registers, spill bytes, shared memory, SASS instructions. `seconds` of a build is not a target (it depends on the machine's load).
- A row stores features and the bag of ops as they are computed now, plus the tags; the model file names
  the features it was fit on, so old datasets stay readable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from fxforge.codegen.buffers import launch_steps
from fxforge.codegen.build import build_spec
from fxforge.codegen.buildcheck import build_specs, launch_specs, record_launches, skip_reason
from fxforge.costmodel.features import kernel_features, op_bag
from fxforge.ir.graph import Graph, Op
from fxforge.ir.partition import KernelGroup, check_partition

TARGETS = ("registers", "spills", "shared", "instructions")
_TEMPLATE_TAG = re.compile(r"#\s*(k(\d+)_\w+):")
_GENERATED = re.compile(r"^k(\d+)_\w+$")


@dataclasses.dataclass
class Kernel:
    """One distinct launched kernel: its group in `graph`, its build spec, how many launches it stands for."""

    graph: Graph
    group: KernelGroup
    spec: dict[str, Any]
    index: int  # kernel step number in run()


def _generated(compiled: Any) -> tuple[Graph, Any]:
    executor = compiled.program.executor
    module = getattr(executor, "module", None)
    if module is None or not getattr(module, "path", ""):
        from fxforge.errors import ConfigError

        raise ConfigError("profiling records the kernels of an executor='interpret' module; compile with "
                          "executor='interpret' (and dynamic=False, so every kernel has static shapes)")
    return executor.graph, module


@contextlib.contextmanager
def _tagging(path: str) -> Iterator[list[int | None]]:
    """Record, per non-warmup launch, the kernel step number of the generated `run()` line it came from."""
    from triton.runtime.interpreter import InterpretedFunction

    lines = open(path).read().splitlines()
    tags: list[int | None] = []
    original = InterpretedFunction.run

    def run(self: Any, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> Any:
        if not warmup:
            tags.append(_tag(self, lines, path))
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = run
    try:
        yield tags
    finally:
        InterpretedFunction.run = original


def _tag(kernel: Any, lines: list[str], path: str) -> int | None:
    name = getattr(getattr(kernel, "fn", kernel), "__name__", "")
    m = _GENERATED.match(name)
    if m:
        return int(m.group(1))
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename != path:
        frame = frame.f_back
    if frame is None:
        return None
    for line in lines[frame.f_lineno - 1:frame.f_lineno + 20]:
        found = _TEMPLATE_TAG.search(line)
        if found:
            return int(found.group(2))
    return None


def record_kernels(compiled: Any, inputs: Sequence[Any]) -> tuple[list[Kernel], int]:
    """Run `compiled(*inputs)` once under the interpreter; the distinct kernels it launched, each tied to
    its kernel group, and the number of launches that could not be tied."""
    graph, module = _generated(compiled)
    part = check_partition(graph)
    steps = [s for s in launch_steps(graph, part) if not isinstance(s, Op) and s.outputs]
    with _tagging(module.path) as tags, record_launches() as launches:
        compiled(*inputs)
    kernels: dict[str, Kernel] = {}
    untied = 0
    for launch, tag in zip(launches, tags, strict=True):
        if tag is None or tag >= len(steps):
            untied += 1
            continue
        spec = launch_specs([launch])[0]
        if spec["key"] not in kernels:
            kernels[spec["key"]] = Kernel(graph, steps[tag], spec, tag)
    return list(kernels.values()), untied


def kernel_row(kernel: Kernel, arch: int, mlir: dict[str, int] | None = None) -> dict[str, Any]:
    """Features and bag of ops of one kernel on one arch (no figures yet)."""
    bag = dict(op_bag(kernel.graph, kernel.group))
    bag.update({f"mlir:{t}": c for t, c in (mlir or {}).items()})
    return {"kernel": kernel.spec["kernel"], "label": kernel.spec.get("label", ""), "group": kernel.group.describe(),
            "arch": arch, "features": kernel_features(kernel.graph, kernel.group, kernel.spec, arch), "bag": bag}


def kernel_rows(kernels: Sequence[Kernel], archs: Sequence[int] = (90, 80), tags: dict[str, Any] | None = None, *,
                mlir: bool = False) -> list[dict[str, Any]]:
    """One row per (kernel, arch) with features, bag of ops and the build "spec", no figures yet
    (fp8 kernels have no sm_80 row: not a kernel of that arch)."""
    from fxforge.costmodel.mlir import group_tokens

    rows = []
    for kernel in kernels:
        tok = group_tokens(kernel.graph, kernel.group) if mlir else None
        for arch in archs:
            if not skip_reason(kernel.spec, arch):
                rows.append({**(tags or {}), **kernel_row(kernel, arch, tok), "spec": kernel.spec})
    return rows


def build_batch(items: list[tuple[dict, int]]) -> list[dict[str, Any]]:
    """Build (spec, arch) pairs; their figures. In this process when it has no interpreter set (a fresh
    worker: no process start per kernel), else in subprocesses without it (`build_specs`)."""
    if os.environ.get("TRITON_INTERPRET", "0") != "1" and not _interpreted_here():
        return [_figures(build_spec(spec, arch)) for spec, arch in items]
    out: list[dict[str, Any]] = [{} for _ in items]
    for arch in sorted({a for _, a in items}):
        idx = [i for i, (_, a) in enumerate(items) if a == arch]
        for i, b in zip(idx, build_specs([items[i][0] for i in idx], [arch])[arch], strict=True):
            out[i] = _figures(b)
    return out


def _interpreted_here() -> bool:
    """Did this process run Triton's interpreter (`runtime.interpreter`, read without importing it)?"""
    module = sys.modules.get("fxforge.runtime.interpreter")
    return bool(module is not None and module.interpret_was_arranged())


def _figures(build: Any) -> dict[str, Any]:
    if build.ok:
        return {"registers": build.registers, "spills": build.spills, "shared": build.shared_bytes,
                "instructions": build.instructions}
    return {"error": build.error[-300:]}


def attach_figures(rows: list[dict[str, Any]], run: Any = None, batches: int = 1) -> list[dict[str, Any]]:
    """Build each distinct (spec, arch) of the rows once and attach the figures; `run(fn, batches)` runs
    the batches (default: here). The spec is replaced by its key."""
    todo: dict[tuple[str, int], tuple[dict, int]] = {}
    for r in rows:
        if "spec" in r:
            todo.setdefault((r["spec"]["key"], r["arch"]), (r["spec"], r["arch"]))
    items = list(todo.values())
    split = [items[i::batches] for i in range(min(max(1, batches), len(items)))]
    results = run(build_batch, split) if run else [build_batch(b) for b in split]
    figures = {(spec["key"], arch): f for batch, res in zip(split, results, strict=True)
               for (spec, arch), f in zip(batch, res, strict=True)}
    for r in rows:
        if "spec" in r:
            spec = r.pop("spec")
            r["spec_key"] = spec["key"]
            r.update(figures[(spec["key"], r["arch"])])
    return rows


def measure(kernels: Sequence[Kernel], archs: Sequence[int] = (90, 80), tags: dict[str, Any] | None = None, *,
            mlir: bool = False) -> list[dict[str, Any]]:
    """Rows with figures for these kernels, built here (see `attach_figures`); failed builds are rows
    with "error" and no figures, kept so a dataset says what did not build."""
    return attach_figures(kernel_rows(kernels, archs, tags, mlir=mlir))
