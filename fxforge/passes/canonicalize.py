"""Canonicalization: small rewrite rules, run by the one greedy driver, that bring captured graphs to
the core op set the later passes look for.

Rule lists (each rule a few lines; `RULES` is their concatenation, in this order):
- `FOLD_RULES`: no-op cast/reshape/permute/expand/slice become their operand; reshape∘reshape and
  permute∘permute compose; an exact widening cast round trip (`f16 -> f32 -> f16`) disappears;
  `x * 1`, `x / 1`, `x - 0` by a scalar `full` become x when that keeps x's type (`x + 0` does not:
  `-0.0 + 0.0` is `+0.0`); a `cat` drops its operands of static size 0 along the cat dim (partial RoPE at
  the full rotary dim, Phi3: `cat(rope(x), x[..., D:])`); an unsqueeze of rank-1 integer index arithmetic
  moves to the op's operands (`sink_index_unsqueeze`: the decode mask's positions join the mask's kernel).
- `CAST_RULES` (`cast_rules.py`): a float cast of exact data movement (slice, reshape, permute, expand, cat, neg)
  whose sources are cast to that dtype anyway reads those casts: `cast(rotate(x))` -> `rotate(cast(x))` (ERNIE 4.5's
  interleaved RoPE in fp16, rotated in fp16 between casts: then RoPE of cast(x, f32), as `rope_forms` knows it).
- `HEAD_SPLIT_RULES` (`head_split_rules.py`): heads sliced out of a fused projection after its head split are a
  column slice before it: Falcon-7B's q, k, v, GPTBigCode's.
- `LINEAR_RULES` (`linear_rules.py`): `matmul(x, permute(const w, [1, 0]))` -> `linear(x, w)` for a 2-D const w;
  `add(linear(x, w), b)` with a rank-1 bias of w's output size -> `linear(x, w, b)`; the
  aot_autograd sandwich `reshape(linear(reshape(x, [M, K])), [*lead, N])` -> `linear(x)` on the
  unflattened input when x is `[*lead, K]` (the reshapes only merged and split leading dims), else
  `linear(reshape(x, [*lead, K]))` (e.g. attention heads merged into K before o_proj); `(a + f) + x` of two GEMMs'
  results and a residual -> `f + (a + x)` (`parallel_residual`: one add per GEMM epilogue); dynamo's bmm of
  attention heads `reshape(matmul(reshape(a, [B*H, m, k]), reshape(c, [B*H, k, n])), [B, H, m, n])` -> a batched
  matmul on [B, H, ...] views (`matmul_unflatten`: the JIT path's eager attention then becomes the attention op).
- `RMS_NORM_RULES`: Llama's written-out RMSNorm (Gemma 4's `pow(v, -0.5)` first made `rsqrt(v)`), in three steps
  that each keep the semantics exact (see `_rms_norm` in ir/optable.py): the fp32 core
  `xf * rsqrt(mean(xf^2, [-1], keepdim) + eps)` -> `rms_norm(xf)`; `cast(rms_norm(cast(x, f32)), x.dtype)` ->
  `rms_norm(x)` (exactly what rms_norm does with its casts); `w * rms_norm(x)` -> `rms_norm(x, w)` only when the product keeps x's type, i.e.
  the weight multiply already happened in x's dtype (an fp32 weight times an fp16 norm promotes to
  fp32, which rms_norm cannot express, so it is left alone); of an fp32 x by a 16-bit weight (GPT-OSS's norm, in
  fp32 between casts) the weight is cast to fp32 first, as the product promotes it, so the norm prologues' fp32-weight
  form (`norm_prologues.cast_norm_prologue`) takes it. eps is read through the `full`'s own
  dtype, exactly the scalar the add used. `rms_norm(x - mean(x, [-1], keepdim)[, w])` of an fp32 x ->
  `layer_norm(x[, w])` (Cohere's LayerNorm spelled out; the same math up to the order of the sums).
- `ACTIVATION_RULES`: `x * sigmoid(x)` -> `silu(x)`; `relu(x) * relu(x)` and `relu(x) ** 2` -> `relu2(x)`
  (squared ReLU, exact: relu rounds nothing, so one rounding of the square either way); HF's NewGELUActivation written
  out -> `gelu(x, approximate="tanh")` (the same formula; the kernels' rounding of it, within an ulp or so).
- `XIELU_RULES` (`xielu_rules.py`): HF's xIELU written out (Apertus) -> `xielu(x) {alpha_p, alpha_n, beta, eps}`,
  its scalars read from the graph once constant folding has evaluated their softplus.
- `ATTENTION_RULES` (`attention_rules.py`): HF's eager attention written out (matmul, scale, optional
  logit soft-cap, additive mask, softmax, matmul) -> `attention(q, k, v, mask?) {scale, softcap}`.
- `MOE_RULES` (`moe_rules.py`): HF's batched experts after a router (softmax, top-k, optional renormalisation) ->
  one `moe` op; an add of its result -> the op with the residual.

Decisions: the sandwich and bias rules need the inner linear (and the core rule its interior ops)
to be single use, so a rewrite never computes anything twice; views and casts of leaves may be
shared. Rules check dtypes and shapes themselves and return None when a rewrite would change a type.
"""

from __future__ import annotations

import math

import torch

from fxforge.ir.dtypes import DType
from fxforge.ir.graph import Graph, Op, Value
from fxforge.ir.ops import norm_axis
from fxforge.ir.types import TensorType
from fxforge.passes.attention_rules import ATTENTION_RULES
from fxforge.passes.cast_rules import CAST_RULES
from fxforge.passes.head_split_rules import HEAD_SPLIT_RULES
from fxforge.passes.linear_rules import LINEAR_RULES, has_rank
from fxforge.passes.manager import PassContext
from fxforge.passes.moe_rules import MOE_RULES
from fxforge.passes.rewriter import P, Rule, apply_rules, dims_match, rule, same_type
from fxforge.passes.xielu_rules import XIELU_RULES

# -- no-op folds and compositions ---------------------------------------------------------------------

_IDENTITY = {
    "cast": lambda op, x: True,
    "reshape": lambda op, x: True,
    "expand": lambda op, x: True,
    "permute": lambda op, x: tuple(op.attrs["dims"]) == tuple(range(x.type.rank)),
    "slice": lambda op, x: op.attrs["start"] == 0 and op.attrs["step"] == 1,
}


def _fold_noop(g: Graph, op: Op, b: dict[str, Value]) -> Value | None:
    x = b["x"]
    return x if same_type(op.result.type, x.type) and _IDENTITY[op.opcode](op, x) else None


FOLD_RULES: list[Rule] = [Rule(P.op(opcode, P.any("x")), _fold_noop, f"fold_noop_{opcode}") for opcode in _IDENTITY]


@rule(P.op("reshape", P.op("reshape", P.any("x"))))
def compose_reshape(g: Graph, op: Op, b: dict[str, Value]) -> Value | None:
    if same_type(op.result.type, b["x"].type):
        return b["x"]
    return g.insert_before(op, "reshape", [b["x"]], {"shape": op.attrs["shape"]}).result


@rule(P.op("permute", P.op("permute", P.any("x"), name="inner")))
def compose_permute(g: Graph, op: Op, b: dict[str, Value]) -> Value | None:
    inner = b["inner"].producer.attrs["dims"]
    dims = tuple(inner[d] for d in op.attrs["dims"])
    if dims == tuple(range(len(dims))):
        return b["x"]
    return g.insert_before(op, "permute", [b["x"]], {"dims": dims}).result


# (source, wider) pairs where source -> wider -> source is the identity on every value.
_EXACT_WIDENING = {
    (DType.f16, DType.f32), (DType.bf16, DType.f32), (DType.f16, DType.f64), (DType.bf16, DType.f64),
    (DType.f32, DType.f64), (DType.i8, DType.i16), (DType.i8, DType.i32), (DType.i8, DType.i64),
    (DType.i16, DType.i32), (DType.i16, DType.i64), (DType.i32, DType.i64),
}


@rule(P.op("cast", P.op("cast", P.any("x"), name="wide")))
def fold_widening_round_trip(g: Graph, op: Op, b: dict[str, Value]) -> Value | None:
    x, wide = b["x"], b["wide"]
    if op.attrs["dtype"] == x.type.dtype and (x.type.dtype, wide.type.dtype) in _EXACT_WIDENING:
        return x
    return None




@rule(P.op("cat"))
def cat_drop_empty(g: Graph, op: Op, b: dict[str, Value]) -> Value | None:
    """cat without its operands of static size 0 along the cat dim (partial rotary at full rotary dim:
    `cat(rope(x[..., :D]), x[..., D:])` of Phi3/StableLM-style RoPE): the rest's cat, or the one left."""
    dim = op.attrs["dim"] % op.result.type.rank
    kept = [v for v in op.operands if v.type.shape[dim] != 0]
    if len(kept) == len(op.operands) or not kept:
        return None
    if len(kept) == 1:
        return kept[0] if same_type(op.result.type, kept[0].type) else None
    return g.insert_before(op, "cat", kept, dict(op.attrs)).result


def _unit_dims_only(src: TensorType, dst: TensorType) -> bool:
    """dst is src with unit dims inserted or removed (an unsqueeze/squeeze reshape: a view either way)."""
    a, b = [d for d in src.shape if d != 1], [d for d in dst.shape if d != 1]
    return len(a) == len(b) and all(dims_match(x, y) for x, y in zip(a, b))


@rule(P.op("reshape", P.any("y")))
def sink_index_unsqueeze(g: Graph, op: Op, b: dict[str, Value]) -> Value | None:
    """unsqueeze(add(arange, start)) -> add(unsqueeze(arange), start) for integer index arithmetic over one non-unit
    dim (the decode mask's query positions): the pointwise op then reads views of its leaves and joins the pointwise tree
    that reads it (the mask: one kernel, not two). Operands of the op's shape get the reshape, rank-0 ones stay."""
    y = op.operands[0]
    p = y.producer
    if (p is None or p.opdef.kernel != "pointwise" or len(y.uses) != 1 or y.type.dtype.is_float
            or not _unit_dims_only(y.type, op.result.type) or any(y is o for o in g.outputs)):
        return None
    if sum(d != 1 for d in y.type.shape) > 1 or any(v.type.rank and not same_type(v.type, y.type) for v in p.operands):
        return None
    shape = op.attrs["shape"]
    xs = [v if v.type.rank == 0 else g.insert_before(op, "reshape", [v], {"shape": shape}).result for v in p.operands]
    return g.insert_before(op, p.opcode, xs, dict(p.attrs)).result


def _keep_x(g: Graph, op: Op, b: dict[str, Value]) -> Value | None:
    """x * 1, x / 1, x - 0 are x exactly (signed zeros and NaNs included) when the type is x's."""
    return b["x"] if same_type(op.result.type, b["x"].type) else None


FOLD_RULES += [
    compose_reshape, compose_permute, fold_widening_round_trip, cat_drop_empty, sink_index_unsqueeze,
    Rule(P.op("mul", P.any("x"), P.full(value=1), commutative=True), _keep_x, "fold_mul_one"),
    Rule(P.op("div", P.any("x"), P.full(value=1), rounding_mode=None), _keep_x, "fold_div_one"),
    Rule(P.op("sub", P.any("x"), P.full(value=0)), _keep_x, "fold_sub_zero"),
]

# -- linear ------------------------------------------------------------------------------------------


# -- rms_norm ----------------------------------------------------------------------------------------

_MEAN_SQ = P.op("mean", P.op("pow", P.any("xf"), P.full(value=2)), name="mean", keepdim=True, dtype=None)
_RMS_CORE = P.op("mul", P.any("xf"), P.op("rsqrt", P.op("add", _MEAN_SQ, P.full("eps"), commutative=True)),
                 commutative=True)


def _scalar(full: Value) -> float | None:
    """The number a rank-0/unit `full` holds, as its own dtype stores it."""
    value = full.producer.attrs["value"]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(torch.tensor(value, dtype=full.type.dtype.torch).item())


@rule(_RMS_CORE, single_use=True)
def rms_norm_core(g: Graph, op: Op, b: dict[str, Value]) -> Value | None:
    xf, mean = b["xf"], b["mean"]
    dims = mean.producer.attrs["dims"]
    if xf.type.dtype != DType.f32 or xf.type.rank == 0 or dims is None or len(dims) != 1:
        return None
    eps = _scalar(b["eps"])
    if norm_axis(dims[0], xf.type.rank) != xf.type.rank - 1 or eps is None or not same_type(op.result.type, xf.type):
        return None
    return g.insert_before(op, "rms_norm", [xf], {"eps": eps}).result


@rule(P.op("cast", P.op("rms_norm", P.op("cast", P.any("x"), dtype=DType.f32), name="norm", single_use=True)))
def rms_norm_casts(g: Graph, op: Op, b: dict[str, Value]) -> Value | None:
    x = b["x"]
    if op.attrs["dtype"] != x.type.dtype or not x.type.dtype.is_float or x.type.encoding is not None:
        return None
    return g.insert_before(op, "rms_norm", [x], {"eps": b["norm"].producer.attrs["eps"]}).result


@rule(P.op("mul", P.any("w", check=has_rank(1)), P.op("rms_norm", P.any("x"), name="norm", single_use=True),
           commutative=True))
def rms_norm_weight(g: Graph, op: Op, b: dict[str, Value]) -> Value | None:
    x, w = b["x"], b["w"]
    if not dims_match(w.type.shape[0], x.type.shape[-1]) or not same_type(op.result.type, x.type):
        return None
    if x.type.dtype == DType.f32 and w.type.dtype != DType.f32 and w.type.dtype.is_float:
        w = g.insert_before(op, "cast", [w], {"dtype": DType.f32}).result  # the product promotes it: exactly this
    return g.insert_before(op, "rms_norm", [x, w], {"eps": b["norm"].producer.attrs["eps"]}).result


# Cohere's LayerNorm written out (no bias): d = x - mean(x); d * rsqrt(mean(d^2) + eps) * w, which the rules
# above make rms_norm(x - mean(x, [-1], keepdim), w): a layer_norm of x (fp32: the rms_norm of d rounds nothing more)
_CENTERED = P.op("sub", P.any("x"), P.op("mean", P.any("x"), keepdim=True, dtype=None, name="mean"), name="d")


def _layer_norm_of_centered(g: Graph, op: Op, b: dict[str, Value]) -> Value | None:
    x, dims = b["x"], b["mean"].producer.attrs["dims"]
    if x.type.dtype != DType.f32 or x.type.rank == 0 or dims is None or len(dims) != 1:
        return None
    if norm_axis(dims[0], x.type.rank) != x.type.rank - 1 or not same_type(b["d"].type, x.type):
        return None
    return g.insert_before(op, "layer_norm", [x, *op.operands[1:]], {"eps": op.attrs["eps"]}).result


@rule(P.op("cast", P.op("rms_norm", P.op("cast", P.any("x"), dtype=DType.f32), P.any("w"), name="norm",
                        single_use=True)))
def rms_norm_fp32_weight(g: Graph, op: Op, b: dict[str, Value]) -> Value | None:
    """cast(rms_norm(cast(x, f32), w_f32), x.dtype) -> rms_norm(x, w_f32): the fp32 norm rounded once, what rms_norm
    of 16-bit x by an fp32 weight computes (`optable._rms_norm`)."""
    x, w = b["x"], b["w"]
    if (op.attrs["dtype"] != x.type.dtype or not x.type.dtype.is_float or x.type.dtype == DType.f32
            or w.type.dtype != DType.f32 or x.type.encoding is not None):
        return None
    return g.insert_before(op, "rms_norm", [x, w], {"eps": b["norm"].producer.attrs["eps"]}).result


def _layer_norm_casts(g: Graph, op: Op, b: dict[str, Value]) -> Value | None:
    """cast(layer_norm(cast(x, f32), [w, [b]]), x.dtype) -> layer_norm(x, [w, [b]]): LayerNorm of 16-bit x computes in
    fp32 and rounds once (`optable._layer_norm`), exactly this chain (OLMo's, Cohere's norms between casts)."""
    x, norm = b["x"], b["norm"].producer
    if op.attrs["dtype"] != x.type.dtype or not x.type.dtype.is_float or x.type.encoding is not None:
        return None
    return g.insert_before(op, "layer_norm", [x, *norm.operands[1:]], {"eps": norm.attrs["eps"]}).result


_LN_CASTS = [Rule(P.op("cast", P.op("layer_norm", P.op("cast", P.any("x"), dtype=DType.f32), *params, name="norm",
                                    single_use=True)), _layer_norm_casts, "layer_norm_casts")
             for params in ((), (P.any("w"),), (P.any("w"), P.any("b")))]

@rule(P.op("pow", P.any("x"), P.full(value=-0.5)))
def pow_rsqrt(g: Graph, op: Op, b: dict[str, Value]) -> Value | None:
    """x ** -0.5 (Gemma 4's RMSNorm) is rsqrt(x): torch's pow computes this exponent as rsqrt, the same bits."""
    x = b["x"]
    ok = x.type.dtype.is_float and same_type(op.result.type, x.type)
    return g.insert_before(op, "rsqrt", [x]).result if ok else None


RMS_NORM_RULES: list[Rule] = [pow_rsqrt, rms_norm_core, rms_norm_casts, rms_norm_fp32_weight, rms_norm_weight,
                               *_LN_CASTS] + [
    Rule(P.op("rms_norm", _CENTERED, *w), _layer_norm_of_centered, "layer_norm_centered", single_use=True)
    for w in ((), (P.any("w"),))]

# -- activations -------------------------------------------------------------------------------------


@rule(P.op("mul", P.any("x"), P.op("sigmoid", P.any("x"), single_use=True), commutative=True))
def silu(g: Graph, op: Op, b: dict[str, Value]) -> Value | None:
    if not same_type(op.result.type, b["x"].type):
        return None
    return g.insert_before(op, "silu", [b["x"]]).result


# squared ReLU (Arcee's MLP: `square(relu(y))`, aten.square lowered to mul): one activation the GEMM epilogue applies
_RELU = P.op("relu", P.any("x"), name="r", single_use=True)


def _relu2(g: Graph, op: Op, b: dict[str, Value]) -> Value | None:
    return g.insert_before(op, "relu2", [b["x"]]).result if same_type(op.result.type, b["x"].type) else None


# HF's NewGELUActivation (Phi, GPT-2): 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3))), gelu's tanh form
_CUBE = P.op("mul", P.op("pow", P.any("x"), P.full(value=3), single_use=True), P.full(value=0.044715), commutative=True,
             single_use=True)
_TANH = P.op("tanh", P.op("mul", P.op("add", P.any("x"), _CUBE, commutative=True, single_use=True),
                          P.full(value=math.sqrt(2 / math.pi)), commutative=True, single_use=True), single_use=True)
_NEW_GELU = P.op("mul", P.op("mul", P.any("x"), P.full(value=0.5), commutative=True, single_use=True),
                 P.op("add", _TANH, P.full(value=1), commutative=True, single_use=True), commutative=True)


def _gelu_tanh(g: Graph, op: Op, b: dict[str, Value]) -> Value | None:
    x = b["x"]
    if not same_type(op.result.type, x.type):
        return None
    return g.insert_before(op, "gelu", [x], {"approximate": "tanh"}).result


ACTIVATION_RULES: list[Rule] = [silu, Rule(P.op("mul", _RELU, P.any("r")), _relu2, "relu2_mul"),
                                Rule(P.op("pow", _RELU, P.full(value=2)), _relu2, "relu2_pow"),
                                Rule(_NEW_GELU, _gelu_tanh, "gelu_tanh_written_out")]

RULES: list[Rule] = (FOLD_RULES + CAST_RULES + HEAD_SPLIT_RULES + LINEAR_RULES + RMS_NORM_RULES + ACTIVATION_RULES
                     + XIELU_RULES + ATTENTION_RULES + MOE_RULES)


class Canonicalize:
    """Runs `RULES` (or the rules given) to a fixpoint; stats: rewrites per rule and their total."""

    name = "canonicalize"

    def __init__(self, rules: list[Rule] | None = None) -> None:
        self.rules = list(RULES if rules is None else rules)

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        counts = apply_rules(graph, self.rules, ctx.option("canonicalize.max_iterations", 20))
        ctx.stats["rewrites"] = counts
        ctx.stats["total"] = sum(counts.values())
        return graph
