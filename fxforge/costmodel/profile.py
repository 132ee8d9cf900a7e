"""Profiling: the kernels a compiled module launches, each tied to its IR kernel group, built for sm_90 /
sm_80 on the CPU, as dataset rows (features + measured figures).

    kernels = record_kernels(compiled, inputs)          # an executor="interpret" CompiledModule, static shapes
    rows = measure(kernels, archs=(90, 80), tags={"model": "bert", "scheme": "dense", "input": "int64[1,16]"})

Decisions:
- A launch is tied to its kernel group through the generated module's `run()`: the launch's frame in that
  file names the kernel (`kN_opcode` of a generated kernel, or the `# kN_opcode:` comment of a template
  call), and kernel N is the N-th kernel step of `codegen.buffers.launch_steps` (the order `run()` is
  written in). A launch that cannot be tied (no generated frame) is dropped and counted, never guessed.
- Builds go through `codegen.buildcheck.build_specs` (subprocesses, a process-wide cache), so the figures
  are the build check's: registers, spill bytes, shared memory, SASS instructions. `seconds` of a build is
  not a target (it depends on the machine's load).
- A row stores features and the bag of ops as they are computed now, plus the tags; the model file names
  the features it was fit on, so old datasets stay readable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from fxforge.codegen.buffers import launch_steps
from fxforge.codegen.buildcheck import build_specs, launch_specs, record_launches
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


def measure(kernels: Sequence[Kernel], archs: Sequence[int] = (90, 80), tags: dict[str, Any] | None = None, *,
            mlir: bool = False, timeout: float = 600.0) -> list[dict[str, Any]]:
    """Build every kernel for every arch; one row per (kernel, arch) that built (failed builds are rows
    with "error" and no figures, kept so a dataset says what did not build)."""
    from fxforge.costmodel.mlir import group_tokens

    specs = [k.spec for k in kernels]
    built = build_specs(specs, archs, timeout=timeout)
    tokens = [group_tokens(k.graph, k.group) if mlir else None for k in kernels]
    rows = []
    for arch in archs:
        for kernel, build, tok in zip(kernels, built[arch], tokens, strict=True):
            if build is None:  # fp8 on sm_80: not a kernel of that arch
                continue
            row = {**(tags or {}), **kernel_row(kernel, arch, tok)}
            if build.ok:
                row.update(registers=build.registers, spills=build.spills, shared=build.shared_bytes,
                           instructions=build.instructions)
            else:
                row["error"] = build.error[-300:]
            rows.append(row)
    return rows
