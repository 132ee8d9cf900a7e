"""The bodies of row kernels (softmax, log_softmax, layer_norm, rms_norm, sum, mean, amax): each renderer
turns the fp32 row tile `_x` into its result `_y` (Triton source lines); `codegen.kernels.row_kernel` wraps
them in loads, masks and the store. Register a new row op with `@row_renders("opcode")`."""

from __future__ import annotations

from collections.abc import Callable

from fxforge.codegen.expr import TL_DTYPES, held
from fxforge.codegen.expr_ops import ExprBuilder
from fxforge.ir.dtypes import DType
from fxforge.ir.graph import Op

RowRenderer = Callable[[Op, ExprBuilder], list[str]]
ROW_RENDERERS: dict[str, RowRenderer] = {}


def row_renders(*opcodes: str) -> Callable[[RowRenderer], RowRenderer]:
    """Register the body of a row kernel: lines from the fp32 row tile `_x` to its result `_y`."""

    def deco(fn: RowRenderer) -> RowRenderer:
        ROW_RENDERERS.update(dict.fromkeys(opcodes, fn))
        return fn

    return deco


_SOFTMAX = ['_xm = tl.where(_mask, _x, float("-inf"))',
            "_m = tl.max(_xm, axis=1)[:, None]",
            "_e = tl.where(_mask, tl.exp(_xm - _m), 0.0)",
            "_s = tl.sum(_e, axis=1)[:, None]"]


@row_renders("softmax")
def _softmax(op: Op, b: ExprBuilder) -> list[str]:
    return [*_SOFTMAX, "_y = _e / _s"]


@row_renders("log_softmax")
def _log_softmax(op: Op, b: ExprBuilder) -> list[str]:
    return [*_SOFTMAX, "_y = (_xm - _m) - tl.log(_s)"]


@row_renders("layer_norm")
def _layer_norm(op: Op, b: ExprBuilder) -> list[str]:
    body = ["_mean = tl.sum(_x, axis=1)[:, None] / n_cols",
            "_d = tl.where(_mask, _x - _mean, 0.0)",
            "_var = tl.sum(_d * _d, axis=1)[:, None] / n_cols",
            f"_y = _d * tl.rsqrt(_var + {float(op.attrs['eps'])!r})"]
    if len(op.operands) > 1:
        body.append(f"_y = _y * {b.cv(op.operands[1], DType.f32)}")
    if len(op.operands) > 2:
        body.append(f"_y = _y + {b.cv(op.operands[2], DType.f32)}")
    return body


@row_renders("rms_norm")
def _rms_norm(op: Op, b: ExprBuilder) -> list[str]:
    x = op.operands[0]
    body = ["_ms = tl.sum(_x * _x, axis=1)[:, None] / n_cols",
            f"_y = _x * tl.rsqrt(_ms + {float(op.attrs['eps'])!r})"]
    one_rounding = len(op.operands) > 1 and op.operands[1].type.dtype == DType.f32  # an fp32 weight (optable)
    if held(x.type.dtype) != x.type.dtype and not one_rounding:  # Llama rounds the normalised row before the weight
        body.append(f"_y = _y.to({TL_DTYPES[x.type.dtype]}).to(tl.float32)")
    if len(op.operands) > 1:
        body.append(f"_y = {b.cv(op.operands[1], DType.f32)} * _y")
    return body


@row_renders("sum")
def _sum(op: Op, b: ExprBuilder) -> list[str]:
    return ["_y = tl.sum(_x, axis=1)"]


@row_renders("mean")
def _mean(op: Op, b: ExprBuilder) -> list[str]:
    return ["_y = tl.sum(_x, axis=1) / n_cols"]


@row_renders("amax")
def _amax(op: Op, b: ExprBuilder) -> list[str]:
    return ['_y = tl.max(tl.where(_mask, _x, float("-inf")), axis=1)']
