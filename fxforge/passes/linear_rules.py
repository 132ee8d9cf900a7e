"""Canonicalize's GEMM-shaped rules (`LINEAR_RULES`; the docstring of `canonicalize.py` lists them): a matmul by a
transposed 2-D weight is `linear`, a bias add joins it, aot_autograd's and dynamo's reshape sandwiches around a
linear or a batched matmul are taken off, and a parallel block's residual is reassociated onto one GEMM."""

from __future__ import annotations

from fxforge.ir.graph import Graph, Op, Value
from fxforge.ir.ops import prod
from fxforge.passes.rewriter import P, Rule, dims_match, rule, same_type


def has_rank(n: int):
    """A value check: rank n (a pattern's `check=`)."""
    return lambda v: v.type.rank == n


@rule(P.op("matmul", P.any("x"), P.op("permute", P.const("w", check=has_rank(2)), dims=(1, 0))))
def matmul_to_linear(g: Graph, op: Op, b: dict[str, Value]) -> Value | None:
    x, w = b["x"], b["w"]
    if x.type.dtype != w.type.dtype or w.type.encoding is not None:
        return None
    return g.insert_before(op, "linear", [x, w]).result


@rule(P.op("add", P.op("linear", P.any("x"), P.any("w"), single_use=True), P.any("bias", check=has_rank(1)),
           commutative=True))
def linear_bias(g: Graph, op: Op, b: dict[str, Value]) -> Value | None:
    x, w, bias = b["x"], b["w"], b["bias"]
    if bias.type.dtype != x.type.dtype or not dims_match(bias.type.shape[0], w.type.shape[0]):
        return None
    if not same_type(op.result.type, x.type.with_shape(x.type.shape[:-1] + (w.type.shape[0],))):
        return None
    return g.insert_before(op, "linear", [x, w, bias]).result


def _unflatten_linear(g: Graph, op: Op, b: dict[str, Value]) -> Value | None:
    """reshape(linear(reshape(x, [M, K]), w, b?), [*lead, N]) -> linear(x', w, b?) with x' = x when x is
    [*lead, K], else reshape(x, [*lead, K]): linear works row by row, and both reshapes keep the rows
    in row-major order, so only the leading dims change."""
    x, flat = b["x"], b["flat"]
    target = op.result.type.shape
    k = flat.type.shape[-1]
    if not dims_match(prod(target[:-1]), prod(flat.type.shape[:-1])):
        return None
    want = tuple(target[:-1]) + (k,)
    if not same_type(x.type.with_shape(want), x.type):
        x = g.insert_before(op, "reshape", [x], {"shape": want}).result
    operands = [x, b["w"]] + ([b["bias"]] if "bias" in b else [])
    return g.insert_before(op, "linear", operands).result


def _of_gemm(v: Value) -> bool:
    return v.producer is not None and v.producer.opcode in ("linear", "qlinear")


@rule(P.op("add", P.op("add", P.any("a"), P.any("f"), name="inner", single_use=True), P.any("x"), commutative=True))
def parallel_residual(g: Graph, op: Op, b: dict[str, Value]) -> Value | None:
    """(a + f) + x of two GEMMs' results and a residual (Phi's, GPT-J's parallel block) -> f + (a + x): each GEMM's
    epilogue then takes one add (a reassociation: the sum's rounding may differ by an ulp)."""
    a, f, x = b["a"], b["f"], b["x"]
    if not (_of_gemm(a) and _of_gemm(f)) or _of_gemm(x) or not all(same_type(v.type, op.result.type) for v in (a, f, x)):
        return None
    return g.insert_before(op, "add", [f, g.insert_before(op, "add", [a, x]).result]).result


def _unflatten_matmul(g: Graph, op: Op, b: dict[str, Value]) -> Value | None:
    """reshape(matmul(reshape(a, [BH, m, k]), reshape(c, [BH, k, n])), [B, H, m, n]) -> matmul(a', c') with a', c'
    the operands viewed [B, H, m, k] / [B, H, k, n] (dynamo's bmm of attention heads: q k^T and p v): a batched
    matmul works batch by batch, and the reshapes only merge and split the leading dims. 4-D results only (the
    batched experts' [S, 2I, 1] products, squeezed, stay for `moe_rules`)."""
    fa, fb = b["fa"], b["fb"]
    out, mm = op.result.type.shape, op.operands[0].type.shape
    if len(out) != 4 or len(mm) != 3 or not dims_match(out[0] * out[1], mm[0]):
        return None
    if not (dims_match(out[2], mm[1]) and dims_match(out[3], mm[2])):
        return None
    views = [v if same_type(v.type, v.type.with_shape(s)) else g.insert_before(op, "reshape", [v], {"shape": s}).result
             for v, s in ((b["a"], (*out[:2], *fa.type.shape[1:])), (b["c"], (*out[:2], *fb.type.shape[1:])))]
    return g.insert_before(op, "matmul", views).result


_FLAT = P.op("reshape", P.any("x"), name="flat")
LINEAR_RULES: list[Rule] = [
    Rule(P.op("reshape", P.op("matmul", P.op("reshape", P.any("a"), name="fa"), P.op("reshape", P.any("c"), name="fb"),
                              single_use=True)), _unflatten_matmul, "matmul_unflatten"),
    matmul_to_linear,
    linear_bias,
    parallel_residual,
    Rule(P.op("reshape", P.op("linear", _FLAT, P.any("w"), single_use=True)), _unflatten_linear, "linear_unflatten"),
    Rule(P.op("reshape", P.op("linear", _FLAT, P.any("w"), P.any("bias"), single_use=True)), _unflatten_linear,
         "linear_unflatten"),
]
