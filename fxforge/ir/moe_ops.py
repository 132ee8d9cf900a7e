"""The `moe` op: a mixture-of-experts FFN block (router, top-k, the chosen experts' gated MLPs, their weighted sum)
as one op, which `passes/moe_rules.py` makes from HF's batched experts and `codegen/templates/moe.py` runs in two
launches.

    %y = moe(%x, %norm_w, %router_w, %w_gate_up, %w_down) {k=2, renorm=true, norm="rms", eps=1e-05} : f32[s0, 64]

Operands, in this order, those the flags leave out absent: x [T, H]; the norm weight [H] (`norm="rms"`, or "layer":
a LayerNorm without bias, Cohere's; x is then the norm's input); the router weight [E, H], its bias [E]
(`router_bias`) and its choice bias [E] (`choice_bias`); the shared experts' gate weight [1, H] (`shared_gate`); the
experts' stacked gate/up weight [E + S, 2I, H] ([E + S, H, 2I] when `transposed`; S = `shared`) and its bias
[E + S, 2I] (`expert_bias`); the down weight [E + S, H, I] ([E + S, I, H] when `transposed`) and its bias [E + S, H]
(`expert_bias`); a residual [T, H] (`residual`).

Semantics (`_moe`, what every executor is checked against): xn = rms_norm(x, w) or layer_norm(x, w) (or x; the
norm ops' roundings);
scores p = softmax(xn Wr^T + br) (`score="sigmoid"`: sigmoid of each logit) in fp32; the k experts of the largest p
+ cb (the choice bias, DeepSeek-V3's score correction; lowest index first on ties; with `groups` > 1 only among the
experts of the `top_groups` groups of E / groups whose two largest p + cb sum highest, the others' choice set to
`group_fill`), weighted by their p, divided by max(sum + renorm_eps, renorm_min) when `renorm` (softmax of the top-k
logits, Granite's and GPT-OSS's order, is the same number), times `scale`; then the S shared experts E..E+S-1, every
token's, weighted by sigmoid(xn Wsg^T) (`shared_gate`, Qwen2-MoE's) or 1 (a shared MLP of intermediate size S * I is
S such experts: `passes/moe_shared.py` stacks it so);
for each chosen expert e,
a = act(xn W_gu[e]^T + b_gu[e]) (gate rows 0..I-1 then up rows I..2I-1, or interleaved gate/up pairs when
`gate_up="interleaved"`), y += p * (a W_d[e]^T + b_d[e]); the result y (+ residual) in x's dtype. Every product and
sum runs in fp32 from x's dtype (the router's and experts' inputs are rounded to it, as the captured chain's are).

Decisions:
- One op with presence flags rather than optional operands by position: the router, the norm and the biases vary by
  architecture (GPT-OSS: router and expert biases, transposed interleaved weights; Mixtral: none), and flags name
  which operand is which in the text form.
- `act`: "silu" (SwiGLU: silu(g) * u), "gelu_tanh" (GeGLU), "gpt_oss" (g = min(g, limit), u = clamp(u, -limit,
  limit), g * sigmoid(alpha * g) * (u + 1)).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from fxforge.ir.errors import ShapeError
from fxforge.ir.ops import REQUIRED, OpDef, register
from fxforge.ir.optable import _layer_norm, _rms_norm
from fxforge.ir.types import TensorType, dims_equal

MOE_ACTS = ("silu", "gelu_tanh", "gpt_oss")
GATE_UP_LAYOUTS = ("concat", "interleaved")
SCORES = ("softmax", "sigmoid")
NORMS = ("none", "rms", "layer")
ROLES = ("x", "norm_w", "router_w", "router_b", "router_cb", "shared_gate_w", "w_gate_up", "b_gate_up", "w_down",
         "b_down", "residual")


def operand_roles(attrs: dict[str, Any]) -> list[str]:
    """The roles of a `moe` op's operands, in order, for its flags."""
    present = {"norm_w": attrs["norm"] != "none", "router_b": attrs["router_bias"], "router_cb": attrs["choice_bias"],
               "shared_gate_w": attrs["shared_gate"], "b_gate_up": attrs["expert_bias"],
               "b_down": attrs["expert_bias"], "residual": attrs["residual"]}
    return [r for r in ROLES if present.get(r, True)]


def by_role(operands: list[Any], attrs: dict[str, Any]) -> dict[str, Any]:
    """{role: operand} of a `moe` op (absent roles map to None)."""
    named = dict(zip(operand_roles(attrs), operands, strict=True))
    return {r: named.get(r) for r in ROLES}


def _infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    roles = operand_roles(attrs)
    if len(types) != len(roles):
        raise ShapeError(f"moe: {len(types)} operands, the flags ask for {len(roles)} ({', '.join(roles)})")
    t = dict(zip(roles, types, strict=True))
    x, wr, wgu, wd = t["x"], t["router_w"], t["w_gate_up"], t["w_down"]
    if (attrs["act"] not in MOE_ACTS or attrs["gate_up"] not in GATE_UP_LAYOUTS or attrs["score"] not in SCORES
            or attrs["norm"] not in NORMS):
        raise ShapeError(f"moe: act {attrs['act']!r} / gate_up {attrs['gate_up']!r} / score {attrs['score']!r} / norm "
                         f"{attrs['norm']!r} not among {MOE_ACTS} / {GATE_UP_LAYOUTS} / {SCORES} / {NORMS}")
    shared = attrs["shared"]
    if not isinstance(shared, int) or isinstance(shared, bool) or shared < 0 or (attrs["shared_gate"] and not shared):
        raise ShapeError(f"moe: shared={shared!r} must be an int >= 0 (>= 1 with a shared gate)")
    _check_groups(attrs, wr.shape[0])
    if x.rank != 2 or wr.rank != 2 or wgu.rank != 3 or wd.rank != 3:
        raise ShapeError(f"moe: x [T, H], router [E, H], gate/up [E, 2I, H], down [E, H, I]; got "
                         f"{list(x.shape)}, {list(wr.shape)}, {list(wgu.shape)}, {list(wd.shape)}")
    k = attrs["k"]
    if not isinstance(k, int) or isinstance(k, bool) or k < 1 or (isinstance(wr.shape[0], int) and k > wr.shape[0]):
        raise ShapeError(f"moe: k={k!r} must be an int in 1..{wr.shape[0]} (the experts)")
    (e, hd), tr = wr.shape, attrs["transposed"]
    e_gu, n2, h_gu = (wgu.shape[0], wgu.shape[2], wgu.shape[1]) if tr else wgu.shape
    e_d, h_d, inter = (wd.shape[0], wd.shape[2], wd.shape[1]) if tr else wd.shape
    es = e + shared  # the stacked experts: routed, then shared
    want = {"x": [x.shape[0], hd], "w_gate_up": [es, 2 * inter, hd], "w_down": [es, hd, inter], "norm_w": [hd],
            "router_b": [e], "router_cb": [e], "shared_gate_w": [1, hd], "b_gate_up": [es, 2 * inter],
            "b_down": [es, hd], "residual": [x.shape[0], hd]}
    have = {**{r: list(v.shape) for r, v in t.items()}, "w_gate_up": [e_gu, n2, h_gu], "w_down": [e_d, h_d, inter]}
    for role in t:
        if role != "router_w" and not (len(have[role]) == len(want[role])
                                       and all(dims_equal(a, b) for a, b in zip(have[role], want[role], strict=True))):
            raise ShapeError(f"moe: {role} {list(t[role].shape)} does not fit x {list(x.shape)}, router "
                             f"{list(wr.shape)} and down {list(wd.shape)} (want {want[role]}"
                             f"{', transposed' if tr and role.startswith('w_') else ''})")
    return [TensorType(x.shape, x.dtype)]


def _check_groups(attrs: dict[str, Any], experts: Any) -> None:
    """Group-limited routing's attributes fit the routed experts (a symbolic count is not checked)."""
    groups, top = attrs["groups"], attrs["top_groups"]
    fits = groups == 1 or not isinstance(experts, int) or (experts % groups == 0 and experts // groups >= 2)
    if not (isinstance(groups, int) and isinstance(top, int) and 1 <= top <= groups and fits):
        raise ShapeError(f"moe: groups={groups!r} / top_groups={top!r}: groups must divide the {experts} experts (two "
                         "or more a group) and 1 <= top_groups <= groups")
    if groups > 1 and isinstance(experts, int) and attrs["k"] > top * (experts // groups):
        raise ShapeError(f"moe: k={attrs['k']} is more than the {top * (experts // groups)} experts of the "
                         f"top_groups={top} groups kept")


def _act(g: torch.Tensor, u: torch.Tensor, act: str, limit: float, alpha: float) -> torch.Tensor:
    if act == "silu":
        return F.silu(g) * u
    if act == "gelu_tanh":
        return F.gelu(g, approximate="tanh") * u
    g, u = g.clamp(max=limit), u.clamp(-limit, limit)
    return g * torch.sigmoid(alpha * g) * (u + 1)


def _limit_groups(choice: torch.Tensor, groups: int, top: int, fill: float) -> torch.Tensor:
    """choice with the experts outside the `top` groups of the highest top-2 sums set to `fill` (ties: lowest group
    first)."""
    by_group = choice.unflatten(-1, (groups, -1))
    score = by_group.topk(2, dim=-1)[0].sum(-1)
    keep = torch.zeros_like(score, dtype=torch.bool).scatter(
        -1, torch.sort(score, stable=True, dim=-1, descending=True)[1][..., :top], True)
    return torch.where(keep[..., None], by_group, fill).flatten(-2)


def route(xn: torch.Tensor, o: dict[str, Any], k: int, renorm: bool, score: str = "softmax", renorm_eps: float = 0.0,
          renorm_min: float = 0.0, scale: float = 1.0, shared: int = 0, groups: int = 1, top_groups: int = 1,
          group_fill: float = float("-inf")):
    """(weights fp32 [T, k + shared], expert indices [T, k + shared]) of the router on xn (`o`: the op's operands by
    role), the shared experts' slots last."""
    logits = F.linear(xn.float(), o["router_w"].float(), None if o["router_b"] is None else o["router_b"].float())
    p = torch.softmax(logits, -1) if score == "softmax" else torch.sigmoid(logits)
    choice = p if o["router_cb"] is None else p + o["router_cb"].float()
    if groups > 1:
        choice = _limit_groups(choice, groups, top_groups, group_fill)
    idx = torch.sort(choice, stable=True, dim=-1, descending=True)[1][..., :k]  # ties: lowest index first
    w = p.gather(-1, idx)
    if renorm:
        w = w / (w.sum(-1, keepdim=True) + renorm_eps).clamp(min=renorm_min)
    w = w * scale
    if shared:
        e = p.shape[-1]
        g = (torch.sigmoid(F.linear(xn.float(), o["shared_gate_w"].float())) if o["shared_gate_w"] is not None
             else torch.ones_like(w[..., :1]))
        idx = torch.cat([idx, torch.arange(e, e + shared, device=idx.device).expand(*idx.shape[:-1], shared)], -1)
        w = torch.cat([w, g.expand(*w.shape[:-1], shared)], -1)
    return w, idx


def _moe(*operands: torch.Tensor, k: int, renorm: bool, norm: str, eps: float, router_bias: bool, expert_bias: bool,
         residual: bool, act: str, gate_up: str, transposed: bool, limit: float, alpha: float, score: str,
         choice_bias: bool, renorm_eps: float, renorm_min: float, scale: float, shared: int,
         shared_gate: bool, groups: int, top_groups: int, group_fill: float) -> torch.Tensor:
    attrs = dict(norm=norm, router_bias=router_bias, expert_bias=expert_bias, residual=residual,
                 choice_bias=choice_bias, shared_gate=shared_gate)
    o = by_role(list(operands), attrs)
    x = o["x"]
    xn = {"rms": _rms_norm, "layer": _layer_norm}[norm](x, o["norm_w"], eps=eps) if norm != "none" else x
    w, idx = route(xn, o, k, renorm, score, renorm_eps, renorm_min, scale, shared, groups, top_groups, group_fill)
    k += shared
    wgu, wd = (o["w_gate_up"].float(), o["w_down"].float())
    if transposed:
        wgu, wd = wgu.transpose(1, 2), wd.transpose(1, 2)
    e = idx.reshape(-1)
    xs = xn.float().repeat_interleave(k, 0)
    y = torch.bmm(wgu[e], xs[:, :, None])[..., 0]
    if expert_bias:
        y = y + o["b_gate_up"].float()[e]
    n = y.shape[1] // 2
    g, u = (y[:, 0::2], y[:, 1::2]) if gate_up == "interleaved" else (y[:, :n], y[:, n:])
    a = _act(g, u, act, limit, alpha).to(x.dtype).float()  # the experts' activations, in x's dtype
    d = torch.bmm(wd[e], a[:, :, None])[..., 0]
    if expert_bias:
        d = d + o["b_down"].float()[e]
    out = (d * w.reshape(-1, 1)).view(x.shape[0], k, -1).sum(1)
    if residual:
        out = out + o["residual"].float()
    return out.to(x.dtype)


register(OpDef("moe", (4, 11), {"k": REQUIRED, "renorm": False, "norm": "none", "eps": 1e-6, "router_bias": False,
                                "expert_bias": False, "residual": False, "act": "silu", "gate_up": "concat",
                                "transposed": False, "limit": 7.0, "alpha": 1.702, "score": "softmax",
                                "choice_bias": False, "renorm_eps": 0.0, "renorm_min": 0.0, "scale": 1.0, "shared": 0,
                                "shared_gate": False, "groups": 1, "top_groups": 1, "group_fill": float("-inf")},
               _infer, _moe, "composite",
               "mixture-of-experts FFN: router scores, top-k, the chosen and shared experts' gated MLPs, weighted sum "
               "(operands by the flags: x, norm_w?, router_w, router_b?, router_cb?, shared_gate_w?, w_gate_up, "
               "b_gate_up?, w_down, b_down?, residual?)", kernel="template"))
