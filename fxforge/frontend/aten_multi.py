"""ATen lowerings of ops with several results: topk, sort, var_mean, max/min along a dim, layer
norm with its statistics, and inference batch norm (one result, but it shares the multi-result
entry's arithmetic). Filed into this module's `TABLE` (merged by
`aten_table.py`, see there for the conventions).

Decisions: a lowering returns one entry per ATen result. An entry the lowering does not compute is
`None`; fx_to_ir sends the node to a multi-result `extern` when such a result is used. Results that
only a backward pass reads (layer norm's mean and rstd under autograd) are computed from IR ops only
when `b.used` says some user reads them, so an inference graph keeps its single fused norm.
"""

from __future__ import annotations

import torch

from fxforge.frontend.aten_common import Table, aten, cast_to, overloads, registrar
from fxforge.frontend.aten_structural import layer_norm_value
from fxforge.frontend.builder import Builder, Unsupported
from fxforge.ir.graph import Value

TABLE: Table = {}
lowers = registrar(TABLE)


def _pair(b: Builder, opcode: str, x: Value, **attrs) -> tuple[Value, Value]:
    op = b.multi(opcode, x, **attrs)
    return op.results[0], op.results[1]


@lowers(aten.topk.default)
def _topk(b, x, k, dim=-1, largest=True, sorted=True):
    if not isinstance(k, int):
        raise Unsupported("topk with a symbolic k")
    return _pair(b, "topk", x, k=k, dim=dim, largest=largest, sorted=sorted)


@lowers(aten.sort.default)
def _sort(b, x, dim=-1, descending=False):
    return _pair(b, "sort", x, dim=dim, descending=descending, stable=False)


@lowers(*overloads("sort", "stable"))
def _sort_stable(b, x, *, stable=None, dim=-1, descending=False):
    return _pair(b, "sort", x, dim=dim, descending=descending, stable=bool(stable))


def _dims(dim) -> tuple[int, ...] | None:
    if dim is None:
        return None
    return (dim,) if isinstance(dim, int) else tuple(dim) or None


@lowers(*overloads("var_mean", "correction"))
def _var_mean(b, x, dim=None, *, correction=None, keepdim=False):
    correction = 1 if correction is None else correction
    if not isinstance(correction, int):
        raise Unsupported("var_mean with a non-integer correction")
    return _pair(b, "var_mean", x, dims=_dims(dim), correction=correction, keepdim=keepdim)


@lowers(*overloads("var_mean", "dim"))
def _var_mean_dim(b, x, dim, unbiased=True, keepdim=False):
    return _pair(b, "var_mean", x, dims=_dims(dim), correction=int(unbiased), keepdim=keepdim)


lowers(aten.max.dim)(lambda b, x, dim, keepdim=False: _pair(b, "max_dim", x, dim=dim, keepdim=keepdim))
lowers(aten.min.dim)(lambda b, x, dim, keepdim=False: _pair(b, "min_dim", x, dim=dim, keepdim=keepdim))


@lowers(aten.native_layer_norm.default)
def _native_layer_norm(b, x, normalized_shape, weight, bias, eps):
    y = layer_norm_value(b, x, normalized_shape, weight, bias, eps)
    if not b.used & {1, 2}:
        return (y, None, None)
    # mean and 1/std over the last dim, computed in f32 (as torch does) and given torch's dtype
    xf = cast_to(b, x, torch.float32)
    mean = b.op("mean", xf, dims=(-1,), keepdim=True)
    centred = b.op("sub", xf, mean)
    var = b.op("mean", b.op("mul", centred, centred), dims=(-1,), keepdim=True)
    rstd = b.op("rsqrt", b.op("add", var, b.tensor(float(eps), var)))
    return (y, cast_to(b, mean, b.meta_type(1).dtype.torch), cast_to(b, rstd, b.meta_type(2).dtype.torch))


@lowers(aten._native_batch_norm_legit_no_training.default)
def _batch_norm_inference(b, x, weight, bias, running_mean, running_var, momentum, eps):
    """The saved statistics (results 1 and 2, empty in inference) are left to torch."""
    return (_batch_norm(b, x, weight, bias, running_mean, running_var, eps), None, None)


@lowers(aten.batch_norm.default)
def _batch_norm_op(b, x, weight, bias, running_mean, running_var, training, momentum, eps, cudnn_enabled):
    if training or running_mean is None or running_var is None:
        raise Unsupported("batch norm in training mode (batch statistics, running stats updated)")
    return _batch_norm(b, x, weight, bias, running_mean, running_var, eps)


def _batch_norm(b: Builder, x: Value, weight, bias, running_mean: Value, running_var: Value, eps: float) -> Value:
    """(x - mean) / sqrt(var + eps) * weight + bias over channel dim 1."""
    if x.type.rank < 2:
        raise Unsupported("batch norm of a rank < 2 input")
    shape = (x.type.shape[1],) + (1,) * (x.type.rank - 2)

    def channel(v: Value) -> Value:
        return b.op("reshape", v, shape=shape) if v.type.shape != shape else v

    scale = b.op("rsqrt", b.op("add", channel(running_var), b.tensor(float(eps), running_var)))
    y = b.op("mul", b.op("sub", x, channel(running_mean)), scale)
    if weight is not None:
        y = b.op("mul", y, channel(weight))
    if bias is not None:
        y = b.op("add", y, channel(bias))
    return y
