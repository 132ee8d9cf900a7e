"""The `quantize` pass: rewrite `linear`s with a 2-D const weight into `qlinear`s with encoded weights.

Options (`ctx.option("quantize.<name>")`; the pass is off unless "quantize.scheme" or an override names a scheme;
`fxforge.pipeline` fills them from `CompileConfig.quantize*` and `lorc_rank`):
    "quantize.scheme"      scheme name: w8a8-int8 | w8a8-fp8 | w4a16-int4 | w4a8-fp, or a block scheme
                           mxfp8 | mxfp6 | mxfp4 | mxint8 | nvfp4 (`#blockfp` weights, activations per
                           block; an input dim that is not a multiple of the block: ConfigError) (None/absent: off)
    "quantize.overrides"   {fnmatch pattern on the layer name (weight name without `.weight`): scheme or
                           None}; the first matching pattern wins, user patterns before the defaults
    "quantize.group"       group size along the input dim for the grouped schemes (default: the
                           scheme's, 128 for w4a16-int4, 32 for w4a8-fp)
    "quantize.pow2_round"  w4a8-fp only, "floor" (default) or "ceil": see `fxforge.ir.lowp_ops`
    "quantize.lorc_rank"   LoRC rank (0: off), see `fxforge.passes.lorc`
    "quantize.gptq"        GPTQ rounding (`fxforge.passes.gptq`) instead of round-to-nearest; decided with
                           the other methods by `quant_methods.resolve_methods` (on by default with calibration)
Errors are measured on `ctx.calibration` (a list of input lists for the graph) when it is given.

Decisions:
- Stay high precision by default: `lm_head` (patterns "lm_head", "*.lm_head"), any linear whose weight
  is also an embedding's table (tied: same weight name, or same storage), linears whose weight is
  not a 2-D const, and layers whose input dim cannot be packed (odd, for 4-bit formats). Skips are listed in
  `ctx.stats["skipped"]` with the reason. A `moe` op's experts are encoded by `moe_quant.py` (w4a16-int4 only; its
  router stays high precision), their figures in `ctx.stats["moe_experts"]`.
- The encoded weight is a new table entry `<weight name>.q` (LoRC factors `<layer>.lorc_u` /
  `.lorc_v`, fp16); the original weight leaves the table once no `const` names it.
- The requested group always holds (never a gcd or another quiet substitute): a group that does not
  divide the input dim leaves the last group partial (zero-padded, see `fxforge.ir.lowp_ops`), and a
  group wider than the row is one group per row. Each layer's statistics say "group" (the group used),
  "groups" (per row) and "padded" (zero columns in the last group).
- NaN or inf weights are refused before anything changes (InputError naming the layer and the fix):
  quantizing them would give finite or all-NaN groups that no longer say where they came from.
- Error per layer: ||y_q - y|| / ||y|| of the layer alone (float input, float vs quantized layer) on
  the calibration activations that reach it (`calibrate`), or, without calibration data, on 256
  rows of N(0, 1) inputs (`error_data` says which). With calibration data the summary also has the
  end-to-end relative error of the graph's first output.
- GPTQ runs sequentially (`hessian.run_stages`): each layer's H is collected on the graph as already
  quantized above it. Each GPTQ layer also reports `rtn_rel_error` (the same layer rounded to nearest)
  so the gain is visible per layer; `method` says which rounding the layer got and `note` why not GPTQ.
- Bytes per layer: before as fp16 (numel * 2) and as stored (fp32 here), after = codes + scales
  (+ zero points / shifts) + LoRC factors.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection
from typing import Any

import torch
import torch.nn.functional as F

from fxforge.errors import ConfigError, InputError
from fxforge.ir.evaluate import evaluate
from fxforge.ir.graph import Graph, Op, Weight
from fxforge.ir.lowp_ops import decode_weight, encode_weight, get_scheme, group_count, qlinear_ref
from fxforge.passes.calibrate import calibrate, site_name
from fxforge.passes.gptq import gptq_encode
from fxforge.passes.hessian import Hessian, run_stages
from fxforge.passes.linear_sites import RANDOM_ROWS, choose_by_pattern, embedding_tables, free_name, relative_error, skip_reason
from fxforge.passes.lorc import lorc_factors
from fxforge.passes.manager import PassContext
from fxforge.passes.moe_quant import quantize_moe
from fxforge.passes.quant_methods import method_targets


def _check_finite(graph: Graph, op: Op, layer: str) -> None:
    name = op.operands[1].producer.attrs["weight"]
    w = graph.weight(name).data
    finite = torch.isfinite(w)
    if not bool(finite.all()):
        where = [int(i) for i in (~finite).nonzero()[0]]
        raise InputError(f"layer {layer!r}: weight {name!r} has {int(torch.isnan(w).sum())} NaN and "
                         f"{int(torch.isinf(w).sum())} inf values (first at {where}); quantizing would hide them. "
                         f"Fix the weights, or keep the layer high precision: quantize_overrides={{{layer!r}: None}}")


def quantize_graph(graph: Graph, scheme: str | None, overrides: dict[str, str | None] | None = None,
                   group: int | None = None, lorc_rank: int = 0, calibration: list | None = None,
                   pow2_round: str = "floor", gptq: bool | None = None,
                   gptq_schemes: Collection[str] | None = None) -> dict[str, Any]:
    """Rewrite the graph's linears in place; returns the statistics (see the module docstring).
    `gptq_schemes`: the schemes whose layers GPTQ rounds (None: all); the others round to nearest."""
    for s in {scheme, *(overrides or {}).values()} - {None}:
        get_scheme(s)  # a typo fails before anything changes
    tied = embedding_tables(graph)
    plan: list[tuple[Op, str, str]] = []
    skipped: dict[str, str] = {}
    for op in graph.find("linear"):
        layer = site_name(graph, op)
        label = layer or f"%{op.result.name}"
        reason = skip_reason(graph, op, tied)
        chosen = choose_by_pattern(layer, scheme, overrides) if layer else None
        if reason is None and chosen is None:
            user = any(fnmatch.fnmatchcase(layer, p) for p in (overrides or {}))
            reason = "kept high precision (" + ("quantize_overrides" if user else "default: lm_head stays high precision") + ")"
        if reason is None:
            sc = get_scheme(chosen)
            in_f = graph.weight(op.operands[1].producer.attrs["weight"]).data.shape[1]
            if in_f % 2 and sc.weight_format in ("i4", "f4e2m1"):
                reason = f"input dim {in_f} is odd: 4-bit codes pack two per byte"
            if sc.block and in_f % sc.block:
                raise ConfigError(f"layer {layer!r}: input dim {in_f} is not a multiple of {chosen}'s block size "
                                  f"{sc.block}; keep it high precision (quantize_overrides={{{layer!r}: None}}) "
                                  f"or choose a scheme with groups (e.g. w4a8-fp)")
            _check_finite(graph, op, layer)
        if reason is not None:
            skipped[label] = reason
            continue
        plan.append((op, layer, chosen))

    moe_experts: dict[str, dict[str, Any]] = {}
    for op in graph.find("moe"):  # the experts: weight-only int4, else said why not (`moe_quant.py`)
        site, got = quantize_moe(graph, op, scheme, overrides, group)
        if isinstance(got, str):
            skipped[site] = got
        else:
            moe_experts[site] = got
    calib = calibrate(graph, calibration, sites=[p[1] for p in plan]) if calibration else None
    layers: dict[str, dict[str, Any]] = {}
    wants = (lambda _: True) if gptq_schemes is None else set(gptq_schemes).__contains__
    use_gptq = (bool(calib) if gptq is None else gptq and bool(calib)) and any(wants(c) for *_, c in plan)
    by_op = {id(op): (layer, chosen) for op, layer, chosen in plan}

    def rewrite(op: Op, hessian: Hessian | None = None) -> None:
        layer, chosen = by_op[id(op)]
        layers[layer] = _rewrite(graph, op, layer, chosen, group, lorc_rank, pow2_round,
                                 calib.sites.get(layer) if calib else None, hessian if wants(chosen) else None)

    if use_gptq:
        run_stages(graph, calibration, [p[0] for p in plan], rewrite)
    else:
        for op, _, _ in plan:
            rewrite(op)
    stats: dict[str, Any] = {"scheme": scheme, "layers": layers, "skipped": skipped, "moe_experts": moe_experts,
                             "error_data": "calibration" if calib else f"random N(0,1), {RANDOM_ROWS} rows",
                             "method": "gptq" if use_gptq else "rtn"}
    if gptq and not calib:
        stats["note"] = "gptq skipped: it needs calibration data (give calibration=[...])"
    errors = [v["rel_error"] for v in layers.values()]
    summary: dict[str, Any] = {
        "layers_quantized": len(layers),
        "layers_skipped": len(skipped),
        "bytes_fp16_before": sum(v["bytes_fp16"] for v in layers.values()),
        "bytes_stored_before": sum(v["bytes_stored"] for v in layers.values()),
        "bytes_after": sum(v["bytes_after"] for v in layers.values()),
        "mean_rel_error": sum(errors) / len(errors) if errors else 0.0,
        "max_rel_error": max(errors, default=0.0),
        "graph_weight_bytes": sum(w.nbytes() for w in graph.weights.values()),
    }
    if calib is not None:
        new = [evaluate(graph, list(args))[0] for args in calibration]
        ref = [o[0] for o in calib.outputs]
        summary["output_rel_error"] = relative_error(torch.cat([t.flatten() for t in new]).float(),
                                                     torch.cat([t.flatten() for t in ref]).float())
    stats["summary"] = summary
    return stats


def _rewrite(graph: Graph, op: Op, layer: str, scheme: str, group: int | None, lorc_rank: int,
             pow2_round: str, site, hessian: Hessian | None = None) -> dict[str, Any]:
    sc = get_scheme(scheme)
    const = op.operands[1].producer
    wname = const.attrs["weight"]
    w = graph.weight(wname).data
    group = group if sc.group and not sc.block else None  # a block scheme's block is fixed
    rtn = encode_weight(w, scheme, group, pow2_round=pow2_round)
    encoded, method = rtn, {"method": "rtn"}
    if hessian is not None:
        encoded, method = gptq_encode(w, scheme, group, hessian, pow2_round=pow2_round)
    qname = graph.add_weight(free_name(graph, f"{wname}.q"), encoded)
    w_hat = decode_weight(encoded)
    new_operands = [op.operands[0], graph.insert_before(op, "const", [], {"weight": qname}, name=const.result.name).result]
    if len(op.operands) == 3:
        new_operands.append(op.operands[2])
    rank = min(int(lorc_rank or 0), *w.shape)
    lorc_bytes = 0
    u = v = None
    if rank > 0:
        u, v = lorc_factors(w, w_hat, rank)
        for part, t in (("lorc_u", u), ("lorc_v", v)):
            pname = graph.add_weight(free_name(graph, f"{layer}.{part}"), Weight(t))
            new_operands.append(graph.insert_before(op, "const", [], {"weight": pname}, name=part).result)
            lorc_bytes += t.numel() * t.element_size()
    g = getattr(encoded.encoding, "group", sc.block)
    attrs = {"scheme": scheme, "act_format": sc.act_format, "group": g, "lorc_rank": rank}
    old_name = op.result.name
    q = graph.insert_before(op, "qlinear", new_operands, attrs)
    graph.replace_op(op, [q.result])
    graph.rename_value(q.result, old_name)  # the rewritten layer keeps its value name
    if not const.result.uses and not any(const.result is o for o in graph.outputs):
        graph.erase(const)
    if not any(o.opcode == "const" and o.attrs["weight"] == wname for o in graph.ops):
        del graph.weights[wname]

    if site is not None and site.samples:
        x, data = site.sample_matrix(), "calibration"
    else:
        x = torch.randn(RANDOM_ROWS, w.shape[1], generator=torch.Generator().manual_seed(0))
        data = "random"
    bias = new_operands[2] if len(new_operands) in (3, 5) else None
    b = None  # a bias that is not a const is left out of both sides of the comparison
    if bias is not None and bias.producer is not None and bias.producer.opcode == "const":
        b = graph.weight(bias.producer.attrs["weight"]).data.float()
    y = F.linear(x, w.float(), b)
    extra = ([b] if b is not None else []) + ([u, v] if u is not None else [])
    rel = relative_error(qlinear_ref(x, w_hat, *extra, **attrs), y)
    if encoded is not rtn:
        method["rtn_rel_error"] = relative_error(qlinear_ref(x, decode_weight(rtn), *extra, **attrs), y)
    return {
        **method,
        "scheme": scheme,
        "group": g,
        "groups": group_count(w.shape[1], g),
        "padded": group_count(w.shape[1], g) * g - w.shape[1] if g else 0,
        "lorc_rank": rank,
        "rel_error": rel,
        "weight_rel_error": relative_error(w_hat, w.float()),
        "error_data": data,
        "bytes_fp16": w.numel() * 2,
        "bytes_stored": w.numel() * w.element_size(),
        "bytes_after": encoded.nbytes() + lorc_bytes,
    }





class Quantize:
    """Off unless "quantize.scheme" (or an override) names a scheme; stats: see `quantize_graph`."""

    name = "quantize"

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        scheme = ctx.option("quantize.scheme")
        overrides = ctx.option("quantize.overrides") or {}
        if scheme is None and not any(v is not None for v in overrides.values()):
            ctx.stats["enabled"] = False
            return graph
        calibrated = ctx.calibration is not None
        gptq_schemes = {c for *_, c in method_targets("gptq", graph, ctx.options, calibrated)}
        ctx.stats.update(quantize_graph(
            graph, scheme, overrides, group=ctx.option("quantize.group"), lorc_rank=ctx.option("quantize.lorc_rank", 0) or 0,
            calibration=ctx.calibration, pow2_round=ctx.option("quantize.pow2_round", "floor"),
            gptq=bool(gptq_schemes), gptq_schemes=gptq_schemes))
        return graph
