"""The norms a dense or 4-bit GEMM's load computes (`fuse.py`'s gemm rule; the templates: `templates/gemm_prologue.py`,
`qlinear_decode_fuse.py`): the norm producing its input (`NORM_PROLOGUES`, `norm_prologue`; Gemma's fp32-weighted
16-bit form, `cast_norm_prologue`; `norm_ops` picks), and a post-norm residual add before it (POST_NORM, below).

A post-norm decoder block (Gemma2/3, OLMo2, EXAONE 4) normalises a GEMM's output before the residual add:
`z = add(res, rms_norm(h, w))`, and the next GEMM reads z itself (OLMo2, EXAONE 4) or a norm of it (Gemma's
pre-feedforward norm, the final norm before the lm_head). The norm needs h's whole row, so the producing GEMM's
tile epilogue cannot take it; the consuming GEMM's load can: each of its programs normalises its own rows, and
the programs of the first column tile also store z, which the next residual add reads.

Decisions:
- Matched on the IR, whatever the model: the GEMM's input (or the input of its fused norm prologue) is an `add`
  one of whose operands is the single-use result of a `POST_NORMS` norm of a same-shape, same-dtype tensor, with a
  weight [K]; the other operand is the residual.
- The dense `linear` template has the step, and the 4-bit decode GEMM (`POST_NORM_GEMMS`: a `qlinear` whose
  weight is in a decode layout, `decode_fusions_ok`; `qlinear_decode_fuse.prologue_rows`); before any other
  qlinear the norm and the add stay a row kernel.
- The same step without the add: z = rms_norm(h[, w]) when the GEMM's fused norm prologue normalises z again (a
  norm of a norm, `PRE_NORMS`: NanoChat normalises the embedding, the residual stream starts from that z, and its
  first layer's input norm is a norm of it), only then: a norm the GEMM reads directly is its norm prologue.
"""

from __future__ import annotations

from dataclasses import dataclass

from fxforge.ir.dtypes import DType
from fxforge.ir.graph import Graph, Op, Value
from fxforge.ir.types import dims_equal
from fxforge.passes.fusion_rules import decode_fusions_ok, kernel_types_ok, row_ok, same_shape, single_use

POST_NORMS = {"rms_norm": 2}  # the norms the step computes: opcode -> operand count (x, weight)
PRE_NORMS = {"rms_norm": (1, 2)}  # the norms of a norm's input it computes (z = norm(h[, w])): operand counts
POST_NORM_GEMMS = ("linear", "qlinear")  # the GEMM opcodes whose template has the step (qlinear: the decode kernel)


@dataclass(frozen=True)
class PostNorm:
    """z = add(residual, norm(h, weight)), or z = norm(h[, weight]) itself (no add, no residual): `norm` and `add`
    join the consuming GEMM's group."""

    norm: Op
    add: Op | None
    residual: Value | None

    @property
    def h(self) -> Value:
        return self.norm.operands[0]

    @property
    def weight(self) -> Value | None:
        return self.norm.operands[1] if len(self.norm.operands) > 1 else None

    @property
    def z(self) -> Value:
        return self.add.result if self.add is not None else self.norm.result

    @property
    def ops(self) -> list[Op]:
        return [self.norm] + ([self.add] if self.add is not None else [])

    @property
    def reads(self) -> list[Value]:
        """What the template reads for the step: h, the weight, the residual (those there are)."""
        return [v for v in (self.h, self.weight, self.residual) if v is not None]


def post_norm_prologue(op: Op, graph: Graph, norm_x: Value | None, norm: Op | None = None) -> PostNorm | None:
    """The post-norm residual add whose result z the GEMM `op` reads, directly or as `norm_x`, the input of its fused
    norm prologue `norm` (`norm_ops`), or that norm's own input z = rms_norm(h[, w]) (a norm of a norm: NanoChat's
    norm after the embedding, which its first layer's input norm normalises again), else None. The 4-bit decode
    kernel's LayerNorm prologue takes none."""
    z = norm_x if norm_x is not None else op.operands[0]
    add = z.producer
    if op.opcode not in POST_NORM_GEMMS or not decode_fusions_ok(op) or add is None:
        return None
    if op.opcode == "qlinear" and norm is not None and norm.opcode == "layer_norm":
        return None
    if norm_x is not None and len(add.operands) in PRE_NORMS.get(add.opcode, ()):
        return _pre_norm(add)
    if add.opcode != "add" or not kernel_types_ok(add):
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


def _pre_norm(norm: Op) -> PostNorm | None:
    """z = norm(h[, w[K]]) of h's dtype, a row kernel's norm: the step without its add (z is stored where read
    elsewhere, as the post-norm add's is)."""
    h, z = norm.operands[0], norm.result
    w = norm.operands[1:]
    ok = row_ok(norm) and same_shape(h, z) and h.type.dtype == z.type.dtype and kernel_types_ok(norm)
    ok = ok and all(v.type.rank == 1 and dims_equal(v.type.shape[0], z.type.shape[-1]) for v in w)
    return PostNorm(norm, None, None) if ok else None


# the norms a GEMM's load computes (`gemm.py` HAS_NORM): opcode -> operand count -> the GEMM opcodes whose template
# has that prologue. RMSNorm with or without a weight (NanoChat's has none: the dense GEMM's HAS_NW, the 4-bit decode
# kernel's norm_ptr None); LayerNorm with its weight and bias optional (the 4-bit decode kernel's since session 18)
NORM_PROLOGUES = {"rms_norm": {1: ("linear", "qlinear"), 2: ("linear", "qlinear")},
                  "layer_norm": {1: ("linear", "qlinear"), 2: ("linear", "qlinear"), 3: ("linear", "qlinear")}}


def norm_prologue(op: Op, graph: Graph, shared: bool = False) -> Op | None:
    """The norm (`NORM_PROLOGUES`: `rms_norm(x[, w])`, `layer_norm(x[, w[, b]])`) producing the GEMM's input that its
    load can compute: a row-kernel norm whose single-use result has x's dtype, with its weight (and bias) [K];
    `shared`: whatever its other uses (`norm_copies` then gives each GEMM reader its own copy)."""
    y = op.operands[0]
    p = y.producer
    if not decode_fusions_ok(op) or p is None or p.opcode not in NORM_PROLOGUES:
        return None
    gemms = NORM_PROLOGUES[p.opcode].get(len(p.operands), ())
    if op.opcode not in gemms or not (shared or single_use(y, graph)) or not row_ok(p):
        return None
    x, *params = p.operands
    ok = x.type.dtype == y.type.dtype and all(w.type.rank == 1 and dims_equal(w.type.shape[0], x.type.shape[-1])
                                              for w in params)
    return p if ok and x.type.rank >= 1 else None


def cast_norm_prologue(op: Op, graph: Graph) -> list[Op] | None:
    """[cast out, rms_norm, cast in] when the GEMM's 16-bit input is cast(rms_norm(cast(x, f32), w), x.dtype) with an
    fp32 weight [K] (Gemma's RMSNorm: (1 + w) multiplies in fp32 before the one rounding), all single use: the
    templates' norm prologue computes it from x with an fp32 weight (`gemm_prologue.rms_scale` ONE_ROUNDING)."""
    y = op.operands[0]
    out = y.producer
    if not decode_fusions_ok(op) or out is None or out.opcode != "cast" or not single_use(y, graph):
        return None
    norm = out.operands[0].producer
    if norm is None or norm.opcode != "rms_norm" or len(norm.operands) != 2 or not single_use(norm.result, graph):
        return None
    (xf, w), cast_in = norm.operands, norm.operands[0].producer
    if cast_in is None or cast_in.opcode != "cast" or not single_use(xf, graph) or not row_ok(norm):
        return None
    x = cast_in.operands[0]
    ok = xf.type.dtype == w.type.dtype == DType.f32 and x.type.dtype == y.type.dtype and x.type.dtype.bits == 16
    ok = ok and w.type.rank == 1 and x.type.rank >= 1 and dims_equal(w.type.shape[0], x.type.shape[-1])
    return [out, norm, cast_in] if ok and x.type.dtype.is_float else None


def norm_ops(op: Op, graph: Graph) -> tuple[Op, Value, list[Op]] | None:
    """The GEMM's norm prologue (`norm_prologue`, or `cast_norm_prologue`'s fp32-weight form): (the norm, the input
    the template reads, the ops the kernel computes)."""
    norm = norm_prologue(op, graph)
    if norm is not None:
        return norm, norm.operands[0], [norm]
    ops = cast_norm_prologue(op, graph)
    return (ops[1], ops[2].operands[0], ops) if ops else None
