"""The compile pipeline: which passes exist, their default order, how compile options reach them,
and the run from a lowered graph to a runnable `Program`.

Both entry points (the JIT backend and AOT compile) go through `compile_lowered`, so a graph is
optimised the same way whichever path captured it.

`PASS_TABLE` is the one table of passes: each row is a pass by name, the class that makes it, when
it is in the default pipeline, and which `CompileConfig` fields become its options. The default
pipeline is the rows whose condition holds, in table order. Adding a pass is one row, at the place
it runs (plus its `CompileConfig` field and CLI flag if users set it):

    PassSpec("sparsify", Sparsify, when=option_set("sparsify.pattern"), options={"sparsity": "pattern"}),

Pass options (one naming scheme): `"<pass>.<option>"`. A row's `options` maps a `CompileConfig` field
to an option of that pass (`quantize_group` -> `"quantize.group"`); `CompileConfig.pass_options`
sets any option directly (`--pass-option constant_fold.max_elements=0`). Calibration inputs are not
an option: they are `PassContext.calibration`.

Decisions:
- The default order is canonicalize, constant_fold, cse, canonicalize, [rewrites], dce, shape_prop,
  [fuse]: canonicalize first, while the aten patterns (matmul of a transposed const, RMSNorm written
  out) are intact and before folding could touch them; constant_fold next, so scalar arithmetic on
  `full`s and masks built from constants collapse; cse then merges the duplicates the frontend and
  folding leave (the per-call `full` scalars, repeated casts and views); canonicalize again because
  merging exposes patterns that were split across equal-but-distinct values (`x * sigmoid(x')` with
  x' a copy of x); the rewrites (quantize, ...) see the cleaned graph; dce removes what the rewrites
  left dead and drops unused weights; shape_prop re-infers every type on the final graph; fuse last,
  for the executors that run generated kernels, so the trace shows the partition.
- A row's `when` reads the final pass options (not the config), so a pass switched on through
  `pass_options` alone runs too; a rewrite that is asked for is never silently left out.
- A compile runs with the objects that existed before it frozen out of the garbage collector
  (`frozen_heap`, `gc.freeze`): its allocations trigger full collections, and each one walked the
  model and torch's whole heap again (~0.5 s of a 32-layer compile, growing with depth); nothing
  the compile makes is exempt. Skipped when the program froze the heap itself (a pre-fork server).
- An option set both by a config field and in `pass_options` to different values is a ConfigError,
  and so is a `pass_options` key that names no pass, and calibration inputs that no pass of the
  pipeline reads (a row says `calibrated=True` when its pass reads `ctx.calibration`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fxforge.config import CompileConfig
from fxforge.costmodel.select import Plan, choose
from fxforge.errors import ConfigError
from fxforge.frontend.fx_to_ir import Lowered
from fxforge.ir.graph import Graph
from fxforge.ir.trace import Trace
from fxforge.passes.adopt import Adopt
from fxforge.passes.canonicalize import Canonicalize
from fxforge.passes.concat_linears import ConcatLinears
from fxforge.passes.constant_fold import ConstantFold
from fxforge.passes.cse import CommonSubexpressionElimination
from fxforge.passes.dce import DeadCodeElimination
from fxforge.passes.decode_layout import DecodeLayout
from fxforge.passes.ffn_skip import FfnSkip
from fxforge.passes.fuse import FusePass, fuse
from fxforge.passes.gqa_attention import GqaAttention
from fxforge.passes.ksort import KSort
from fxforge.passes.kv_cache import KVCache
from fxforge.passes.manager import Pass, PassContext, PassManager
from fxforge.passes.norm_copies import NormCopies
from fxforge.passes.quantize import Quantize
from fxforge.passes.rotate import Rotate
from fxforge.passes.shape_prop import ShapePropagation
from fxforge.passes.smooth import Smooth
from fxforge.passes.sparsify import Sparsify
from fxforge.runtime.executors import resolve_executor
from fxforge.runtime.program import Program
from fxforge.runtime.report import PLAN_RECORD, GraphRecord

When = Callable[[Mapping[str, Any], str], bool]  # (pass options, executor) -> in the default pipeline?


def _always(options: Mapping[str, Any], executor: str) -> bool:
    return True


def _quantizing(options: Mapping[str, Any], executor: str) -> bool:
    overrides = options.get("quantize.overrides") or {}
    return options.get("quantize.scheme") is not None or any(v is not None for v in overrides.values())


def _sparsifying(options: Mapping[str, Any], executor: str) -> bool:
    overrides = options.get("sparsify.overrides") or {}
    return options.get("sparsify.pattern") is not None or any(v is not None for v in overrides.values())


def _ksorting(options: Mapping[str, Any], executor: str) -> bool:
    mode = options.get("ksort.mode")
    return mode == "on" or (mode == "auto" and options.get("ksort.format") is not None)


def option_set(key: str) -> When:
    """`when` of a pass that runs when its option `key` ("<pass>.<option>") is set (not None)."""
    return lambda options, executor: options.get(key) is not None


def _kernel_executor(options: Mapping[str, Any], executor: str) -> bool:
    return executor in ("interpret", "triton")


def _quantized_kernels(options: Mapping[str, Any], executor: str) -> bool:
    """qlinears may exist (quantize, or an adopted checkpoint's) and run as generated kernels."""
    return _kernel_executor(options, executor) and (_quantizing(options, executor) or options.get("adopt.source") is not None)


@dataclass(frozen=True)
class PassSpec:
    """One row of the pass table: a pass by name, in the default pipeline when `when` holds, reading
    `options` ({CompileConfig field: option name}; the key it reads is "<name>.<option>"), and
    `ctx.calibration` when `calibrated`."""

    name: str
    make: Callable[[], Pass]
    when: When = _always
    options: Mapping[str, str] = field(default_factory=dict)
    calibrated: bool = False


QUANTIZE_OPTIONS = {"quantize": "scheme", "quantize_overrides": "overrides", "quantize_group": "group",
                    "quantize_pow2_round": "pow2_round", "lorc_rank": "lorc_rank", "quantize_method": "method",
                    "gptq": "gptq"}
SPARSIFY_OPTIONS = {"sparsity": "pattern", "sparsity_overrides": "overrides", "sparsity_method": "method",
                    "solver_target": "target", "sparsity_refine": "refine"}
KV_OPTIONS = {"kv_cache": "format", "kv_block": "block"}
FFN_SKIP_OPTIONS = {"ffn_skip": "target", "ffn_skip_gate": "gate", "ffn_skip_warmup": "warmup",
                    "ffn_skip_protect": "protect", "ffn_skip_overrides": "overrides", "ffn_skip_mode": "mode"}

# The passes, in default-pipeline order (a name may appear twice: canonicalize runs twice).
PASS_TABLE: tuple[PassSpec, ...] = (
    PassSpec("canonicalize", Canonicalize),
    PassSpec("constant_fold", ConstantFold),
    PassSpec("cse", CommonSubexpressionElimination),
    PassSpec("canonicalize", Canonicalize),
    # rotate and smooth read the quantize.* options too; each decides by `quant_methods.resolve_methods`
    PassSpec("rotate", Rotate, when=_quantizing, options={"rotate": "enabled", "rotate_mode": "mode",
                                                          "rotate_block": "block"}, calibrated=True),
    PassSpec("smooth", Smooth, when=_quantizing, options={"smooth": "enabled"}, calibrated=True),
    # adopt before sparsify/quantize: layers quantized by a loaded checkpoint keep its codes (fxforge.export.ct_import)
    PassSpec("adopt", Adopt, when=option_set("adopt.source")),
    # sparsify before quantize: a layer with both is pruned and quantized in one solve, then left alone
    PassSpec("sparsify", Sparsify, when=_sparsifying, options=SPARSIFY_OPTIONS, calibrated=True),
    PassSpec("quantize", Quantize, when=_quantizing, options=QUANTIZE_OPTIONS, calibrated=True),
    # after quantize: the skip gate is fitted on the activations that will run
    PassSpec("ffn_skip", FfnSkip, when=option_set("ffn_skip.target"), options=FFN_SKIP_OPTIONS, calibrated=True),
    # K-sort then the KV-cache formats: the cache stores K with its channels already permuted
    PassSpec("ksort", KSort, when=_ksorting, options={"k_sort": "mode", **KV_OPTIONS}, calibrated=True),
    PassSpec("kv_cache", KVCache, when=option_set("kv_cache.format"), options=KV_OPTIONS),
    # fewer GEMM launches: Q/K/V (siblings reading one input) as one linear; before dce drops the old weights
    PassSpec("concat_linears", ConcatLinears, when=_kernel_executor),
    # 4-bit (int4, FP4) weights of decode-shaped qlinears pre-shuffled for the decode kernel (templates/qlinear_decode.py)
    PassSpec("decode_layout", DecodeLayout, when=_quantized_kernels),
    # attention reads K/V before HF's GQA head repeat (which copies the whole cache per call)
    PassSpec("gqa_attention", GqaAttention, when=_kernel_executor),
    # a norm read by several GEMMs (a parallel block's attention and MLP): one copy per GEMM, each its prologue
    PassSpec("norm_copies", NormCopies, when=_kernel_executor),
    PassSpec("dce", DeadCodeElimination),
    PassSpec("shape_prop", ShapePropagation),
    PassSpec("fuse", FusePass, when=_kernel_executor),
)
PASSES: dict[str, Callable[[], Pass]] = {spec.name: spec.make for spec in PASS_TABLE}
_DEFAULT_CONFIG = CompileConfig()


def pass_options(config: CompileConfig) -> dict[str, Any]:
    """What the passes read from `ctx.options`: the table's config fields as "<pass>.<option>", and
    `config.pass_options` (checked: each key names a known pass, and agrees with the config fields)."""
    bad = sorted(k for k in config.pass_options if not isinstance(k, str) or k.partition(".")[0] not in PASSES
                 or not k.partition(".")[2])
    if bad:
        raise ConfigError(f"pass option(s) {bad} are not '<pass>.<option>' with a known pass; known passes: {sorted(PASSES)}")
    options: dict[str, Any] = {}
    for spec in PASS_TABLE:
        for config_field, option in spec.options.items():
            options[f"{spec.name}.{option}"] = getattr(config, config_field)
    fields = {f"{spec.name}.{o}": f for spec in PASS_TABLE for f, o in spec.options.items()}
    for key, value in config.pass_options.items():
        config_field = fields.get(key)
        if config_field and getattr(config, config_field) != getattr(_DEFAULT_CONFIG, config_field) and options[key] != value:
            raise ConfigError(f"pass option {key}={value!r} contradicts {config_field}={options[key]!r}; set it one way")
        options[key] = value
    return options


def default_pipeline(config: CompileConfig | None = None, executor: str = "reference") -> list[str]:
    """The pass names `compile` runs when the config names none: the rows of `PASS_TABLE` that apply."""
    options = pass_options(config or CompileConfig())
    return [spec.name for spec in PASS_TABLE if spec.when(options, executor)]


def pipeline_names(config: CompileConfig, executor: str) -> list[str]:
    """`config.passes` when given, else the default pipeline for this config and executor; `fuse` is
    appended for the generated-kernel executors when a custom list lacks it (codegen needs it)."""
    if config.passes is None:
        return default_pipeline(config, executor)
    names = list(config.passes)
    return names + ["fuse"] if _kernel_executor({}, executor) and "fuse" not in names else names


def prepare_graph(graph: Graph, executor: str) -> None:
    """Give a graph that did not come through the pipeline (a loaded artifact: the partition is not
    stored) what its executor needs: the kernel partition for the generated-kernel executors."""
    if _kernel_executor({}, executor) and (graph.partition is None or not graph.partition.covers(graph)):
        fuse(graph)


def check_calibration(names: Sequence[str], calibration: list | None) -> None:
    """Calibration inputs that no pass of the pipeline reads are a ConfigError, not a silent no-op."""
    if calibration is None or any(spec.calibrated for spec in PASS_TABLE if spec.name in names):
        return
    readers = sorted({spec.name for spec in PASS_TABLE if spec.calibrated})
    raise ConfigError(f"calibration inputs were given, but no pass of the pipeline {list(names)} reads them (the passes "
                      f"that do: {readers}); ask for one (e.g. quantize='w8a8-int8') or leave the calibration out")


def build_passes(names: Sequence[str], disabled: Iterable[str] = ()) -> list[Pass]:
    """Pass objects for `names`, skipping `disabled`; a typo raises ConfigError listing the known names."""
    names, disabled = list(names), list(disabled)
    unknown = [n for n in [*names, *disabled] if n not in PASSES]
    if unknown:
        raise ConfigError(f"unknown pass name(s) {unknown}; known passes: {sorted(PASSES)}")
    return [PASSES[n]() for n in names if n not in disabled]


def run_passes(lowered: Lowered, config: CompileConfig, executor: str, calibration: list | None = None,
               shared: dict[str, Any] | None = None) -> Trace:
    """Runs the pipeline on `lowered.graph` (replaced by the result); returns the trace. `shared`: the
    passes' state across the graphs of one compile (`PassContext.shared`)."""
    names = [n for n in pipeline_names(config, executor) if n not in config.disable]
    check_calibration(names, calibration)
    passes = build_passes(names)
    ctx = PassContext(options=pass_options(config), calibration=calibration, verify=config.checks, debug=config.debug,
                      shared=shared if shared is not None else {})
    manager = PassManager(passes, verify=config.checks)
    lowered.graph = manager.run(lowered.graph, ctx)
    return manager.trace


_FROZEN = {"depth": 0}
_FROZEN_LOCK = threading.Lock()


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """The objects alive now are left out of garbage collection until the outermost `with` ends
    (`gc.freeze`; a no-op when the program froze objects itself)."""
    with _FROZEN_LOCK:
        ours = _FROZEN["depth"] > 0 or gc.get_freeze_count() == 0
        if ours:
            _FROZEN["depth"] += 1
            if _FROZEN["depth"] == 1:
                gc.freeze()
    try:
        yield
    finally:
        if ours:
            with _FROZEN_LOCK:
                _FROZEN["depth"] -= 1
                if _FROZEN["depth"] == 0:
                    gc.unfreeze()


def compile_lowered(lowered: Lowered, config: CompileConfig, capture_seconds: float, aten_ops: int,
                    calibration: list | None = None, shared: dict[str, Any] | None = None) -> GraphRecord:
    """calibration: input lists for the graph (its tensor inputs, in order); shared: see `run_passes`.
    With `config.budget`, the plan is chosen first (`select_plan`) and compiled as quantize overrides."""
    with frozen_heap():
        return _compile_lowered(lowered, config, capture_seconds, aten_ops, calibration, shared)


def compiled_externs(graph: Graph) -> dict[str, int]:
    """{aten target: count} of the externs the compiled graph still runs through torch (the capture's `externs`
    less those the passes lowered or folded away: an MoE router's scatter, Llama 4's floor_divide)."""
    return dict(Counter(str(op.attrs["target"]) for op in graph.find("extern")))


def _compile_lowered(lowered: Lowered, config: CompileConfig, capture_seconds: float, aten_ops: int,
                     calibration: list | None, shared: dict[str, Any] | None) -> GraphRecord:
    start = time.perf_counter()
    executor = resolve_executor(config.executor)
    plan = None
    if config.budget is not None:
        shared = shared if shared is not None else {}
        if calibration:
            plan = select_plan(lowered.graph, config, calibration)
            shared[PLAN_RECORD] = plan.overrides  # graphs no calibration reached (JIT decode) reuse the plan
        chosen = plan.overrides if plan is not None else shared.get(PLAN_RECORD, {})
        config = dataclasses.replace(config, budget=None, quantize_overrides={**chosen, **config.quantize_overrides})
        calibration = calibration if chosen else None  # all dense: no pass reads it
    trace = run_passes(lowered, config, executor, calibration, shared)
    program = Program(lowered.graph, lowered.inputs, lowered.outputs, executor)
    record = GraphRecord(lowered.graph.name, program, capture_seconds, time.perf_counter() - start, aten_ops,
                         compiled_externs(lowered.graph), lowered.notes, trace)
    if plan is not None:
        record.add_check(PLAN_RECORD, plan.stats(), plan.seconds)
        record.notes.extend(plan.notes)
    return record


REWRITE_PASSES = ("rotate", "smooth", "sparsify", "quantize", "dce", "shape_prop")


def select_plan(graph: Graph, config: CompileConfig, calibration: list) -> Plan:
    """The budget's plan for `graph` (unchanged): the cleaning passes once on a copy, then each candidate
    through the same rewrite passes the compile runs (`fxforge.costmodel.select.choose`)."""
    base_cfg = dataclasses.replace(config, budget=None, quantize=None)
    base = copy.deepcopy(graph)
    names = default_pipeline(base_cfg, "reference")
    prefix = names[:next((i for i, n in enumerate(names) if n in REWRITE_PASSES), len(names))]
    base = PassManager(build_passes(prefix), verify=config.checks).run(
        base, PassContext(options=pass_options(base_cfg), verify=config.checks, shared={}))

    def apply(g: Graph, overrides: dict[str, str]) -> Graph:
        cfg = dataclasses.replace(base_cfg, quantize_overrides={**overrides, **config.quantize_overrides})
        passes = build_passes([n for n in default_pipeline(cfg, "reference") if n in REWRITE_PASSES])
        ctx = PassContext(options=pass_options(cfg), calibration=calibration, verify=config.checks, shared={})
        return PassManager(passes, verify=config.checks).run(g, ctx)

    return choose(base, calibration, float(config.budget or 0), apply, overrides=config.quantize_overrides)
