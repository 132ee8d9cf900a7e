"""The fusion rule table (see `fuse.py` for the rules in words): which ops may anchor or join a kernel, read from the
op table's traits (`kernel`, `activation`), the GEMM anchors' table, the GEMM template's epilogue steps, host reasons.

Decisions:
- What an op can do is its `OpDef`'s business (traits); this module only adds what depends on the
  templates: the GEMM anchors (`GEMM_RULES`), the epilogue order, the limits, the host reasons.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fxforge.ir.attention_op import wide_head
from fxforge.ir.dtypes import DType
from fxforge.ir.graph import Graph, Op, Value
from fxforge.ir.lowp_ops import SCHEMES
from fxforge.ir.optable import ACTIVATION_PARAMS, GATED_ACTIVATIONS
from fxforge.ir.partition import KernelGroup
from fxforge.ir.types import NM, BlockFP, Quantized, dims_equal

FUSION_RULES = {
    "gemm": "linear/matmul + epilogue: scale(rank-0 full) -> bias[N] -> relu|silu|gelu|gelu_tanh|sigmoid|tanh "
            "-> post-scale (rank-0 full; dense and N:M linear, matmul: a logit soft-cap cap * tanh(y / cap)) "
            "-> mul by a same-shape tensor -> residual add -> cast (single-use intermediates); qlinear "
            "(#quantized const weight) the same without the mul, and without the scale unless its weight is in a decode "
            "layout (Granite's residual multiplier); dense linear/matmul also: xielu (learned scalars, "
            "ACTIVATION_PARAMS) as the activation; dense linear also: a "
            "single-use rms_norm(x, w[K]) or layer_norm(x, w[K]?, b[K]?) producer as a prologue (NORM_PROLOGUES), "
            "its input (or the GEMM's) may be a post-norm residual add(res, rms_norm(h, w[K])) (norm_prologues.py), "
            "and act(y[..., :N]) * y[..., N:] of its [gate; up] result (SwiGLU; GeGLU: act a GATED_ACTIVATIONS "
            "entry) as the activation + mul steps; a qlinear whose weight is in a decode "
            "layout the same two (SwiGLU over interleaved rows: "
            "silu(y[..., 0::2]) * y[..., 1::2]); a linear/qlinear whose input is "
            "a row_keep also reads its keep flags (FFN skipping's early exit; not the MX/NVFP4 schemes yet)",
    "row": "softmax|log_softmax|layer_norm|rms_norm|sum|mean|amax over the last dim + single-use pointwise "
           "producers (prologue) + same-shape pointwise consumers (epilogue, normalising ops only)",
    "pointwise": "tree of pointwise ops (+ single-use cat), single-use producers fused inward, broadcasting to the root's shape",
    "horizontal": "pointwise trees of one domain shape reading a common input, independent of each other: one "
                  "kernel, several outputs",
    "attention": "attention alone (flash-attention template)",
    "rope_cache": "q/k/v head views of a [q; k; v] GEMM output (+ per-head q/k rms_norm) + RoPE of q and k + "
                  "cache_write of k and v: one template launch (RoPE'd q out, k/v written into the static cache in place)",
    "kv_attention": "attention whose K/V are kv_loads of packed KV caches (+ their GQA repeat views): one template "
                    "launch at T=1, the cache rows decoded in the key loop",
    "hadamard": "hadamard alone (fast Walsh-Hadamard template)",
    "nm": "linear/qlinear of an #nm const weight (M divides 32; qlinear: no LoRC): the N:M sparse template "
          "(kept values + index expanded in registers) with its GEMM rule's epilogue",
}

MAX_ROW = 65536  # row kernels hold one row in one tile
MAX_HORIZONTAL = 8  # outputs of one horizontally fused pointwise kernel
MAX_CAT = 8  # operands of a cat read inside a pointwise kernel
QLINEAR_DTYPES = frozenset({DType.f32, DType.f16, DType.bf16})  # activations, bias, LoRC, result of a qlinear kernel
KERNEL_DTYPES = frozenset({DType.f64, DType.f32, DType.f16, DType.bf16, DType.i64, DType.i32, DType.i16,
                           DType.i8, DType.u8, DType.bool})
_QLINEAR_HOST = ("qlinear: weight not a const of its scheme's #quantized layout (8-bit: per channel; 4-bit: "
                 "even input dim), or non-float operands: host torch (reference, dequantizes the weight)")
HOST_REASONS: dict[str, str | Callable[[Op], str]] = {
    "reshape": "view: runs as a torch view on the host (copies only when the layout needs it)",
    "permute": "view: strided torch view on the host (kernels read it through its strides)",
    "expand": "view: stride-0 torch view on the host (kernels read it through its strides)",
    "slice": "view: strided torch view on the host (kernels read it through its strides)",
    "cat": "cat: host torch.cat (a copy): its result has several uses, feeds no pointwise op, or is an output",
    "index_select": "gather: host torch.index_select",
    "gather": "gather: host torch.gather",
    "embedding": "embedding: a row gather, host F.embedding",
    "const": "source: a weight of the graph",
    "full": "source: uniform value; kernels inline it as a literal, materialised only for host consumers",
    "arange": "source: host torch.arange",
    "extern": lambda op: f"extern {op.attrs['target']}: calls torch on the host",
    "cumsum": "scan: host torch.cumsum (no scan kernel)",
    "argmax": "reduction with index result: host torch.argmax",
    "any": "boolean reduction: host torch.any",
    "amin": "reduction without a row kernel: host torch.amin",
    "qlinear": _QLINEAR_HOST,
    "attention": wide_head,
}

# -- helpers ----------------------------------------------------------------------------------------


def single_use(v: Value, graph: Graph) -> bool:
    return len(v.uses) == 1 and not any(v is o for o in graph.outputs)


def same_shape(a: Value, b: Value) -> bool:
    sa, sb = a.type.shape, b.type.shape
    return len(sa) == len(sb) and all(dims_equal(x, y) for x, y in zip(sa, sb))


def literal_value(v: Value) -> Any:
    """The value of a rank-any `full` (kernels inline it as a literal), else None."""
    p = v.producer
    return p.attrs["value"] if p is not None and p.opcode == "full" else None


def kernel_types_ok(op: Op) -> bool:
    vals = [*op.operands, *op.results]
    return all(v.type.dtype in KERNEL_DTYPES and v.type.encoding is None for v in vals)


def qlinear_ok(op: Op) -> bool:
    """Can the qlinear template run this `qlinear`? Its weight must be a `const` of a `#quantized`
    encoding of the op's scheme, in a layout the kernels read (8-bit: per channel; 4-bit: an even
    input dim), with the scheme's activation format; every other operand a float tensor."""
    x, w, *rest = op.operands
    enc, const = w.type.encoding, w.producer
    if isinstance(enc, BlockFP) and const is not None and const.opcode == "const":
        return _block_qlinear_ok(op, enc)
    if const is None or const.opcode != "const" or not isinstance(enc, Quantized):
        return False
    sc = SCHEMES.get(op.attrs["scheme"])
    if sc is None or enc.format != sc.weight_format or op.attrs["act_format"] != sc.act_format:
        return False
    if enc.format in ("i8", "f8e4m3") and enc.group:
        return False
    k = w.type.shape[1]
    if enc.format in ("i4", "f4e2m1") and not (isinstance(k, int) and k % 2 == 0):
        return False
    return all(v.type.dtype in QLINEAR_DTYPES and v.type.encoding is None for v in [x, *rest, op.result])


def _block_qlinear_ok(op: Op, enc: BlockFP) -> bool:
    """Block schemes (`templates/qlinear_block.py`): the scheme's own #blockfp layout, unpermuted, a K
    the block divides, no LoRC; float activations, bias and result."""
    x, w, *rest = op.operands
    sc = SCHEMES.get(op.attrs["scheme"])
    if sc is None or not sc.block or enc.format != sc.weight_format or enc.perm is not None:
        return False
    k = w.type.shape[1]
    if op.attrs["act_format"] != sc.act_format or op.attrs["lorc_rank"] or not (isinstance(k, int) and k % sc.block == 0):
        return False
    return all(v.type.dtype in QLINEAR_DTYPES and v.type.encoding is None for v in [x, *rest, op.result])


def _nm_weight(op: Op) -> NM | None:
    """The `#nm` encoding of a GEMM's weight when a sparse template can read it: a single-use `const`
    whose pattern tiles into 32 columns (M divides 32), else None."""
    w = op.operands[1]
    enc, const = w.type.encoding, w.producer
    if not isinstance(enc, NM) or const is None or const.opcode != "const" or len(w.uses) != 1 or 32 % enc.m:
        return None
    return enc


def nm_linear_ok(op: Op) -> bool:
    """Can the N:M sparse GEMM template (`codegen.templates.sparse_gemm`) run this `linear`: a plain `#nm`
    weight (16-bit kept values), every other operand a float tensor of a kernel dtype."""
    enc = _nm_weight(op)
    others = [v for i, v in enumerate([*op.operands, op.result]) if i != 1]
    return (enc is not None and enc.scheme is None
            and all(v.type.dtype in QLINEAR_DTYPES and v.type.encoding is None for v in others))


def nm_qlinear_ok(op: Op) -> bool:
    """Can the quantized-value sparse template (`codegen.templates.sparse_qlinear`) run this `qlinear`: an
    `#nm` weight whose kept values are quantized with the op's scheme (no LoRC), float activations."""
    enc = _nm_weight(op)
    if enc is None or enc.scheme != op.attrs["scheme"] or op.attrs["lorc_rank"] > 0:
        return False
    sc = SCHEMES.get(enc.scheme)
    if sc is None or op.attrs["act_format"] != sc.act_format or (sc.weight_format in ("i8", "f8e4m3") and enc.group):
        return False
    x, _w, *rest = op.operands
    return all(v.type.dtype in QLINEAR_DTYPES and v.type.encoding is None for v in [x, *rest, op.result])


def _always(op: Op) -> bool:
    return True


def _matmul_2d_weight(op: Op) -> bool:
    """matmul(a, b) with a 2-D b is linear(a, b^T): it takes the whole epilogue."""
    return op.operands[1].type.rank == 2 and op.operands[0].type.rank >= 2


@dataclass(frozen=True)
class GemmRule:
    """A GEMM anchor: can its template run this op (`ok`), does it take the whole epilogue
    (`linear_like`), the operand counts that include a bias, and whether the template has the
    scale, post-scale (a multiplier after the activation) and mul-by-tensor steps, and whether it reads FFN-skip
    keep flags (`keep`: the input is a `row_keep`, the template skips the K loop of tiles whose rows are all off)."""

    ok: Callable[[Op], bool]
    linear_like: Callable[[Op], bool]
    bias_arity: tuple[int, ...]
    scale: bool | Callable[[Op], bool] = True  # or for which ops of the rule (the 4-bit decode kernel's qlinears)
    mul: bool = True
    keep: bool = False
    norm: bool = False  # an rms_norm prologue (`norm_prologue`)
    swiglu: bool = False  # the SwiGLU epilogue of a [gate; up] GEMM (`swiglu_ops`)
    post_scale: bool = False  # the multiplier by a rank-0 constant after the activation (`gemm.gemm_epilogue`)
    act_params: bool | Callable[[Op], bool] = False  # activations with learned scalars (ACTIVATION_PARAMS: xielu),
    # `linear(act_args=)`; or for which ops of the rule (the 4-bit decode kernel's qlinears)


GEMM_RULES = {
    "linear": GemmRule(kernel_types_ok, _always, (3,), keep=True, norm=True, swiglu=True, post_scale=True, act_params=True),
    "matmul": GemmRule(kernel_types_ok, _matmul_2d_weight, (), post_scale=True, act_params=True),
    # x, w, [bias], [u, v]; norm and SwiGLU only for a weight in a decode layout (`decode_fusions_ok`)
    "qlinear": GemmRule(qlinear_ok, _always, (3, 5), scale=lambda op: decode_fusions_ok(op), mul=False, keep=True, norm=True,
                        swiglu=True, act_params=lambda op: decode_fusions_ok(op)),
}
# anchors whose weight has an encoding another template reads: (opcode, encoding kind) -> rule, tried first
ENCODED_GEMM_RULES = {
    ("linear", "nm"): GemmRule(nm_linear_ok, _always, (3,), post_scale=True),  # sparse_gemm: the dense epilogue
    ("qlinear", "nm"): GemmRule(nm_qlinear_ok, _always, (3,), scale=False, mul=False),  # sparse_qlinear
}


def weight_encoding_kind(op: Op) -> str | None:
    """The encoding kind ("nm", "quantized", ...) of a GEMM op's weight operand, None when plain."""
    enc = op.operands[1].type.encoding if len(op.operands) > 1 else None
    return getattr(enc, "kind", None)


def takes_scale(rule: GemmRule, op: Op, post: bool = False) -> bool:
    """Does the template of `op` (anchored by `rule`) have the scale step (a multiplier by a rank-0 constant)?
    `post`: the post-scale step (the same after the activation)."""
    if post:
        return rule.post_scale
    return rule.scale(op) if callable(rule.scale) else rule.scale


def gemm_rule(op: Op | None) -> GemmRule | None:
    """The anchor rule of a GEMM op the template can run, else None."""
    if op is None or op.opdef.kernel != "gemm":
        return None
    rule = ENCODED_GEMM_RULES.get((op.opcode, weight_encoding_kind(op))) or GEMM_RULES.get(op.opcode)
    return rule if rule is not None and rule.ok(op) else None


def sparse_paths(graph: Graph, part: Any) -> dict[str, str]:
    """For each linear/qlinear of an `#nm` weight, by layer name: the path it runs (the sparse template of
    its kernel group, or host torch on the decoded weight, and why)."""
    groups = part.group_of()
    out: dict[str, str] = {}
    for op in graph.ops:
        if op.opcode not in ("linear", "qlinear") or weight_encoding_kind(op) != "nm":
            continue
        const = op.operands[1].producer
        name = const.attrs["weight"] if const is not None and const.opcode == "const" else "%" + op.result.name
        name = name.removesuffix(".nm").removesuffix(".weight")
        enc = op.operands[1].type.encoding
        if id(op) in groups:
            out[name] = "nm_qlinear template (" + enc.scheme + ")" if enc.scheme else "nm_linear template"
        else:
            out[name] = "host torch (decoded weight): " + part.host.get(id(op), "not in a kernel group")
    return out


def pointwise_ok(op: Op | None) -> bool:
    """Can the expression printer emit this op inside a kernel (its `kernel` trait)?"""
    return op is not None and op.opdef.kernel == "pointwise" and kernel_types_ok(op)


def cat_ok(op: Op | None) -> bool:
    """A `cat` a pointwise kernel can read through: each operand selected by a range of the cat dim."""
    if op is None or op.opcode != "cat" or not kernel_types_ok(op) or len(op.operands) > MAX_CAT:
        return False
    out = op.result.type
    return out.shape[op.attrs["dim"] % out.rank] != 1


def row_axes(op: Op) -> tuple[int, ...] | None:
    """The dims a row op works over: `dims` (reductions; None = all), `dim` (softmax), else the last."""
    if "dims" in op.attrs:
        return None if op.attrs["dims"] is None else tuple(op.attrs["dims"])
    return (op.attrs["dim"],) if "dim" in op.attrs else (-1,)


def row_ok(op: Op) -> bool:
    """A row kernel can anchor `op`: its `kernel` trait is `row`, over the last dim only, float types,
    rows of at most MAX_ROW elements."""
    if op.opdef.kernel != "row" or not kernel_types_ok(op):
        return False
    rank = op.operands[0].type.rank
    axes = row_axes(op)
    if rank < 1 or axes is None or len(axes) != 1 or axes[0] % rank != rank - 1:
        return False
    n_cols = op.operands[0].type.shape[-1]
    if isinstance(n_cols, int) and n_cols > MAX_ROW:
        return False
    return all(v.type.dtype.is_float for v in [*op.operands, *op.results])


def normalizes(op: Op) -> bool:
    """A row op that is not a reduction (softmax, norms): its result has its input's shape, and
    same-shape pointwise consumers join its kernel as an epilogue."""
    return op.opdef.category != "reduction"


def scale_of(op: Op, y: Value) -> float | None:
    """The constant c of mul(y, c) / mul(c, y) / div(y, c) with c a rank-0 `full`, else None."""
    if op.opcode not in ("mul", "div") or (op.opcode == "div" and op.attrs["rounding_mode"] is not None):
        return None
    others = [v for v in op.operands if v is not y]
    if len(others) != 1 or (op.opcode == "div" and op.operands[0] is not y):
        return None
    value = literal_value(others[0])
    if value is None or others[0].type.rank != 0:
        return None
    value = float(value)
    return value if op.opcode == "mul" else (1.0 / value if value != 0 else None)


def activation_of(op: Op) -> str | None:
    """The GEMM epilogue activation `op` computes (its `activation` trait), else None."""
    return op.opdef.activation_of(op.attrs)


def host_reason(op: Op) -> str:
    """Why `op` runs on the host."""
    reason = HOST_REASONS.get(op.opcode)
    if reason is not None:
        return reason(op) if callable(reason) else reason
    if not kernel_types_ok(op):
        return f"{op.opcode}: operand/result types a kernel does not handle (fp8/packed/encoded): host torch"
    if op.opdef.category == "pointwise":
        return f"{op.opcode}: pointwise op without a kernel emitter: host torch"
    if op.opdef.kernel == "row":
        return f"{op.opcode}: not over the last dim, not float, or rows over {MAX_ROW}: host torch"
    return f"{op.opcode} ({op.opdef.category}): no kernel for it: host torch"


def epilogue_activation(rule: GemmRule, op: Op, anchor: Op | None = None) -> str | None:
    """The activation `op` computes, when the template of `rule` (anchored by `anchor`) applies it (one with
    learned scalars, ACTIVATION_PARAMS, only where `act_params`: the others run it in a pointwise kernel), else None."""
    act = activation_of(op)
    params = rule.act_params(anchor) if callable(rule.act_params) and anchor is not None else rule.act_params
    return act if act not in ACTIVATION_PARAMS or params is True else None


def gated_activation(chain: list[Op]) -> str:
    """The activation (`GATED_ACTIVATIONS`) of a `swiglu_ops` chain: the gated epilogue's `gate=`."""
    return activation_of(chain[2])


def decode_fusions_ok(op: Op) -> bool:
    """A qlinear fuses a norm prologue or a SwiGLU epilogue only in the 4-bit decode kernel (`qlinear_decode_fuse`):
    a weight in a decode layout, no LoRC; a dense linear always may (`gemm.py`)."""
    if op.opcode != "qlinear":
        return op.opcode == "linear"
    return bool(getattr(op.operands[1].type.encoding, "layout", "")) and not op.attrs["lorc_rank"]


def swiglu_ops(op: Op, graph: Graph, interleaved: bool | None = None) -> list[Op] | None:
    """[gate slice, up slice, act, mul] when the GEMM's result y [..., 2N] (a bias [2N] only for a dense linear) is read only as
    act(y[..., :N]) * y[..., N:] with act one of `GATED_ACTIVATIONS` (concat_linears' gate/up GEMM; the
    template computes it: `gated_activation`), else None. `interleaved` (a qlinear's
    default: the decode kernel's rows, `decode_layout.interleave_swiglu`): silu(y[..., 0::2]) * y[..., 1::2]."""
    y = op.result
    n2 = y.type.shape[-1] if y.type.rank else None
    interleaved = op.opcode == "qlinear" if interleaved is None else interleaved
    biased = len(op.operands) == 3 and op.opcode == "linear"  # `gemm.py` adds [b_gate; b_up] before the activation
    if (len(op.operands) != 2 and not biased) or not isinstance(n2, int) or n2 % 2 or len(y.uses) != 2 \
            or any(y is o for o in graph.outputs):
        return None
    if interleaved and not decode_fusions_ok(op):
        return None
    halves: dict[tuple[int, int, int], Op] = {}
    for u in y.uses:
        if u.opcode != "slice" or u.attrs["dim"] % y.type.rank != y.type.rank - 1:
            return None
        halves[(u.attrs["start"], min(u.attrs["end"], n2), u.attrs["step"])] = u
    want = ((0, n2, 2), (1, n2, 2)) if interleaved else ((0, n2 // 2, 1), (n2 // 2, n2, 1))
    gate, up = halves.get(want[0]), halves.get(want[1])
    if gate is None or up is None or not single_use(gate.result, graph) or not single_use(up.result, graph):
        return None
    act = gate.result.uses[0]
    if activation_of(act) not in GATED_ACTIVATIONS or not single_use(act.result, graph):
        return None
    mul = act.result.uses[0]
    if mul.opcode != "mul" or {id(v) for v in mul.operands} != {id(act.result), id(up.result)}:
        return None
    chain = [gate, up, act, mul]
    return chain if all(kernel_types_ok(o) and o.result.type.dtype == y.type.dtype for o in chain) else None


def can_merge_horizontal(a: KernelGroup, b: KernelGroup, order: dict[int, int]) -> bool:
    """Pointwise group b (later root) may join a (`fuse.py`'s horizontal rule): at most MAX_HORIZONTAL outputs
    of one domain shape, a common non-literal input, and no reader of either's outputs inside them or at or
    before the later root (op positions: `order`)."""
    if a.kind != "pointwise" or not a.outputs or not b.outputs or len(a.outputs) + len(b.outputs) > MAX_HORIZONTAL:
        return False
    b_inputs = {id(u) for u in b.inputs}  # the cheap test first: most pairs share no input
    common = [v for v in a.inputs if id(v) in b_inputs]
    if all(literal_value(v) is not None for v in common):
        return False
    if not all(same_shape(o, a.outputs[0]) for o in [*a.outputs, *b.outputs]):
        return False
    last = max(order[id(a.root)], order[id(b.root)])
    inside = {id(op) for op in [*a.ops, *b.ops]}
    for v in [*a.outputs, *b.outputs]:
        for u in v.uses:
            if id(u) in inside or order[id(u)] <= last:
                return False
    return True
