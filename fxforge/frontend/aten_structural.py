"""ATen lowerings of structure: shape ops, GEMMs, composites (norms, softmax, attention), sources
and tuple access. Filed into this module's `TABLE`; `aten_table.py` merges it (see there for the
conventions)."""

from __future__ import annotations

import operator

import torch

from fxforge.frontend.aten_common import Table, aten, cast_to, overloads, registrar, slice_lowering, slice_value
from fxforge.frontend.builder import Builder, Unsupported
from fxforge.ir.dtypes import DType
from fxforge.ir.graph import Value

TABLE: Table = {}
lowers = registrar(TABLE)


# -- shape ops --------------------------------------------------------------------------------------

@lowers(aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.unsqueeze.default,
        aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default, aten.flatten.using_ints,
        aten.unflatten.int, aten.view_as.default, aten.reshape_as.default)
def _reshape(b, x, *args):
    shape = b.meta_shape()
    if shape == x.type.shape:
        return x
    return b.op("reshape", x, shape=shape)


@lowers(aten.permute.default)
def _permute(b, x, dims):
    return b.op("permute", x, dims=tuple(d % max(x.type.rank, 1) for d in dims))


@lowers(aten.transpose.int)
def _transpose(b, x, d0, d1):
    dims = list(range(x.type.rank))
    d0, d1 = d0 % x.type.rank, d1 % x.type.rank
    dims[d0], dims[d1] = dims[d1], dims[d0]
    return b.op("permute", x, dims=tuple(dims))


@lowers(aten.t.default)
def _t(b, x):
    return x if x.type.rank < 2 else b.op("permute", x, dims=(1, 0))


@lowers(*overloads("numpy_T", "default"))
def _numpy_t(b, x):
    """`x.T`: every dim reversed (Falcon's linears are `x @ W.T`, then a linear like any other)."""
    return x if x.type.rank < 2 else b.op("permute", x, dims=tuple(reversed(range(x.type.rank))))


@lowers(aten.expand.default, aten.expand_as.default, *overloads("broadcast_to", "default"))
def _expand(b, x, *args, **kwargs):
    shape = b.meta_shape()
    return x if shape == x.type.shape else b.op("expand", x, shape=shape)


lowers(aten.slice.Tensor)(slice_lowering)


@lowers(aten.narrow.default)
def _narrow(b, x, dim, start, length):
    return slice_value(b, x, dim, start, start + length, 1)


@lowers(aten.select.int)
def _select(b, x, dim, index):
    dim %= x.type.rank
    if isinstance(index, int) and index < 0:
        index = index + x.type.shape[dim]
    s = slice_value(b, x, dim, index, index + 1, 1)
    return b.op("reshape", s, shape=b.meta_shape())


@lowers(aten.cat.default)
def _cat(b, xs, dim=0):
    xs = [x for x in xs if not (x.type.rank == 1 and x.type.shape[0] == 0)]
    return xs[0] if len(xs) == 1 else b.op("cat", *xs, dim=dim % xs[0].type.rank)


@lowers(aten.stack.default)
def _stack(b, xs, dim=0):
    """cat of the operands unsqueezed at dim (interleaved RoPE's `stack((-x[..., 1::2], x[..., ::2]), -1)`)."""
    shape = b.meta_shape()
    dim %= len(shape)
    one = tuple(shape[:dim]) + (1,) + tuple(shape[dim + 1:])
    parts = [b.op("reshape", x, shape=one) for x in xs]
    return parts[0] if len(parts) == 1 else b.op("cat", *parts, dim=dim)


@lowers(aten.repeat_interleave.self_int)
def _repeat_interleave(b, x, repeats, dim=None, output_size=None):
    """x repeated `repeats` times along dim, each element in place: reshape(expand(x unsqueezed after dim)) (views; the
    cos/sin tables of interleaved RoPE, which `rope_sites` reads through)."""
    if dim is None or not isinstance(repeats, int) or x.type.rank == 0:
        raise Unsupported("repeat_interleave without a dim or with a symbolic repeat count")
    dim %= x.type.rank
    s = tuple(x.type.shape)
    col = b.op("reshape", x, shape=s[:dim + 1] + (1,) + s[dim + 1:])
    rep = b.op("expand", col, shape=s[:dim + 1] + (repeats,) + s[dim + 1:])
    return b.op("reshape", rep, shape=b.meta_shape())


@lowers(aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default)
def _split(b, x, sizes_or_chunks, dim=0):
    dim %= x.type.rank
    shapes = [b.symbols.shape(m.shape) for m in b.meta]
    out, start = [], 0
    for shape in shapes:
        out.append(slice_value(b, x, dim, start, start + shape[dim], 1))
        start = start + shape[dim]
    return tuple(out)


@lowers(aten.unbind.int)
def _unbind(b, x, dim=0):
    dim %= x.type.rank
    return tuple(b.op("reshape", slice_value(b, x, dim, i, i + 1, 1), shape=b.meta_shape(i)) for i in range(len(b.meta)))


@lowers(aten.index_select.default)
def _index_select(b, x, dim, index):
    return b.op("index_select", x, index, dim=dim % x.type.rank)


@lowers(aten.gather.default)
def _gather(b, x, dim, index, sparse_grad=False):
    return b.op("gather", x, index, dim=dim % x.type.rank)


@lowers(aten.index.Tensor)
def _index(b, x, indices):
    picked = [(d, i) for d, i in enumerate(indices) if i is not None]
    if len(picked) != 1 or picked[0][1].type.dtype == DType.bool:
        raise Unsupported("advanced indexing beyond one integer index tensor")
    d, idx = picked[0]
    if idx.type.rank == 1:
        return _index_1d(b, x, d, idx)
    if not idx.type.is_static:
        raise Unsupported("advanced indexing by a multi-dimensional index of symbolic shape")
    # an index of any static shape: the rows of its flat form, reshaped (Llama 4's chunked mask: zeros[offsets])
    flat = b.op("reshape", idx, shape=(idx.type.numel(),))
    return b.op("reshape", _index_1d(b, x, d, flat), shape=b.meta_shape())


def _index_1d(b, x, d: int, idx):
    """x[..., idx, ...] at dim d for a 1-D integer idx."""
    size, const = x.type.shape[d], idx.producer is not None and idx.producer.opcode == "const"
    data = b.graph.weight(idx.producer.attrs["weight"]).data if const and isinstance(size, int) else None
    if data is not None and data.numel() == 1 and -size <= int(data) < size:  # one constant index: a view
        c = int(data) % size  # (Falcon-7B's k and v: qkv[:, :, [-2]], then a column slice of the projection)
        return b.op("slice", x, dim=d, start=c, end=c + 1, step=1)
    if data is not None and (data < 0).any():
        # a constant's negatives count from the end; index_select refuses them (a computed index is left alone:
        # topk's and arange's are never negative, and a negative one fails loudly)
        idx = b.op("where", b.op("lt", idx, b.tensor(0, idx)), b.op("add", idx, b.tensor(size, idx)), idx)
    return b.op("index_select", x, idx, dim=d)


# -- GEMMs ------------------------------------------------------------------------------------------

lowers(aten.mm.default, aten.bmm.default, aten.matmul.default)(lambda b, x, y: b.op("matmul", x, y))


@lowers(aten.linear.default)
def _linear(b, x, w, bias=None):
    return b.op("linear", x, w, *([bias] if bias is not None else []))


@lowers(aten.addmm.default)
def _addmm(b, bias, x, y, *, beta=1, alpha=1):
    if beta != 1 or alpha != 1:
        raise Unsupported("addmm with beta/alpha")
    return b.op("add", b.op("matmul", x, y), bias)


@lowers(aten.embedding.default)
def _embedding(b, w, ids, padding_idx=-1, scale_grad_by_freq=False, sparse=False):
    return b.op("embedding", w, ids)


# -- composites -------------------------------------------------------------------------------------

def layer_norm_value(b: Builder, x: Value, normalized_shape, weight=None, bias=None, eps=1e-5) -> Value:
    if len(normalized_shape) != 1 or (bias is not None and weight is None):
        raise Unsupported("layer_norm over several dims, or with a bias but no weight")
    return b.op("layer_norm", x, *[v for v in (weight, bias) if v is not None], eps=eps)


@lowers(*overloads("rms_norm", "default"))
def _rms_norm(b, x, normalized_shape, weight=None, eps=None):
    """torch's own RMSNorm (`nn.RMSNorm`, `F.rms_norm`) over the last dim: fp32 math, a 16-bit weight multiplied in
    fp32 before the one rounding, eps None finfo(fp32).eps (torch's composite, checked bit for bit): the IR op with
    the weight cast to fp32."""
    if len(normalized_shape) != 1 or (weight is not None and weight.type.dtype not in (x.type.dtype, DType.f32)):
        raise Unsupported("rms_norm over several dims, or a weight of a third dtype")
    if eps is None:
        eps = torch.finfo(torch.promote_types(x.type.dtype.torch, torch.float32)).eps
    w = [] if weight is None else [cast_to(b, weight, torch.float32)]
    return b.op("rms_norm", x, *w, eps=float(eps))


@lowers(aten.repeat.default)
def _repeat(b, x, repeats):
    """x tiled `repeats` times per dim (DiffLlama's v.repeat(1, 2, 1, 1)): each repeated dim n becomes (r, n) by a
    unit dim expanded to r, then merged: reshape(expand(reshape(x))), the copy torch makes."""
    if not all(isinstance(r, int) for r in repeats) or len(repeats) < x.type.rank:
        raise Unsupported("repeat with symbolic counts")
    shape = (1,) * (len(repeats) - x.type.rank) + tuple(x.type.shape)
    split = tuple(d for n in shape for d in (1, n))
    tiled = tuple(d for r, n in zip(repeats, shape) for d in (r, n))
    y = b.op("expand", b.op("reshape", x, shape=split), shape=tiled)
    return b.op("reshape", y, shape=b.meta_shape())


@lowers(aten.layer_norm.default)
def _layer_norm(b, x, normalized_shape, weight=None, bias=None, eps=1e-5, cudnn_enable=True):
    return layer_norm_value(b, x, normalized_shape, weight, bias, eps)


@lowers(aten._softmax.default, aten.softmax.int)
def _softmax(b, x, dim, half_to_float_or_dtype=None):
    if isinstance(half_to_float_or_dtype, torch.dtype):
        x = cast_to(b, x, half_to_float_or_dtype)
    elif half_to_float_or_dtype:
        raise Unsupported("softmax with half_to_float")
    return b.op("softmax", x, dim=dim % x.type.rank)


@lowers(aten._log_softmax.default, aten.log_softmax.int)
def _log_softmax(b, x, dim, half_to_float_or_dtype=None):
    if half_to_float_or_dtype not in (None, False):
        raise Unsupported("log_softmax with a dtype")
    return b.op("log_softmax", x, dim=dim % x.type.rank)


@lowers(aten.scaled_dot_product_attention.default)
def _sdpa(b, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, *, scale=None, enable_gqa=False):
    if dropout_p:
        raise Unsupported("attention dropout")
    # one kv head broadcast over the query heads (Falcon-7B's multi-query attention): grouped-query attention
    enable_gqa = enable_gqa or (q.type.rank == k.type.rank >= 3 and k.type.shape[-3] == 1 != q.type.shape[-3])
    return b.op("attention", q, k, v, *([attn_mask] if attn_mask is not None else []),
                scale=scale, is_causal=is_causal, enable_gqa=enable_gqa)


@lowers(*overloads("_scaled_dot_product_flash_attention_for_cpu", "default"))
def _sdpa_flash_cpu(b, q, k, v, dropout_p=0.0, is_causal=False, *, attn_mask=None, scale=None):
    # The CPU flash kernel broadcasts kv heads itself (grouped-query attention).
    gqa = q.type.rank >= 3 and q.type.shape[-3] != k.type.shape[-3]
    return (_sdpa(b, q, k, v, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=gqa), None)


# -- sources ----------------------------------------------------------------------------------------

def _full_value(b: Builder, value) -> Value:
    t = b.meta_type()
    return b.op("full", shape=t.shape, value=value, dtype=t.dtype)


lowers(aten.full.default, aten.new_full.default)(lambda b, *args, **kw: _full_value(b, _fill_arg(args)))
lowers(aten.zeros.default, aten.new_zeros.default, aten.zeros_like.default)(lambda b, *a, **kw: _full_value(b, 0))
lowers(aten.ones.default, aten.new_ones.default, aten.ones_like.default)(lambda b, *a, **kw: _full_value(b, 1))
lowers(aten.full_like.default)(lambda b, x, value, **kw: _full_value(b, value))
lowers(aten.scalar_tensor.default)(lambda b, value, **kw: _full_value(b, value))


def _fill_arg(args):
    value = args[-1]
    if isinstance(value, Value):
        raise Unsupported("fill value is a tensor")
    return value


@lowers(aten.arange.default, aten.arange.start, aten.arange.start_step)
def _arange(b, *args, dtype=None, layout=None, device=None, pin_memory=None):
    start, end, step = (0, args[0], 1) if len(args) == 1 else (args[0], args[1], args[2] if len(args) > 2 else 1)
    if any(isinstance(v, float) for v in (start, end, step)):
        raise Unsupported("float arange")
    return b.op("arange", start=start, end=end, step=step, dtype=b.meta_type().dtype)


# -- tuples -----------------------------------------------------------------------------------------

@lowers(operator.getitem)
def _getitem(b, values, index):
    if not isinstance(values, (tuple, list)):
        raise Unsupported("getitem on a single value")
    picked = values[index]
    if picked is None:
        raise Unsupported("this result of the op is not computed by its fxforge lowering")
    return picked
