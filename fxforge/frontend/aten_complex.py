"""Complex tensors as real pairs: the IR has no complex dtype, so a complex value [*s] is carried as its
`view_as_real` form [*s, 2] of the real dtype (`builder.ir_type`), and the few ops models apply to complex values are
lowered on that form (Llama 4's and Meta's reference RoPE: `polar`, `view_as_complex(x.reshape(..., -1, 2)) * freqs`,
`view_as_real`). Filed into this module's `TABLE`, which fx_to_ir consults for any node that reads or makes a complex
value (`touches_complex`); a complex node with no entry here and not in `SHAPE_FROM_META` is a capture error, never a
real op run on the pairs by mistake.

Decisions:
- `view_as_complex` / `view_as_real` are the identity on the pair form (the same memory order as torch's view).
- A complex product is (ar br - ai bi, ar bi + ai br) in the real dtype; torch's CPU kernel may fuse those multiply-adds,
  so the last bit can differ from eager (RoPE's rotations, then read by attention: a rounding, not a different answer).
- Views whose target shape fx_to_ir reads from torch's metadata (reshape, unsqueeze, expand, ...) work unchanged on the
  pair form, as the builder gives the pair form's shape (`SHAPE_FROM_META`); ops that take a dim get it counted on the
  complex shape, then are applied to the pair form with the same positive dim.
"""

from __future__ import annotations

import torch

from fxforge.frontend.aten_common import Table, aten, overloads, registrar, slice_lowering
from fxforge.frontend.builder import Builder, Unsupported
from fxforge.ir.graph import Value

TABLE: Table = {}
lowers = registrar(TABLE)
# lowerings that read the result's shape from torch's metadata only: right on the pair form as they are
SHAPE_FROM_META = frozenset({
    aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.unsqueeze.default, aten.squeeze.dim,
    aten.flatten.using_ints, aten.expand.default, aten.clone.default, aten.alias.default, aten.detach.default,
    aten.contiguous.default, aten._assert_tensor_metadata.default})


def touches_complex(node: torch.fx.Node) -> bool:
    """Does node read or make a complex tensor?"""
    vals = [node.meta.get("val")] + [a.meta.get("val") for a in node.all_input_nodes]
    return any(isinstance(v, torch.Tensor) and v.is_complex() for v in vals)


def _parts(b: Builder, z: Value) -> tuple[Value, Value]:
    dim = z.type.rank - 1
    return tuple(b.op("reshape", b.op("slice", z, dim=dim, start=i, end=i + 1, step=1), shape=z.type.shape[:-1])
                 for i in (0, 1))


def _pair(b: Builder, re: Value, im: Value) -> Value:
    shape = tuple(re.type.shape) + (1,)
    return b.op("cat", b.op("reshape", re, shape=shape), b.op("reshape", im, shape=shape), dim=re.type.rank)


@lowers(aten.view_as_complex.default, aten.view_as_real.default)
def _same_pairs(b: Builder, x: Value) -> Value:
    return x


@lowers(aten.polar.default)
def _polar(b: Builder, magnitude: Value, angle: Value) -> Value:
    return _pair(b, b.op("mul", magnitude, b.op("cos", angle)), b.op("mul", magnitude, b.op("sin", angle)))


@lowers(aten.mul.Tensor)
def _mul(b: Builder, x, y) -> Value:
    """Complex by complex (both pair forms: the node's inputs are complex); by a python scalar, each part."""
    if not isinstance(x, Value) or not isinstance(y, Value):
        z, s = (x, y) if isinstance(x, Value) else (y, x)
        if isinstance(s, complex):
            raise Unsupported("a complex python scalar")
        return b.op("mul", z, b.tensor(float(s), z))
    if x not in b.pairs or y not in b.pairs or x.type.dtype != y.type.dtype:
        raise Unsupported("a complex product with a real tensor (its pairs' ranks cannot tell them apart)")
    (xr, xi), (yr, yi) = _parts(b, x), _parts(b, y)
    return _pair(b, b.op("sub", b.op("mul", xr, yr), b.op("mul", xi, yi)),
                 b.op("add", b.op("mul", xr, yi), b.op("mul", xi, yr)))


@lowers(aten.slice.Tensor)
def _slice(b: Builder, z: Value, dim: int = 0, start=None, end=None, step: int = 1) -> Value:
    return slice_lowering(b, z, dim % (z.type.rank - 1), start, end, step)  # a complex dim: the same one here


@lowers(aten._to_copy.default, aten.to.dtype_layout, aten.to.dtype, *overloads("to", "device"))
def _to_complex(b: Builder, z: Value, *args, **kwargs) -> Value:
    """A copy or move that keeps the complex dtype (a move to another device is refused as for real tensors)."""
    for device in [kwargs.get("device"), *args]:
        if isinstance(device, (str, torch.device)) and torch.device(device).type != "cpu":
            raise Unsupported(f"device move to {device}")
    if b.meta_type().dtype != z.type.dtype:
        raise Unsupported("a cast of a complex tensor")
    return z
