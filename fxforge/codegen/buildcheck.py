"""Build check of a compiled model: every kernel it really launches, compiled for sm_90 / sm_80 on a CPU.

    with record_launches() as launches:          # or: launches = record_launches(fn)
        compiled(x)                               # an executor="interpret" CompiledModule
    specs = launch_specs(launches)                # distinct build specs (fxforge.codegen.build)
    check = check_kernels(compiled, (x,))         # both steps + builds: a `BuildCheck` (plain data)
    compiled.record.add_check(RECORD_NAME, check.stats, check.seconds)  # the caller files it in the trace

Decisions:
- Launches are recorded by wrapping `triton.runtime.interpreter.InterpretedFunction.run` for the
  duration (every `kernel[grid](...)` goes through it: generated kernels and template kernels alike),
  so neither `codegen.module` nor the templates know about the check.
- Each launch becomes a spec the way the JIT would specialise it on a GPU: parameters annotated
  `tl.constexpr` go to `constexprs`; the others are typed by Triton's own `native_specialize_impl`
  (`*fp32`, `*fp16`, `*bf16`, `*i64`, `*u1`, `i32`/`i64`, `fp32`, ...); ints equal to 1 and None become
  constexprs as the JIT does, and ints the JIT marks divisible by 16 get a divisibility hint (pointer
  arguments always get one in `compile_for_target`; a launch whose pointer is not 16-byte aligned is
  noted in its spec's `"unaligned"` list). num_warps/num_stages are taken from the launch (4/3 otherwise).
- Template kernels are imported by module name; generated kernels live in a module file (see
  `codegen.loader.load_module`) and are imported from `"path"`. Identical specs (same kernel source, same
  signature, constexprs, hints and launch options) are built once; `BUILD_CACHE` keeps the builds of a
  process so several models' checks share the compiles of kernels they have in common.
- `ASM=False` (a kernel with an inline-PTX path, the decode GEMMs of `templates/qlinear_decode.py`, run portably
  by the interpreter) is built as `ASM=True`: the PTX path is what a GPU launch runs.
- Kernels with fp8 operands (or `FP8_DOT=True`) need sm_89+: they are skipped on older targets with
  the reason, and the skip is in the trace, not counted as a failure.
- `check_kernels` returns the figures as data (`BuildCheck`: stats {"sm_90": [per-kernel dicts],
  "sm_80": [...]}, seconds, builds); codegen imports nothing of the pass manager. The caller (the CLI)
  files them in the compiled module's trace as a record named "build_check" (IR text and op counts
  unchanged: `GraphRecord.add_check`), so `save()` writes them to trace.json and `fxforge inspect out/
  --kernels` prints them (`format_kernel_table`, which reads any trace-like object): registers, spills,
  shared memory, SASS instructions of the kernel and of its main loop body ("loop", `fxforge.codegen.sass`;
  divided by the weights a thread consumes per iteration it is the per-weight cost of a decode GEMM).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from fxforge.codegen.build import SHARED_LIMITS, KernelBuild, build_in_subprocess
from fxforge.progress import progress

log = logging.getLogger(__name__)

RECORD_NAME = "build_check"
FP8_MIN_ARCH = 89
BUILD_CACHE: dict[tuple[str, int], KernelBuild] = {}  # (spec key, arch) -> build, shared within a process


@dataclasses.dataclass
class Launch:
    """One recorded `kernel[grid](...)`: the kernel's Python function and its arguments by name."""

    fn: Callable
    name: str
    args: dict[str, Any]
    num_warps: int | None = None
    num_stages: int | None = None


def _is_constexpr(annotation: Any) -> bool:
    import triton.language as tl

    if isinstance(annotation, str):
        return annotation.split(".")[-1] == "constexpr"
    return annotation is tl.constexpr or isinstance(annotation, tl.constexpr)


def _record(kernel: Any, args: tuple, kwargs: dict) -> Launch:
    fn = getattr(kernel, "fn", kernel)
    params = list(inspect.signature(fn).parameters.values())
    kwargs = dict(kwargs)
    num_warps, num_stages = kwargs.pop("num_warps", None), kwargs.pop("num_stages", None)
    named: dict[str, Any] = {}
    for i, p in enumerate(params):
        if i < len(args):
            named[p.name] = args[i]
        elif p.name in kwargs:
            named[p.name] = kwargs[p.name]
        elif p.default is not inspect.Parameter.empty:
            named[p.name] = p.default
    return Launch(fn, fn.__name__, named, num_warps, num_stages)


@contextlib.contextmanager
def _recording() -> Iterator[list[Launch]]:
    from triton.runtime.interpreter import InterpretedFunction

    launches: list[Launch] = []
    original = InterpretedFunction.run

    def run(self: Any, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> Any:
        if not warmup:
            launches.append(_record(self, args, kwargs))
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = run
    try:
        yield launches
    finally:
        InterpretedFunction.run = original


def record_launches(fn: Callable[[], Any] | None = None) -> Any:
    """Record every interpreted kernel launch: `record_launches(fn)` runs `fn()` and returns the
    launches; `with record_launches() as launches:` records the launches of the block."""
    if fn is None:
        return _recording()
    with _recording() as launches:
        fn()
    return launches


# -- launches -> build specs ------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    """A constexpr value as JSON data (tl.constexpr unwrapped)."""
    value = getattr(value, "value", value) if type(value).__name__ == "constexpr" else value
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "__index__"):
        return int(value)
    if isinstance(value, float) or hasattr(value, "__float__"):
        return float(value)
    raise TypeError(f"constexpr value {value!r} of type {type(value).__name__} cannot go into a build spec")


def _runtime_type(value: Any, specialize: bool, align: bool) -> tuple[str, Any]:
    """(Triton type, specialisation key) the JIT gives this runtime argument ('constexpr' for 1 and None)."""
    import torch
    from triton.backends.compiler import BaseBackend
    from triton.runtime.jit import native_specialize_impl

    if not isinstance(value, (torch.Tensor, bool, int, float)) and value is not None:
        value = int(value) if hasattr(value, "__index__") else float(value)
    return native_specialize_impl(BaseBackend, value, False, specialize, align)


def _where(fn: Callable) -> dict[str, str]:
    """How a build process finds the kernel: fxforge's own modules by name, any other (a generated
    module, a test file) from its file."""
    if fn.__module__.startswith("fxforge."):
        return {"module": fn.__module__}
    return {"module": fn.__module__, "path": inspect.getfile(fn)}


def _spec_key(spec: dict, source: str) -> str:
    body = {k: spec[k] for k in ("kernel", "signature", "constexprs", "divisible", "num_warps", "num_stages")}
    return hashlib.sha1((source + json.dumps(body, sort_keys=True, default=str)).encode()).hexdigest()


def _label(spec: dict, kinds: dict[str, str]) -> str:
    name = spec["kernel"]
    if name in kinds:
        return f"{kinds[name]} {name}"
    ptrs = [t[1:] for t in spec["signature"].values() if t.startswith("*")]
    blocks = "x".join(str(v) for k, v in spec["constexprs"].items() if k.startswith("BLOCK"))
    extras = [f"{k}={v}" for k, v in spec["constexprs"].items()
              if k in ("ACTIVATION", "MASK_KIND", "IS_CAUSAL", "HAS_BIAS", "HAS_RESIDUAL", "FP8_DOT") and v not in (False, "none")]
    return " ".join([name.removesuffix("_kernel"), ptrs[0] if ptrs else "", blocks, *extras]).strip()


def launch_specs(launches: Sequence[Launch], kinds: dict[str, str] | None = None) -> list[dict]:
    """The distinct build specs of these launches (first-seen order); each carries "key" (identity),
    "launches" (how many launches it stands for) and "min_arch" where the kernel needs sm_89+ (fp8)."""
    specs: dict[str, dict] = {}
    for launch in launches:
        fn = launch.fn
        params = inspect.signature(fn).parameters
        kernel_obj = getattr(fn, "__globals__", {}).get(launch.name)
        jit_kwargs = getattr(kernel_obj, "kwargs", {}) or {}
        no_spec = {str(x) for x in jit_kwargs.get("do_not_specialize") or []}
        no_align = {str(x) for x in jit_kwargs.get("do_not_specialize_on_alignment") or []}
        sig: dict[str, str] = {}
        const: dict[str, Any] = {}
        divisible: list[str] = []
        unaligned: list[str] = []
        for i, (name, p) in enumerate(params.items()):
            if name not in launch.args:
                continue
            value = launch.args[name]
            if _is_constexpr(p.annotation):
                const[name] = _plain(value)
                continue
            ty, key = _runtime_type(value, name not in no_spec and str(i) not in no_spec,
                                    name not in no_align and str(i) not in no_align)
            if ty == "constexpr":
                const[name] = _plain(value)
                continue
            sig[name] = ty
            if ty.startswith("*"):
                if key != "D":
                    unaligned.append(name)
            elif key == "D":
                divisible.append(name)
        if const.get("ASM") is False:
            const["ASM"] = True  # the GPU's path (see Decisions)
        spec: dict[str, Any] = {**_where(fn), "kernel": launch.name, "signature": sig, "constexprs": const,
                                "divisible": divisible, "num_warps": int(launch.num_warps or 4),
                                "num_stages": int(launch.num_stages or 3)}
        if unaligned:
            spec["unaligned"] = unaligned
        if any("fp8" in t for t in sig.values()) or const.get("FP8_DOT") is True:
            spec["min_arch"] = FP8_MIN_ARCH
        try:
            source = inspect.getsource(fn)
        except (OSError, TypeError):
            source = spec.get("path", spec["module"])
        key = _spec_key(spec, source)
        if key in specs:
            specs[key]["launches"] += 1
            continue
        spec["label"] = _label(spec, kinds or {})
        spec["key"] = key
        spec["launches"] = 1
        specs[key] = spec
    return list(specs.values())


# -- building ---------------------------------------------------------------------------------------

def skip_reason(spec: dict, arch: int) -> str:
    """Why `spec` is not built for sm_`arch` ('' when it is)."""
    need = int(spec.get("min_arch", 0))
    if need > arch:
        return f"needs sm_{need}+ (fp8 operands), sm_{arch} has no fp8 conversion/dot"
    return ""


def build_specs(specs: Sequence[dict], archs: Sequence[int] = (90, 80), *, cache: dict | None = None,
                timeout: float = 600.0) -> dict[int, list[KernelBuild | None]]:
    """Build each spec for each arch (in subprocesses, via `build_in_subprocess`), reusing `cache`
    (default `BUILD_CACHE`); per arch, a list aligned with `specs` (None where the spec is skipped)."""
    cache = BUILD_CACHE if cache is None else cache
    out: dict[int, list[KernelBuild | None]] = {}
    for arch in progress(archs, "build check (one subprocess per arch)"):
        todo = [s for s in specs if not skip_reason(s, arch) and (s["key"], arch) not in cache]
        todo = list({s["key"]: s for s in todo}.values())
        if todo:
            log.debug("building %d kernels for sm_%d", len(todo), arch)
            for s, b in zip(todo, build_in_subprocess(todo, arch, timeout=timeout), strict=True):
                cache[(s["key"], arch)] = b
        out[arch] = [None if skip_reason(s, arch) else cache[(s["key"], arch)] for s in specs]
    return out


def _row(spec: dict, build: KernelBuild | None, arch: int) -> dict[str, Any]:
    row: dict[str, Any] = {"kernel": spec["kernel"], "label": spec["label"], "launches": spec["launches"],
                           "num_warps": spec["num_warps"], "num_stages": spec["num_stages"]}
    if build is None:
        return {**row, "ok": None, "skipped": skip_reason(spec, arch)}
    row.update(ok=build.ok, registers=build.registers, spills=build.spills, stack=build.stack, shared=build.shared_bytes,
               instructions=build.instructions, loop_instructions=build.loop_instructions,
               seconds=round(build.seconds, 3))
    if build.error:
        row["error"] = build.error[-600:]
    if spec.get("unaligned"):
        row["unaligned"] = spec["unaligned"]
    return row


def _executor_kinds(target: Any) -> dict[str, str]:
    executor = getattr(getattr(target, "program", None), "executor", None)
    return {k.name: k.kind for k in getattr(executor, "kernels", None) or []}


@dataclasses.dataclass
class BuildCheck:
    """What `check_kernels` found: per-arch rows (`stats`, the "build_check" record's statistics), the
    seconds it took, and the builds (skipped fp8-on-sm_80 kernels are rows only)."""

    stats: dict[str, list[dict[str, Any]]]
    seconds: float
    builds: list[KernelBuild]

    @property
    def ok(self) -> bool:
        return all(b.ok for b in self.builds)


def check_kernels(compiled: Any, example_inputs: Sequence[Any], archs: Sequence[int] = (90, 80), *,
                  example_kwargs: dict | None = None, specs: Sequence[dict] | None = None,
                  cache: dict | None = None, timeout: float = 600.0) -> BuildCheck:
    """Run `compiled(*example_inputs, **example_kwargs)` once (an executor="interpret" CompiledModule), build
    each distinct kernel it launched for each arch, and return the figures (`BuildCheck`); the caller
    files them in the trace. `specs` skips the recording run."""
    from fxforge.errors import ConfigError

    start = time.perf_counter()
    if specs is None:
        program = getattr(compiled, "program", None)
        if program is not None and program.executor_name != "interpret":
            raise ConfigError(f"check_kernels records launches under Triton's interpreter, but this module runs on the "
                              f"{program.executor_name!r} executor; compile it with executor='interpret'")
        launches = record_launches(lambda: compiled(*example_inputs, **(example_kwargs or {})))
        specs = launch_specs(launches, _executor_kinds(compiled))
    built = build_specs(specs, archs, cache=cache, timeout=timeout)
    stats = {f"sm_{arch}": [_row(s, b, arch) for s, b in zip(specs, built[arch], strict=True)] for arch in archs}
    return BuildCheck(stats, time.perf_counter() - start, [b for arch in archs for b in built[arch] if b is not None])


def summary(trace: Any) -> list[str]:
    """One line per arch of the trace's "build_check" record: kernels ok / failed / skipped, worst figures."""
    found = [r for r in getattr(trace, "records", []) if r.name == RECORD_NAME]
    lines = []
    for arch_key, rows in (found[-1].stats.items() if found else []):
        built = [r for r in rows if not r.get("skipped")]
        failed = [r["kernel"] for r in built if not r.get("ok")]
        lines.append(f"{arch_key}: {len(built) - len(failed)}/{len(built)} kernels build"
                     + (f", {len(rows) - len(built)} skipped" if len(rows) > len(built) else "")
                     + f"; max {max((r.get('registers', 0) for r in built), default=0)} registers, "
                     f"{max((r.get('spills', 0) for r in built), default=0)} B spilled, "
                     f"{max((r.get('shared', 0) for r in built), default=0) / 1024:.1f} KiB shared"
                     + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return lines


# -- reading it back --------------------------------------------------------------------------------

def format_kernel_table(trace: Any) -> str:
    """The "build_check" record of a trace as a table per arch; a hint when the trace has none."""
    found = [r for r in getattr(trace, "records", []) if r.name == RECORD_NAME]
    if not found:
        return ("no build check in this artifact: compile with `fxforge compile ... --executor interpret --build-check` "
                "(or, before compiled.save(dir): check = fxforge.codegen.buildcheck.check_kernels(compiled, inputs); "
                "compiled.record.add_check('build_check', check.stats, check.seconds))")
    lines = []
    for arch_key, rows in found[-1].stats.items():
        arch = int(arch_key.removeprefix("sm_")) if arch_key.startswith("sm_") else 0
        limit = SHARED_LIMITS.get(arch)
        ok = sum(1 for r in rows if r.get("ok"))
        skipped = sum(1 for r in rows if r.get("skipped"))
        head = f"{arch_key}: {len(rows)} kernels, {ok} ok, {len(rows) - ok - skipped} failed, {skipped} skipped"
        lines += [head + (f" (shared limit {limit / 1024:.0f} KiB)" if limit else ""),
                  f"  {'kernel':<28}{'label':<40}{'regs':>6}{'spills':>8}{'shared KiB':>12}{'SASS':>7}{'loop':>6}  ok"]
        for r in rows:
            if r.get("skipped"):
                lines.append(f"  {r['kernel']:<28}{r['label'][:39]:<40}{'-':>6}{'-':>8}{'-':>12}{'-':>7}{'-':>6}"
                             f"  skipped: {r['skipped']}")
                continue
            err = f"  {r['error'][:120]}" if r.get("error") else ""
            lines.append(f"  {r['kernel']:<28}{r['label'][:39]:<40}{r.get('registers', 0):>6}{r.get('spills', 0):>8}"
                         f"{r.get('shared', 0) / 1024:>12.1f}{r.get('instructions', 0):>7}{r.get('loop_instructions', 0):>6}"
                         f"  {'yes' if r.get('ok') else 'NO'}{err}")
        lines.append("")
    return "\n".join(lines).rstrip("\n")
