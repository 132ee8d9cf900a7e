"""ATen lowerings of pointwise ops, casts, identities and reductions (see `aten_table.py` for the
conventions every lowering follows). Filed into this module's `TABLE`."""

from __future__ import annotations

import torch

from fxforge.frontend.aten_common import Lowering, Table, aten, cast_to, overloads, registrar
from fxforge.frontend.builder import Builder, Unsupported
from fxforge.ir.dtypes import DType
from fxforge.ir.graph import Value
from fxforge.ir.optable import BINARY, UNARY

TABLE: Table = {}
lowers = registrar(TABLE)


# -- pointwise --------------------------------------------------------------------------------------

def _binary(opcode: str) -> Lowering:
    def lower(b: Builder, x, y, *, alpha=1):
        if not isinstance(x, Value) and not isinstance(y, Value):
            raise Unsupported("both operands are scalars")
        like = x if isinstance(x, Value) else y
        x, y = b.tensor(x, like), b.tensor(y, like)
        if alpha != 1:
            y = b.op("mul", y, b.tensor(alpha, y))
        return b.op(opcode, x, y)

    return lower


_ALIASES = {"logical_and": ["logical_and"], "bitwise_and": ["bitwise_and", "__and__"],
            "bitwise_or": ["bitwise_or", "__or__"], "bitwise_xor": ["bitwise_xor", "__xor__"]}
for _opcode in BINARY:
    for _name in _ALIASES.get(_opcode, [_opcode]):
        lowers(*overloads(_name, "Tensor", "Scalar", "Tensor_Scalar", "Tensor_Tensor", "Scalar_Tensor", "self"))(_binary(_opcode))

for _opcode in UNARY:
    lowers(*overloads(_opcode, "default"))(lambda b, x, _op=_opcode: b.op(_op, x))
# torch.min(a, b) / max(a, b) of two tensors are minimum / maximum (xIELU's min(x, eps)); no extern
lowers(aten.minimum.default, aten.min.other)(_binary("minimum"))
lowers(aten.maximum.default, aten.max.other)(_binary("maximum"))
lowers(aten.softplus.default)(lambda b, x, beta=1, threshold=20: b.op("softplus", x, beta=float(beta),
                                                                       threshold=float(threshold)))


@lowers(aten.square.default)
def _square(b: Builder, x):
    """x * x (torch's pow(x, 2) for a square: the same bits): Arcee's ReLU^2 MLP then fuses instead of an extern."""
    return b.op("mul", x, x)


@lowers(aten.div.Tensor, aten.div.Scalar, aten.div.Tensor_mode, aten.div.Scalar_mode)
def _div(b, x, y, *, rounding_mode=None):
    like = x if isinstance(x, Value) else y
    return b.op("div", b.tensor(x, like), b.tensor(y, like), rounding_mode=rounding_mode)


@lowers(aten.floor_divide.default, aten.floor_divide.Scalar)
def _floor_divide(b, x, y):
    """torch.floor_divide: div rounding down (Llama 4's chunked-attention mask, positions // chunk size)."""
    return _div(b, x, y, rounding_mode="floor")


def _in_place(lower: Lowering) -> Lowering:
    """`x.add_(y)` as `add(x, y)` cast back to x's dtype, as torch's in-place ops do; fx_to_ir rebinds x to the
    result and lowers it only when x is the graph's own (`IN_PLACE`: no view of it and not a view itself)."""
    return lambda b, x, *args, **kwargs: cast_to(b, lower(b, x, *args, **kwargs), b.meta_type().dtype.torch)


# in-place arithmetic (Falcon's `mlp_output += attention_output`, Gemma 4's `hidden_states *= layer_scalar`) -> the
# lowering of its out-of-place twin
_TWINS = {t: TABLE[getattr(getattr(aten, name), t._overloadname)]
          for name in ("add", "sub", "mul", "div") for t in overloads(f"{name}_", "Tensor", "Scalar")}
IN_PLACE = frozenset(_TWINS)
for _target, _twin in _TWINS.items():
    lowers(_target)(_in_place(_twin))


@lowers(aten.gelu.default)
def _gelu(b, x, approximate="none"):
    return b.op("gelu", x, approximate=approximate)


@lowers(*overloads("where", "self", "ScalarOther", "ScalarSelf", "Scalar"))
def _where(b, cond, x, y):
    # a python scalar takes the result's dtype (torch's where does not promote for it): HF's eager mask
    # where(mask, 0.0, finfo.min) is then a pointwise op that fuses, not an f64 extern
    if not (isinstance(x, Value) and isinstance(y, Value)):
        dtype = b.meta_type().dtype
        x, y = (v if isinstance(v, Value) else b.op("full", shape=(), value=v, dtype=dtype) for v in (x, y))
    return b.op("where", cond, x, y)


@lowers(aten.masked_fill.Scalar, aten.masked_fill.Tensor)
def _masked_fill(b, x, mask, value):
    """where(mask, value, x), the value in x's dtype (torch casts it so; a tensor value must be 0-d)."""
    if isinstance(value, Value) and value.type.rank != 0:
        raise Unsupported("masked_fill with a value that is not 0-d")
    fill = cast_to(b, value, x.type.dtype.torch) if isinstance(value, Value) else b.op(
        "full", shape=(), value=value, dtype=x.type.dtype)
    return b.op("where", mask, fill, x)


@lowers(aten.clamp.default)
def _clamp(b, x, min=None, max=None):
    return b.op("clamp", x, min=min, max=max)


lowers(aten.clamp_min.default)(lambda b, x, lo: b.op("clamp", x, min=lo))
lowers(aten.clamp_max.default)(lambda b, x, hi: b.op("clamp", x, max=hi))
lowers(aten.triu.default)(lambda b, x, diagonal=0: b.op("triu", x, diagonal=diagonal))
lowers(aten.tril.default)(lambda b, x, diagonal=0: b.op("tril", x, diagonal=diagonal))


def _check_device(device) -> None:
    if device is not None and torch.device(device).type != "cpu":
        raise Unsupported(f"device move to {device}")


@lowers(aten._to_copy.default)
def _to_copy(b, x, *, dtype=None, layout=None, device=None, pin_memory=None, non_blocking=False, memory_format=None):
    _check_device(device)
    return cast_to(b, x, dtype)


@lowers(aten.to.dtype)
def _to_dtype(b, x, dtype, non_blocking=False, copy=False, memory_format=None):
    return cast_to(b, x, dtype)


@lowers(aten.to.dtype_layout)
def _to_dtype_layout(b, x, *, dtype=None, layout=None, device=None, pin_memory=None, non_blocking=False, copy=False, memory_format=None):
    _check_device(device)
    return cast_to(b, x, dtype)


@lowers(aten.to.device)
def _to_device(b, x, device, dtype, non_blocking=False, copy=False, memory_format=None):
    _check_device(device)
    return cast_to(b, x, dtype)


@lowers(torch.ops.prims.convert_element_type.default)
def _convert_element_type(b, x, dtype):
    return cast_to(b, x, dtype)


@lowers(aten.type_as.default)
def _type_as(b, x, other):
    return cast_to(b, x, other.type.dtype.torch)


# -- values that are the same value ------------------------------------------------------------------

@lowers(aten.clone.default, aten.alias.default, aten.detach.default, aten.contiguous.default,
        aten.lift_fresh_copy.default, *overloads("lift_fresh", "default"))
def _identity(b, x, *args, **kwargs):
    return x


@lowers(aten.dropout.default)
def _dropout(b, x, p, train):
    if train and p > 0:
        raise Unsupported("dropout in training mode")
    return x


@lowers(aten._assert_tensor_metadata.default, *overloads("_assert_scalar", "default"),
        *overloads("sym_constrain_range_for_size", "default"), *overloads("_assert_async", "msg"))
def _no_value(b, *args, **kwargs):
    return None


# -- reductions -------------------------------------------------------------------------------------

def _reduction(opcode: str) -> Lowering:
    def lower(b, x, dims=None, keepdim=False, *, dtype=None):
        if opcode in ("amax", "amin", "any") and dtype is not None:
            raise Unsupported("dtype on a max/min reduction")
        dims = (dims,) if isinstance(dims, int) else dims
        return b.op(opcode, x, dims=tuple(dims) if dims else None, keepdim=keepdim,
                    dtype=DType.from_torch(dtype) if dtype is not None else None)

    return lower


for _opcode, _names in {"sum": ["dim_IntList", "default"], "mean": ["dim", "default"], "amax": ["default"],
                        "amin": ["default"], "any": ["dim", "dims", "default"]}.items():
    lowers(*overloads(_opcode, *_names))(_reduction(_opcode))


lowers(aten.argmax.default)(lambda b, x, dim=None, keepdim=False: _argmax(b, x, dim, keepdim))


def _argmax(b, x, dim, keepdim):
    if dim is None:
        raise Unsupported("argmax over all dims")
    return b.op("argmax", x, dim=dim, keepdim=keepdim)


@lowers(aten.cumsum.default)
def _cumsum(b, x, dim, *, dtype=None):
    return b.op("cumsum", x, dim=dim, dtype=DType.from_torch(dtype) if dtype is not None else None)

