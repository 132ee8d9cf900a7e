"""fxforge's IR: types, the op table, graphs, text form, verifier and reference evaluator."""

from fxforge.ir import (
    attention_op,  # noqa: F401  (registers attention)
    cache_ops,  # noqa: F401  (registers cache_write)
    hadamard,  # noqa: F401  (registers hadamard)
    kv_ops,  # noqa: F401  (registers kv_quant)
    lowp_ops,  # noqa: F401  (registers quantize, dequantize, qlinear)
    moe_ops,  # noqa: F401  (registers moe)
    multi_ops,  # noqa: F401  (registers topk, sort, var_mean, max_dim, min_dim)
    nm,  # noqa: F401  (the #nm weight decoder)
    skip_ops,  # noqa: F401  (registers skip_gate, gather_rows, scatter_add_rows, skip_counts)
)
from fxforge.ir.dtypes import DType
from fxforge.ir.errors import IRError, IRParseError, ShapeError, VerifyError
from fxforge.ir.evaluate import evaluate
from fxforge.ir.graph import Graph, Op, Value, Weight
from fxforge.ir.ops import OPS, OpDef, lookup
from fxforge.ir.optable import OperandRef
from fxforge.ir.printer import print_graph, print_type
from fxforge.ir.types import NM, BlockFP, Quantized, TensorType, sym
from fxforge.ir.verify import verify

__all__ = [
    "DType", "IRError", "IRParseError", "ShapeError", "VerifyError", "evaluate", "Graph", "Op", "Value",
    "Weight", "OPS", "OpDef", "lookup", "OperandRef", "print_graph", "print_type", "NM", "BlockFP",
    "Quantized", "TensorType", "sym", "verify",
]
