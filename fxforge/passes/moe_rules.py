"""HF's batched experts (`integrations/moe.batched_mm_experts_forward`, which the capture selects:
`frontend/experts.py`) and the router before them become one `moe` op (canonicalize's `MOE_RULES`; `ir/moe_ops.py`),
which `codegen/templates/moe.py` runs in two launches.

The chain, per token t and slot j of S = T * k rows (views and the optional casts left out):

    logits = linear(xn, Wr[, br]);  vals, idx = topk(softmax(logits)) [-> vals / sum(vals)]   (Mixtral, Qwen3-MoE, OLMoE)
                                    vals, idx = topk(logits) -> softmax(vals)                 (GraniteMoE, GPT-OSS)
    e = idx.flat;  up = bmm(W_gu[e], xn.repeat(k))[+ b_gu[e]];  a = act(gate(up), up(up))
    down = bmm(W_d[e], a)[+ b_d[e]];  y = sum_j(down * vals.flat)
 -> moe(x, [norm_w,] Wr, [br,] W_gu, [b_gu,] W_d[, b_d]) {k, renorm, norm, ...}

and `add(r, moe(...))` -> the same op with the residual (`residual=true`).

Decisions:
- Matched procedurally from the final sum, one small function per part (router, one bmm, activation): the chain's
  parts vary by architecture (bias or not, transposed weights, interleaved gate/up, the routing's order), a single
  pattern would be a product of the variants. Anything unrecognised leaves the chain as it is (torch externs and
  kernels: the same numbers, more launches).
- The RMSNorm producing the experts' input is taken into the op (`norm="rms"`, the kernel computes it per token)
  even when other ops read it too: computing it twice is cheaper than a launch.
- Only constant weights: expert weights that are graph inputs stay on the batched path.
"""

from __future__ import annotations

from typing import Any

from fxforge.ir.graph import Graph, Op, Value
from fxforge.passes.rewriter import P, Rule, dims_match, same_type
from fxforge.passes.xielu_rules import scalar_const, scalar_value

_VIEWS = ("reshape", "expand")
_DIV = ("aten.div_.Tensor", "aten.div.Tensor")
_ADD = ("aten.add_.Tensor", "aten.add.Tensor")


def _src(v: Value, skip: tuple[str, ...] = _VIEWS) -> Value:
    while v.producer is not None and v.producer.opcode in skip:
        v = v.producer.operands[0]
    return v


def _op(v: Value, opcode: str, externs: tuple[str, ...] = ()) -> Op | None:
    """v's producer if it is `opcode` (or an extern of one of `externs`, in-place or not, on two tensors)."""
    p = v.producer
    if p is None:
        return None
    if p.opcode == opcode or (p.opcode == "extern" and p.attrs.get("target") in externs and len(p.operands) == 2):
        return p
    return None


def _const(v: Value) -> bool:
    return v.producer is not None and v.producer.opcode == "const"


def _gathered(v: Value, e: Value) -> Value | None:
    """W when v = index_select(const W, e, dim=0) (through views), else None."""
    p = _op(_src(v), "index_select")
    if p is None or p.attrs["dim"] != 0 or _src(p.operands[1]) is not e or not _const(p.operands[0]):
        return None
    return p.operands[0]


def _expert_linear(v: Value, e: Value) -> dict[str, Any] | None:
    """{x, w, b, transposed} when v = bmm(W[e], x) or bmm(x, W[e]) (+ B[e]), through views."""
    b = None
    add = _op(_src(v), "add", _ADD)
    if add is not None:
        b = _gathered(add.operands[1], e)
        if b is None:
            return None
        v = add.operands[0]
    mm = _op(_src(v), "matmul")
    if mm is None:
        return None
    lhs, rhs = mm.operands
    w = _gathered(lhs, e)
    if w is not None and rhs.type.rank == 3 and rhs.type.shape[2] == 1:
        return dict(x=rhs, w=w, b=b, transposed=False)
    w = _gathered(rhs, e)
    if w is not None and lhs.type.rank == 3 and lhs.type.shape[1] == 1:
        return dict(x=lhs, w=w, b=b, transposed=True)
    return None


def _token_rows(v: Value, k: int) -> tuple[Value, Any] | None:
    """(x, T) when v = reshape(expand(reshape(x, [T, 1, H]), [T, k, H])): each token's row k times in a row, the
    order of the flat top-k slots (repeat_interleave; x.repeat(k, 1), slot-major, is not this)."""
    if k == 1:
        x = _src(v, ("reshape",))
        return x, x.type.shape[-2] if x.type.rank >= 2 else None
    r = _op(v, "reshape")
    ex = _op(r.operands[0], "expand") if r is not None else None
    if ex is None:
        return None
    src, rows = ex.operands[0], ex.result.type
    if rows.rank != 3 or src.type.rank != 3 or src.type.shape[1] != 1 or rows.shape[1] != k:
        return None
    return _src(src, ("reshape",)), rows.shape[0]


def _halves(g: Value, u: Value) -> tuple[Value, str] | None:
    """(up, layout) when g and u are the gate and up halves of one `up` [S, 2I]: concat or interleaved."""
    gs, us = _op(g, "slice"), _op(u, "slice")
    if gs is None or us is None or gs.operands[0] is not us.operands[0] or gs.attrs["dim"] not in (1, -1):
        return None
    up = gs.operands[0]
    n = up.type.shape[-1]
    a, b = gs.attrs, us.attrs
    if (a["start"], a["step"], b["start"], b["step"]) == (0, 2, 1, 2):
        return up, "interleaved"
    if a["step"] == b["step"] == 1 and a["start"] == 0 and 2 * a["end"] == n and b["start"] == a["end"]:
        return up, "concat"
    return None


def _pairs(op: Op) -> list[tuple[Value, Value]]:
    a, b = op.operands
    return [(a, b), (b, a)]


def _gated(a: Value) -> dict[str, Any] | None:
    """{up, gate_up, act[, limit, alpha]} of the experts' activation a [S, I]."""
    m = _op(a, "mul")
    if m is None:
        return None
    for g, u in _pairs(m):
        act = _op(g, "silu") or _op(g, "gelu")
        if act is not None and (act.opcode == "silu" or act.attrs.get("approximate") == "tanh"):
            halves = _halves(act.operands[0], u)
            if halves:
                return dict(up=halves[0], gate_up=halves[1], act="silu" if act.opcode == "silu" else "gelu_tanh")
    return _gpt_oss(m)


def _gpt_oss(m: Op) -> dict[str, Any] | None:
    """GPT-OSS: (clamp(u, -L, L) + 1) * (g * sigmoid(alpha * g)), g = clamp(g, max=L)."""
    for plus, glu in _pairs(m):
        add, mul = _op(plus, "add"), _op(glu, "mul")
        if add is None or mul is None:
            continue
        for uc, one in _pairs(add):
            cu = _op(uc, "clamp")
            if cu is None or not scalar_const(one) or scalar_value(m.graph, one) != 1.0:
                continue
            for gc, sig in _pairs(mul):
                cg, s = _op(gc, "clamp"), _op(sig, "sigmoid")
                inner = _op(s.operands[0], "mul") if s is not None else None
                if cg is None or inner is None or cg.attrs["min"] is not None:
                    continue
                for g2, alpha in _pairs(inner):
                    limit = cg.attrs["max"]
                    if (g2 is gc and scalar_const(alpha) and cu.attrs["max"] == limit and cu.attrs["min"] == -limit
                            and (halves := _halves(cg.operands[0], cu.operands[0]))):
                        return dict(up=halves[0], gate_up=halves[1], act="gpt_oss", limit=float(limit),
                                    alpha=scalar_value(m.graph, alpha))
    return None


def _router(w: Value, e: Value) -> dict[str, Any] | None:
    """{xr, wr, br, k, renorm} when the routing weights w [S] and expert ids e [S] come from one topk of a router."""
    tk = _op(_src(e), "topk")
    if tk is None or _src(e) is not tk.results[1] or tk.attrs["dim"] not in (-1, 1) or not tk.attrs["largest"]:
        return None
    vals, w = tk.results[0], _src(w, _VIEWS + ("cast",))
    div, sm = _op(w, "div", _DIV), _op(w, "softmax")
    if w is vals:
        renorm, probs = False, _op(tk.operands[0], "softmax")
    elif div is not None and div.operands[0] is vals and _op(div.operands[1], "sum") is not None:
        renorm, probs = True, _op(tk.operands[0], "softmax")
        if _op(div.operands[1], "sum").operands[0] is not vals:
            return None
    elif sm is not None and sm.operands[0] is vals:
        renorm, probs = True, None
    else:
        return None
    logits = _src(probs.operands[0], ("cast",)) if probs is not None else tk.operands[0]
    if renorm and probs is None and _op(tk.operands[0], "softmax") is not None:
        return None  # softmax(topk(softmax(.))): not a router this op knows
    lin = _op(_src(logits, ("cast",)), "linear")
    if lin is None or not all(_const(v) for v in lin.operands[1:]):
        return None
    return dict(xr=_src(lin.operands[0], ("reshape",)), wr=lin.operands[1], br=lin.operands[2] if len(lin.operands) > 2 else None,
                k=tk.attrs["k"], renorm=renorm)


def _moe(g: Graph, root: Op, b: dict[str, Value]) -> Value | None:
    """sum_j(down * w) over the slots of a [T, k, H] view -> moe(...)."""
    m = _op(_src(root.operands[0], _VIEWS + ("cast",)), "mul")
    slots = root.operands[0].type  # [T, k, H]
    for d, w in _pairs(m) if m is not None else []:
        down = _down_of(d)
        router = _router(w, down["e"]) if down else None
        a = _gated(_src(down["x"], ("reshape",))) if router else None
        up = _expert_linear(a["up"], down["e"]) if a else None
        rows = _token_rows(up["x"], router["k"]) if up else None
        if (rows is None or up["transposed"] != down["transposed"] or (up["b"] is None) != (down["b"] is None)
                or rows[0] is not router["xr"] or slots.rank != 3 or slots.shape[1] != router["k"]
                or not dims_match(slots.shape[0], rows[1])):
            continue
        return _build(g, root, router, up, down, a)
    return None


def _down_of(d: Value) -> dict[str, Any] | None:
    """The experts' down bmm d (+ bias) and its expert ids e (the flat topk indices its weight is gathered by)."""
    v = _src(d, _VIEWS + ("cast",))
    add = _op(v, "add", _ADD)
    mm = _op(_src(add.operands[0] if add is not None else v), "matmul")
    for w in mm.operands if mm is not None else []:
        p = _op(_src(w), "index_select")
        got = _expert_linear(v, _src(p.operands[1])) if p is not None else None
        if got:
            return dict(got, e=_src(p.operands[1]))
    return None


def _weighted_rms_norm(x: Value) -> tuple[Value, Value, float] | None:
    """(input, weight, eps) when x = rms_norm(x0, w), or x = cast(rms_norm(cast(x0, f32), w), x0's dtype) (the norm in
    fp32, weight included, rounded once: GPT-OSS's, Gemma's): the op's norm computes the latter; the former it
    rounds once too, where the chain rounded before the weight."""
    p = x.producer
    if p is not None and p.opcode == "cast":
        inner = p.operands[0].producer
        src = inner.operands[0].producer if inner is not None and inner.opcode == "rms_norm" else None
        if src is not None and src.opcode == "cast" and src.operands[0].type.dtype == x.type.dtype:
            p, x0 = inner, src.operands[0]
        else:
            return None
    elif p is not None and p.opcode == "rms_norm":
        x0 = p.operands[0]
    else:
        return None
    return (x0, p.operands[1], float(p.attrs["eps"])) if len(p.operands) == 2 else None


def _build(g: Graph, root: Op, router: dict, up: dict, down: dict, a: dict) -> Value | None:
    x = router["xr"]
    norm = _weighted_rms_norm(x)
    attrs: dict[str, Any] = dict(k=router["k"], renorm=router["renorm"], router_bias=router["br"] is not None,
                                 expert_bias=up["b"] is not None, act=a["act"], gate_up=a["gate_up"],
                                 transposed=up["transposed"])
    if "limit" in a:
        attrs.update(limit=a["limit"], alpha=a["alpha"])
    operands = []
    if norm is not None:
        x, w, eps = norm
        attrs.update(norm="rms", eps=eps)
        operands = [w]
    t, h = root.result.type.shape
    if x.type.rank != 2:
        x = g.insert_before(root, "reshape", [x], {"shape": [t, h]}).result
    operands = [x, *operands, router["wr"], *([router["br"]] if router["br"] is not None else []),
                up["w"], *([up["b"]] if up["b"] is not None else []), down["w"],
                *([down["b"]] if down["b"] is not None else [])]
    y = g.insert_before(root, "moe", operands, attrs).result
    if y.type.dtype != root.result.type.dtype:
        y = g.insert_before(root, "cast", [y], {"dtype": root.result.type.dtype}).result
    return y


def _residual(g: Graph, root: Op, b: dict[str, Value]) -> Value | None:
    """add(r, moe(...)) (through a view of the moe result) -> moe(..., r) {residual=true}."""
    for r, v in _pairs(root):
        moe = _op(_src(v), "moe")
        if (moe is None or moe.attrs["residual"] or len(moe.result.uses) != 1 or len(_src(v).uses) != 1
                or not (same_type(r.type, root.result.type) and same_type(v.type, root.result.type))):  # no broadcast
            continue
        res = r if r.type.rank == 2 else g.insert_before(root, "reshape", [r], {"shape": list(moe.result.type.shape)}).result
        y = g.insert_before(root, "moe", [*moe.operands, res], {**moe.attrs, "residual": True}).result
        if root.result.type.rank != 2:
            y = g.insert_before(root, "reshape", [y], {"shape": list(root.result.type.shape)}).result
        return y
    return None


def _slot_sum(v: Value) -> bool:
    dims = v.producer.attrs.get("dims")
    return v.type.rank == 2 and tuple(dims or ()) in ((1,), (-2,)) and not v.producer.attrs.get("keepdim")


MOE_RULES: list[Rule] = [Rule(P.op("sum", P.any("s"), check=_slot_sum), _moe, "moe"),
                         Rule(P.op("add", P.any("a"), P.any("b")), _residual, "moe_residual")]
