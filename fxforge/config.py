"""`CompileConfig`: every option of a compile, validated when made, serialisable into artifacts."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from fxforge.errors import ConfigError

EXECUTOR_CHOICES = ("auto", "reference", "interpret", "triton")


@dataclass(frozen=True)
class CompileConfig:
    """Options of `fxforge.compile` and the CLI.

    passes: the pass pipeline by name (None: the default pipeline); disable: names to skip.
    executor: "auto" (reference on a CPU), "reference", "interpret" (Triton's CPU interpreter)
        or "triton" (a GPU).
    verify: verify the IR after every pass. debug: verify, and print the report after compiling.
    dynamic: dynamic shapes (JIT: torch.compile's `dynamic`; AOT: export every dim as Dim.AUTO).
    fullgraph: JIT only: fail on a graph break instead of running it in Python.
    quantize: a scheme for every linear ("w8a8-int8", "w8a8-fp8", "w4a16-int4", "w4a8-fp") or None;
        quantize_overrides: {name pattern: scheme or None}, first match wins (lm_head stays high precision
        by default); quantize_group: the group size of the 4-bit schemes; lorc_rank: ZeroQuant-FP's
        low-rank error compensation (0: off); calibration: example inputs (each a tuple of args or a
        dict of kwargs) the errors and scales are measured on (AOT only; not saved into artifacts).
    gptq: GPTQ rounding (second-order, error-compensating) instead of round-to-nearest; None (default):
        on when calibration is given, False: off, True without calibration: reported as skipped.
    sparsity: "N:M" pruning of every linear (N < M <= 16; lm_head stays dense) or None;
        sparsity_overrides: {name pattern: "N:M" or None}, first match wins; sparsity_method:
        "magnitude" | "wanda" | "sparsegpt" or None (the best the calibration allows: sparsegpt with
        calibration, else magnitude). With `quantize` too, the kept values are quantized.
    solver_target: what the second-order solver reconstructs when pruning: "reference" (default: the
        dense model's layer output, from the inputs the pruned model really gives the layer) or "layer"
        (the layer's own output on those inputs: plain sequential SparseGPT).
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
    gptq: bool | None = None
    sparsity: str | None = None
    sparsity_overrides: dict[str, str | None] = field(default_factory=dict)
    sparsity_method: str | None = None
    solver_target: str | None = None
    calibration: list | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.executor not in EXECUTOR_CHOICES:
            raise ConfigError(f"executor={self.executor!r} is not one of {EXECUTOR_CHOICES}")
        if self.quantize is not None:
            from fxforge.ir.lowp_ops import SCHEMES

            if self.quantize not in SCHEMES:
                raise ConfigError(f"quantize={self.quantize!r} is not a scheme; known: {sorted(SCHEMES)}")
        if self.sparsity is not None or self.sparsity_overrides or self.sparsity_method is not None:
            from fxforge.passes.sparsify import check_options

            check_options(self.sparsity, self.sparsity_overrides, self.sparsity_method)
        if self.solver_target not in (None, "reference", "layer"):
            raise ConfigError(f"solver_target={self.solver_target!r} must be 'reference', 'layer' or None")
        if self.lorc_rank < 0:
            raise ConfigError(f"lorc_rank must be >= 0, got {self.lorc_rank}")
        for name in ("passes", "disable"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, str) or not all(isinstance(v, str) for v in value)):
                raise ConfigError(f"{name} must be a list of pass names, got {value!r}")
            if value is not None:
                object.__setattr__(self, name, tuple(value))

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

    def pass_context_options(self) -> dict[str, Any]:
        """What the passes read from `ctx.options`."""
        keys = ("quantize", "quantize_overrides", "quantize_group", "quantize_pow2_round", "lorc_rank", "gptq",
                "sparsity", "sparsity_overrides", "sparsity_method", "solver_target")
        return {**self.pass_options, **{k: getattr(self, k) for k in keys}}

    def to_json(self) -> dict[str, Any]:
        """Everything but the calibration tensors."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "calibration"}
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in data.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CompileConfig:
        return cls.from_options(None, **data)
