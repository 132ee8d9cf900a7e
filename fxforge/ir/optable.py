"""The entries of the closed op table (see `ops.py` for what an entry holds).

Entries are grouped by kind and written as small tables where the ops share a shape rule:
pointwise (same or broadcast shape, torch's dtype promotion), reductions, shape ops, GEMMs,
composites (named, with their torch semantics as reference), sources (const, full, arange) and
`extern`, which calls a torch op by name and declares its result types itself. Each entry carries
its traits (`ops.py` says what they mean): adding an op is one entry here, plus a kernel renderer in
codegen when its `kernel` class says it can run inside a generated kernel.
"""

from __future__ import annotations

from typing import Any

import sympy
import torch
import torch.nn.functional as F

from fxforge.ir.dtypes import DType
from fxforge.ir.errors import ShapeError
from fxforge.ir.ops import (
    REQUIRED,
    ByAttr,
    OpDef,
    broadcast_shapes,
    meta_dtype,
    norm_axis,
    reduce_shape,
    register,
)
from fxforge.ir.types import Dim, TensorType, dims_equal, may_equal, normalize_dim

# -- pointwise --------------------------------------------------------------------------------------

UNARY = {
    "neg": torch.neg,
    "abs": torch.abs,
    "exp": torch.exp,
    "expm1": torch.expm1,
    "log": torch.log,
    "log1p": torch.log1p,
    "sqrt": torch.sqrt,
    "rsqrt": torch.rsqrt,
    "sin": torch.sin,
    "cos": torch.cos,
    "tanh": torch.tanh,
    "erf": torch.erf,
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "relu2": lambda x: torch.square(torch.relu(x)),  # squared ReLU (Primer; Arcee's MLP): canonicalize spots relu(x)^2
    "silu": F.silu,
    "reciprocal": torch.reciprocal,
    "floor": torch.floor,
    "ceil": torch.ceil,
    "logical_not": torch.logical_not,
    "bitwise_not": torch.bitwise_not,
}

BINARY = {
    "add": torch.add,
    "sub": torch.sub,
    "mul": torch.mul,
    "pow": torch.pow,
    "maximum": torch.maximum,
    "minimum": torch.minimum,
    "remainder": torch.remainder,
    "eq": torch.eq,
    "ne": torch.ne,
    "lt": torch.lt,
    "le": torch.le,
    "gt": torch.gt,
    "ge": torch.ge,
    "logical_and": torch.logical_and,
    "logical_or": torch.logical_or,
    "bitwise_and": torch.bitwise_and,
    "bitwise_or": torch.bitwise_or,
    "bitwise_xor": torch.bitwise_xor,
}


def _pointwise_infer(ref):
    def infer(types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        shape = broadcast_shapes(*[t.shape for t in types])
        return [TensorType(shape, meta_dtype(ref, types, attrs))]

    return infer


# IEEE add/mul/max/min and the comparisons/logic below give the same bits with operands swapped
COMMUTATIVE = frozenset({"add", "mul", "maximum", "minimum", "eq", "ne", "logical_and", "logical_or",
                         "bitwise_and", "bitwise_or", "bitwise_xor"})
ACTIVATIONS = {"relu": "relu", "relu2": "relu2", "silu": "silu", "sigmoid": "sigmoid", "tanh": "tanh"}  # GEMM epilogue names
# activations with learned scalars: their attributes, in the order the dense GEMM epilogue takes them at run time
# (`linear(act_args=)`; one kernel for every layer); only the dense linear template computes them
ACTIVATION_PARAMS = {"xielu": ("alpha_p", "alpha_n", "beta", "eps")}
# act(gate) * up of a gated MLP (SwiGLU: Llama, Qwen, Mistral, Phi3; GeGLU with tanh GeLU: Gemma; squared ReLU: BitNet):
# the activations (`activation` trait names) the [gate; up] GEMM's gated epilogue computes
GATED_ACTIVATIONS = ("silu", "gelu_tanh", "gelu", "relu2")


def _pointwise(name: str, ref, arity: int, attrs: dict[str, Any] | None = None, doc: str = "", **traits) -> None:
    traits.setdefault("kernel", "pointwise")
    register(OpDef(name, (arity, arity), attrs or {}, _pointwise_infer(ref), ref, "pointwise", doc, **traits))


for _name, _fn in UNARY.items():
    _pointwise(_name, _fn, 1, activation=ACTIVATIONS.get(_name))
for _name, _fn in BINARY.items():
    _pointwise(_name, _fn, 2, commutative=_name in COMMUTATIVE)

_pointwise("gelu", lambda x, approximate: F.gelu(x, approximate=approximate), 1, {"approximate": "none"},
           activation=ByAttr("approximate", {"none": "gelu", "tanh": "gelu_tanh"}))
_pointwise("softplus", lambda x, beta, threshold: F.softplus(x, beta, threshold), 1, {"beta": 1.0, "threshold": 20.0})
_pointwise("div", lambda a, b, rounding_mode: torch.div(a, b, rounding_mode=rounding_mode), 2, {"rounding_mode": None})
_pointwise("where", torch.where, 3, doc="where(cond, a, b)")
_pointwise("clamp", lambda x, min, max: torch.clamp(x, min, max), 1, {"min": None, "max": None})


def _xielu(x, alpha_p, alpha_n, beta, eps):
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # fp32 math, one rounding (the kernels')
    y = torch.where(xf > 0, alpha_p * xf * xf + beta * xf, (torch.expm1(xf.clamp(max=eps)) - xf) * alpha_n + beta * xf)
    return y.to(x.dtype)


# xIELU (Apertus' MLP; HF's XIELUActivation, its python path op for op) with its scalars already resolved:
# alpha_p = softplus(a_p), alpha_n = beta + softplus(a_n) (`passes/xielu_rules.py` reads them from the graph)
_pointwise("xielu", _xielu, 1, dict.fromkeys(ACTIVATION_PARAMS["xielu"], REQUIRED), activation="xielu",
           doc="xielu(x) {alpha_p, alpha_n, beta, eps}: where(x > 0, alpha_p*x*x + beta*x, "
               "(expm1(min(x, eps)) - x)*alpha_n + beta*x)")
# no kernel renderer (an index-dependent mask): host torch
_pointwise("triu", lambda x, diagonal: torch.triu(x, diagonal), 1, {"diagonal": 0}, kernel="host")
_pointwise("tril", lambda x, diagonal: torch.tril(x, diagonal), 1, {"diagonal": 0}, kernel="host")


def _cast_infer(types, attrs):
    return [types[0].with_dtype(attrs["dtype"])]


register(OpDef("cast", (1, 1), {"dtype": REQUIRED}, _cast_infer, lambda x, dtype: x.to(dtype.torch), "pointwise",
               kernel="pointwise"))

# -- reductions -------------------------------------------------------------------------------------


def _dims(dims):
    return None if dims is None else list(dims)


REDUCTIONS = {
    "sum": lambda x, dims, keepdim, dtype: torch.sum(x, _dims(dims), keepdim, dtype=dtype and dtype.torch),
    "mean": lambda x, dims, keepdim, dtype: torch.mean(x, _dims(dims), keepdim, dtype=dtype and dtype.torch),
    "amax": lambda x, dims, keepdim, dtype: torch.amax(x, _dims(dims) or [], keepdim),
    "amin": lambda x, dims, keepdim, dtype: torch.amin(x, _dims(dims) or [], keepdim),
    "any": lambda x, dims, keepdim, dtype: torch.any(x, _dims(dims), keepdim),
}


def _reduction_infer(ref):
    def infer(types, attrs):
        shape = reduce_shape(types[0].shape, attrs["dims"], attrs["keepdim"])
        return [TensorType(shape, meta_dtype(ref, types, attrs))]

    return infer


ROW_REDUCTIONS = ("sum", "mean", "amax")  # a row kernel computes them over the last dim
for _name, _fn in REDUCTIONS.items():
    register(OpDef(_name, (1, 1), {"dims": None, "keepdim": False, "dtype": None}, _reduction_infer(_fn), _fn,
                   "reduction", kernel="row" if _name in ROW_REDUCTIONS else "host"))


def _argmax_infer(types, attrs):
    return [TensorType(reduce_shape(types[0].shape, (attrs["dim"],), attrs["keepdim"]), DType.i64)]


register(OpDef("argmax", (1, 1), {"dim": REQUIRED, "keepdim": False}, _argmax_infer,
               lambda x, dim, keepdim: torch.argmax(x, dim, keepdim), "reduction"))


def _cumsum(x, dim, dtype):
    return torch.cumsum(x, dim, dtype=dtype and dtype.torch)


register(OpDef("cumsum", (1, 1), {"dim": REQUIRED, "dtype": None},
               lambda types, attrs: [TensorType(types[0].shape, meta_dtype(_cumsum, types, attrs))],
               _cumsum, "reduction"))

# -- shape ops --------------------------------------------------------------------------------------


def _reshape_infer(types, attrs):
    shape = tuple(attrs["shape"])
    if -1 in shape:
        raise ShapeError("reshape: the target shape must be explicit (no -1); the frontend resolves it")
    src, dst = types[0].numel(), sympy.Mul(*[sympy.sympify(d) for d in shape])
    if not dims_equal(src, dst):
        raise ShapeError(f"reshape: {list(types[0].shape)} has {src} elements, target {list(shape)} has {dst}")
    return [types[0].with_shape(shape)]


def _permute_infer(types, attrs):
    dims = [norm_axis(d, types[0].rank) for d in attrs["dims"]]
    if sorted(dims) != list(range(types[0].rank)):
        raise ShapeError(f"permute: {list(attrs['dims'])} is not a permutation of rank {types[0].rank}")
    return [types[0].with_shape(types[0].shape[d] for d in dims)]


def _expand_infer(types, attrs):
    shape = tuple(attrs["shape"])
    src = types[0].shape
    if len(shape) < len(src) or -1 in shape:
        raise ShapeError(f"expand: cannot expand {list(src)} to {list(shape)} (target must be explicit, rank >= source)")
    for s, t in zip(reversed(src), reversed(shape)):
        if s != 1 and not dims_equal(s, t):
            raise ShapeError(f"expand: cannot expand {list(src)} to {list(shape)}")
    return [types[0].with_shape(shape)]


def _slice_len(start: Dim, end: Dim, step: int) -> Dim:
    if isinstance(start, int) and isinstance(end, int):
        return max(0, (end - start + step - 1) // step)
    return normalize_dim(sympy.floor((sympy.sympify(end) - start + step - 1) / step))


def _slice_infer(types, attrs):
    shape = list(types[0].shape)
    dim = norm_axis(attrs["dim"], len(shape))
    shape[dim] = _slice_len(attrs["start"], attrs["end"], attrs["step"])
    return [types[0].with_shape(shape)]


def _cat_infer(types, attrs):
    dim = norm_axis(attrs["dim"], types[0].rank)
    shape = list(types[0].shape)
    shape[dim] = normalize_dim(sum(sympy.sympify(t.shape[dim]) for t in types))
    dtype = types[0].dtype
    for t in types[1:]:
        try:
            dtype = DType.from_torch(torch.promote_types(dtype.torch, t.dtype.torch))
        except RuntimeError as e:  # torch promotes no float8 type: torch.cat refuses them the same way
            raise ShapeError(f"cat: {dtype} and {t.dtype} have no common type ({e}); cast one of them first") from None
    return [TensorType(tuple(shape), dtype)]


def _index_select_infer(types, attrs):
    shape = list(types[0].shape)
    shape[norm_axis(attrs["dim"], len(shape))] = types[1].shape[0]
    return [types[0].with_shape(shape)]


_VIEW = {"kernel": "view", "aliases": True}
register(OpDef("reshape", (1, 1), {"shape": REQUIRED}, _reshape_infer, lambda x, shape: x.reshape(shape), "shape",
               **_VIEW))
register(OpDef("permute", (1, 1), {"dims": REQUIRED}, _permute_infer, lambda x, dims: x.permute(dims), "shape",
               **_VIEW))
register(OpDef("expand", (1, 1), {"shape": REQUIRED}, _expand_infer, lambda x, shape: x.expand(shape), "shape",
               **_VIEW))
register(OpDef("slice", (1, 1), {"dim": REQUIRED, "start": 0, "end": REQUIRED, "step": 1}, _slice_infer,
               lambda x, dim, start, end, step: x[(slice(None),) * (dim % x.dim()) + (slice(start, end, step),)], "shape",
               **_VIEW))
register(OpDef("cat", (1, None), {"dim": REQUIRED}, _cat_infer, lambda *xs, dim: torch.cat(xs, dim), "shape"))
register(OpDef("index_select", (2, 2), {"dim": REQUIRED}, _index_select_infer,
               lambda x, idx, dim: torch.index_select(x, dim, idx), "shape"))
register(OpDef("gather", (2, 2), {"dim": REQUIRED}, lambda types, attrs: [types[0].with_shape(types[1].shape)],
               lambda x, idx, dim: torch.gather(x, dim, idx), "shape"))

# -- GEMMs ------------------------------------------------------------------------------------------


def _matmul_infer(types, attrs):
    a, b = types
    if a.rank < 2 or b.rank < 2:
        raise ShapeError(f"matmul: operands must have rank >= 2, got {list(a.shape)} and {list(b.shape)}")
    if not may_equal(a.shape[-1], b.shape[-2]):
        raise ShapeError(f"matmul: inner dims differ: {list(a.shape)} @ {list(b.shape)}")
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return [TensorType(batch + (a.shape[-2], b.shape[-1]), meta_dtype(torch.matmul, [a, b], {}))]


def _linear_infer(types, attrs):
    x, w = types[0], types[1]
    if w.rank != 2 or not dims_equal(x.shape[-1], w.shape[1]):
        raise ShapeError(f"linear: input {list(x.shape)} does not fit weight {list(w.shape)} (expects [out, in])")
    if len(types) == 3 and (types[2].rank != 1 or not dims_equal(types[2].shape[0], w.shape[0])):
        raise ShapeError(f"linear: bias {list(types[2].shape)} does not fit weight {list(w.shape)}")
    return [TensorType(x.shape[:-1] + (w.shape[0],), x.dtype)]


def _embedding_infer(types, attrs):
    w, ids = types
    return [TensorType(ids.shape + (w.shape[1],), w.dtype)]


register(OpDef("matmul", (2, 2), {}, _matmul_infer, torch.matmul, "gemm", kernel="gemm"))
register(OpDef("linear", (2, 3), {}, _linear_infer, F.linear, "gemm", "linear(x, w[out, in], bias?)", kernel="gemm"))
register(OpDef("embedding", (2, 2), {}, _embedding_infer, lambda w, ids: F.embedding(ids, w), "gemm",
               "embedding(weight[vocab, dim], ids)"))

# -- composites -------------------------------------------------------------------------------------


def _same_as_first(types, attrs):
    return [types[0]]


def _layer_norm(x, w=None, b=None, *, eps):
    """In fp32, rounded once to x's dtype (16-bit x: what the kernels compute and an fp32 LayerNorm between casts is)."""
    f32 = [None if t is None else t.float() for t in (w, b)]
    return F.layer_norm(x.float(), (x.shape[-1],), *f32, eps).to(x.dtype)


def _rms_norm(x, w=None, *, eps):
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if w is not None and w.dtype == torch.float32 and x.dtype != torch.float32:  # fp32 weight: Gemma's one rounding
        return (w * y).to(x.dtype)
    y = y.to(x.dtype)
    return y if w is None else w * y


register(OpDef("layer_norm", (1, 3), {"eps": 1e-5}, _same_as_first, _layer_norm, "composite",
               "layer_norm over the last dim: layer_norm(x, weight?, bias?)", kernel="row"))
register(OpDef("rms_norm", (1, 2), {"eps": 1e-6}, _same_as_first, _rms_norm, "composite",
               "weight * (x * rsqrt(mean(x^2) + eps)): the normalised x rounded to x's dtype, then the weight (Llama's "
               "convention); an fp32 weight on 16-bit x multiplies in fp32 and rounds once (Gemma's, GPT-OSS's)",
               kernel="row"))
register(OpDef("softmax", (1, 1), {"dim": -1}, _same_as_first, lambda x, dim: torch.softmax(x, dim), "composite",
               kernel="row"))
register(OpDef("log_softmax", (1, 1), {"dim": -1}, _same_as_first, lambda x, dim: torch.log_softmax(x, dim),
               "composite", kernel="row"))
# attention: `attention_op.py`

# -- sources ----------------------------------------------------------------------------------------


def _full_infer(types, attrs):
    return [TensorType(tuple(attrs["shape"]), attrs["dtype"])]


def _arange_infer(types, attrs):
    start, end, step = (sympy.sympify(attrs[k]) for k in ("start", "end", "step"))
    return [TensorType((normalize_dim(sympy.ceiling((end - start) / step)),), attrs["dtype"])]


register(OpDef("full", (0, 0), {"shape": REQUIRED, "value": REQUIRED, "dtype": REQUIRED}, _full_infer,
               lambda shape, value, dtype: torch.full(tuple(shape), value, dtype=dtype.torch), "source"))
register(OpDef("arange", (0, 0), {"start": 0, "end": REQUIRED, "step": 1, "dtype": DType.i64}, _arange_infer,
               lambda start, end, step, dtype: torch.arange(start, end, step, dtype=dtype.torch), "source"))
register(OpDef("const", (0, 0), {"weight": REQUIRED}, None, None, "source",
               "a weight of the graph's weight table; its type is the weight's"))

# -- extern (its own module; re-exported here) ------------------------------------------------------

from fxforge.ir.extern_op import OperandRef, resolve_torch_op  # noqa: E402

__all__ = ["ACTIVATIONS", "ACTIVATION_PARAMS", "GATED_ACTIVATIONS", "BINARY", "COMMUTATIVE", "REDUCTIONS", "ROW_REDUCTIONS", "UNARY", "OperandRef",
           "resolve_torch_op"]
