"""Second-order statistics of linear layers: H = XᵀX of each layer's input on calibration data.

The one second-order solver (`fxforge.passes.obs_solver`) needs, per `linear`, the Gram matrix of the
inputs that reach it. This module owns collecting it and making it safe to invert.

- `stages(graph, ops)`: the linears to solve, grouped by the value they read (q/k/v share one input,
  so one H) in graph order.
- `collect(graph, calibration, values)`: runs the graph through `ir.evaluate` on every calibration
  input and accumulates XᵀX (float64) for the watched values only; evaluation stops as soon as every
  watched value of the current input has been seen, so a stage near the top of a model costs a
  fraction of a forward pass.
- `run_stages(graph, calibration, ops, solve)`: streaming, one stage's H at a time, in graph order,
  each collected on the graph *as already rewritten* by the earlier stages (GPTQ's / SparseGPT's
  "sequential" mode: a layer sees the activations of the already quantized / pruned layers before it).
  Given a `reference` graph (the model before the pass), it also accumulates X_pᵀX_d, the rewritten
  model's inputs against the reference model's, so the solver can reconstruct the *reference* layer
  output from the inputs the layer will really see (the errors of the layers above are corrected
  instead of inherited; GPTAQ-style asymmetric calibration).
- `prepare(h, tokens)`: dampening and the checks of the issue's "bad input".

Decisions:
- Dampening λ·mean(diag H) with λ = 0.01 (GPTQ's default). With fewer calibration tokens than input
  features H is rank-deficient and GPTQ overfits the few tokens it saw (the issue measured less than
  half the gain with 16 sentences): λ rises to 0.1 and the layer's note says so.
- Inputs that never fire (diag H == 0) get H_ii = 1 so H stays invertible; the weights of such
  columns are kept (not zeroed as the reference GPTQ does): a feature unseen in calibration may still
  fire at run time.
- An all-zero input (trace 0) returns None: the caller keeps round-to-nearest and reports why.
- If the Cholesky still fails, λ grows tenfold up to 4 times; never NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fxforge.ir.evaluate import evaluate
from fxforge.ir.graph import Graph, Op
from fxforge.progress import progress

DAMP = 0.01
DAMP_FEW_TOKENS = 0.1
MAX_RETRIES = 4


@dataclass
class Hessian:
    """XᵀX (float64, [in, in]) of one value over the calibration tokens it carried."""

    h: Tensor
    tokens: int
    cross: Tensor | None = None  # X_pᵀX_d: inputs in the graph being rewritten against the reference graph's


@dataclass
class Prepared:
    """H⁻¹'s upper Cholesky factor (what the solver walks), and what was done to get it."""

    hinv_u: Tensor  # float64 [in, in], upper triangular: H⁻¹ = Uᵀ U
    damp: float  # the λ used
    added: float  # λ·mean(diag H): what was added to the diagonal
    dead: int  # input features never seen nonzero
    note: str  # "" or why the layer needed care (few tokens, dead inputs, extra dampening)


class _Stop(Exception):
    """Raised inside `evaluate` once every watched value of the current input has been seen."""


def stages(ops: Sequence[Op]) -> list[list[Op]]:
    """The linears grouped by the value they read, in the order of their first member."""
    groups: dict[int, list[Op]] = {}
    for op in ops:
        groups.setdefault(id(op.operands[0]), []).append(op)
    return list(groups.values())


def _capture(graph: Graph, args: Sequence[Tensor], values: Sequence) -> dict[int, Tensor]:
    """The token rows (float64 [tokens, in]) of each watched value on one input; stops early."""
    want = {id(v) for v in values}
    got: dict[int, Tensor] = {}

    def rows(t: Tensor) -> Tensor:
        return torch.nan_to_num(t.detach().reshape(-1, t.shape[-1]).to(torch.float64).cpu())  # one inf must not poison H

    for v, t in zip(graph.inputs, args):
        if id(v) in want:
            got[id(v)] = rows(t)

    def observe(op: Op, outs: list[Tensor]) -> None:
        for r, t in zip(op.results, outs):
            if id(r) in want and id(r) not in got:
                got[id(r)] = rows(t)
        if len(got) == len(want):
            raise _Stop

    if len(got) < len(want):
        try:
            evaluate(graph, list(args), observe=observe)
        except _Stop:
            pass
    return got


def collect(graph: Graph, calibration: Sequence[Sequence[Tensor]], values: Sequence,
            reference: Graph | None = None, ref_values: Sequence | None = None) -> dict[int, Hessian]:
    """XᵀX per watched value (keyed by id(value)) over every calibration input; with a `reference`
    graph (the unmodified model) and its values of the same names, also X_pᵀX_d (`Hessian.cross`)."""
    acc: dict[int, Hessian] = {}
    for args in calibration:
        xs = _capture(graph, args, values)
        xd = _capture(reference, args, ref_values) if reference is not None else {}
        for i, v in enumerate(values):
            x = xs.get(id(v))
            if x is None:
                continue
            n = x.shape[1]
            hs = acc.setdefault(id(v), Hessian(torch.zeros(n, n, dtype=torch.float64), 0))
            hs.h.addmm_(x.T, x)
            hs.tokens += x.shape[0]
            d = xd.get(id(ref_values[i])) if ref_values is not None else None
            if d is not None and d.shape == x.shape:
                hs.cross = torch.zeros_like(hs.h) if hs.cross is None else hs.cross
                hs.cross.addmm_(x.T, d)
    return acc


def prepare(h: Tensor, tokens: int, damp: float = DAMP) -> Prepared | None:
    """Dampen H and factor H⁻¹ (upper Cholesky); None when the inputs were all zero."""
    h = h.clone()
    n = h.shape[0]
    diag = torch.diagonal(h)
    if not torch.isfinite(h).all() or diag.sum() <= 0:
        return None
    notes = []
    dead = diag == 0
    if dead.any():
        diag[dead] = 1.0
        notes.append(f"{int(dead.sum())} of {n} input features never nonzero in calibration (weights kept)")
    if tokens < n:
        damp = max(damp, DAMP_FEW_TOKENS)
        notes.append(f"only {tokens} calibration tokens for {n} input features: H is rank-deficient, "
                     f"dampened {damp:g}·mean(diag H); the solver may overfit (give more calibration data)")
    mean = diag.mean().item()
    for attempt in range(MAX_RETRIES + 1):
        lam = damp * 10**attempt
        hd = h + torch.eye(n, dtype=h.dtype) * (lam * mean)
        chol, info = torch.linalg.cholesky_ex(hd)
        if info == 0:
            hinv = torch.cholesky_inverse(chol)
            u, info = torch.linalg.cholesky_ex(hinv, upper=True)
            if info == 0:
                if attempt:
                    notes.append(f"H not positive definite at λ={damp:g}: dampened {lam:g}·mean(diag H)")
                return Prepared(u, lam, lam * mean, int(dead.sum()), "; ".join(notes))
    return None


def run_stages(graph: Graph, calibration: Sequence[Sequence[Tensor]], ops: Sequence[Op],
               solve: Callable[[Op, Hessian], None], reference: Graph | None = None) -> None:
    """Sequential mode: for each stage in graph order, collect its H on the graph as rewritten so far,
    then `solve(op, hessian)` every linear of the stage (which may rewrite the op). With `reference`
    (a copy of the graph before any rewrite), each Hessian also carries X_pᵀX_d, so the solver can
    aim at the reference model's output of the layer rather than the layer's own (see `gptq.solve_weight`)."""
    ref_values = {v.name: v for v in reference.values()} if reference is not None else {}
    for stage in progress(list(stages(ops)), "GPTQ/SparseGPT solves"):
        value = stage[0].operands[0]  # read now: an earlier rewrite may have replaced the producer
        ref = ref_values.get(value.name)
        hs = collect(graph, calibration, [value], reference if ref is not None else None,
                     [ref] if ref is not None else None).get(id(value))
        if hs is None:
            n = value.type.shape[-1]
            hs = Hessian(torch.zeros(n, n, dtype=torch.float64), 0)
        for op in stage:
            solve(op, hs)
