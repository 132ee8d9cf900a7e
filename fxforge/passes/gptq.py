"""GPTQ rounding for every quantization scheme, and the one entry point passes call the solver through.

    weight, info = gptq_encode(w, scheme, group, hessian, pow2_round="floor", act_order=None)
    out = solve_weight(w, hessian, scheme=..., group=..., nm=(2, 4) | mask=...)   # GPTQ / SparseGPT / both

`SchemeQuantizer` is the solver's "quantize this column" callback for a scheme of
`fxforge.ir.lowp_ops`: scales are decided by `lowp_ops.weight_params` on the weights as updated when
the solver reaches their group (per-channel schemes: once, at column 0, on the whole row); codes are
kept per column so the final `Weight` is built from the very codes and scales the solver used
(`lowp_ops.weight_from_codes`): decode(encode) is exactly the solver's result, nothing re-rounds.

Decisions:
- w4a8-fp: the row scale s_max is decided once from the original row (it spans every group); each
  group's power-of-two shift is decided as the group is reached.
- act-order (columns by decreasing diag H) is on by default for per-channel schemes and off for
  grouped ones: with groups it would need a per-column group index in the stored format (GPTQ's
  g_idx), which fxforge's kernels do not read. Never with pruning (N:M blocks are in column order).
- With a reference graph (`hessian.run_stages(reference=...)`) the solver aims at the reference
  model's layer output from the inputs the layer really gets (`reference_target`), so each layer also
  corrects what the rewritten layers above it lost.
- Block schemes (MX / NVFP4) use `block_weights.BlockQuantizer`: each block's scale (rule "search")
  is chosen as the solver reaches the block, on the weights as updated so far; never act-order.
- A layer whose calibration inputs are all zero (or whose H cannot be factored) keeps
  round-to-nearest; `info["note"]` says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from fxforge.ir.block_weights import BlockQuantizer
from fxforge.ir.graph import Weight
from fxforge.ir.lowp_ops import encode_weight, get_scheme, quantize_groups, weight_from_codes, weight_params
from fxforge.passes.hessian import Hessian, Prepared, prepare
from fxforge.passes.obs_solver import act_order_perm, obs_solve

ALL_ZERO_NOTE = "calibration inputs of this layer are all zero: kept round-to-nearest (GPTQ has nothing to weigh)"


class SchemeQuantizer:
    """Column quantizer of one scheme (see the module docstring); `group` in the solver's columns."""

    def __init__(self, w: Tensor, scheme: str, group: int, pow2_round: str = "floor") -> None:
        self.scheme, self.group, self.pow2_round = scheme, group, pow2_round
        self.sc = get_scheme(scheme)
        out_f, in_f = w.shape
        self.grouped = bool(group)
        self.s_max = None
        if self.sc.pow2:  # the row scale spans every group: decided once, from the original row
            gsize = group or in_f
            self.s_max = weight_params(w.float().reshape(out_f, in_f // gsize, gsize), scheme, True, pow2_round)["scale"]
        self.params: list[dict[str, Tensor]] = []
        self.codes: list[Tensor | None] = [None] * in_f

    def begin(self, index: int, w_cols: Tensor) -> None:
        wg = w_cols.reshape(w_cols.shape[0], 1, -1)
        self.params.append(weight_params(wg, self.scheme, self.grouped, self.pow2_round, s_max=self.s_max))

    def __call__(self, col: Tensor, j: int) -> Tensor:
        codes, vals = quantize_groups(col.reshape(-1, 1, 1), self.scheme, self.params[-1])
        self.codes[j] = codes.reshape(-1)
        return vals.reshape(-1)

    def merged_params(self) -> dict[str, Tensor]:
        out = {k: torch.cat([p[k] for p in self.params], dim=1) for k in self.params[0] if k != "scale" or not self.sc.pow2}
        if self.sc.pow2:
            out["scale"] = self.params[0]["scale"]
        return out

    def code_matrix(self, perm: Tensor | None = None) -> Tensor:
        codes = torch.stack(self.codes, dim=1)  # type: ignore[arg-type]
        return codes if perm is None else codes[:, torch.argsort(perm)]

    def to_weight(self, perm: Tensor | None = None) -> Weight:
        """The encoded weight of the solver's codes and scales (original column order)."""
        return weight_from_codes(self.code_matrix(perm), self.scheme, self.group, self.merged_params())


def make_quantizer(w: Tensor, scheme: str, group: int, pow2_round: str = "floor") -> SchemeQuantizer | BlockQuantizer:
    """The column quantizer of a scheme: block schemes (MX / NVFP4) quantize per block of their own size."""
    if get_scheme(scheme).block:
        return BlockQuantizer(w, scheme)
    return SchemeQuantizer(w, scheme, group, pow2_round)


@dataclass
class Solved:
    """What `solve_weight` returns: the new float weight (original column order), the kept mask, the
    quantizer (its codes and params) and the report fields."""

    weight: Tensor
    kept: Tensor | None
    quantizer: SchemeQuantizer | BlockQuantizer | None
    perm: Tensor | None
    info: dict[str, Any] = field(default_factory=dict)


def reference_target(w: Tensor, cross: Tensor, prepared: Prepared) -> Tensor:
    """W* = (W Cᵀ + δW)(H + δI)⁻¹, C = X_pᵀX_d: the weight whose output on the inputs the layer will
    really see (X_p) is closest to the reference layer's output (X_d Wᵀ); δ, the dampening, pulls
    toward W, so with X_p = X_d it is W itself. H⁻¹ = UᵀU from `prepare`."""
    u = prepared.hinv_u
    rhs = w.to(torch.float64) @ cross.T + prepared.added * w.to(torch.float64)
    return ((rhs @ u.T) @ u).to(torch.float32)


def solve_weight(w: Tensor, hessian: Hessian | None, scheme: str | None = None, group: int = 0,
                 pow2_round: str = "floor", nm: tuple[int, int] | None = None, mask: Tensor | None = None,
                 act_order: bool | None = None) -> Solved | None:
    """Round (scheme) and/or prune (nm or mask) `w` [out, in] with the second-order solver.
    `group`: columns per scale group (0: per row). None when H is unusable (all-zero inputs)."""
    if hessian is None:
        return None
    if scheme is not None and get_scheme(scheme).block:
        group, act_order = get_scheme(scheme).block, False  # a block's scale spans consecutive columns
    if act_order is None:
        act_order = group == 0
    h, perm = hessian.h, None
    if act_order and group == 0 and nm is None and mask is None and scheme is not None:
        perm = act_order_perm(h)
        h = h[perm][:, perm]
    prepared = prepare(h, hessian.tokens)
    if prepared is None:
        return None
    wp = w if perm is None else w[:, perm]
    if hessian.cross is not None:
        wp = reference_target(wp, hessian.cross if perm is None else hessian.cross[perm][:, perm], prepared)
    quantizer = make_quantizer(wp, scheme, group, pow2_round) if scheme is not None else None
    res = obs_solve(wp, prepared.hinv_u, quantizer=quantizer, nm=nm, mask=mask)
    new = res.weight if perm is None else res.weight[:, torch.argsort(perm)]
    info = {"damp": prepared.damp, "tokens": hessian.tokens, "obs_loss": res.loss, "act_order": perm is not None,
            "target": "reference" if hessian.cross is not None else "layer"}
    if prepared.note:
        info["note"] = prepared.note
    return Solved(new, res.kept, quantizer, perm, info)


def gptq_encode(w: Tensor, scheme: str, group: int | None, hessian: Hessian | None, pow2_round: str = "floor",
                act_order: bool | None = None) -> tuple[Weight, dict[str, Any]]:
    """The GPTQ-rounded encoded weight of `w` [out, in] under `scheme` (group as `encode_weight` takes
    it: None = the scheme's default), and the report fields ("method", "note", "damp", ...)."""
    g = get_scheme(scheme).group if group is None else group  # the last group may be partial (lowp_ops)
    solved = solve_weight(w, hessian, scheme=scheme, group=g, pow2_round=pow2_round, act_order=act_order)
    if solved is None:
        return encode_weight(w, scheme, group, pow2_round=pow2_round), {"method": "rtn", "note": ALL_ZERO_NOTE}
    weight = solved.quantizer.to_weight(solved.perm)
    return weight, {"method": "gptq", **solved.info}
