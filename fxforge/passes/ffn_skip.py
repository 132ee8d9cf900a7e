"""The `ffn_skip` pass: per-token FFN skipping (FFN-SkipLLM) with a gate fitted on calibration data.

Options (`ctx.option("ffn_skip.<name>")`, set from CompileConfig's ffn_skip* fields by
`fxforge.pipeline`; the pass is off unless "ffn_skip.target" is set):
    "target"              target share of FFN token-rows to skip, 0 < x <= 0.9 (of ALL FFN rows: protected
                          blocks and warm-up tokens count as rows that run)
    "gate"                "linear" (default: least-squares predictor of the FFN's relative output size
                          from its own input), "quadratic" (the same on [u, u*u]), "carry" (FFN-SkipLLM's rule: skip when the previous FFN
                          left the stream unchanged) or "oracle" (measurement only: runs every FFN)
    "warmup"              tokens at positions below this always run their FFNs (default 4)
    "protect"             block indices never skipped (default (0, -1): the first and last FFN)
    "mode"                "auto" (default: "mask" in a decode graph, else "compact"), "compact" (gather the kept
                          rows, run the FFN on them, scatter-add: the work skipped is not computed; the row
                          count is data-dependent, a host synchronisation on a GPU) or "mask" (per-row keep
                          flags on the device: the FFN's GEMMs skip the K loop of tiles whose rows are all
                          off, the add is masked; nothing data-dependent, so a decode step stays capturable
                          in a CUDA graph)
    "overrides"           {fnmatch pattern on the block's site, e.g. "model.layers.3.mlp": a fixed share
                          of that block's rows to skip (0: protect it)}; the rest of the budget is
                          allocated across the other blocks
Calibration inputs (`ctx.calibration`) are required: the gate is fitted on them.

What it does: finds the FFN blocks (`ffn_skip_find`), fits the gate per block and calibrates the
thresholds so the share skipped on the calibration data hits the target, spending the skips where
they cost least (`ffn_skip_gate`), and rewrites each gated block into dataflow (`ffn_skip_rewrite`):
gate -> gather kept rows -> FFN on them -> scatter-add into the residual. A `skip_counts` output
carries the run-time counters (`compiled.fxforge_report.ffn_skip`).

Decisions:
- Skipping a row at one block changes the next blocks' inputs, so the share measured on the
  rewritten graph drifts from the one planned on unskipped activations (the carry rule cascades by
  design). The pass re-runs the rewritten graph on the calibration inputs and rescales the planned
  budget until the measured share is within TOLERANCE of the target (at most ITERATIONS runs).
- Gates belong to the model, not to one graph: they are kept in `ctx.shared` by site, and a graph
  that no calibration example reached (the JIT's decode graphs, captured after the calibration run)
  is gated with the gates fitted for the same sites in an earlier graph (`reuse_gates`).
- Compaction is `torch.nonzero` + `index_select`/`index_add_` on the host for every executor (the
  interpret/triton executors run these ops as torch calls between kernels); the FFN's GEMMs then run
  on the kept rows only (M = kept rows). That needs the kept count on the host: a synchronisation.
- Decode graphs (one row per sequence) take the mask form instead (`ffn_skip_rewrite.mask`): a
  decode graph is one with an in-place KV-cache write (`compile_decoder`'s step, whose prefill calls
  then run every row and skip only whole tiles) or whose sequence dim is the static 1 (the JIT's
  decode graphs). Nothing in it is data-dependent (no op tagged DATA_DEPENDENT), which is what
  makes the step capturable; the counters come from the flags, on the device.
"""

from __future__ import annotations

import fnmatch
from typing import Any

import torch

from fxforge.errors import ConfigError
from fxforge.ir.evaluate import evaluate
from fxforge.ir.graph import Graph, Op
from fxforge.ir.skip_ops import WEIGHTED, options_problem
from fxforge.passes import ffn_skip_gate as G
from fxforge.passes.ffn_skip_find import FfnBlock, find_ffn_blocks, find_positions
from fxforge.passes.ffn_skip_rewrite import add_count, add_counts, add_gate, compact, mask
from fxforge.passes.manager import PassContext

TOLERANCE = 0.01
ITERATIONS = 6


def _options(ctx: PassContext) -> dict[str, Any]:
    o = {"target": ctx.option("ffn_skip.target"), "gate": ctx.option("ffn_skip.gate") or "linear",
         "mode": ctx.option("ffn_skip.mode") or "auto",
         "warmup": ctx.option("ffn_skip.warmup", 4), "protect": tuple(ctx.option("ffn_skip.protect", (0, -1)) or ()),
         "overrides": dict(ctx.option("ffn_skip.overrides") or {})}
    problem = options_problem(o["target"], o["gate"], o["warmup"], o["protect"], o["overrides"], o["mode"])
    if problem:
        raise ConfigError(problem)
    return o


def decode_graph(graph: Graph, blocks: list[FfnBlock]) -> bool:
    """A graph that writes a KV cache in place (a decode step) or whose sequence dim is the static 1."""
    u = blocks[0].u
    return any(op.opcode == "cache_write" for op in graph.ops) or (u.type.rank >= 3 and u.type.shape[-2] == 1)


def _form(graph: Graph, blocks: list[FfnBlock], o: dict[str, Any]) -> str:
    if o["mode"] != "auto":
        return o["mode"]
    return "mask" if decode_graph(graph, blocks) else "compact"


def _plan(blocks: list[FfnBlock], o: dict[str, Any]) -> tuple[dict[int, float | None], dict[str, str]]:
    """Block index -> fixed share (an override) or None (allocated); reasons for the ungated ones."""
    n = len(blocks)
    protected = {i % n for i in o["protect"] if -n <= i < n}
    plan: dict[int, float | None] = {}
    why: dict[str, str] = {}
    for i, b in enumerate(blocks):
        fixed = next((float(v) for p, v in o["overrides"].items() if fnmatch.fnmatchcase(b.site, p)), None)
        if fixed == 0.0:
            why[b.site] = "protected (ffn_skip_overrides)"
        elif i in protected and fixed is None:
            why[b.site] = "protected (ffn_skip_protect)"
        elif o["gate"] == "carry" and i == 0:
            why[b.site] = "carry gate: no previous FFN block"
        else:
            plan[i] = fixed
    return plan, why


def _fixed_rows(curve: G.Curve, share: float, n_rows: int) -> int:
    return min(len(curve.sorted_scores), round(share * n_rows))


def _run_counts(graph: Graph, inputs: list) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
    outs = [evaluate(graph, list(args)) for args in inputs]
    return sum(o[-1] for o in outs), outs


def ffn_skip_graph(graph: Graph, o: dict[str, Any], calibration: list, store: dict[str, dict] | None = None) -> dict[str, Any]:
    """Rewrite the graph in place; returns the statistics (see the module docstring). The fitted gates
    go into `store` (site -> w, bias, threshold) for graphs of the same compile without calibration."""
    store = store if store is not None else {}
    blocks = find_ffn_blocks(graph)
    stats: dict[str, Any] = {"target": o["target"], "gate": o["gate"], "warmup": o["warmup"], "blocks": len(blocks)}
    if not blocks:
        stats["note"] = ("no FFN block found (no residual add(h, mlp(norm(h))) with a row-local MLP of >= 2 GEMMs): "
                         "nothing is skipped")
        return stats
    pos, stats["positions"] = _positions(graph, blocks)
    stats["form"] = _form(graph, blocks, o)
    data, ref_outs = G.collect(graph, blocks, pos, calibration)
    plan, why = _plan(blocks, o)
    fits, curves, layer_stats = _fit_layers(blocks, data, plan, o)
    gates = _rewrite(graph, blocks, plan, fits, pos, o)
    n_rows = len(data[0].cost)
    total = n_rows * len(blocks)
    weights = _sensitivities(graph, blocks, gates, curves, calibration, ref_outs, o["target"] * total)
    curves = {k: G.scaled(c, weights[k]) for k, c in curves.items()}
    fixed = {blocks[i].site: _fixed_rows(curves[blocks[i].site], s, n_rows) for i, s in plan.items() if s is not None}
    free = {k: c for k, c in curves.items() if k not in fixed}
    planned, history = o["target"] * total, []
    for _ in range(ITERATIONS):
        rows = {**G.allocate(free, max(0, round(planned) - sum(fixed.values()))), **fixed}
        th = G.thresholds(curves, rows)
        _set_thresholds(gates, blocks, th)
        counted, outs = _run_counts(graph, calibration)
        share = float(counted[:, 1].sum()) / max(float(counted[:, 0].sum()), 1.0)
        history.append(round(share, 5))
        if abs(share - o["target"]) <= TOLERANCE or share == 0.0:
            break
        planned = min(planned * o["target"] / share, float(total))
    for i, b in enumerate(blocks):
        entry = layer_stats.setdefault(b.site, {})
        entry.update({"gated": i in gates, "calib_rows": int(counted[i, 0]), "calib_skipped": int(counted[i, 1]),
                      "calib_share": int(counted[i, 1]) / max(int(counted[i, 0]), 1)})
        if b.site in th:
            entry.update({"threshold": th[b.site], "sensitivity": weights[b.site]})
        if b.site in why:
            entry["not_gated"] = why[b.site]
    stats["layers"] = layer_stats
    stats["calibration"] = {"share_skipped": history[-1], "share_history": history, **_output_error(ref_outs, outs)}
    store.update({blocks[i].site: {"w": fits[i][0], "bias": fits[i][1], "threshold": th[blocks[i].site]} for i in gates})
    return stats


def reuse_gates(graph: Graph, o: dict[str, Any], store: dict[str, dict]) -> dict[str, Any]:
    """A graph no calibration example reached (a decode graph captured later): gate its blocks with the
    gates fitted for the same sites in an earlier graph of this compile."""
    blocks = find_ffn_blocks(graph)
    stats: dict[str, Any] = {"target": o["target"], "gate": o["gate"], "warmup": o["warmup"], "blocks": len(blocks),
                             "gates_from": "an earlier graph of this compile (no calibration data reached this one)"}
    if not blocks:
        stats["note"] = "no FFN block found: nothing is skipped"
        return stats
    pos, stats["positions"] = _positions(graph, blocks)
    stats["form"] = _form(graph, blocks, o)
    plan = {i: None for i, b in enumerate(blocks) if b.site in store}
    fits = {i: (store[blocks[i].site]["w"], store[blocks[i].site]["bias"]) for i in plan}
    gates = _rewrite(graph, blocks, plan, fits, pos, o)
    _set_thresholds(gates, blocks, {b.site: store[b.site]["threshold"] for b in blocks if b.site in store})
    stats["layers"] = {b.site: {"gated": i in gates, **({"threshold": store[b.site]["threshold"]} if i in gates else {})}
                       for i, b in enumerate(blocks)}
    return stats


def _fit_layers(blocks: list[FfnBlock], data: list[G.BlockData], plan: dict[int, float | None], o: dict[str, Any]):
    """Per gated block: the gate's fit, its (rows, cost) curve in score order, and its report entry."""
    fits, curves, layer_stats = {}, {}, {}
    for i in plan:
        d, prev = data[i], data[i - 1] if i > 0 else None
        w, bias, r2 = G.fit_linear(d, kind=o["gate"]) if o["gate"] in WEIGHTED else (None, 0.0, None)
        score = G.scores(o["gate"], d, prev, w, bias)
        eligible = d.pos >= o["warmup"]
        fits[i] = (w, bias)
        curves[blocks[i].site] = G.make_curve(score, d.cost, eligible)
        layer_stats[blocks[i].site] = {"fit_r2": r2, "eligible_rows": int(eligible.sum()),
                                       "quality": G.quality_curve(score, d, eligible)}
    return fits, curves, layer_stats


def _rewrite(graph: Graph, blocks: list[FfnBlock], plan: dict[int, float | None], fits: dict, pos, o: dict[str, Any]) -> dict[int, Op]:
    """Gate (threshold NEVER for now) and compact (or mask) every planned block; count every block."""
    gates: dict[int, Op] = {}
    counts = []
    prev_streams = None
    form = _form(graph, blocks, o)
    for i, b in enumerate(blocks):
        gate = None
        if i in plan:
            w, bias = fits[i]
            gate = gates[i] = add_gate(graph, b, o["gate"], i, pos, G.NEVER, o["warmup"], w, bias, prev_streams, form)
        counts.append(add_count(graph, b, gate))
        out = b.add_op.result if gate is None else compact(graph, b, gate, o["gate"]) if form == "compact" else \
            mask(graph, b, gate)
        prev_streams = (b.stream, out)
    add_counts(graph, blocks, counts)
    return gates


def _set_thresholds(gates: dict[int, Op], blocks: list[FfnBlock], th: dict[str, float]) -> None:
    for i, gate in gates.items():
        gate.attrs = {**gate.attrs, "threshold": th.get(blocks[i].site, G.NEVER)}


def _sensitivities(graph: Graph, blocks: list[FfnBlock], gates: dict[int, Op], curves: dict[str, G.Curve],
                   calibration: list, ref_outs: list, budget: float) -> dict[str, float]:
    """Measured output error per unit of predicted cost, per gated block: skip one block alone at an
    even share of the budget, compare the graph's first output with the unskipped one. Blocks whose
    skipped rows hurt the output more per unit of stream change get their costs scaled up."""
    out: dict[str, float] = {}
    per_block = budget / max(len(gates), 1)
    for i in gates:
        site = blocks[i].site
        curve = curves[site]
        m = min(len(curve.sorted_scores), max(1, round(per_block)))
        _set_thresholds(gates, blocks, {site: G.threshold_at(curve, m)})
        _, outs = _run_counts(graph, calibration)
        err = sum(float(((n[0].float() - r[0].float()) ** 2).sum()) for n, r in zip(outs, ref_outs))
        ref = sum(float((r[0].float() ** 2).sum()) for r in ref_outs)
        predicted = float(curve.cum_cost[m])
        out[site] = (err / max(ref, 1e-30)) / predicted if predicted > 0 and err > 0 else 1.0
    mean = sum(out.values()) / max(len(out), 1)
    return {k: v / mean for k, v in out.items()}  # relative weights: the allocation only compares them


def _positions(graph: Graph, blocks: list[FfnBlock]):
    u = blocks[0].u
    seq = u.type.shape[-2] if u.type.rank >= 3 else u.type.shape[0]
    pos, where = find_positions(graph, seq)
    if pos is None:
        anchor = min((b.add_op for b in blocks), key=graph.ops.index)
        pos = graph.insert_before(anchor, "arange", [], {"end": seq}, name="ffn_skip_pos").result
        where = ("none in the graph (folded into constants, or no position input): the index along the sequence "
                 "within each call, which is the position when the graph has no KV cache")
    return pos, where


def _output_error(ref: list[list[torch.Tensor]], new: list[list[torch.Tensor]]) -> dict[str, float]:
    a = torch.cat([r[0].float().flatten() for r in ref])
    b = torch.cat([n[0].float().flatten() for n in new])
    out = {"output_rel_error": float((b - a).norm() / a.norm().clamp_min(1e-30))}
    if ref[0][0].dim() >= 2 and ref[0][0].shape[-1] > 1 and ref[0][0].is_floating_point():
        agree = [(r[0].argmax(-1) == n[0].argmax(-1)).float() for r, n in zip(ref, new)]
        out["next_token_agreement"] = float(torch.cat([x.flatten() for x in agree]).mean())
    return out


class FfnSkip:
    """Off unless the option "ffn_skip.target" is a share; stats: see `ffn_skip_graph`."""

    name = "ffn_skip"

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        o = _options(ctx)
        if o["target"] is None:
            ctx.stats["enabled"] = False
            return graph
        store = ctx.shared.setdefault("ffn_skip", {})
        if ctx.calibration:
            ctx.stats.update(ffn_skip_graph(graph, o, list(ctx.calibration), store))
        elif store:
            ctx.stats.update(reuse_gates(graph, o, store))
        else:
            raise ConfigError("ffn_skip needs calibration data: pass calibration=[example inputs, ...] (the gate is "
                              "fitted and its thresholds set on them)")
        return graph


def format_report(stats: dict[str, Any]) -> str:
    """The pass's report as text (`fxforge inspect --ffn-skip`): per FFN block, whether it is gated,
    its threshold, the share it skipped on the calibration data, and the gate's quality curve (share
    of the block's rows skipped -> the block's output error, gate order vs oracle order)."""
    head = f"ffn_skip: target {stats['target']}, gate {stats['gate']}, warm-up {stats['warmup']}, {stats['blocks']} FFN blocks"
    if "note" in stats:
        return head + "\n" + stats["note"]
    rows = [head, f"positions: {stats.get('positions')}"]
    if "gates_from" in stats:
        rows.append(f"gates from {stats['gates_from']}")
    cal = stats.get("calibration")
    if cal:
        rows.append(f"calibration: {cal['share_skipped']:.4f} of FFN rows skipped (runs: {cal['share_history']}); "
                    f"output rel err {cal['output_rel_error']:.4f}"
                    + (f", next-token agreement {cal['next_token_agreement']:.4f}" if "next_token_agreement" in cal else ""))
    rows.append(f"{'block':<36}{'gated':>6}{'threshold':>11}{'calib share':>12}{'fit R2':>8}{'weight':>8}  quality")
    for site, v in stats.get("layers", {}).items():
        r2 = v.get("fit_r2")
        q = v.get("quality")
        curve = " ".join(f"{s:.2f}:{g:.3f}/{o:.3f}" for s, g, o in zip(q["share"], q["gate_error"], q["oracle_error"])) if q else \
            v.get("not_gated", "")
        rows.append(f"{site:<36}{'yes' if v.get('gated') else 'no':>6}{v.get('threshold', float('nan')):>11.4g}"
                    f"{v.get('calib_share', float('nan')):>12.4f}{'' if r2 is None else f'{r2:.3f}':>8}"
                    f"{v.get('sensitivity', float('nan')):>8.3f}  {curve}")
    rows.append("quality: share of the block's rows skipped: its output error (|dropped FFN output| / |stream|, RMS) "
                "in gate order / in oracle order")
    return "\n".join(rows)
