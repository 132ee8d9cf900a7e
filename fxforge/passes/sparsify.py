"""The `sparsify` pass: N:M pruning of `linear` weights into `#nm` weights, alone or with quantization.

Options (`ctx.option("sparsify.<name>")`, from `CompileConfig.sparsity*` and `solver_target` through
`fxforge.pipeline.PASS_TABLE`; the pass is off unless "sparsify.pattern" or an override names a pattern):
    "sparsify.pattern"    "N:M" for every linear (any N < M <= 16), None: off
    "sparsify.overrides"  {fnmatch pattern on the layer name: "N:M" or None}, first match wins, user
                          patterns before the defaults (lm_head stays dense, as in `quantize`)
    "sparsify.method"     "magnitude" (|w|), "wanda" (|w|·‖x_j‖), "sparsegpt" (second-order: mask
                          from w²/[H⁻¹]_jj per block, OBS update of the kept weights); None: the best
                          the calibration allows (sparsegpt with calibration, else magnitude)
    "sparsify.target"     "reference" (default) or "layer": what the solver reconstructs (`gptq.solve_weight`)
    "sparsify.refine"     steps of block-output reconstruction after pruning (`sparsify_refine.py`: the
                          kept values refit, masks fixed, to the dense blocks' outputs); None: DEFAULT_STEPS
                          with calibration, 0 without; 0: off
    "quantize.scheme", "quantize.overrides", "quantize.group", "quantize.pow2_round" (and the methods
        of `quant_methods.resolve_methods` for GPTQ): composition. A layer that also gets a scheme becomes
        a `qlinear` of a quantized `#nm` weight (the `quantize` pass then leaves it alone). With
        calibration and refinement on (the default): pruned with 16-bit kept values, refined with the
        other layers, then its kept values quantized by GPTQ with the mask fixed, sequentially
        (`sparsify_quant.py`). With refinement off: pruned and quantized in one pass of the solver
        (prune, then quantize the survivors with error compensation). Without calibration: kept values
        rounded to nearest.
H and errors are measured on `ctx.calibration`.

Decisions:
- Never pruned by default: lm_head, a linear tied to an embedding table, a weight that is not a plain
  2-D const, a layer narrower than M (listed in `skipped` with the reason).
- in_features not a multiple of M: the last in % M columns stay dense (`dense_tail` in the layer's
  stats, and a note).
- Sequential with calibration (`hessian.run_stages`): each stage's H (and Wanda's ‖x_j‖² = H_jj) is
  collected on the graph as already pruned above it: a layer learns to live with its pruned inputs.
- Quantized groups: see `sparsify_quant.py` (one scale per row when groups do not map onto N:M blocks).
- Error per layer: ||y' - y|| / ||y|| of the layer alone on the calibration rows reaching it (dense
  float layer as reference), or on 256 random rows without calibration.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from fxforge.errors import ConfigError
from fxforge.ir.dtypes import DType
from fxforge.ir.graph import Graph, Op, Weight
from fxforge.ir.lowp_ops import get_scheme, qlinear_ref
from fxforge.ir.nm import SPARSITY_METHODS, encode_nm, encode_nm_quantized, nm_pattern, sparsity_options_problem
from fxforge.ir.parser import parse_graph
from fxforge.ir.printer import print_graph
from fxforge.passes.calibrate import calibrate, site_name
from fxforge.passes.gptq import solve_weight
from fxforge.passes.hessian import Hessian, run_stages
from fxforge.passes.linear_sites import RANDOM_ROWS, choose_by_pattern, embedding_tables, free_name, relative_error, skip_reason
from fxforge.passes.manager import PassContext
from fxforge.passes.sparsify_quant import encode_rtn, quant_group, quantize_survivors
from fxforge.passes.sparsify_refine import DEFAULT_STEPS, refine

METHODS = SPARSITY_METHODS
NEEDS_CALIBRATION = ("wanda", "sparsegpt")


def parse_nm(spec: str) -> tuple[int, int]:
    """"2:4" -> (2, 4); ConfigError for malformed text, N >= M, N < 1 or M > 16."""
    pair = nm_pattern(spec)
    if pair is None:
        raise ConfigError(sparsity_options_problem(spec, None, None))
    return pair


def check_options(sparsity: str | None, overrides: dict[str, str | None] | None, method: str | None) -> None:
    """Fail early (ConfigError) on a bad pattern or method, before anything changes."""
    problem = sparsity_options_problem(sparsity, overrides, method)
    if problem:
        raise ConfigError(problem)

def _mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the n largest scores of every m-block (tail columns kept)."""
    out_f, in_f = score.shape
    full = (in_f // m) * m
    blocks = score[:, :full].reshape(out_f, -1, m)
    drop = torch.topk(blocks, m - n, dim=-1, largest=False).indices
    kept = torch.ones_like(blocks, dtype=torch.bool).scatter_(-1, drop, False).reshape(out_f, full)
    return torch.cat([kept, torch.ones(out_f, in_f - full, dtype=torch.bool)], dim=1)


class _Layer:
    """One planned layer: where it is, its pattern and scheme, and how it was treated."""

    def __init__(self, op: Op, name: str, n: int, m: int, scheme: str | None) -> None:
        self.op, self.name, self.n, self.m, self.scheme = op, name, n, m, scheme


def _select_mask(w: torch.Tensor, method: str, hessian: Hessian | None, n: int, m: int) -> torch.Tensor | None:
    """The kept mask of magnitude / Wanda (‖x_j‖² = H_jj), None for SparseGPT (the solver selects)."""
    if method == "sparsegpt":
        return None
    score = w.abs().float()
    if method == "wanda":
        score = score * torch.diagonal(hessian.h).sqrt().float()
    return _mask(score, n, m)


def _encode(w: torch.Tensor, layer: _Layer, method: str, hessian: Hessian | None,
            opts: dict[str, Any]) -> tuple[Weight, str, dict[str, Any]]:
    """The encoded weight, the method actually used, and report fields."""
    n, m = layer.n, layer.m
    info: dict[str, Any] = {}
    g_c = g_o = 0
    if layer.scheme:
        g_c, g_o, note = quant_group(layer.scheme, opts.get("quantize_group"), w.shape[1], n, m)
        if note:
            info["note"] = note
    if hessian is None and method != "magnitude":
        method = "magnitude"
    mask = _select_mask(w, method, hessian, n, m)
    use_solver = hessian is not None and (method == "sparsegpt" or (layer.scheme and opts.get("gptq") is not False))
    solved = None
    if use_solver:
        solved = solve_weight(w, hessian, scheme=layer.scheme, group=g_o, nm=(n, m) if mask is None else None,
                              mask=mask, pow2_round=opts.get("quantize_pow2_round") or "floor")
    if solved is None:
        if use_solver:
            info["note"] = "calibration inputs are all zero: pruned by magnitude, rounded to nearest"
            method = "magnitude"
        mask = mask if mask is not None and method != "magnitude" else _mask(w.abs().float(), n, m)
        if not layer.scheme:
            return encode_nm(w * mask, mask, n, m, DType.from_torch(w.dtype)), method, info
        return encode_rtn(w, mask, n, m, layer.scheme, g_c, opts), method, info
    info.update({k: solved.info[k] for k in ("damp", "tokens")})
    if "note" in solved.info:
        info["note"] = "; ".join(filter(None, [info.get("note"), solved.info["note"]]))
    if layer.scheme:
        info["quantized_with"] = "gptq"
    kept = solved.kept if solved.kept is not None else mask
    if layer.scheme:
        q = solved.quantizer
        return encode_nm_quantized(q.code_matrix(), kept, n, m, layer.scheme, g_c, q.merged_params()), method, info
    return encode_nm(solved.weight.to(w.dtype), kept, n, m, DType.from_torch(w.dtype)), method, info


def _swap(graph: Graph, op: Op, encoded: Weight, scheme: str | None) -> tuple[Op, torch.Tensor | None]:
    """Put `encoded` in place of the linear / qlinear `op`'s weight (a `qlinear` when `scheme`); the new op
    and the layer's bias (None without one)."""
    const = op.operands[1].producer
    wname = const.attrs["weight"]
    if wname.endswith(".nm"):  # an #nm weight of ours re-encoded (quantized after refinement): same name
        del graph.weights[wname]
        nname = graph.add_weight(wname, encoded)
    else:
        nname = graph.add_weight(free_name(graph, f"{wname}.nm"), encoded)
    new_const = graph.insert_before(op, "const", [], {"weight": nname}, name=const.result.name).result
    operands = [op.operands[0], new_const, *op.operands[2:]]
    if scheme:
        sc = get_scheme(scheme)
        attrs = {"scheme": scheme, "act_format": sc.act_format, "group": encoded.encoding.group, "lorc_rank": 0}
        new = graph.insert_before(op, "qlinear", operands, attrs)
    else:
        new = graph.insert_before(op, "linear", operands, dict(op.attrs))
    old_name = op.result.name
    graph.replace_op(op, [new.result])
    graph.rename_value(new.result, old_name)
    if not const.result.uses and not any(const.result is o for o in graph.outputs):
        graph.erase(const)
    if nname != wname and not any(o.opcode == "const" and o.attrs["weight"] == wname for o in graph.ops):
        del graph.weights[wname]
    bias = None
    if len(operands) == 3 and operands[2].producer is not None and operands[2].producer.opcode == "const":
        bias = graph.weight(operands[2].producer.attrs["weight"]).data.float()
    return new, bias


def _rewrite(graph: Graph, layer: _Layer, method: str, hessian: Hessian | None, site, opts: dict[str, Any]) -> dict[str, Any]:
    w = graph.weight(layer.op.operands[1].producer.attrs["weight"]).data
    encoded, used, info = _encode(w, layer, method, hessian, opts)
    new, bias = _swap(graph, layer.op, encoded, layer.scheme)
    return {"pattern": f"{layer.n}:{layer.m}", "method": used, "scheme": layer.scheme,
            **_errors(w, encoded, new, bias, site), "dense_tail": w.shape[1] % layer.m,
            "bytes_fp16": w.numel() * 2, "bytes_after": encoded.nbytes(), **info}


def _errors(w: torch.Tensor, encoded: Weight, new: Op, bias, site) -> dict[str, Any]:
    from fxforge.ir.nm import decode_nm

    if site is not None and site.samples:
        x, data = site.sample_matrix(), "calibration"
    else:
        x = torch.randn(RANDOM_ROWS, w.shape[1], generator=torch.Generator().manual_seed(0))
        data = "random"
    y = F.linear(x, w.float(), bias)
    w_new = decode_nm(encoded).float()
    if new.opcode == "qlinear":
        extra = [bias] if bias is not None else []
        y_new = qlinear_ref(x, w_new, *extra, **new.attrs)
    else:
        y_new = F.linear(x, w_new, bias)
    return {"rel_error": relative_error(y_new, y), "weight_rel_error": relative_error(w_new, w.float()), "error_data": data}


def _plan(graph: Graph, opts: dict[str, Any]) -> tuple[list[_Layer], dict[str, str]]:
    tied = embedding_tables(graph)
    plan, skipped = [], {}
    for op in graph.find("linear"):
        layer = site_name(graph, op)
        label = layer or f"%{op.result.name}"
        reason = skip_reason(graph, op, tied)
        spec = choose_by_pattern(layer, opts.get("pattern"), opts.get("overrides")) if layer else None
        if reason is None and spec is None:
            reason = "kept dense (sparsity_overrides or default: lm_head stays dense)"
        if reason is not None:
            skipped[label] = reason
            continue
        n, m = parse_nm(spec)
        in_f = graph.weight(op.operands[1].producer.attrs["weight"]).data.shape[1]
        if in_f < m:
            skipped[label] = f"input dim {in_f} is narrower than one {n}:{m} block"
            continue
        scheme = choose_by_pattern(layer, opts.get("quantize"), opts.get("quantize_overrides"))
        if scheme and get_scheme(scheme).weight_format in ("i4", "f4e2m1") and ((in_f // m) * n + in_f % m) % 2:
            skipped[label] = f"{n}:{m} of {in_f} inputs leaves an odd number of kept values: 4-bit codes pack two per byte"
            continue
        plan.append(_Layer(op, layer, n, m, scheme))
    return plan, skipped


def sparsify_graph(graph: Graph, opts: dict[str, Any]) -> dict[str, Any]:
    """Prune (and, composed, quantize) the graph's linears in place; returns the statistics."""
    check_options(opts.get("pattern"), opts.get("overrides"), opts.get("method"))
    for s in {opts.get("quantize"), *(opts.get("quantize_overrides") or {}).values()} - {None}:
        get_scheme(s)
    calibration = opts.get("calibration")
    method = opts.get("method") or ("sparsegpt" if calibration else "magnitude")
    stats: dict[str, Any] = {"method": method}
    if method in NEEDS_CALIBRATION and not calibration:
        stats["note"] = f"sparsity_method={method!r} needs calibration data: pruned by magnitude instead"
        method = stats["method"] = "magnitude"
    plan, skipped = _plan(graph, opts)
    calib = calibrate(graph, calibration, sites=[p.name for p in plan]) if calibration else None
    layers: dict[str, dict[str, Any]] = {}
    by_op = {id(p.op): p for p in plan}

    def rewrite(op: Op, hessian: Hessian | None = None) -> None:
        layer = by_op[id(op)]
        layers[layer.name] = _rewrite(graph, layer, method, hessian, calib.sites.get(layer.name) if calib else None, opts)

    steps = refine_steps(opts.get("refine"), calibration)
    # composed layers with refinement: prune now, quantize the refined kept values after (`sparsify_quant`)
    later = {p.name: p.scheme for p in plan if p.scheme} if steps else {}
    originals = {p.name: graph.weight(p.op.operands[1].producer.attrs["weight"]).data for p in plan if p.name in later}
    for p in plan:
        p.scheme = None if p.name in later else p.scheme
    needs_h = calibration and (method != "magnitude" or (opts.get("gptq") is not False and any(p.scheme for p in plan)))
    dense = parse_graph(print_graph(graph), dict(graph.weights)) if calibration and (needs_h or steps) else None
    target = opts.get("target") or "reference"
    if target not in ("reference", "layer"):
        raise ConfigError(f"solver_target={target!r} must be 'reference' or 'layer'")
    if needs_h:
        stats["solver_target"] = target
        run_stages(graph, calibration, [p.op for p in plan], rewrite, reference=dense if target == "reference" else None)
    else:
        for p in plan:
            rewrite(p.op)
    if steps and layers:
        stats["refine"] = refine(graph, dense, calibration, _pruned_ops(graph, layers), steps)
    if later:
        # the solver aims at the refined sparse model's layer outputs (aiming at dense's would undo the refit)
        refined = parse_graph(print_graph(graph), dict(graph.weights)) if target == "reference" else None
        _quantize_later(graph, layers, later, originals, refined, calib, opts)
    errors = [v["rel_error"] for v in layers.values()]
    tails = {k: v["dense_tail"] for k, v in layers.items() if v["dense_tail"]}
    if tails:
        stats["dense_tail_note"] = f"{len(tails)} layer(s) have in_features not a multiple of M: their last columns stay dense {tails}"
    stats.update({"layers": layers, "skipped": skipped, "error_data": "calibration" if calib else f"random N(0,1), {RANDOM_ROWS} rows"})
    stats["summary"] = {
        "layers_pruned": len(layers), "layers_skipped": len(skipped),
        "bytes_fp16_before": sum(v["bytes_fp16"] for v in layers.values()),
        "bytes_after": sum(v["bytes_after"] for v in layers.values()),
        "mean_rel_error": sum(errors) / len(errors) if errors else 0.0, "max_rel_error": max(errors, default=0.0),
    }
    return stats


def _quantize_later(graph: Graph, layers: dict[str, dict[str, Any]], schemes: dict[str, str], originals: dict[str, torch.Tensor],
                    reference: Graph | None, calib, opts: dict[str, Any]) -> None:
    """Quantize the (refined) kept values of the composed layers, sequentially; their report fields updated
    (errors against the dense layer, bytes, how they were quantized)."""
    def swap(name: str, op: Op, encoded: Weight, info: dict[str, Any]) -> None:
        new, bias = _swap(graph, op, encoded, schemes[name])
        row = layers[name]
        site = calib.sites.get(name) if calib else None
        row.update({"scheme": schemes[name], **_errors(originals[name], encoded, new, bias, site),
                    "bytes_after": encoded.nbytes(), "quantized_after_refine": True, **info})

    quantize_survivors(graph, opts["calibration"], _pruned_ops(graph, layers), schemes, reference, opts, swap)


def refine_steps(option: Any, calibration: Any) -> int:
    """Steps of block-output reconstruction: the option (an int >= 0), or by default DEFAULT_STEPS when
    calibration is given (0 without: there is nothing to fit)."""
    if option is None:
        return DEFAULT_STEPS if calibration else 0
    if isinstance(option, bool) or not isinstance(option, int) or option < 0:
        raise ConfigError(f"sparsity_refine={option!r} must be an int >= 0 (steps of block-output refitting; 0: off)")
    return option if calibration else 0


def _pruned_ops(graph: Graph, layers: dict[str, Any]) -> dict[str, Op]:
    """The rewritten linear / qlinear of each pruned layer, by layer name."""
    out = {}
    for op in graph.ops:
        const = op.operands[1].producer if op.opcode in ("linear", "qlinear") and len(op.operands) > 1 else None
        if const is not None and const.opcode == "const":
            name = const.attrs["weight"].removesuffix(".nm").removesuffix(".weight")
            if name in layers:
                out[name] = op
    return out


# this pass's options ("sparsify.<name>") and the quantize options it composes with
OPTION_KEYS = {"pattern": "sparsify.pattern", "overrides": "sparsify.overrides", "method": "sparsify.method",
               "target": "sparsify.target", "refine": "sparsify.refine", "quantize": "quantize.scheme", "quantize_overrides": "quantize.overrides",
               "quantize_group": "quantize.group", "quantize_pow2_round": "quantize.pow2_round"}


class Sparsify:
    """Off unless "sparsify.pattern" (or an override) names an N:M pattern; stats: see `sparsify_graph`."""

    name = "sparsify"

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        from fxforge.passes.quant_methods import resolve_methods

        opts = {k: ctx.option(key) for k, key in OPTION_KEYS.items()}
        if opts["pattern"] is None and not any(v is not None for v in (opts["overrides"] or {}).values()):
            ctx.stats["enabled"] = False
            return graph
        opts["calibration"] = ctx.calibration
        # composed layers: GPTQ on the kept values when the quantize methods say so (on with calibration)
        opts["gptq"] = resolve_methods({**ctx.options, "quantize.scheme": opts["quantize"] or "w8a8-int8"},
                                       ctx.calibration is not None)["gptq"]
        ctx.stats.update(sparsify_graph(graph, opts))
        return graph
