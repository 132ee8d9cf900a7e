"""Quantizing the kept values of N:M layers: the composed `sparsity=..., quantize=...` path of `sparsify`.

    encoded, info = encode_survivors(w, kept, n, m, scheme, hessian, opts)         # one layer
    quantize_survivors(graph, calibration, layer_ops, schemes, reference, opts, swap)  # every composed layer

With calibration and refinement on (the default), `sparsify` runs composed layers in three steps:
1. prune (SparseGPT / Wanda / magnitude) with 16-bit kept values, like a plain sparsity run;
2. refine the kept values on block outputs (`sparsify_refine`), masks fixed;
3. quantize the refined kept values here, layer by layer in graph order (`hessian.run_stages`: each
   stage's H is collected on the graph as already quantized above it), with the masked second-order
   solver: GPTQ with the mask fixed, each column's rounding error compensated only onto the kept
   weights of the later columns (`obs_solver.obs_solve(mask=...)`). With solver target "reference"
   (the default) it aims at the *refined sparse* model's layer output from the inputs the layer really
   gets (`reference` = a copy of the graph after refinement), so it also absorbs the rounding of the
   layers above; aiming at the dense model's output instead would undo the refit.
Without refinement (`sparsity_refine=0`) or calibration, `sparsify` prunes and quantizes in one solve
(`_encode` there), as before; without calibration the kept values are rounded to nearest.

Decisions:
- Refine before quantizing, not after: a refit of quantized values would move them off the grid.
  Measured (benchmarks/results/sparsity-2026-11-30-composed.md): 2:4 + w8a8-int8 on the LM fixture,
  next-token agreement 0.9644 one-shot -> 0.9741 refined (= the refined 16-bit model's); every scheme
  gains (w4a16-int4 0.9604 -> 0.9717). Target "refined" 0.9741 vs the layer's own output 0.9731.
  Quantization-aware refinement (straight-through rounding in the refit) is not built: at 8 bits nothing
  is left to gain on the fixtures; it is the candidate for the 4-bit remainder.
- Quantized groups are counted in kept values (group g of the compressed [out, K] matrix covers g·M/N
  original columns). If that is not a whole number of columns, or a dense tail exists, the layer uses
  one scale per row (`group` 0) and says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from fxforge.ir.dtypes import DType
from fxforge.ir.graph import Graph, Op, Weight
from fxforge.ir.lowp_ops import encode_weight, get_scheme
from fxforge.ir.nm import compress, decode_nm, encode_nm_quantized, index_bits, pack_bits
from fxforge.ir.types import NM
from fxforge.passes.gptq import solve_weight
from fxforge.passes.hessian import Hessian, run_stages
from fxforge.passes.sparsify_refine import kept_mask

ALL_ZERO_NOTE = "calibration inputs are all zero: kept values rounded to nearest"


def quant_group(scheme: str, group: int | None, in_f: int, n: int, m: int) -> tuple[int, int, str]:
    """(group in kept values, the same in original columns, note) for a composed layer."""
    g = get_scheme(scheme).group if group is None else group
    if g and (in_f % m or (g * m) % n):
        return 0, 0, f"quantization groups do not map onto whole {n}:{m} blocks here: one scale per row"
    return g, g * m // n, ""


def encode_rtn(w: Tensor, kept: Tensor, n: int, m: int, scheme: str, g_c: int, opts: dict[str, Any]) -> Weight:
    """The kept values of `w` (mask `kept`) rounded to nearest under `scheme`, as a quantized `#nm` weight."""
    vals, pos = compress(w.float() * kept, kept, n, m)
    inner = encode_weight(vals, scheme, g_c, pow2_round=opts.get("quantize_pow2_round") or "floor")
    payload = {**inner.payload, "index": pack_bits(pos, index_bits(m))}
    placeholder = torch.zeros((), dtype=torch.float32).expand(*w.shape)
    return Weight(placeholder, NM(n, m, DType.f32, scheme, g_c), payload)


def encode_survivors(w: Tensor, kept: Tensor, n: int, m: int, scheme: str, hessian: Hessian | None,
                     opts: dict[str, Any]) -> tuple[Weight, dict[str, Any]]:
    """Quantize the kept values of `w` [out, in] (pruned entries stay 0) with the masked solver when
    `hessian` is given and GPTQ is on, else round to nearest; the weight and report fields."""
    g_c, g_o, note = quant_group(scheme, opts.get("quantize_group"), w.shape[1], n, m)
    info: dict[str, Any] = {"note": note} if note else {}
    pow2 = opts.get("quantize_pow2_round") or "floor"
    solved = None
    if hessian is not None and opts.get("gptq") is not False:
        solved = solve_weight(w, hessian, scheme=scheme, group=g_o, mask=kept, pow2_round=pow2)
        if solved is None:
            info["note"] = "; ".join(filter(None, [info.get("note"), ALL_ZERO_NOTE]))
    if solved is None:
        return encode_rtn(w, kept, n, m, scheme, g_c, opts), {**info, "quantized_with": "rtn"}
    info.update({k: solved.info[k] for k in ("damp", "tokens")}, quantized_with="gptq")
    if "note" in solved.info:
        info["note"] = "; ".join(filter(None, [info.get("note"), solved.info["note"]]))
    q = solved.quantizer
    return encode_nm_quantized(q.code_matrix(), kept, n, m, scheme, g_c, q.merged_params()), info


def quantize_survivors(graph: Graph, calibration: Sequence[Sequence[Tensor]], layer_ops: dict[str, Op],
                       schemes: dict[str, str], reference: Graph | None, opts: dict[str, Any],
                       swap: Callable[[str, Op, Weight, dict[str, Any]], None]) -> None:
    """Quantize the kept values of each plain `#nm` linear of `layer_ops` (name -> op) under `schemes[name]`,
    sequentially on the calibration data; `swap(name, op, encoded, info)` puts each result in place."""
    by_op = {id(op): name for name, op in layer_ops.items() if name in schemes}

    def solve(op: Op, hessian: Hessian | None) -> None:
        name = by_op[id(op)]
        weight = graph.weight(op.operands[1].producer.attrs["weight"])
        enc = weight.encoding
        encoded, info = encode_survivors(decode_nm(weight).float(), kept_mask(weight), enc.n, enc.m,
                                         schemes[name], hessian, opts)
        swap(name, op, encoded, info)

    ops = [layer_ops[n] for n in schemes if n in layer_ops]
    if opts.get("gptq") is False:
        for op in ops:
            solve(op, None)
        return
    run_stages(graph, calibration, ops, solve, reference=reference)
