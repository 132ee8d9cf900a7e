"""Which accuracy methods a quantized compile runs (smooth, rotate, gptq), and which linears they touch.

`resolve_methods(options, calibrated)` turns the pass options into one decision per method, with the
reason, so the passes (`rotate`, `smooth`, `quantize`) and the report agree (CompileConfig field ->
pass option, `fxforge.pipeline.PASS_TABLE`):
    quantize_method  ("quantize.method") "auto" (default): each scheme's best measured methods when calibration data is
                     given (`DEFAULTS`), none without it; "rtn": round to nearest, no method at all
                     unless one is switched on explicitly
    smooth / rotate / gptq  ("smooth.enabled", "rotate.enabled", "quantize.gptq") None (the default for
                     the scheme) or a bool that forces it
A method that needs calibration data (smooth, gptq) and has none is skipped, and `skipped` says so.

`DEFAULTS` (measured with benchmarks/accuracy/methods.py, results in benchmarks/results/methods-2026-11-30*.md:
on the byte-level LM with built-in outlier channels, next-token agreement with fp32 for W8A8-INT8 went
0.962 (rtn) -> 0.994 (smooth) -> 0.996 (rotate), on the trained fixture 0.989 -> 0.991 -> 0.997;
W4A16-INT4 / W4A8-FP with rotation see the results file; GPTQ rows come with the solver branch):
    w8a8-int8   rotate + gptq   rotation removes the activation outliers that cost int8 its accuracy
    w8a8-fp8    gptq            FP8's exponent already covers outliers; rotation made it worse (issue #9)
    w4a16-int4  rotate + gptq   incoherent (rotated) weights round better at 4 bits; GPTQ on top
    w4a8-fp     rotate + gptq   FP8 activations after rotation, FP4 weights by GPTQ
Decided: rotation is data-free but stays off by default without calibration data, so a plain
`quantize=` compile is still round-to-nearest (pass rotate=True to have it anyway).

Methods are decided per scheme: a layer whose scheme comes from `quantize_overrides` (or from a budget's
plan, which compiles with overrides only) gets its own scheme's defaults (`method_targets`), never the
methods of the global scheme or none at all.

`quant_targets(graph, options)` lists the linears the quantize pass will rewrite, with their scheme
(the same rules as `linear_sites.choose_by_pattern`: lm_head and tied embeddings stay high precision), so
smoothing and rotation only touch layers that will be quantized.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

from fxforge.ir.graph import Graph, Op
from fxforge.passes.calibrate import site_name
from fxforge.passes.linear_sites import choose_by_pattern, embedding_tables, skip_reason

METHODS = ("smooth", "rotate", "gptq")
OPTION_KEYS = {"smooth": "smooth.enabled", "rotate": "rotate.enabled", "gptq": "quantize.gptq"}
NEEDS_CALIBRATION = {"smooth": True, "rotate": False, "gptq": True}
DEFAULTS: dict[str, tuple[str, ...]] = {
    "w8a8-int8": ("rotate", "gptq"),
    "w8a8-fp8": ("gptq",),
    "w4a16-int4": ("rotate", "gptq"),
    "w4a8-fp": ("rotate", "gptq"),
    # block schemes (MX / NVFP4): their per-block scales already absorb outliers; an online Hadamard
    # did not help them (issue #12: 0.927 / 0.940 embedding cosine for MXFP4 / NVFP4); GPTQ does
    "mxfp8": ("gptq",),
    "mxfp6": ("gptq",),
    "mxfp4": ("gptq",),
    "mxint8": ("gptq",),
    "nvfp4": ("gptq",),
}
QUANTIZE_METHODS = ("auto", "rtn")


@dataclass
class MethodPlan:
    on: dict[str, bool]
    why: dict[str, str]
    skipped: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, method: str) -> bool:
        return self.on[method]

    def to_json(self) -> dict[str, Any]:
        return {"methods": {m: self.why[m] for m in METHODS}, "skipped": dict(self.skipped)}


def available_methods() -> tuple[str, ...]:
    """The methods this build has: gptq comes with the second-order solver (`passes/gptq.py`)."""
    has_gptq = importlib.util.find_spec("fxforge.passes.gptq") is not None
    return tuple(m for m in METHODS if m != "gptq" or has_gptq)


def resolve_methods(options: dict[str, Any], calibrated: bool, available: tuple[str, ...] | None = None) -> MethodPlan:
    """One decision per method from the pass options (see the module docstring); `calibrated`: whether
    calibration inputs were given. `available`: methods this build has (default `available_methods()`)."""
    available = available_methods() if available is None else available
    scheme = options.get("quantize.scheme")
    auto = (options.get("quantize.method") or "auto") == "auto"
    defaults = DEFAULTS.get(scheme, ()) if (auto and calibrated) else ()
    on, why, skipped = {}, {}, {}
    for m in METHODS:
        forced = options.get(OPTION_KEYS[m])
        want = (m in defaults) if forced is None else bool(forced)
        reason = ("asked for" if forced else "switched off") if forced is not None else (
            f"default for {scheme}" if want else ("quantize_method='rtn'" if not auto else
                                                  "no calibration data" if not calibrated else f"not a default for {scheme}"))
        if want and NEEDS_CALIBRATION[m] and not calibrated:
            want, reason = False, "skipped: needs calibration data (pass calibration=[...])"
            skipped[m] = "needs calibration data"
        elif want and m not in available:
            want, reason = False, "skipped: not available in this build"
            skipped[m] = "not available"
        if not calibrated and forced is None and auto and m in DEFAULTS.get(scheme, ()):
            skipped.setdefault(m, "default with calibration data; none given")
        on[m], why[m] = want, ("on: " if want else "off: ") + reason
    return MethodPlan(on, why, skipped)


def quant_targets(graph: Graph, options: dict[str, Any]) -> list[tuple[Op, str, str]]:
    """(linear op, layer name, scheme) for each linear the quantize pass will rewrite."""
    scheme, overrides = options.get("quantize.scheme"), options.get("quantize.overrides") or {}
    tied = embedding_tables(graph)
    out = []
    for op in graph.find("linear"):
        layer = site_name(graph, op)
        if not layer or skip_reason(graph, op, tied) is not None:
            continue
        chosen = choose_by_pattern(layer, scheme, overrides)
        if chosen is not None:
            out.append((op, layer, chosen))
    return out


def method_targets(method: str, graph: Graph, options: dict[str, Any], calibrated: bool) -> list[tuple[Op, str, str]]:
    """The `quant_targets` whose own scheme's method plan turns `method` on: a compile that mixes schemes
    (per-layer overrides, a budget's plan) runs each scheme's methods on its layers only."""
    plans: dict[str, MethodPlan] = {}
    out = []
    for op, layer, scheme in quant_targets(graph, options):
        if scheme not in plans:
            plans[scheme] = resolve_methods({**options, "quantize.scheme": scheme}, calibrated)
        if plans[scheme][method]:
            out.append((op, layer, scheme))
    return out


def method_report(records: list[Any]) -> dict[str, dict[str, float]]:
    """Per quantized layer, its error after each step of a compile's trace (pass records with `.name`
    and `.stats`): "rtn" (round to nearest on the original layer, as rotate/smooth measured it), then
    "rotate" and "smooth" (round to nearest after that method, where it ran), and "final" (the quantize
    pass's error of the layer as stored: GPTQ and LoRC included). All on the calibration rows."""
    out: dict[str, dict[str, float]] = {}
    for rec in records:
        layers = rec.stats.get("layers") or {}
        if rec.name in ("rotate", "smooth"):
            for layer, info in layers.items():
                if "rtn_error_after" in info:
                    row = out.setdefault(layer, {})
                    row.setdefault("rtn", info["rtn_error_before"])
                    row[rec.name] = info["rtn_error_after"]
        elif rec.name == "quantize":
            for layer, info in layers.items():
                row = out.setdefault(layer, {})
                row.setdefault("rtn", info.get("rtn_error", info["rel_error"]))
                row["final"] = info["rel_error"]
    return out
