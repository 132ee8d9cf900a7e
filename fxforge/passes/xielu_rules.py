"""HF's xIELU activation written out (Apertus' MLP, `XIELUActivation._xielu_python`) becomes one `xielu` op
(canonicalize's `XIELU_RULES`), which the dense GEMM computes in its epilogue (`fusion_rules.epilogue_activation`).

The python path captures as (x the up projection's result; a_p, a_n learned [1] parameters, beta and eps
buffers):

    where(x > 0, softplus(a_p) * x * x + beta * x, (expm1(min(x, eps)) - x) * (beta + softplus(a_n)) + beta * x)

and, once constant folding has evaluated the parameters' softplus (the second canonicalize run), every scalar is a
one-element `full` or `const`:

    where(gt(x, 0), add(mul(mul(AP, x), x), mul(B, x)), add(mul(sub(expm1(minimum(x, E)), x), AN), mul(B, x)))
 -> xielu(x) {alpha_p=AP, alpha_n=AN, beta=B, eps=E}

Decisions:
- The scalars are read from the graph (a `full`'s value through its dtype, a `const`'s weight), never assumed:
  any learned values match. A scalar of another form (a non-constant, more than one element) leaves the chain as
  it is: pointwise ops in one kernel, the same numbers.
- The match asks x's dtype of the result and of every scalar (a wider scalar would promote the product), and
  every interior op single use (a branch read elsewhere stays).
- In fp32 the op computes exactly the chain's ops in their order (`optable._xielu`); in f16/bf16 it computes in
  fp32 and rounds once, as the GEMM epilogue does, where the chain rounded per op.
"""

from __future__ import annotations

import torch

from fxforge.ir.graph import Graph, Op, Value
from fxforge.ir.optable import ACTIVATION_PARAMS
from fxforge.passes.rewriter import P, Rule, same_type


def scalar_const(v: Value) -> bool:
    """A one-element `full` or `const` of a float dtype (a scalar the rule can read)."""
    p = v.producer
    return (p is not None and p.opcode in ("full", "const") and v.type.dtype.is_float and v.type.is_static
            and all(d == 1 for d in v.type.shape))


def scalar_value(g: Graph, v: Value) -> float:
    """The number a `scalar_const` value holds, as its dtype holds it."""
    p = v.producer
    if p.opcode == "const":
        return float(g.weight(p.attrs["weight"]).data.reshape(-1)[0].item())
    return float(torch.tensor(p.attrs["value"], dtype=v.type.dtype.torch).item())


def _s(name: str) -> P:
    return P.any(name, check=scalar_const)


_X = P.any("x")
_BETA_X = P.op("mul", _s("beta"), _X, commutative=True)
_POSITIVE = P.op("add", P.op("mul", P.op("mul", _s("alpha_p"), _X, commutative=True), _X, commutative=True), _BETA_X,
                 commutative=True)
_EXPM1 = P.op("expm1", P.op("minimum", _X, _s("eps"), commutative=True))
_NEGATIVE = P.op("add", P.op("mul", P.op("sub", _EXPM1, _X), _s("alpha_n"), commutative=True), _BETA_X, commutative=True)
_XIELU = P.op("where", P.op("gt", _X, P.full(value=0)), _POSITIVE, _NEGATIVE)


def _xielu(g: Graph, op: Op, b: dict[str, Value]) -> Value | None:
    x = b["x"]
    names = ACTIVATION_PARAMS["xielu"]
    if not same_type(op.result.type, x.type) or any(b[k].type.dtype != x.type.dtype for k in names):
        return None
    return g.insert_before(op, "xielu", [x], {k: scalar_value(g, b[k]) for k in names}).result


XIELU_RULES: list[Rule] = [Rule(_XIELU, _xielu, "xielu", single_use=True)]
