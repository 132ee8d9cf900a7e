"""Block-output reconstruction after N:M pruning: refit the kept values (masks fixed) of each block so the
pruned block, fed the pruned model's own inputs, reproduces the dense model's block outputs.

One-shot pruning (magnitude, Wanda, SparseGPT) solves each linear alone; what a model loses is the block's
output (attention, nonlinearities and the residual stream included). This module, run by `sparsify` after
every layer is pruned, walks the blocks in graph order and for each:
- finds the block's region of the graph: the pruned linears sharing a layer prefix ("model.layers.3.")
  form a block; the region runs from the end of the previous block (for the first: the producer of the
  first linear's input) to the cut after the block's last linear where the fewest values produced in the
  region stay live (the residual stream: after llama's `down_proj` residual add, after BERT's residual add
  before its output LayerNorm; the earliest such cut). Its targets are the values live across that cut;
- captures the region's inputs on the calibration data from the graph as pruned and refined so far, and
  the targets from the dense graph (the reference copy made before pruning);
- runs Adam on the kept values (W = P * mask, the region replayed op by op with the torch references of
  `ir.evaluate`, autograd on) for `steps` steps, loss Σ ||y - y_dense||² / ||y_dense||² over the targets;
- keeps the refit only when it lowers the loss on held-out calibration rows (the last quarter of the
  calibration batch, when there are at least 4 examples; else on the fitting rows), at the best step.

Decisions:
- Plain `#nm` layers only (16-bit kept values): `sparsify` refines composed layers (sparsity + quantize)
  before quantizing their kept values (`sparsify_quant.py`); a quantized `#nm` layer handed in keeps its
  solver result (refitting would move the values off their quantization grid) and the stats say so.
- Calibration examples of one shape are batched into one run (the graph's batch dim is symbolic); with
  mixed shapes, one run per shape, and a step fits at most MAX_RUNS_PER_STEP of them (cycling), the held-out
  check at most MAX_HELD_RUNS: the cost of a step is bounded whatever the calibration set.
- lr is relative to each weight's mean |kept value| (LR = 1e-2), so one setting fits every layer scale; 40 steps
  (DEFAULT_STEPS). Measured on the stdlib-llama fixture, 2:4 SparseGPT, 16 calibration windows: next-token
  agreement 0.9668 one-shot -> 0.9712 (lr 3e-3) -> 0.9741 (lr 1e-2), ppl 4.861 -> 4.852 -> 4.851 (dense 4.821).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from fxforge.ir.evaluate import bind_symbols, run_op, weight_tensor
from fxforge.ir.graph import Graph, Op, Value
from fxforge.ir.nm import decode_nm, encode_nm, expand, index_bits, unpack_bits

DEFAULT_STEPS = 40
LR = 1e-2
CHECK_EVERY = 2  # steps between held-out checks
# Calibration sentences of mixed lengths make one run per length; replaying all of them every step made a
# MiniLM-sized 2:4 + W8A8 compile on 100 sentences take 28 CPU-minutes (benchmarks/results/sparsity-2026-11-30-composed.md).
# Above these counts a step fits a cycling slice of the runs (minibatch Adam) and the held-out check reads a fixed subset.
MAX_RUNS_PER_STEP = 8
MAX_HELD_RUNS = 16
_BLOCK = re.compile(r"^(.*?\.\d+)\.")


class _Stop(Exception):
    pass


def _block_key(name: str) -> str:
    m = _BLOCK.match(name)
    return m.group(1) if m else name


def _batch(graph: Graph, calibration: Sequence[Sequence[Tensor]]) -> list[list[Tensor]]:
    """The examples batched: those with the same shapes but dim 0 become one run when the graph's inputs
    have a symbolic dim 0 (sentences of mixed lengths: one run per length), else the examples as given."""
    ex = [list(a) for a in calibration]
    if len(ex) < 2 or any(v.type.rank == 0 or isinstance(v.type.shape[0], int) for v in graph.inputs):
        return ex
    if any(t.dim() < 1 for a in ex for t in a):
        return ex
    groups: dict[tuple, list[list[Tensor]]] = {}
    for a in ex:
        groups.setdefault(tuple(tuple(t.shape[1:]) for t in a), []).append(a)
    return [[torch.cat(ts) for ts in zip(*g)] for g in groups.values()]


def _capture(graph: Graph, args: list[Tensor], want: list[Value]) -> dict[int, Tensor]:
    """The tensors of the `want` values on one input (graph inputs included), stopping once all are seen."""
    ids = {id(v) for v in want}
    got = {id(v): t for v, t in zip(graph.inputs, args) if id(v) in ids}
    bindings = bind_symbols([v.type for v in graph.inputs], args, [v.name for v in graph.inputs])
    env: dict[int, Tensor] = {id(v): t for v, t in zip(graph.inputs, args)}
    if len(got) < len(ids):
        for op in graph.ops:
            outs = run_op(graph, op, [env[id(v)] for v in op.operands], bindings)
            for r, t in zip(op.results, outs):
                env[id(r)] = t
                if id(r) in ids:
                    got[id(r)] = t.detach()
            if len(got) == len(ids):
                break
    return got


def _last_use(graph: Graph) -> dict[int, int]:
    index = {id(op): i for i, op in enumerate(graph.ops)}
    out: dict[int, int] = {}
    for op in graph.ops:
        for v in op.operands:
            out[id(v)] = max(out.get(id(v), -1), index[id(op)])
    for v in graph.outputs:
        out[id(v)] = len(graph.ops)
    return out


def _cut(ops: list[Op], start: int, lo: int, hi: int, last: dict[int, int]) -> tuple[int, list[Value]]:
    """The cut c in [lo, hi) after which the fewest values made in (start, c] stay live; those values."""
    best: tuple[int, list[Value]] | None = None
    for c in range(lo, hi):
        live = [r for op in ops[start + 1:c + 1] for r in op.results if last.get(id(r), -1) > c]
        if best is None or len(live) < len(best[1]):
            best = (c, live)
    assert best is not None
    return best


def blocks(graph: Graph, layer_ops: dict[str, Op]) -> list[tuple[list[str], int, int, list[Value]]]:
    """(layer names, region start (exclusive), cut (inclusive), targets) of each block, in graph order."""
    index = {id(op): i for i, op in enumerate(graph.ops)}
    grouped: dict[str, list[str]] = {}
    for name in sorted(layer_ops, key=lambda n: index[id(layer_ops[n])]):
        grouped.setdefault(_block_key(name), []).append(name)
    keys = list(grouped)
    last = _last_use(graph)
    out = []
    first = layer_ops[grouped[keys[0]][0]]
    p = first.operands[0].producer
    start = (index[id(p)] - 1) if p is not None and p.opcode != "const" else index[id(first)] - 1
    for i, key in enumerate(keys):
        names = grouped[key]
        lo = max(index[id(layer_ops[n])] for n in names)
        hi = index[id(layer_ops[grouped[keys[i + 1]][0]])] if i + 1 < len(keys) else len(graph.ops)
        c, targets = _cut(graph.ops, start, lo, hi, last)
        out.append((names, start, c, targets))
        start = c
    return out


def kept_mask(weight) -> Tensor:
    enc = weight.encoding
    out_f, in_f = weight.data.shape
    k = (in_f // enc.m) * enc.n
    pos = unpack_bits(weight.payload["index"], index_bits(enc.m), k)
    ones = torch.ones(out_f, k + in_f % enc.m)
    return expand(ones, pos, enc.n, enc.m, in_f) > 0


def _replay(graph: Graph, ops: list[Op], env: dict[int, Tensor], params: dict[int, Tensor],
            bindings: dict, targets: list[Value]) -> list[Tensor]:
    env = {**env, **params}
    for op in ops:
        if op.opcode == "const" and id(op.result) in params:  # the pruned weight itself: the refit copy
            continue
        for r, t in zip(op.results, run_op(graph, op, [env[id(v)] for v in op.operands], bindings)):
            env[id(r)] = t
    return [env[id(v)] for v in targets]


def _loss(ys: list[Tensor], want: list[Tensor]) -> Tensor:
    total = torch.zeros((), dtype=torch.float32)
    for y, d in zip(ys, want):
        y, d = y.float(), d.float()
        total = total + ((y - d) ** 2).sum() / (d**2).sum().clamp_min(1e-12)
    return total


def _minibatch(runs: list, step: int) -> list:
    """The runs step `step` fits on: all of them, or (many shapes: one run each) the step's slice of
    MAX_RUNS_PER_STEP, cycling through every run in order, so each step's cost stays bounded."""
    if len(runs) <= MAX_RUNS_PER_STEP:
        return runs
    start = ((step - 1) * MAX_RUNS_PER_STEP) % len(runs)
    return (runs + runs)[start:start + MAX_RUNS_PER_STEP]


def refine_block(graph: Graph, reference: Graph, batches: tuple[list, list], names: list[str], start: int, cut: int,
                 targets: list[Value], consts: dict[str, Op], steps: int, lr: float | None = None) -> dict[str, Any]:
    """Refit the kept values of the block's `#nm` weights; rewrites the graph's weights when it helps."""
    region = graph.ops[start + 1:cut + 1]
    made = {id(r) for op in region for r in op.results}
    inputs = list({id(v): v for op in region for v in op.operands if id(v) not in made}.values())
    wconst = {n: consts[n] for n in names}
    w_ids = {id(op.result) for op in wconst.values()}
    ref_by_name = {v.name: v for v in reference.values()}
    ref_targets = [ref_by_name.get(v.name) for v in targets]
    if any(t is None for t in ref_targets):
        return {"refined": False, "note": "a block output has no dense counterpart: kept the one-shot result"}
    runs: tuple[list, list] = ([], [])
    for args, which in [(a, 0) for a in batches[0]] + [(a, 1) for a in batches[1]]:
        need = [v for v in inputs if id(v) not in w_ids and (v.producer is None or v.producer.opcode != "const")]
        env = _capture(graph, args, need)
        for v in inputs:
            if id(v) not in env and id(v) not in w_ids:
                env[id(v)] = weight_tensor(graph, v.producer.attrs["weight"])
        dense = _capture(reference, args, ref_targets)
        want = [dense[id(t)] for t in ref_targets]
        bindings = bind_symbols([v.type for v in graph.inputs], args, [v.name for v in graph.inputs])
        runs[which].append((env, want, bindings))
    masks, params, scales = {}, {}, {}
    for n, op in wconst.items():
        w = graph.weight(op.attrs["weight"])
        masks[n] = kept_mask(w)
        params[n] = decode_nm(w).float().clone().requires_grad_(True)
        scales[n] = float(params[n].detach().abs()[masks[n]].mean().clamp_min(1e-8))
    opt = torch.optim.Adam([{"params": [params[n]], "lr": (LR if lr is None else lr) * scales[n]} for n in names])
    split = bool(runs[1])
    held_runs = (runs[1] or runs[0])[:MAX_HELD_RUNS]
    fit_runs = runs[0]
    p = {id(wconst[n].result): n for n in names}

    def loss(which: list) -> Tensor:
        weights = {vid: (params[n] * masks[n]).to(wconst[n].result.type.dtype.torch) for vid, n in p.items()}
        total = torch.zeros(())
        for env, want, bindings in which:
            total = total + _loss(_replay(graph, region, env, weights, bindings, targets), want)
        return total

    def held_loss() -> float:
        with torch.no_grad():
            return float(loss(held_runs))

    with torch.enable_grad():
        before = held_loss()
        best, best_state, best_step = before, None, 0
        for step in range(1, steps + 1):
            opt.zero_grad()
            loss(_minibatch(fit_runs, step)).backward()
            opt.step()
            if step % CHECK_EVERY == 0 or step == steps:
                now = held_loss()
                if now < best:
                    best, best_step = now, step
                    best_state = {n: params[n].detach().clone() for n in names}
    info = {"loss_before": before, "loss_after": best, "best_step": best_step, "held_out": split}
    if best_state is None:
        return {**info, "refined": False, "note": "no step lowered the held-out block loss: kept the one-shot result"}
    for n, op in wconst.items():
        old = graph.weight(op.attrs["weight"])
        enc = old.encoding
        graph.weights[op.attrs["weight"]] = encode_nm(best_state[n] * masks[n], masks[n], enc.n, enc.m, enc.dtype)
    return {**info, "refined": True}


def refine(graph: Graph, reference: Graph, calibration: Sequence[Sequence[Tensor]], layer_ops: dict[str, Op],
           steps: int) -> dict[str, Any]:
    """Refine every block of the pruned layers `layer_ops` (name -> its linear) in graph order."""
    plain = {n: op for n, op in layer_ops.items()
             if op.opcode == "linear" and op.operands[1].type.encoding is not None and op.operands[1].type.encoding.kind == "nm"}
    skipped = sorted(set(layer_ops) - set(plain))
    stats: dict[str, Any] = {"steps": steps, "blocks": {}}
    if skipped:
        stats["note"] = f"{len(skipped)} layer(s) with quantized kept values keep the solver's result (not refit)"
    if not plain:
        return stats
    consts = {n: op.operands[1].producer for n, op in plain.items()}
    examples = list(calibration)
    held = len(examples) // 4 if len(examples) >= 4 else 0  # the last quarter chooses the step
    batches = (_batch(graph, examples[:len(examples) - held]), _batch(graph, examples[len(examples) - held:]) if held else [])
    for names, start, cut, targets in blocks(graph, plain):
        key = _block_key(names[0])
        stats["blocks"][key] = refine_block(graph, reference, batches, names, start, cut, targets, consts, steps)
    return stats
