"""The fusion rule table and the data a partition is made of (see `fuse.py` for the rules in words):
which ops may anchor or join a kernel (`*_ok` predicates), the reasons for ops left on the host,
and `KernelGroup` / `Partition`, which codegen reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fxforge.ir.dtypes import DType
from fxforge.ir.graph import Graph, Op, Value
from fxforge.ir.lowp_ops import SCHEMES
from fxforge.ir.types import Quantized, dims_equal

FUSION_RULES = {
    "gemm": "linear/matmul + epilogue: scale(rank-0 full) -> bias[N] -> relu|silu|gelu|gelu_tanh|sigmoid "
            "-> mul by a same-shape tensor -> residual add -> cast (single-use intermediates); qlinear "
            "(#quantized const weight) the same without the scale and the mul",
    "row": "softmax|log_softmax|layer_norm|rms_norm|sum|mean|amax over the last dim + single-use pointwise "
           "producers (prologue) + same-shape pointwise consumers (epilogue, normalising ops only)",
    "pointwise": "tree of pointwise ops (+ single-use cat), single-use producers fused inward, broadcasting to the root's shape",
    "horizontal": "pointwise trees of one domain shape reading a common input, independent of each other: one "
                  "kernel, several outputs",
    "attention": "attention alone (flash-attention template)",
    "hadamard": "hadamard alone (fast Walsh-Hadamard template); single-use into an A8 qlinear with an epilogue: "
                "fused into its per-token activation quantization",
}

ROW_OPS = ("softmax", "log_softmax", "layer_norm", "rms_norm")
ROW_REDUCTIONS = ("sum", "mean", "amax")
MAX_ROW = 65536  # row kernels hold one row in one tile
MAX_HORIZONTAL = 8  # outputs of one horizontally fused pointwise kernel
ACTIVATIONS = {"relu": "relu", "silu": "silu", "sigmoid": "sigmoid"}  # + gelu (by its approximate attr)
# pointwise ops the expression printer (fxforge.codegen.expr) emits
POINTWISE_EMITTED = frozenset({
    "neg", "abs", "exp", "log", "log1p", "sqrt", "rsqrt", "sin", "cos", "tanh", "erf", "sigmoid", "relu", "silu",
    "reciprocal", "floor", "ceil", "logical_not", "bitwise_not", "add", "sub", "mul", "pow", "maximum", "minimum",
    "remainder", "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "bitwise_and", "bitwise_or",
    "bitwise_xor", "gelu", "div", "where", "clamp", "cast",
})
QLINEAR_DTYPES = frozenset({DType.f32, DType.f16, DType.bf16})  # activations, bias, LoRC, result of a qlinear kernel
KERNEL_DTYPES = frozenset({DType.f64, DType.f32, DType.f16, DType.bf16, DType.i64, DType.i32, DType.i16,
                           DType.i8, DType.u8, DType.bool})
HOST_REASONS = {
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
    "extern": "extern: calls a torch op on the host",
    "cumsum": "scan: host torch.cumsum (no scan kernel)",
    "argmax": "reduction with index result: host torch.argmax",
    "any": "boolean reduction: host torch.any",
    "amin": "reduction without a row kernel: host torch.amin",
}


@dataclass
class KernelGroup:
    """One kernel: `kind` (pointwise | row | gemm | attention), its ops in graph order, the values it
    reads from outside (`inputs`) and writes (`outputs`), why it was grouped, and kind-specific
    `params` (gemm: the epilogue, row: the anchor op)."""

    kind: str
    ops: list[Op]
    inputs: list[Value]
    outputs: list[Value]
    reason: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def root(self) -> Op:
        return self.ops[-1]

    def describe(self) -> str:
        return f"{self.kind}[{', '.join(op.opcode for op in self.ops)}]"


@dataclass
class Partition:
    """Kernel groups in graph order, and the host ops with the reason each stays unfused."""

    groups: list[KernelGroup]
    host: dict[int, str]  # id(op) -> reason
    host_ops: dict[str, str] = field(default_factory=dict)  # "%name = opcode" -> reason

    def group_of(self) -> dict[int, KernelGroup]:
        return {id(op): g for g in self.groups for op in g.ops}

    def stats(self) -> dict[str, Any]:
        kinds: dict[str, int] = {}
        for g in self.groups:
            kinds[g.kind] = kinds.get(g.kind, 0) + 1
        reasons: dict[str, dict[str, Any]] = {}
        for op_reason in self.host.values():
            reasons.setdefault(op_reason, {"count": 0})["count"] += 1
        return {
            "kernels": len(self.groups),
            "kinds": dict(sorted(kinds.items())),
            "fused_ops": sum(len(g.ops) for g in self.groups),
            "groups": [g.describe() for g in self.groups],
            "unfused": {r: v["count"] for r, v in sorted(reasons.items())},
            "host_ops": dict(self.host_ops),
        }


# -- helpers ----------------------------------------------------------------------------------------


def single_use(v: Value, graph: Graph) -> bool:
    return len(v.uses) == 1 and not any(v is o for o in graph.outputs)


def same_shape(a: Value, b: Value) -> bool:
    sa, sb = a.type.shape, b.type.shape
    return len(sa) == len(sb) and all(dims_equal(x, y) for x, y in zip(sa, sb))


def kernel_types_ok(op: Op) -> bool:
    vals = [*op.operands, *op.results]
    return all(v.type.dtype in KERNEL_DTYPES and v.type.encoding is None for v in vals)


def qlinear_ok(op: Op) -> bool:
    """Can the qlinear template run this `qlinear`? Its weight must be a `const` of a `#quantized`
    encoding of the op's scheme, in a layout the kernels read (8-bit: per channel; 4-bit: an even
    input dim), with the scheme's activation format; every other operand a float tensor."""
    if op.opcode != "qlinear":
        return False
    x, w, *rest = op.operands
    enc, const = w.type.encoding, w.producer
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


def pointwise_ok(op: Op) -> bool:
    """Can the expression printer emit this op inside a kernel?"""
    return op.opdef.category == "pointwise" and op.opcode in POINTWISE_EMITTED and kernel_types_ok(op)


def cat_ok(op: Op) -> bool:
    """A `cat` a pointwise kernel can read through: each operand selected by a range of the cat dim."""
    if op.opcode != "cat" or not kernel_types_ok(op) or len(op.operands) > 8:
        return False
    out = op.result.type
    return out.shape[op.attrs["dim"] % out.rank] != 1


def last_dim(op: Op) -> bool:
    rank = op.operands[0].type.rank
    if op.opcode in ("softmax", "log_softmax"):
        return rank >= 1 and op.attrs["dim"] % rank == rank - 1
    if op.opcode in ROW_REDUCTIONS:
        dims = op.attrs["dims"]
        return rank >= 1 and dims is not None and len(dims) == 1 and dims[0] % rank == rank - 1
    return rank >= 1


def row_ok(op: Op) -> bool:
    if op.opcode not in ROW_OPS + ROW_REDUCTIONS or not kernel_types_ok(op) or not last_dim(op):
        return False
    n_cols = op.operands[0].type.shape[-1]
    if isinstance(n_cols, int) and n_cols > MAX_ROW:
        return False
    return all(v.type.dtype.is_float for v in [*op.operands, *op.results])


def scale_of(op: Op, y: Value) -> float | None:
    """The constant c of mul(y, c) / mul(c, y) / div(y, c) with c a rank-0 `full`, else None."""
    if op.opcode not in ("mul", "div") or (op.opcode == "div" and op.attrs["rounding_mode"] is not None):
        return None
    others = [v for v in op.operands if v is not y]
    if len(others) != 1 or (op.opcode == "div" and op.operands[0] is not y):
        return None
    c = others[0]
    if c.producer is None or c.producer.opcode != "full" or c.type.rank != 0:
        return None
    value = float(c.producer.attrs["value"])
    return value if op.opcode == "mul" else (1.0 / value if value != 0 else None)


def activation_of(op: Op) -> str | None:
    if op.opcode in ACTIVATIONS:
        return ACTIVATIONS[op.opcode]
    if op.opcode == "gelu":
        return "gelu" if op.attrs["approximate"] == "none" else "gelu_tanh"
    return None
