"""Template calls in the generated launcher: one renderer per anchor op of a GEMM or attention
kernel group (`@template_renders("linear")`), printing the call of the hand-written template
(`templates/gemm.py`, `templates/qlinear.py`, `templates/attention.py`) with the group's epilogue.

Decisions:
- Keyword arguments appear only when they differ from the template's default, so a plain GEMM
  reads `_linear(x, w)`.
- An anchor whose weight is encoded for a template of its own (`#nm`: the sparse templates) is
  rendered by the `(opcode, encoding)` table first; the call keeps the plain template's arguments.
- `matmul(a, b)` with an epilogue runs as `linear(a, b^T)` (the linear template has the epilogue;
  `b.t()` is a view, no copy); a plain matmul calls the batched `_matmul` template.
- Templates named in `OUT_TEMPLATES` write their result into the planned buffer `run()` passes as
  `out=` (and carve scratch from the pool's workspace, `ws=`), so `run()` allocates nothing for them
  (`buffers.BufferPlan`); a template not named there allocates its result, and the plan lists the step
  in `allocating`. Which template a group calls is read from its rendered call, so a routing line in a
  renderer (qlinear's decode kernel) needs no second table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fxforge.codegen.module_text import lit
from fxforge.ir.attention_op import attention_mask, attention_sinks
from fxforge.ir.graph import Op, Value
from fxforge.ir.moe_ops import ROLES, by_role
from fxforge.ir.optable import ACTIVATION_PARAMS
from fxforge.ir.partition import KernelGroup

Names = Callable[[Value], str]
TemplateRenderer = Callable[[KernelGroup, Names], str]


def _maybe(n: Names, v: Value | None) -> str:
    """An optional operand's name in a template call: None when absent."""
    return "None" if v is None else n(v)


TEMPLATE_RENDERERS: dict[str, TemplateRenderer] = {}
# anchors whose weight operand carries an encoding with a template of its own: (opcode, encoding kind)
ENCODED_TEMPLATE_RENDERERS: dict[tuple[str, str], TemplateRenderer] = {}


def template_renders(*opcodes: str, encoding: str | None = None) -> Callable[[TemplateRenderer], TemplateRenderer]:
    """Register the template call of kernel groups anchored by these opcodes (with `encoding`: only
    when the anchor's weight operand has that encoding kind, e.g. "nm"; tried before the plain one)."""

    def deco(fn: TemplateRenderer) -> TemplateRenderer:
        if encoding is None:
            TEMPLATE_RENDERERS.update(dict.fromkeys(opcodes, fn))
        else:
            ENCODED_TEMPLATE_RENDERERS.update({(op, encoding): fn for op in opcodes})
        return fn

    return deco


# kernel groups of several ops that one template runs, by group kind (`rope_cache`): not an opcode's renderer
GROUP_RENDERERS: dict[str, TemplateRenderer] = {}


def group_renders(kind: str) -> Callable[[TemplateRenderer], TemplateRenderer]:
    """Register the template call of kernel groups of this kind (a pattern of several ops, not one anchor)."""

    def deco(fn: TemplateRenderer) -> TemplateRenderer:
        GROUP_RENDERERS[kind] = fn
        return fn

    return deco


def _weight_kind(op) -> str | None:
    enc = op.operands[1].type.encoding if len(op.operands) > 1 else None
    return getattr(enc, "kind", None)


# templates that write into planned storage: call name -> the keywords `run()` passes (out: the result's
# buffer, contiguous in the result's shape; ws: the pool's `Workspace` for scratch, see `codegen/pool.py`;
# z_out: a post-norm GEMM's z, `post_norm_z`)
OUT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "_linear": ("out", "ws", "z_out"), "_matmul": ("out",), "_attention": ("out", "ws"), "_rope_cache": ("out",),
    "_qlinear_w4_decode": ("out", "ws", "z_out"), "_moe": ("out", "ws"),
}


def template_name(g: KernelGroup) -> str:
    """The function a template group's call names (`_linear`, `_qlinear`, ...)."""
    return _render(g, lambda v: "_").split("(", 1)[0]


def takes_out(g: KernelGroup) -> bool:
    """Whether the group's template writes its result into an `out=` buffer."""
    return "out" in OUT_TEMPLATES.get(template_name(g), ())


def render_template(g: KernelGroup, n: Names, out: str | None = None, ws: str | None = None,
                    z_out: str | None = None) -> str:
    """The call expression of a template kernel group; `out`/`ws`/`z_out` (expressions) are passed to the
    templates that take them (`OUT_TEMPLATES`)."""
    call = _render(g, n)
    takes = OUT_TEMPLATES.get(call.split("(", 1)[0], ())
    extra = [f"{k}={v}" for k, v in (("out", out), ("ws", ws), ("z_out", z_out)) if v is not None and k in takes]
    return call[:-1] + "".join(f", {e}" for e in extra) + ")" if extra else call


def _render(g: KernelGroup, n: Names) -> str:
    anchor = g.anchor
    render = (GROUP_RENDERERS.get(g.kind) or ENCODED_TEMPLATE_RENDERERS.get((anchor.opcode, _weight_kind(anchor)))
              or TEMPLATE_RENDERERS.get(anchor.opcode))
    if render is None:
        raise NotImplementedError(f"no template call for a {g.kind} group anchored by {g.anchor.opcode!r}")
    return render(g, n)


def _epilogue(p: dict[str, Any], n: Names, keys: tuple[str, ...]) -> list[str]:
    """The epilogue keyword arguments that differ from the template defaults, in the template's order."""
    out = []
    if "activation" in keys and p["activation"] != "none":
        out.append(f"activation={p['activation']!r}")
    for key in ("mul", "residual"):
        if key in keys and p.get(key) is not None:
            out.append(f"{key}={n(p[key])}")
    for key in ("scale", "post_scale"):
        if key in keys and p.get(key, 1.0) != 1.0:
            out.append(f"{key}={p[key]!r}")
    if "out_dtype" in keys and p["out_dtype"] is not None:
        out.append(f"out_dtype={p['out_dtype'].torch}")
    return out


@template_renders("hadamard")
def _hadamard(g: KernelGroup, n: Names) -> str:
    op = g.anchor
    return f"_hadamard({n(op.operands[0])}, block={op.attrs['block']})"


@template_renders("moe")
def _moe(g: KernelGroup, n: Names) -> str:
    """`_moe(x, norm_w, router_w, router_b, router_cb, shared_gate_w, w_gate_up, b_gate_up, w_down, b_down, residual,
    k=, ...)`: absent
    operands None, attributes that differ from the template's defaults."""
    op = g.anchor
    a, o = op.attrs, by_role(op.operands, op.attrs)
    args = [_maybe(n, o[r]) for r in ROLES]
    kw = [f"k={a['k']}"] + (["renorm=True"] if a["renorm"] else [])
    kw += ([f"eps={a['eps']!r}"] if a["norm"] != "none" else []) + (["norm='layer'"] if a["norm"] == "layer" else [])
    kw += [f"{key}={a[key]!r}" for key, default in (("act", "silu"), ("gate_up", "concat"), ("transposed", False),
                                                     ("score", "softmax"), ("renorm_eps", 0.0), ("renorm_min", 0.0),
                                                     ("scale", 1.0), ("shared", 0)) if a[key] != default]
    kw += [f"limit={a['limit']!r}", f"alpha={a['alpha']!r}"] if a["act"] == "gpt_oss" else []
    kw += ([f"groups={a['groups']}", f"top_groups={a['top_groups']}", f"group_fill=float({str(a['group_fill'])!r})"]
           if a["groups"] > 1 else [])  # float('-inf'): -inf is no Python literal
    return f"_moe({', '.join(args + kw)})"


@group_renders("rope_cache")
def _rope_cache(g: KernelGroup, n: Names) -> str:
    """`_rope_cache(qkv, cos, sin, pos, k_cache, v_cache, ...)` -> (q, k_cache, v_cache): the group's outputs."""
    s = g.params["site"]
    args = [_maybe(n, v) for v in (s.qkv, s.cos, s.sin, s.pos, s.k_cache, s.v_cache)]  # (cos, sin None: no RoPE)
    kw = [f"q_heads={s.q_heads}", f"kv_heads={s.kv_heads}", f"head_dim={s.head_dim}"]
    if s.format != "dense":
        kw += [f"format={s.format!r}", f"block={s.block}"]
    if s.rotary_dim and s.rotary_dim != s.head_dim:  # partial RoPE (StableLM)
        kw.append(f"rotary_dim={s.rotary_dim}")
    kw += ["interleaved=True"] if s.interleaved else []  # channels (2i, 2i+1) rotate together (GLM)
    kw += ["pair_tables=True"] if s.pair_tables else []  # tables of one entry per pair (GLM, GPT-OSS)
    kw += ["heads_last=True"] if s.heads_last else []  # tables [B, S, 1, W]: RoPE before the head transpose (Llama 4)
    if s.negated:  # rotate(x) negated, cat(x2, -x1) (NanoChat)
        kw.append("negated=True")
    if s.qk_norm is not None:  # q/k RMSNorm before RoPE, per head (Qwen3; weightless: NanoChat) or over all heads (OLMo2)
        w = [_maybe(n, v) for v in s.qk_norm[:2]]
        kw.append(f"qk_norm=({w[0]}, {w[1]}, {s.qk_norm[2]!r})")
        kw += ["norm_fp32=True"] if s.norm_fp32 else []
        kw += ["norm_after=True"] if s.norm_after else []  # after RoPE (HunYuan)
    kw += [f"v_norm={s.v_norm!r}"] if s.v_norm is not None else []  # v's weightless norm, its eps (Gemma 4)
    kw += [f"v_head_dim={s.v_head_dim}"] if s.v_head_dim else []  # v heads of their own width (MiMo-V2-Flash)
    kw += [f"v_scale={s.v_scale!r}"] if s.v_scale is not None else []  # v times a number before the cache
    if s.q_scale is not None:  # q's per-token scale after RoPE (Ministral3)
        kw.append(f"q_scale={n(s.q_scale)}")
    return f"_rope_cache({', '.join(args + kw)})"


@group_renders("kv_attention")
def _kv_attention(g: KernelGroup, n: Names) -> str:
    """`_kv_attention(q, k_cache, v_cache, mask, format=, block=, scale=, is_causal=, [softcap=, sinks=])`: attention over
    packed caches."""
    s = g.params["site"]
    a = s.attention.attrs
    kw = [f"format={s.format!r}", f"block={s.block}", f"scale={lit(a['scale'])}", f"is_causal={a['is_causal']}"]
    kw += [f"softcap={lit(a['softcap'])}"] if a.get("softcap") is not None else []
    kw += [f"sinks={n(s.sinks)}"] if s.sinks is not None else []
    args = [n(v) for v in (s.q, s.k_cache, s.v_cache)] + ([n(s.mask)] if s.mask is not None else [])
    return f"_kv_attention({', '.join(args + kw)})"


@template_renders("attention")
def _attention(g: KernelGroup, n: Names) -> str:
    op = g.anchor
    a = op.attrs
    kw = [f"scale={lit(a['scale'])}", f"is_causal={a['is_causal']}", f"enable_gqa={a['enable_gqa']}"]
    kw += [f"softcap={lit(a['softcap'])}"] if a.get("softcap") is not None else []  # Gemma2's logit soft-cap
    mask, sinks = attention_mask(op), attention_sinks(op)
    kw += [f"sinks={n(sinks)}"] if sinks is not None else []  # GPT-OSS's attention sinks
    return f"_attention({', '.join([n(v) for v in op.operands[:3]] + ([n(mask)] if mask is not None else []) + kw)})"


def _has_epilogue(p: dict[str, Any]) -> bool:
    return (p["bias"] is not None or p["residual"] is not None or p.get("mul") is not None
            or p["activation"] != "none" or p["out_dtype"] is not None or p.get("norm") is not None
            or p.get("post_scale", 1.0) != 1.0)


def _norm_arg(norm: Op | None, n: Names) -> list[str]:
    """A fused norm prologue's argument: `norm=(w or None, eps)` (RMSNorm) or `layer_norm=(w or None, b or None, eps)`."""
    if norm is None:
        return []
    eps = float(norm.attrs["eps"])
    w, bias = (n(norm.operands[i]) if len(norm.operands) > i else "None" for i in (1, 2))
    return [f"layer_norm=({w}, {bias}, {eps!r})" if norm.opcode == "layer_norm" else f"norm=({w}, {eps!r})"]


def post_norm_z(g: KernelGroup) -> Value | None:
    """The z = res + norm(h) a post-norm GEMM group stores for readers outside it (`keep_z`), else None."""
    post = g.params.get("post_norm") if g.kind == "gemm" else None
    return post.z if post is not None and any(post.z is o for o in g.outputs) else None


def template_results(g: KernelGroup) -> list[Value]:
    """The values a template group's call returns, in its order: its outputs (a post-norm GEMM: its result, z)."""
    z = post_norm_z(g)
    return list(g.outputs) if z is None else [o for o in g.outputs if o is not z] + [z]


def _post_norm_args(g: KernelGroup, n: Names) -> list[str]:
    """`post_norm=(res, w, eps)` (and `keep_z=True` when z is read outside) of a post-norm GEMM group."""
    post = g.params.get("post_norm")
    if post is None:
        return []
    res, w = (_maybe(n, v) for v in (post.residual, post.weight))  # None: z = norm(h[, w])
    arg = f"post_norm=({res}, {w}, {float(post.norm.attrs['eps'])!r})"
    return [arg] + (["keep_z=True"] if post_norm_z(g) is not None else [])


def _gated(p: dict[str, Any]) -> list[str]:
    """The gated epilogue's arguments: `swiglu=True` and, for an activation other than silu, `gate=` (GeGLU)."""
    if not p.get("swiglu"):
        return []
    return ["swiglu=True"] + ([f"gate={p['gate']!r}"] if p.get("gate", "silu") != "silu" else [])


def _act_args(g: KernelGroup) -> list[str]:
    """`act_args=(...)`: the scalars of the group's activation with learned ones (ACTIVATION_PARAMS: xielu), read
    from its op's attributes (run-time arguments of one kernel for every layer)."""
    act = g.params["activation"]
    if act not in ACTIVATION_PARAMS:
        return []
    op = next(o for o in g.ops if o.opdef.activation_of(o.attrs) == act)
    return [f"act_args=({', '.join(repr(float(op.attrs[k])) for k in ACTIVATION_PARAMS[act])})"]


def _linear_call(g: KernelGroup, n: Names, weight: str, template: str = "_linear") -> str:
    """`_linear(x, weight, [bias], <epilogue>)`; `weight` is the [N, K] operand's expression."""
    op, p = g.anchor, g.params
    bias = op.operands[2] if len(op.operands) > 2 else p["bias"]
    norm, post = p.get("norm"), p.get("post_norm")  # fused prologues: the template reads their inputs and weights
    x = n(post.h) if post is not None else n(p["norm_x"]) if norm is not None else n(op.operands[0])
    args = [x, weight] + ([n(bias)] if bias is not None else [])
    args += _post_norm_args(g, n) + _norm_arg(norm, n)
    args += _gated(p)
    args += _epilogue(p, n, ("activation", "mul", "residual", "scale", "post_scale", "out_dtype")) + _act_args(g)
    if p.get("keep") is not None:  # FFN skipping's decode form (only the dense rule sets it)
        args.append(f"keep={n(p['keep'])}")
    return f"{template}({', '.join(args)})"


@template_renders("linear")
def _linear(g: KernelGroup, n: Names) -> str:
    return _linear_call(g, n, n(g.anchor.operands[1]))


@template_renders("linear", encoding="nm")
def _nm_linear(g: KernelGroup, n: Names) -> str:
    """`_nm_linear(x, w, [bias], <epilogue>)`: w is the `#nm` `Weight` (kept values + index)."""
    return _linear_call(g, n, n(g.anchor.operands[1]), "_nm_linear")


@template_renders("matmul")
def _matmul(g: KernelGroup, n: Names) -> str:
    op, p = g.anchor, g.params
    if _has_epilogue(p):
        return _linear_call(g, n, f"{n(op.operands[1])}.t()")  # matmul(a, b) = linear(a, b^T)
    kw = [f"scale={p['scale']!r}"] if p["scale"] != 1.0 else []
    return f"_matmul({', '.join([n(v) for v in op.operands] + kw)})"


@template_renders("qlinear", encoding="nm")
def _nm_qlinear(g: KernelGroup, n: Names) -> str:
    """`_nm_qlinear(x, w, scheme, [bias], <epilogue>)`: w is the `#nm` `Weight` of quantized kept values."""
    return _qlinear(g, n).replace("_qlinear(", "_nm_qlinear(", 1)


@template_renders("qlinear")
def _qlinear(g: KernelGroup, n: Names) -> str:
    """`_qlinear(x, w, scheme, [bias], lorc=(u, v), <epilogue>)`: w is the encoded `Weight`; a weight in a decode
    layout (`passes/decode_layout.py`) calls `_qlinear_w4_decode(x, w, [bias], <epilogue>)` instead."""
    op, p = g.anchor, g.params
    x, w, *rest = op.operands
    if getattr(w.type.encoding, "layout", ""):
        return _qlinear_decode(g, n)
    lorc = rest[-2:] if op.attrs["lorc_rank"] > 0 else []
    bias = rest[0] if len(rest) == len(lorc) + 1 else p["bias"]
    args = [n(x), n(w), repr(op.attrs["scheme"])] + ([n(bias)] if bias is not None else [])
    if lorc:
        args.append(f"lorc=({n(lorc[0])}, {n(lorc[1])})")
    args += _epilogue(p, n, ("activation", "residual", "out_dtype"))
    if p.get("keep") is not None:
        args.append(f"keep={n(p['keep'])}")
    return f"_qlinear({', '.join(args)})"


def _qlinear_decode(g: KernelGroup, n: Names) -> str:
    """`_qlinear_w4_decode(x, w, [bias], [post_norm=], [norm=], [swiglu=], <epilogue>)`: the 4-bit decode GEMM (no
    LoRC: the pass keeps those row-major); fused prologues read their inputs and weights, as `_linear`'s do."""
    op, p = g.anchor, g.params
    x, w, *rest = op.operands
    bias = rest[0] if rest else p["bias"]
    norm, post = p.get("norm"), p.get("post_norm")
    x = post.h if post is not None else p["norm_x"] if norm is not None else x
    args = [n(x), n(w)] + ([n(bias)] if bias is not None else [])
    args += _post_norm_args(g, n) + _norm_arg(norm, n)
    args += _gated(p)
    args += _epilogue(p, n, ("activation", "residual", "scale", "out_dtype")) + _act_args(g)
    if p.get("keep") is not None:
        args.append(f"keep={n(p['keep'])}")
    return f"_qlinear_w4_decode({', '.join(args)})"
