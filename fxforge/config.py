"""`CompileConfig`: every option of a compile, validated when made, serialisable into artifacts."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from fxforge.errors import ConfigError

EXECUTOR_CHOICES = ("auto", "reference", "interpret", "triton")
QUANTIZE_METHODS = ("auto", "rtn")  # see fxforge.passes.quant_methods
ROTATE_MODES = ("auto", "online")  # see fxforge.passes.rotate
POW2_ROUND_CHOICES = ("floor", "ceil")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class CompileConfig:
    """Options of `fxforge.compile` and the CLI.

    passes: the pass pipeline by name (None: the default pipeline); disable: names to skip.
    executor: "auto" (reference on a CPU), "reference", "interpret" (Triton's CPU interpreter)
        or "triton" (a GPU).
    verify: verify the IR after every pass. debug: verify, and print the report after compiling.
    dynamic: dynamic shapes (JIT: torch.compile's `dynamic`; AOT: export every dim as Dim.AUTO).
    fullgraph: JIT only: fail on a graph break instead of running it in Python.
    pass_options: {"<pass>.<option>": value}, read by that pass (`fxforge.pipeline` names the passes
        and maps the typed fields below onto their options, e.g. quantize_group -> "quantize.group").
    quantize: a scheme for every linear ("w8a8-int8", "w8a8-fp8", "w4a16-int4", "w4a8-fp", or the block
        schemes "mxfp8", "mxfp6", "mxfp4", "mxint8", "nvfp4": OCP MX / NVFP4 weights and per-block
        activations, `fxforge.ir.block_weights`) or None;
        quantize_overrides: {name pattern: scheme or None}, first match wins (lm_head stays high precision
        by default); quantize_group: the group size of the 4-bit schemes; lorc_rank: ZeroQuant-FP's
        low-rank error compensation (0: off); calibration: example inputs (each a tuple of args or a
        dict of kwargs) the errors and scales are measured on (AOT only; not saved into artifacts).
    quantize_method: "auto" (with calibration data each scheme runs its best measured methods, see
        `fxforge.passes.quant_methods.DEFAULTS`) or "rtn" (round to nearest); smooth / rotate / gptq:
        None (the scheme's default) or a bool forcing SmoothQuant/AWQ smoothing, Hadamard rotation, GPTQ
        on or off; rotate_mode: "auto" (residual-stream rotation where the architecture allows, online
        Hadamard elsewhere) or "online"; rotate_block: the largest online Hadamard block (0: whole width).
    ffn_skip: share of FFN token-rows to skip per token at run time (0 < x <= 0.9; needs calibration);
        ffn_skip_gate: "linear" (default), "quadratic" (on [u, u*u]), "carry" (FFN-SkipLLM's rule) or "oracle" (measurement only);
        ffn_skip_warmup: tokens at positions below it always run their FFNs; ffn_skip_protect: FFN block
        indices never skipped (default first and last); ffn_skip_overrides: {site pattern: fixed share};
        ffn_skip_mode: "auto" (per-row keep flags on the device in decode graphs, compaction elsewhere),
        "compact" or "mask". See `fxforge.passes.ffn_skip`.
    sparsity: "N:M" pruning of every linear (N < M <= 16; lm_head stays dense) or None;
        sparsity_overrides: {name pattern: "N:M" or None}, first match wins; sparsity_method:
        "magnitude" | "wanda" | "sparsegpt" or None (the best the calibration allows: sparsegpt with
        calibration, else magnitude). With `quantize` too, the kept values are quantized (GPTQ with
        calibration). solver_target: what the second-order solver reconstructs when pruning:
        "reference" (default: the dense model's layer output, from the inputs the pruned model really
        gives the layer) or "layer" (the layer's own output: plain sequential SparseGPT).
        sparsity_refine: steps of block-output reconstruction after pruning (kept values refit, masks
        fixed, so each pruned block reproduces the dense block's outputs on the calibration data);
        None: on with calibration (`sparsify_refine.DEFAULT_STEPS`), 0: off. With `quantize` too and
        refinement on, layers are pruned, refined, then their kept values quantized by GPTQ with the mask
        fixed (`passes/sparsify_quant.py`); with 0, pruned and quantized in one solve.
        See `fxforge.passes.sparsify`.
    kv_cache: K (after RoPE) and V quantize-dequantized as a compressed KV cache stores them: "bfp4",
        "bfp8", "fp8", "int8" or None; kv_block: elements per shared scale along head_dim (16, 32, 64);
        k_sort: "auto" (with kv_cache and calibration: per KV head a channel permutation where it lowers
        the calibrated attention-logit error), "on" (always apply it) or "off". See `fxforge.passes.ksort`.
    budget: choose a rewrite per linear (dense or a quantization scheme) minimising the cost model's
        predicted time while the mean relative L2 error of the model's (first) output on the calibration
        inputs stays within `budget` (> 0; needs calibration; not with `quantize`). See
        `fxforge.costmodel.select`; the plan is `report.plan`.
    """

    passes: tuple[str, ...] | None = None
    disable: tuple[str, ...] = ()
    executor: str = "auto"
    verify: bool = False
    debug: bool = False
    dynamic: bool | None = None
    fullgraph: bool = False
    pass_options: dict[str, Any] = field(default_factory=dict)
    quantize: str | None = None
    quantize_overrides: dict[str, str | None] = field(default_factory=dict)
    quantize_group: int | None = None
    quantize_pow2_round: str = "floor"
    lorc_rank: int = 0
    quantize_method: str = "auto"
    smooth: bool | None = None
    rotate: bool | None = None
    gptq: bool | None = None
    rotate_mode: str = "auto"
    rotate_block: int = 0
    calibration: list | None = field(default=None, compare=False)
    ffn_skip: float | None = None
    ffn_skip_gate: str = "linear"
    ffn_skip_warmup: int = 4
    ffn_skip_protect: tuple[int, ...] = (0, -1)
    ffn_skip_overrides: dict[str, float] = field(default_factory=dict)
    ffn_skip_mode: str = "auto"
    sparsity: str | None = None
    sparsity_overrides: dict[str, str | None] = field(default_factory=dict)
    sparsity_method: str | None = None
    solver_target: str | None = None
    budget: float | None = None
    sparsity_refine: int | None = None
    kv_cache: str | None = None
    kv_block: int = 32
    k_sort: str = "auto"

    def __post_init__(self) -> None:
        if self.executor not in EXECUTOR_CHOICES:
            raise ConfigError(f"executor={self.executor!r} is not one of {EXECUTOR_CHOICES}")
        self._check_quantize_options()
        self._check_methods()
        _check_ffn_skip(self)
        _check_sparsity(self)
        _check_kv(self)
        _check_budget(self)
        for name in ("passes", "disable"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, str) or not all(isinstance(v, str) for v in value)):
                raise ConfigError(f"{name} must be a list of pass names, got {value!r}")
            if value is not None:
                object.__setattr__(self, name, tuple(value))

    def _check_quantize_options(self) -> None:
        """Typos in the quantization options fail here, naming the valid values (never a silent default)."""
        from fxforge.ir.lowp_ops import SCHEMES

        known = sorted(SCHEMES)
        if self.quantize is not None and self.quantize not in SCHEMES:
            raise ConfigError(f"quantize={self.quantize!r} is not a scheme; use one of {known} or None")
        if not isinstance(self.quantize_overrides, dict):
            raise ConfigError(f"quantize_overrides must be a dict {{layer name pattern: scheme or None}}, "
                              f"got {type(self.quantize_overrides).__name__}")
        for pattern, scheme in self.quantize_overrides.items():
            if not isinstance(pattern, str):
                raise ConfigError(f"quantize_overrides: pattern {pattern!r} must be a string (an fnmatch pattern on layer names)")
            if scheme is not None and scheme not in SCHEMES:
                raise ConfigError(f"quantize_overrides[{pattern!r}]={scheme!r} is not a scheme; use one of {known} "
                                  "or None (keep the layer high precision)")
        if self.quantize_group is not None and (not _is_int(self.quantize_group) or self.quantize_group <= 0):
            raise ConfigError(f"quantize_group={self.quantize_group!r} must be a positive int (the group size along the "
                              "input dim, e.g. 32, 64 or 128) or None (the scheme's default)")
        block = SCHEMES[self.quantize].block if self.quantize else 0
        if block and self.quantize_group not in (None, block):
            raise ConfigError(f"quantize={self.quantize!r} has a fixed block of {block}; quantize_group="
                              f"{self.quantize_group} cannot hold (leave it None)")
        if self.quantize_pow2_round not in POW2_ROUND_CHOICES:
            raise ConfigError(f"quantize_pow2_round={self.quantize_pow2_round!r} is not one of {POW2_ROUND_CHOICES}")
        if not _is_int(self.lorc_rank) or self.lorc_rank < 0:
            raise ConfigError(f"lorc_rank={self.lorc_rank!r} must be an int >= 0 (0: LoRC off)")

    def _check_methods(self) -> None:
        if self.quantize_method not in QUANTIZE_METHODS:
            raise ConfigError(f"quantize_method={self.quantize_method!r} is not one of {QUANTIZE_METHODS}")
        for name in ("smooth", "rotate", "gptq"):
            if getattr(self, name) not in (None, True, False):
                raise ConfigError(f"{name}={getattr(self, name)!r} must be None (the scheme's default), True or False")
        if self.rotate_mode not in ROTATE_MODES:
            raise ConfigError(f"rotate_mode={self.rotate_mode!r} is not one of {ROTATE_MODES}")
        if not isinstance(self.rotate_block, int) or self.rotate_block < 0:
            raise ConfigError(f"rotate_block must be an int >= 0 (0: the whole width), got {self.rotate_block!r}")

    @classmethod
    def from_options(cls, config: CompileConfig | None = None, **options: Any) -> CompileConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"unknown compile option(s) {unknown}; known options: {sorted(known)}")
        if config is not None and not isinstance(config, CompileConfig):
            raise ConfigError(f"config must be a fxforge.CompileConfig, got {type(config).__name__}")
        return dataclasses.replace(config or cls(), **options)

    @property
    def checks(self) -> bool:
        """Verify after every pass: asked for, in debug mode, or FXFORGE_VERIFY=1 (the tests set it)."""
        return self.verify or self.debug or os.environ.get("FXFORGE_VERIFY") == "1"

    def to_json(self) -> dict[str, Any]:
        """Everything but the calibration tensors."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "calibration"}
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in data.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CompileConfig:
        data = dict(data)
        budget = data.pop("budget", None)  # an artifact's record of it: calibration is not saved, nothing recompiles
        cfg = cls.from_options(None, **data)
        object.__setattr__(cfg, "budget", budget)
        return cfg


def _check_ffn_skip(cfg: CompileConfig) -> None:
    from fxforge.ir.skip_ops import options_problem

    if isinstance(cfg.ffn_skip_protect, list):
        object.__setattr__(cfg, "ffn_skip_protect", tuple(cfg.ffn_skip_protect))
    problem = options_problem(cfg.ffn_skip, cfg.ffn_skip_gate, cfg.ffn_skip_warmup, cfg.ffn_skip_protect,
                              cfg.ffn_skip_overrides, cfg.ffn_skip_mode)
    if problem:
        raise ConfigError(problem)


def _check_sparsity(cfg: CompileConfig) -> None:
    if cfg.sparsity is not None or cfg.sparsity_overrides or cfg.sparsity_method is not None:
        from fxforge.ir.nm import sparsity_options_problem

        problem = sparsity_options_problem(cfg.sparsity, cfg.sparsity_overrides, cfg.sparsity_method)
        if problem:
            raise ConfigError(problem)
    refine = cfg.sparsity_refine
    if refine is not None and (isinstance(refine, bool) or not isinstance(refine, int) or refine < 0):
        raise ConfigError(f"sparsity_refine={refine!r} must be an int >= 0 (steps of block-output refitting; 0: off) or None")
    if cfg.solver_target not in (None, "reference", "layer"):
        raise ConfigError(f"solver_target={cfg.solver_target!r} must be 'reference', 'layer' or None")


def _check_kv(cfg: CompileConfig) -> None:
    from fxforge.ir.kv_ops import kv_options_problem

    problem = kv_options_problem(cfg.kv_cache, cfg.kv_block, cfg.k_sort)
    if problem:
        raise ConfigError(problem)


def _check_budget(cfg: CompileConfig) -> None:
    if cfg.budget is None:
        return
    if isinstance(cfg.budget, bool) or not isinstance(cfg.budget, (int, float)) or not cfg.budget > 0:
        raise ConfigError(f"budget={cfg.budget!r} must be a number > 0: the mean relative L2 error of the model's "
                          "output allowed on the calibration inputs, e.g. 0.05")
    if cfg.calibration is None:
        raise ConfigError("budget needs calibration inputs to measure each rewrite's error: "
                          "compile(model, budget=..., calibration=[example, ...])")
    if cfg.quantize is not None:
        raise ConfigError(f"budget chooses the scheme of each layer; drop quantize={cfg.quantize!r} (or drop budget)")
