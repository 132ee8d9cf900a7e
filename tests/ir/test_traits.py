"""Traits of the op table's entries: what the passes and codegen read instead of opcode lists."""

from __future__ import annotations

import pytest

from fxforge.ir.dtypes import DType
from fxforge.ir.errors import ShapeError
from fxforge.ir.graph import Graph
from fxforge.ir.ops import OPS, OpDef, activations, ops_with
from fxforge.ir.types import TensorType


def test_traits_of_the_table():
    assert {n for n, d in OPS.items() if d.commutative} == {
        "add", "mul", "maximum", "minimum", "eq", "ne", "logical_and", "logical_or", "bitwise_and", "bitwise_or",
        "bitwise_xor"}
    assert set(ops_with("row")) == {"softmax", "log_softmax", "layer_norm", "rms_norm", "sum", "mean", "amax"}
    assert set(ops_with("view")) == {"reshape", "permute", "expand", "slice"}
    assert set(ops_with("gemm")) == {"linear", "matmul", "qlinear"} and sorted(ops_with("template")) == ["attention", "hadamard", "moe"]
    assert "triu" not in ops_with("pointwise") and "cast" in ops_with("pointwise")
    assert {n for n, d in OPS.items() if d.aliases} == {"reshape", "permute", "expand", "slice", "extern", "cache_write"}
    assert activations() == ("gelu", "gelu_tanh", "relu", "relu2", "sigmoid", "silu", "tanh", "xielu")
    assert OPS["gelu"].activation_of({"approximate": "tanh"}) == "gelu_tanh"
    assert OPS["exp"].activation_of({}) is None


@pytest.mark.parametrize("target, pure, deterministic", [
    ("aten.cumsum.default", True, True),
    ("aten.add_.Tensor", False, False),  # in place
    ("aten._assert_async.msg", False, False),
    ("aten.rand_like.default", True, False),  # a draw: may be dropped, never merged
    ("aten.native_dropout.default", True, False),
])
def test_extern_traits_follow_the_target(target, pure, deterministic):
    attrs = {"target": target, "args": (), "kwargs": {}}
    assert OPS["extern"].is_pure(attrs) is pure and OPS["extern"].is_deterministic(attrs) is deterministic
    assert OPS["extern"].is_pure({**attrs, "target": "aten.add.Tensor", "kwargs": {"out": None}}) is False


def test_an_unknown_kernel_class_is_refused():
    with pytest.raises(ValueError, match="kernel class"):
        OpDef("x", (1, 1), {}, None, None, kernel="gpu")


def test_attribute_errors_quote_the_signature():
    g = Graph()
    x = g.add_input("x", TensorType((2, 4), DType.f32))
    w = g.add_input("w", TensorType((3, 4), DType.f32))
    with pytest.raises(ShapeError, match=r"signature: linear\(x, w\[out, in\], bias\?\)"):
        g.add_op("linear", [x, w], {"bias": True})
