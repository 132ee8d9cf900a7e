"""Capture: torch.export (AOT) or torch.compile's aot_autograd graphs (JIT) -> `ir.Graph`."""

from fxforge.frontend.dynamo import lower_aten_graph, tensor_names
from fxforge.frontend.export import Capture, capture_export, lower_exported
from fxforge.frontend.fx_to_ir import FxToIR, InputSlot, Lowered

__all__ = ["Capture", "capture_export", "lower_exported", "lower_aten_graph", "tensor_names", "FxToIR", "InputSlot", "Lowered"]
