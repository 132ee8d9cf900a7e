"""The one second-order solver (OBS / GPTQ / SparseGPT): round and/or prune a weight column by column,
compensating each column's error in the columns not yet processed.

    result = obs_solve(w, hinv_u, quantizer=..., nm=(2, 4), mask=..., blocksize=128)

`hinv_u` is the upper Cholesky factor of the dampened H⁻¹ (`fxforge.passes.hessian.prepare`). For
column j, with d = U[j, j]: the column's new value q_j (rounded by `quantizer`, zeroed where pruned),
the scaled error e = (w_j - q_j) / d, and the update W[:, j:] -= e · U[j, j:] (Frantar et al. 2022).
Updates are lazy: inside a block of `blocksize` columns they are applied column by column; the block's
errors reach the later columns in one matrix product at the block's end.

The solver is generic over two callbacks, so GPTQ, SparseGPT and both together share it:
- `quantizer` (a `ColumnQuantizer`, optional): `begin(group_index, w_cols)` is called as each scale
  group is reached (group 0 = one group for the whole row: called once at column 0 with every column),
  with the weights of the group's columns *as updated so far*; then `quantizer(col, j)` returns column
  j's quantized value. The quantizer keeps its own codes and scales (see `fxforge.passes.gptq`).
- pruning: `nm=(n, m)` selects, when column j opens an m-column block (j % m == 0), the m - n entries
  of each row with the smallest w² / U[j, j]² over the block (SparseGPT's mask selection, on the
  weights as updated so far); columns past the last full block (the tail) stay dense. `mask` instead
  fixes the kept entries up front (magnitude / Wanda masks, then quantized with compensation).
  Pruning and rounding compose: a kept entry is rounded, a pruned one is 0, and either error is
  compensated the same way.

Decisions:
- float32 for the walk (W and U): the update is a sum of small corrections; float64 lives in H and
  its factorisation (`hessian.prepare`), where cancellation happens.
- The block size is rounded down to a multiple of m so an N:M block never straddles two lazy blocks.
- `act_order_perm(h)` (columns by decreasing diag H) is the caller's business: the solver walks
  columns in the order it is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

BLOCKSIZE = 128


class ColumnQuantizer(Protocol):
    group: int  # columns per scale group in solver order (0: one group spanning the row)

    def begin(self, index: int, w_cols: Tensor) -> None: ...

    def __call__(self, col: Tensor, j: int) -> Tensor: ...


@dataclass
class SolveResult:
    weight: Tensor  # float32 [out, in]: the new weight (rounded values; pruned entries 0)
    kept: Tensor | None  # bool [out, in]: the kept entries when pruning, else None
    loss: float  # Σ (w - q)² / d² / 2 over every column: the OBS estimate of the added output error


def act_order_perm(h: Tensor) -> Tensor:
    """Columns by decreasing diag H (GPTQ's act-order): the most active inputs are rounded first."""
    return torch.argsort(torch.diagonal(h), descending=True)


def _group_view(w1: Tensor, w: Tensor, i: int, i2: int, size: int) -> Tensor:
    """The current weights of `size` columns starting at block column i (they may run into later blocks)."""
    inside = w1[:, i:i + size]
    if inside.shape[1] >= size:
        return inside
    return torch.cat([inside, w[:, i2:i2 + size - inside.shape[1]]], dim=1)


def _select_nm(w1: Tensor, dinv: Tensor, i: int, n: int, m: int) -> Tensor:
    """Kept mask [out, m] of the block starting at column i: drop the m - n smallest w² / d²."""
    score = w1[:, i:i + m] ** 2 / dinv[i:i + m].unsqueeze(0) ** 2
    drop = torch.topk(score, m - n, dim=1, largest=False).indices
    return torch.ones_like(score, dtype=torch.bool).scatter_(1, drop, False)


def obs_solve(w: Tensor, hinv_u: Tensor, quantizer: ColumnQuantizer | None = None,
              nm: tuple[int, int] | None = None, mask: Tensor | None = None,
              blocksize: int = BLOCKSIZE) -> SolveResult:
    """Walk the columns of `w` [out, in] (see the module docstring); returns the new weight."""
    if nm is not None and mask is not None:
        raise ValueError("obs_solve: give either nm (select the mask) or mask (fixed), not both")
    W = w.detach().to(torch.float32).clone()
    U = hinv_u.to(torch.float32)
    out_f, n_cols = W.shape
    Q = torch.zeros_like(W)
    m = nm[1] if nm else 1
    full = (n_cols // m) * m
    kept = mask.clone().bool() if mask is not None else (torch.ones_like(W, dtype=torch.bool) if nm else None)
    blocksize = max(m, (blocksize // m) * m)
    loss = torch.zeros(out_f, dtype=torch.float32)
    group = quantizer.group if quantizer is not None else 0
    for i1 in range(0, n_cols, blocksize):
        i2 = min(i1 + blocksize, n_cols)
        W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
        Q1, E1 = torch.zeros_like(W1), torch.zeros_like(W1)
        dinv = torch.diagonal(U1)
        for i in range(i2 - i1):
            j = i1 + i
            if nm and j % m == 0 and j < full:
                kept[:, j:j + m] = _select_nm(W1, dinv, i, nm[0], m)
            if quantizer is not None and (j % group == 0 if group else j == 0):
                quantizer.begin(j // group if group else 0, _group_view(W1, W, i, i2, group or n_cols))
            col = W1[:, i]
            q = quantizer(col, j) if quantizer is not None else col
            if kept is not None:
                q = torch.where(kept[:, j], q, torch.zeros_like(q))
            Q1[:, i] = q
            err = (col - q) / dinv[i]
            loss += err**2 / 2
            W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)
            E1[:, i] = err
        Q[:, i1:i2] = Q1
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    return SolveResult(Q, kept, float(loss.sum()))
