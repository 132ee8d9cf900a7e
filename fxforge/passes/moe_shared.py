"""A shared expert beside a `moe` op (Qwen2-MoE, DeepSeek-V3, GLM-4.5, dots.llm1, ERNIE 4.5, HunYuan-MoE) joins
it: its dense gated MLP on the experts' input, optionally times a sigmoid gate, added to the routed sum, becomes S
more experts stacked after the routed ones that every token chooses (`moe(..., shared=S[, shared_gate])`,
`ir/moe_ops.py`), so the block stays the op's two launches instead of two or three GEMMs and an add beside them.

    y = moe(x, ...) + [sigmoid(xn Wsg^T) *] down(act(gate(xn)) * up(xn))     (xn: the op's normalised input)
 -> moe(x, ..., [Wsg,] cat(W_gu, gu_shared), cat(W_d, d_shared)) {shared=S[, shared_gate=true]}

Decisions:
- A gated MLP of intermediate size S * I is exactly S experts of size I (its rows split into S blocks: the gated
  activation is per row, the down projection a sum over them), so the kernels need no second weight layout; a
  shared width that is not a multiple of the experts' I stays beside the op.
- Only what the op computes exactly: the op's activation, no biases, the op's input (the same norm), constant
  weights of the experts' dtype, a concat gate/up layout (transposed experts take the blocks transposed: Aria);
  anything else is left as it was (the same numbers, more launches). The gate and up projections are two linears
  or the halves [gate; up] of one (Granite's `input_linear`, chunked).
- Runs before the residual rule (`MOE_RULES`), which would otherwise take the shared output as a residual.
- The stacked weights are new tensors (the experts' copied once at compile time); the old ones leave the graph with
  DCE, which drops unused weights. Their names list the HF weights they hold (`concat_linears.stacked_name`:
  the experts', then the shared MLP's), so an exporter splits them back (`export.stacked.plain_parts`).
"""

from __future__ import annotations

from typing import Any

import torch

from fxforge.ir.graph import Graph, Op, Value
from fxforge.ir.moe_ops import by_role
from fxforge.passes.concat_linears import stacked_name
from fxforge.passes.linear_sites import free_name
from fxforge.passes.moe_match import gate_up_halves, is_const, op_of, pairs, src, weighted_norm
from fxforge.passes.rewriter import same_type

_ACT_OPS = {"silu": ("silu", None), "gelu_tanh": ("gelu", "tanh")}  # the op's act: (opcode, approximate)


def _reads_input(v: Value, moe: Op) -> bool:
    """v (through views) is what the op's experts read: its normalised x (the same norm weight and eps) or x."""
    o = by_role(moe.operands, moe.attrs)
    if moe.attrs["norm"] == "none":
        return src(v) is src(o["x"])
    norm = weighted_norm(src(v, ("reshape",)))
    return (norm is not None and norm[0] == moe.attrs["norm"] and src(norm[1]) is src(o["x"])
            and norm[2] is o["norm_w"] and norm[3] == moe.attrs["eps"])


def _linear_weight(v: Value, moe: Op, rows: int | None = None) -> Value | None:
    """W when v = linear(the op's input, const W) without bias (W with `rows` output rows when given)."""
    lin = op_of(src(v), "linear")
    if lin is None or len(lin.operands) != 2 or not is_const(lin.operands[1]) or not _reads_input(lin.operands[0], moe):
        return None
    return lin.operands[1] if rows is None or lin.operands[1].type.shape[0] == rows else None


def _gate_up(g: Value, u: Value, moe: Op) -> tuple[Value, Value | None] | None:
    """(Wg, Wu) of the shared MLP's gate and up inputs g, u: two linears of the op's input, or (W, None) for the
    halves [gate; up] of one linear's output (Granite's `input_linear` chunked in two)."""
    wg, wu = _linear_weight(g, moe), _linear_weight(u, moe)
    if wg is not None and wu is not None:
        return wg, wu
    halves = gate_up_halves(g, u)
    w = _linear_weight(halves[0], moe) if halves is not None and halves[1] == "concat" else None
    return (w, None) if w is not None else None


def _shared_mlp(s: Value, moe: Op) -> dict[str, Any] | None:
    """{wg, wu, wd, gate} of s = [sigmoid(linear(xn, Wsg [1, H])) *] linear(act(linear(xn, Wg)) * linear(xn, Wu),
    Wd) (wu None: wg holds [gate; up], `_gate_up`)."""
    gate = None
    m = op_of(src(s), "mul")
    for sig, y in pairs(m) if m is not None else []:
        sg = op_of(src(sig), "sigmoid")
        if sg is not None and (w := _linear_weight(sg.operands[0], moe, rows=1)) is not None:
            gate, s = w, y
            break
    down = op_of(src(s), "linear")
    if down is None or len(down.operands) != 2 or not is_const(down.operands[1]):
        return None
    opcode, approximate = _ACT_OPS.get(moe.attrs["act"], (None, None))
    prod = op_of(src(down.operands[0]), "mul")
    for g, u in pairs(prod) if prod is not None else []:
        act = op_of(src(g), opcode) if opcode else None
        if act is None or act.attrs.get("approximate") != approximate:
            continue
        weights = _gate_up(act.operands[0], u, moe)
        if weights is not None:
            return dict(wg=weights[0], wu=weights[1], wd=down.operands[1], gate=gate)
    return None


def shared_experts(g: Graph, root: Op, b: dict[str, Value]) -> Value | None:
    """add(moe(...), shared MLP) -> moe(..., shared=S) with the MLP's rows as S more experts."""
    for v, s in pairs(root):
        moe = op_of(src(v), "moe")
        if (moe is None or moe.attrs["shared"] or moe.attrs["residual"]
                or moe.attrs["expert_bias"] or moe.attrs["gate_up"] != "concat" or len(moe.result.uses) != 1
                or len(src(v).uses) != 1 or len(s.uses) != 1  # else the shared MLP would run twice
                or not (same_type(v.type, root.result.type) and same_type(s.type, v.type))):
            continue
        mlp = _shared_mlp(s, moe)
        stacked = _stack(g, moe, mlp) if mlp is not None else None
        if stacked is None:
            continue
        o = by_role(moe.operands, moe.attrs)
        o.update(shared_gate_w=mlp["gate"], w_gate_up=stacked[0], w_down=stacked[1])
        attrs = {**moe.attrs, "shared": stacked[2], "shared_gate": mlp["gate"] is not None}
        y = g.insert_before(root, "moe", [val for val in o.values() if val is not None], attrs).result
        if root.result.type.rank != 2:
            y = g.insert_before(root, "reshape", [y], {"shape": list(root.result.type.shape)}).result
        return y
    return None


def _stack(g: Graph, moe: Op, mlp: dict[str, Any]) -> tuple[Value, Value, int] | None:
    """(gate/up const [E + S, 2I, H], down const [E + S, H, I], S): the experts with the shared MLP's S row blocks
    after them, or None when its width is not a multiple of I or a dtype differs."""
    o = by_role(moe.operands, moe.attrs)
    names = [o[r].producer.attrs["weight"] for r in ("w_gate_up", "w_down")]
    gu, d = (g.weight(n).data for n in names)
    roles = ("wg", "wd") if mlp["wu"] is None else ("wg", "wu", "wd")
    data = {r: g.weight(mlp[r].producer.attrs["weight"]).data for r in roles}
    wg, wu = data["wg"].chunk(2) if mlp["wu"] is None else (data["wg"], data["wu"])  # (one linear: [gate; up])
    wd = data["wd"]
    transposed = moe.attrs["transposed"]  # experts [E, H, 2I] and [E, I, H] (Aria): the blocks transposed alike
    inter, hidden, width = d.shape[1 if transposed else 2], d.shape[2 if transposed else 1], wg.shape[0]
    if (g.weight(names[0]).encoding is not None or width % inter or wu.shape != wg.shape
            or wd.shape != (hidden, width) or len({t.dtype for t in (gu, d, wg, wu, wd)}) != 1):
        return None
    blocks = range(0, width, inter)
    gu_shared = torch.stack([torch.cat([wg[i:i + inter], wu[i:i + inter]]) for i in blocks])
    d_shared = torch.stack([wd[:, i:i + inter] for i in blocks])
    if transposed:
        gu_shared, d_shared = gu_shared.transpose(1, 2), d_shared.transpose(1, 2)
    shared = [[mlp[r].producer.attrs["weight"] for r in roles[:-1]], [mlp["wd"].producer.attrs["weight"]]]
    consts = []
    for name, parts, old, new in zip(names, shared, (gu, d), (gu_shared, d_shared), strict=True):
        stacked = g.add_weight(free_name(g, stacked_name([name, *parts])), torch.cat([old, new]).contiguous())
        consts.append(g.insert_before(moe, "const", attrs={"weight": stacked}, name=name.rsplit(".", 1)[-1]).result)
    return consts[0], consts[1], len(blocks)
