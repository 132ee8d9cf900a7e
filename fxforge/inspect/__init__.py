"""fxforge.inspect: pictures of what the compiler did, for notebooks (the pass-inspection notebook uses
them). Every helper returns a matplotlib Figure, or an `HTML` object Jupyter renders; matplotlib,
networkx and pygments are imported only when a helper draws (`pip install 'fxforge[notebook]'`).

Layer: may import runtime, ir, codegen, passes, costmodel, config, errors (docs/architecture.md); nothing in
the compiler imports it.
"""

from fxforge.inspect._common import HTML
from fxforge.inspect.build import plot_build_check
from fxforge.inspect.costmodel import plot_costmodel, predictions
from fxforge.inspect.kv import k_channels, kv_bytes, plot_ksort, plot_kv_cache
from fxforge.inspect.partition import kernel_source, layer_ops, plot_partition, show_kernel
from fxforge.inspect.pipeline import plot_pipeline, show_diff
from fxforge.inspect.quant import layer_errors, plot_histograms, plot_quant
from fxforge.inspect.sparsity import nm_mask, plot_ffn_skip, plot_nm_mask, skip_by_token, skip_shares

__all__ = ["HTML", "k_channels", "kernel_source", "kv_bytes", "layer_errors", "layer_ops", "nm_mask",
           "plot_build_check", "plot_costmodel", "plot_ffn_skip", "plot_histograms", "plot_ksort", "plot_kv_cache",
           "plot_nm_mask", "plot_partition", "plot_pipeline", "plot_quant", "predictions", "show_diff", "show_kernel",
           "skip_by_token", "skip_shares"]
