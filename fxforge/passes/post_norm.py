"""The post-norm residual prologue rule (`fuse.py`'s gemm rule; the template: `templates/gemm_prologue.py` POST_NORM).

A post-norm decoder block (Gemma2/3, OLMo2, EXAONE 4) normalises a GEMM's output before the residual add:
`z = add(res, rms_norm(h, w))`, and the next GEMM reads z itself (OLMo2, EXAONE 4) or a norm of it (Gemma's
pre-feedforward norm, the final norm before the lm_head). The norm needs h's whole row, so the producing GEMM's
tile epilogue cannot take it; the consuming GEMM's load can: each of its programs normalises its own rows, and
the programs of the first column tile also store z, which the next residual add reads.

Decisions:
- Matched on the IR, whatever the model: the GEMM's input (or the input of its fused norm prologue) is an `add`
  one of whose operands is the single-use result of a `POST_NORMS` norm of a same-shape, same-dtype tensor, with a
  weight [K]; the other operand is the residual.
- Only the dense `linear` template has the step (`POST_NORM_GEMMS`); before the 4-bit decode GEMM the norm and
  the add stay a row kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

from fxforge.ir.graph import Graph, Op, Value
from fxforge.ir.types import dims_equal
from fxforge.passes.fusion_rules import kernel_types_ok, row_ok, same_shape, single_use

POST_NORMS = {"rms_norm": 2}  # the norms the step computes: opcode -> operand count (x, weight)
POST_NORM_GEMMS = ("linear",)  # the GEMM opcodes whose template has the step


@dataclass(frozen=True)
class PostNorm:
    """z = add(residual, norm(h, weight)): `norm` and `add` join the consuming GEMM's group."""

    norm: Op
    add: Op
    residual: Value

    @property
    def h(self) -> Value:
        return self.norm.operands[0]

    @property
    def z(self) -> Value:
        return self.add.result


def post_norm_prologue(op: Op, graph: Graph, pre_norm: Op | None) -> PostNorm | None:
    """The post-norm residual add whose result z the GEMM `op` reads, directly or through its fused norm
    prologue `pre_norm`, else None."""
    z = pre_norm.operands[0] if pre_norm is not None else op.operands[0]
    add = z.producer
    if op.opcode not in POST_NORM_GEMMS or add is None or add.opcode != "add" or not kernel_types_ok(add):
        return None
    for t, res in (add.operands, add.operands[::-1]):
        norm = t.producer
        if norm is None or POST_NORMS.get(norm.opcode) != len(norm.operands) or t is res:
            continue
        h, w = norm.operands
        ok = (
            single_use(t, graph)
            and row_ok(norm)
            and same_shape(h, z)
            and same_shape(res, z)
            and h.type.dtype == res.type.dtype == t.type.dtype == z.type.dtype
            and w.type.rank == 1
            and dims_equal(w.type.shape[0], z.type.shape[-1])
        )
        if ok:
            return PostNorm(norm, add, res)
    return None
