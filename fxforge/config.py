"""`CompileConfig`: every option of a compile, validated when made, serialisable into artifacts."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from fxforge.errors import ConfigError

EXECUTOR_CHOICES = ("auto", "reference", "interpret", "triton")
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
    quantize: a scheme for every linear ("w8a8-int8", "w8a8-fp8", "w4a16-int4", "w4a8-fp") or None;
        quantize_overrides: {name pattern: scheme or None}, first match wins (lm_head stays high precision
        by default); quantize_group: the group size of the 4-bit schemes; lorc_rank: ZeroQuant-FP's
        low-rank error compensation (0: off); calibration: example inputs (each a tuple of args or a
        dict of kwargs) the errors and scales are measured on (AOT only; not saved into artifacts).
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
    calibration: list | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.executor not in EXECUTOR_CHOICES:
            raise ConfigError(f"executor={self.executor!r} is not one of {EXECUTOR_CHOICES}")
        self._check_quantize_options()
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
        if self.quantize_pow2_round not in POW2_ROUND_CHOICES:
            raise ConfigError(f"quantize_pow2_round={self.quantize_pow2_round!r} is not one of {POW2_ROUND_CHOICES}")
        if not _is_int(self.lorc_rank) or self.lorc_rank < 0:
            raise ConfigError(f"lorc_rank={self.lorc_rank!r} must be an int >= 0 (0: LoRC off)")

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
        keys = ("quantize", "quantize_overrides", "quantize_group", "quantize_pow2_round", "lorc_rank")
        return {**self.pass_options, **{k: getattr(self, k) for k in keys}}

    def to_json(self) -> dict[str, Any]:
        """Everything but the calibration tensors."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "calibration"}
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in data.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CompileConfig:
        return cls.from_options(None, **data)
