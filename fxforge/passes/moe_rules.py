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
- The RMSNorm (or bias-free LayerNorm: Cohere 2 MoE's) producing the experts' input is taken into the op
  (`norm="rms"` / "layer", the kernel computes it per token) even when other ops read it too: computing it twice is
  cheaper than a launch.
- Only constant weights: expert weights that are graph inputs stay on the batched path.
- Not a router whose experts tie on every token (`_always_ties`): the op breaks ties by the lowest index, torch.topk
  by its own order, so a zero-initialised router would choose other experts than eager's.
"""

from __future__ import annotations

from typing import Any

import torch

from fxforge.ir.graph import Graph, Op, Value
from fxforge.ir.moe_ops import by_role
from fxforge.passes.moe_match import (
    ADD,
    DIV,
    VIEWS,
    gate_up_halves,
    is_const,
    op_of,
    pairs,
    src,
    upcast_src,
    weighted_norm,
)
from fxforge.passes.moe_shared import shared_experts
from fxforge.passes.rewriter import P, Rule, dims_match, same_type
from fxforge.passes.xielu_rules import scalar_const, scalar_value


def _gathered(v: Value, e: Value) -> Value | None:
    """W when v = index_select(const W, e, dim=0) (through views), else None."""
    p = op_of(src(v), "index_select")
    if p is None or p.attrs["dim"] != 0 or src(p.operands[1]) is not e or not is_const(p.operands[0]):
        return None
    return p.operands[0]


def _expert_linear(v: Value, e: Value) -> dict[str, Any] | None:
    """{x, w, b, transposed} when v = bmm(W[e], x) or bmm(x, W[e]) (+ B[e]), through views."""
    b = None
    add = op_of(src(v), "add", ADD)
    if add is not None:
        b = _gathered(add.operands[1], e)
        if b is None:
            return None
        v = add.operands[0]
    mm = op_of(src(v), "matmul")
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
        x = src(v, ("reshape",))
        return x, x.type.shape[-2] if x.type.rank >= 2 else None
    r = op_of(v, "reshape")
    ex = op_of(r.operands[0], "expand") if r is not None else None
    if ex is None:
        return None
    one, rows = ex.operands[0], ex.result.type
    if rows.rank != 3 or one.type.rank != 3 or one.type.shape[1] != 1 or rows.shape[1] != k:
        return None
    return src(one, ("reshape",)), rows.shape[0]


def _gated(a: Value) -> dict[str, Any] | None:
    """{up, gate_up, act[, limit, alpha]} of the experts' activation a [S, I]."""
    m = op_of(a, "mul")
    if m is None:
        return None
    for g, u in pairs(m):
        act = op_of(g, "silu") or op_of(g, "gelu")
        if act is not None and (act.opcode == "silu" or act.attrs.get("approximate") == "tanh"):
            halves = gate_up_halves(act.operands[0], u)
            if halves:
                return dict(up=halves[0], gate_up=halves[1], act="silu" if act.opcode == "silu" else "gelu_tanh")
    return _gpt_oss(m)


def _gpt_oss(m: Op) -> dict[str, Any] | None:
    """GPT-OSS: (clamp(u, -L, L) + 1) * (g * sigmoid(alpha * g)), g = clamp(g, max=L)."""
    for plus, glu in pairs(m):
        add, mul = op_of(plus, "add"), op_of(glu, "mul")
        if add is None or mul is None:
            continue
        for uc, one in pairs(add):
            cu = op_of(uc, "clamp")
            if cu is None or not scalar_const(one) or scalar_value(m.graph, one) != 1.0:
                continue
            for gc, sig in pairs(mul):
                cg, s = op_of(gc, "clamp"), op_of(sig, "sigmoid")
                inner = op_of(s.operands[0], "mul") if s is not None else None
                if cg is None or inner is None or cg.attrs["min"] is not None:
                    continue
                for g2, alpha in pairs(inner):
                    limit = cg.attrs["max"]
                    if (g2 is gc and scalar_const(alpha) and cu.attrs["max"] == limit and cu.attrs["min"] == -limit
                            and (halves := gate_up_halves(cg.operands[0], cu.operands[0]))):
                        return dict(up=halves[0], gate_up=halves[1], act="gpt_oss", limit=float(limit),
                                    alpha=scalar_value(m.graph, alpha))
    return None


def _router(w: Value, e: Value) -> dict[str, Any] | None:
    """{xr, wr, br, cb, k, renorm, score, renorm_eps, renorm_min, scale, groups, top_groups, group_fill} when the
    routing weights w [S] and expert ids e [S] come from one topk of a router: topk of its scores (softmax or
    sigmoid), softmax of its top-k logits, or (a choice bias) the scores gathered at the topk of scores + bias;
    then optionally divided by their sum and scaled."""
    tk = op_of(src(e), "topk")
    if tk is None or src(e) is not tk.results[1] or tk.attrs["dim"] not in (-1, 1) or not tk.attrs["largest"]:
        return None
    w = src(w, VIEWS + ("cast",))
    out: dict[str, Any] = dict(k=tk.attrs["k"], renorm=False, renorm_eps=0.0, renorm_min=0.0, scale=1.0, cb=None,
                               groups=1, top_groups=1, group_fill=float("-inf"))
    if (scaled := op_of(w, "mul")) is not None:
        for v, c in pairs(scaled):
            if scalar_const(c):
                w, out["scale"] = src(v, ("cast",)), scalar_value(scaled.graph, c)
                break
        else:
            return None
    if (div := op_of(w, "div", DIV)) is not None:
        den = _denominator(div.operands[1], div.operands[0])
        if den is None:
            return None
        w = src(div.operands[0], ("cast",))
        out.update(renorm=True, **den)
    vals, sm, gather = tk.results[0], op_of(w, "softmax"), op_of(w, "gather")
    if w is vals:  # topk of the scores
        scores = _scores(tk.operands[0])
    elif sm is not None and upcast_src(sm.operands[0]) is vals and not out["renorm"]:  # softmax of the top-k logits
        if _scores(tk.operands[0]) is not None:
            return None  # softmax(topk(softmax(.))): not a router this op knows
        scores, out["renorm"] = ("softmax", tk.operands[0]), True
    elif gather is not None and gather.attrs["dim"] in (-1, 1) and gather.operands[1] is tk.results[1]:
        scores, choice = _scores(gather.operands[0]), _choice(tk.operands[0], gather.operands[0], tk.attrs["k"])
        if choice is None:
            return None
        out.update(choice)
    else:
        return None
    if scores is None:
        return None
    out["score"], logits = scores
    lin = op_of(src(logits, ("cast",)), "linear")
    params = [upcast_src(v) for v in lin.operands[1:]] if lin is not None else []
    if lin is None or not all(is_const(v) for v in params) or _always_ties(params, out["cb"]):
        return None
    return dict(out, xr=src(upcast_src(lin.operands[0]), ("reshape",)), wr=params[0],
                br=params[1] if len(params) > 1 else None)


def _always_ties(params: list[Value], cb: Value | None) -> bool:
    """Two experts the router cannot tell apart (equal weight rows, biases and choice biases: an untrained,
    zero-initialised router such as AFMoE's) tie on every token, where torch.topk's order is its own and the op's
    is the lowest index: such a chain stays as torch runs it."""
    g = params[0].producer.graph
    cols = [g.weight(v.producer.attrs["weight"]).data.float().reshape(params[0].type.shape[0], -1) for v in params]
    if cb is not None and is_const(src(cb)):
        cols.append(g.weight(src(cb).producer.attrs["weight"]).data.float().reshape(-1, 1))
    rows = torch.cat(cols, 1)
    return torch.unique(rows, dim=0).shape[0] < rows.shape[0]


def _scores(v: Value) -> tuple[str, Value] | None:
    """("softmax" | "sigmoid", the logits) when v = softmax(logits) over the last dim or sigmoid(logits), through
    casts."""
    v = src(v, ("cast",))
    sm, sig = op_of(v, "softmax"), op_of(v, "sigmoid")
    if sm is not None and sm.attrs["dim"] in (-1, v.type.rank - 1):
        return "softmax", sm.operands[0]
    return ("sigmoid", sig.operands[0]) if sig is not None else None


def _denominator(d: Value, num: Value) -> dict[str, float] | None:
    """{renorm_eps, renorm_min} when d = sum(num) over the slots, + eps, or clamped below at min (DeepSeek-V3's 1e-20,
    ERNIE 4.5's clamp)."""
    out = dict(renorm_eps=0.0, renorm_min=0.0)
    if (add := op_of(d, "add", ADD)) is not None:
        eps = [(v, c) for v, c in pairs(add) if scalar_const(c)]
        if not eps:
            return None
        d, out["renorm_eps"] = eps[0][0], scalar_value(add.graph, eps[0][1])
    elif (clamp := op_of(d, "clamp")) is not None and clamp.attrs["max"] is None and clamp.attrs["min"] is not None:
        d, out["renorm_min"] = clamp.operands[0], float(clamp.attrs["min"])
    total = op_of(d, "sum")
    if (total is None or src(total.operands[0], ("cast",)) is not src(num, ("cast",)) or not total.attrs.get("keepdim")
            or tuple(total.attrs.get("dims") or ()) not in ((-1,), (num.type.rank - 1,))):
        return None
    return out


def _choice(c: Value, scores: Value, k: int) -> dict[str, Any] | None:
    """{cb, groups, top_groups, group_fill} of what the topk ranks: the scores, plus a per-expert const bias cb
    (DeepSeek-V3's score correction), limited to the best groups of experts when a group mask is applied
    (`_group_limit`); None for anything else."""
    c = src(c, ("cast",))
    out: dict[str, Any] = dict(cb=None, groups=1, top_groups=1, group_fill=float("-inf"))
    if (where := op_of(c, "where")) is not None:
        limit = _group_limit(where, k)
        if limit is None:
            return None
        out.update(limit)
        c = where.operands[2]
    if c is scores:
        return out
    add = op_of(c, "add", ADD)
    for s, b in pairs(add) if add is not None else []:
        if s is scores and is_const(src(b)) and b.type.rank == 1:
            return dict(out, cb=b)
    return None


def _group_limit(where: Op, k: int) -> dict[str, Any] | None:
    """{groups, top_groups, group_fill} of DeepSeek-V3's group-limited routing on c = where.operands[2]:
    where(not(bool(expand(scatter(zeros [T, G], 1, topk(sum(topk(c.view(T, G, E / G), 2)[0], -1), top)[1], v)))),
    fill, c), v != 0: the experts outside the `top` groups of the best top-2 sums get `fill`."""
    cond, fill, c = where.operands
    inv = op_of(cond, "bitwise_not")
    mask = src(src(inv.operands[0], ("cast",)), VIEWS) if inv is not None and scalar_const(fill) else None
    p = mask.producer if mask is not None else None
    if p is None or p.opcode != "extern" or p.attrs.get("target") not in ("aten.scatter_.value", "aten.scatter.value"):
        return None
    zeros, idx = p.operands
    args = p.attrs.get("args", [])
    if (zeros.producer is None or zeros.producer.opcode != "full" or zeros.producer.attrs["value"] != 0
            or zeros.type.rank != 2 or not isinstance(zeros.type.shape[1], int) or len(args) != 4
            or args[1] not in (1, -1) or not isinstance(args[3], (int, float)) or args[3] == 0):
        return None
    groups = zeros.type.shape[1]
    top = op_of(src(idx), "topk")
    gsum = op_of(top.operands[0], "sum") if top is not None and src(idx) is top.results[1] else None
    summed = gsum is not None and tuple(gsum.attrs["dims"] or ()) in ((-1,), (2,))
    best2 = op_of(gsum.operands[0], "topk") if summed else None
    if (best2 is None or gsum.operands[0] is not best2.results[0] or best2.attrs["k"] != 2
            or top.attrs["dim"] not in (-1, 1)):
        return None
    grouped = best2.operands[0]
    if src(grouped, ("reshape",)) is not c or grouped.type.rank != 3 or grouped.type.shape[1] != groups:
        return None
    if groups > 1 and (not isinstance(c.type.shape[-1], int) or k > top.attrs["k"] * c.type.shape[-1] // groups):
        return None  # a top-k past the kept experts ranks masked ones in torch's order
    return dict(groups=groups, top_groups=top.attrs["k"], group_fill=scalar_value(where.graph, fill))


def _moe(g: Graph, root: Op, b: dict[str, Value]) -> Value | None:
    """sum_j(down * w) over the slots of a [T, k, H] view -> moe(...)."""
    m = op_of(src(root.operands[0], VIEWS + ("cast",)), "mul")
    slots = root.operands[0].type  # [T, k, H]
    for d, w in pairs(m) if m is not None else []:
        down = _down_of(d)
        router = _router(w, down["e"]) if down else None
        a = _gated(src(down["x"], ("reshape",))) if router else None
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
    v = src(d, VIEWS + ("cast",))
    add = op_of(v, "add", ADD)
    mm = op_of(src(add.operands[0] if add is not None else v), "matmul")
    for w in mm.operands if mm is not None else []:
        p = op_of(src(w), "index_select")
        got = _expert_linear(v, src(p.operands[1])) if p is not None else None
        if got:
            return dict(got, e=src(p.operands[1]))
    return None


def _build(g: Graph, root: Op, router: dict, up: dict, down: dict, a: dict) -> Value | None:
    x = router["xr"]
    norm = weighted_norm(x)
    attrs: dict[str, Any] = dict(k=router["k"], renorm=router["renorm"], router_bias=router["br"] is not None,
                                 expert_bias=up["b"] is not None, act=a["act"], gate_up=a["gate_up"],
                                 transposed=up["transposed"], score=router["score"],
                                 choice_bias=router["cb"] is not None, renorm_eps=router["renorm_eps"],
                                 renorm_min=router["renorm_min"], scale=router["scale"], groups=router["groups"],
                                 top_groups=router["top_groups"], group_fill=router["group_fill"])
    if "limit" in a:
        attrs.update(limit=a["limit"], alpha=a["alpha"])
    operands = []
    if norm is not None:
        kind, x, w, eps = norm
        attrs.update(norm=kind, eps=eps)
        operands = [w]
    t, h = root.result.type.shape
    if x.type.rank != 2:
        x = g.insert_before(root, "reshape", [x], {"shape": [t, h]}).result
    operands = [x, *operands, router["wr"], *[router[r] for r in ("br", "cb") if router[r] is not None],
                up["w"], *([up["b"]] if up["b"] is not None else []), down["w"],
                *([down["b"]] if down["b"] is not None else [])]
    y = g.insert_before(root, "moe", operands, attrs).result
    if y.type.dtype != root.result.type.dtype:
        y = g.insert_before(root, "cast", [y], {"dtype": root.result.type.dtype}).result
    return y


def _residual(g: Graph, root: Op, b: dict[str, Value]) -> Value | None:
    """add(r, moe(...)) (through a view of the moe result) -> moe(..., r) {residual=true}."""
    for r, v in pairs(root):
        moe = op_of(src(v), "moe")
        if (moe is None or moe.attrs["residual"] or len(moe.result.uses) != 1 or len(src(v).uses) != 1
                or not (same_type(r.type, root.result.type) and same_type(v.type, root.result.type))):  # no broadcast
            continue
        res = r if r.type.rank == 2 else g.insert_before(root, "reshape", [r], {"shape": list(moe.result.type.shape)}).result
        y = g.insert_before(root, "moe", [*moe.operands, res], {**moe.attrs, "residual": True}).result
        if root.result.type.rank != 2:
            y = g.insert_before(root, "reshape", [y], {"shape": list(root.result.type.shape)}).result
        return y
    return None


def _norm_into(g: Graph, root: Op, b: dict[str, Value]) -> Value | None:
    """moe(norm(x0, w), ...) {norm="none"} -> moe(x0, w, ...) {norm=...}: a norm canonicalized after the op was made
    (Cohere's LayerNorm is written out and becomes `layer_norm` over several sweeps)."""
    o = by_role(root.operands, root.attrs)
    norm = weighted_norm(src(o["x"], ("reshape",))) if root.attrs["norm"] == "none" else None
    if norm is None:
        return None
    kind, x, w, eps = norm
    if x.type.rank != 2:
        x = g.insert_before(root, "reshape", [x], {"shape": list(o["x"].type.shape)}).result
    o.update(x=x, norm_w=w)
    return g.insert_before(root, "moe", [v for v in o.values() if v is not None],
                           {**root.attrs, "norm": kind, "eps": eps}).result


def _slot_sum(v: Value) -> bool:
    dims = v.producer.attrs.get("dims")
    return v.type.rank == 2 and tuple(dims or ()) in ((1,), (-2,)) and not v.producer.attrs.get("keepdim")


MOE_RULES: list[Rule] = [Rule(P.op("sum", P.any("s"), check=_slot_sum), _moe, "moe"),
                         Rule(P.op("moe"), _norm_into, "moe_norm"),
                         Rule(P.op("add", P.any("a"), P.any("b")), shared_experts, "moe_shared"),  # before residual
                         Rule(P.op("add", P.any("a"), P.any("b")), _residual, "moe_residual")]
