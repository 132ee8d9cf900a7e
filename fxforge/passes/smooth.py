"""The `smooth` pass: per-input-channel scales moved from activations into weights before quantization.

For each group of linears that will be quantized and read the same input x (q/k/v share one, gate/up
share one), a scale s [in] makes y = x W^T = (x / s)(W diag(s))^T. The division by s is folded into
the op that produced x, so nothing is added at run time:
    rms_norm(h, g)       g <- g / s
    layer_norm(h, g, b)  g <- g / s, b <- b / s
    mul(a, linear(...))  the linear's output rows (and bias) / s   (SwiGLU: silu(gate) * up -> up_proj)
x must feed only the group's linears; a group whose producer is none of these (o_proj after attention)
is left alone, with the reason in the stats.

The scales (searched per group on the calibration rows, choosing the candidate with the lowest summed
relative output error of the round-to-nearest quantized layers, `qerror.layer_error`; "no smoothing"
is always a candidate, so the pass never makes a group worse on its calibration rows):
- SmoothQuant (schemes that quantize activations): s_j = max|x_j|^a / max|W_:,j|^(1-a), a in ALPHAS;
- AWQ (weight-only schemes): s_j = mean|x_j|^a, normalised by sqrt(max s * min s), a in AWQ_ALPHAS.
Options: "smooth.enabled" (None: the method plan decides, see `quant_methods`), "smooth.alpha" (one
fixed alpha instead of the search); the quantize.* options say which linears. Stats per layer: the method, alpha, producer, `rtn_error_before/after`.
Needs calibration data; without it the pass records that it was skipped.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fxforge.ir.graph import Graph, Op, Value, Weight
from fxforge.ir.lowp_ops import get_scheme
from fxforge.passes.calibrate import calibrate
from fxforge.passes.manager import PassContext
from fxforge.passes.qerror import layer_error, rows_for
from fxforge.passes.quant_methods import method_targets, resolve_methods

ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
AWQ_ALPHAS = tuple(i / 10 for i in range(1, 11))
MIN_SCALE = 1e-5


def _const(v: Value | None) -> str | None:
    p = v.producer if v is not None else None
    return p.attrs["weight"] if p is not None and p.opcode == "const" else None


def _fold_site(graph: Graph, x: Value, group: list[Op]) -> tuple[str, Any] | str:
    """Where 1/s can be folded for input x: ("norm", op) | ("linear", op), or the reason it cannot."""
    ids = {id(o) for o in group}
    if any(id(u) not in ids for u in x.uses) or any(x is o for o in graph.outputs):
        return "input also feeds ops that are not smoothed linears"
    p = x.producer
    if p is None:
        return "input is a graph input"
    if p.opcode in ("rms_norm", "layer_norm") and len(p.operands) >= 2 and all(_const(o) for o in p.operands[1:]):
        return ("norm", p)
    if p.opcode == "mul":
        for v in p.operands:
            lin = v.producer
            if (lin is not None and lin.opcode == "linear" and len(v.uses) == 1 and _const(lin.operands[1])
                    and (len(lin.operands) == 2 or _const(lin.operands[2])) and sum(o is v for o in p.operands) == 1):
                return ("linear", lin)
    return f"no foldable producer ({p.opcode})"


def _candidates(amax_x: Tensor, mean_x: Tensor, w_cat: Tensor, weight_only: bool, alpha: float | None):
    if weight_only:
        base = mean_x.clamp(min=MIN_SCALE)
        for a in ([alpha] if alpha is not None else AWQ_ALPHAS):
            s = base.pow(a)
            yield a, s / (s.max() * s.min()).sqrt()
    else:
        amax_w = w_cat.abs().amax(0).clamp(min=MIN_SCALE)
        for a in ([alpha] if alpha is not None else ALPHAS):
            yield a, (amax_x.clamp(min=MIN_SCALE).pow(a) / amax_w.pow(1 - a)).clamp(min=MIN_SCALE)


def _group_error(x: Tensor, ws: list[Tensor], schemes: list[str], group: int | None, s: Tensor | None) -> float:
    if s is None:
        return sum(layer_error(x, w, sc, group) for w, sc in zip(ws, schemes))
    xs = x / s
    return sum(layer_error(xs, w * s, sc, group, y=x @ w.T) for w, sc in zip(ws, schemes))


def _fold(graph: Graph, site: tuple[str, Op], s: Tensor) -> None:
    kind, op = site
    names = [_const(o) for o in op.operands[1:]]
    for i, name in enumerate(names):
        if name is None:
            continue
        t = graph.weight(name).data
        if kind == "linear" and i == 0:  # the producing linear's weight rows
            new = t.to(torch.float64) / s.to(torch.float64)[:, None]
        else:  # norm weight / bias, or the producing linear's bias
            new = t.to(torch.float64) / s.to(torch.float64)
        graph.weights[name] = Weight(new.to(t.dtype))


def smooth_group(graph: Graph, x: Value, group: list[tuple[Op, str, str]], calib, qgroup: int | None,
                 alpha: float | None) -> dict[str, Any]:
    ops = [g[0] for g in group]
    site = _fold_site(graph, x, ops)
    layer0 = group[0][1]
    stats = calib.sites.get(layer0)
    if isinstance(site, str) or stats is None or not stats.samples:
        return {"smoothed": False, "reason": site if isinstance(site, str) else "no calibration rows"}
    rows = rows_for(stats.sample_matrix())
    names = [_const(op.operands[1]) for op in ops]
    ws = [graph.weight(n).data.float() for n in names]
    schemes = [g[2] for g in group]
    weight_only = all(get_scheme(sc).act_format is None for sc in schemes)
    before = _group_error(rows, ws, schemes, qgroup, None)
    best = (before, None, None)
    for a, s in _candidates(stats.absmax, rows.abs().mean(0), torch.cat(ws), weight_only, alpha):
        err = _group_error(rows, ws, schemes, qgroup, s)
        if err < best[0]:
            best = (err, a, s)
    info = {"method": "awq" if weight_only else "smoothquant", "producer": site[1].opcode,
            "rtn_error_before": before / len(ws), "rtn_error_after": best[0] / len(ws)}
    if best[2] is None:
        return {**info, "smoothed": False, "reason": "no scale lowered the calibration error"}
    s = best[2]
    _fold(graph, site, s)
    for n, w in zip(names, ws):
        t = graph.weight(n).data
        graph.weights[n] = Weight((w.to(torch.float64) * s.to(torch.float64)).to(t.dtype))
    return {**info, "smoothed": True, "alpha": best[1]}


class Smooth:
    """Off unless the method plan turns smoothing on (see `quant_methods.resolve_methods`)."""

    name = "smooth"

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        plan = resolve_methods(ctx.options, bool(ctx.calibration))
        ctx.stats["plan"] = plan.why["smooth"]
        targets = method_targets("smooth", graph, ctx.options, bool(ctx.calibration))
        if not targets:
            ctx.stats["enabled"] = False
            return graph
        calib = calibrate(graph, ctx.calibration, sites=[t[1] for t in targets])
        by_input: dict[int, tuple[Value, list]] = {}
        for t in targets:
            by_input.setdefault(id(t[0].operands[0]), (t[0].operands[0], []))[1].append(t)
        layers: dict[str, dict[str, Any]] = {}
        for x, group in by_input.values():
            info = smooth_group(graph, x, group, calib, ctx.option("quantize.group"), ctx.option("smooth.alpha"))
            for _, layer, _ in group:
                layers[layer] = info
        ctx.stats.update(enabled=True, layers=layers,
                         smoothed=sum(1 for v in layers.values() if v.get("smoothed")))
        return graph
