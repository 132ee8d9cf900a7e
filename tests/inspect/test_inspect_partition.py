"""plot_partition colours one decoder layer's kernels; show_kernel shows the generated source."""

import pytest

from fxforge.errors import ConfigError
from fxforge.inspect import kernel_source, layer_ops, plot_partition, show_kernel


def test_partition_draws_one_node_per_op_of_the_layer_coloured_by_kernel(dense):
    graph = dense.graph
    ops = layer_ops(graph, 0)
    # layer 0 reads its own weights and no other layer's
    names = {str(o.attrs.get("weight")) for op in ops for o in (v.producer for v in op.operands) if o and o.opcode == "const"}
    assert any("layers.0." in n for n in names) and not any("layers.1." in n for n in names)
    fig = plot_partition(graph, layer=0)
    ax = fig.axes[0]
    kernels = {id(graph.partition.group_of()[id(op)]) for op in ops if id(op) in graph.partition.group_of()}
    assert ax.get_title() == f"decoder layer 0: {len(ops)} ops, {len(kernels)} kernels (colour = kernel, grey = host)"
    nodes = ax.collections[0]
    assert len(nodes.get_offsets()) == len(ops)
    colours = {tuple(c) for c in nodes.get_facecolors()}
    assert len(colours) == len(kernels) + 1  # one per kernel, plus grey for host ops
    assert plot_partition(graph, layer=1).axes[0].get_title().startswith("decoder layer 1")
    with pytest.raises(ConfigError, match="layer 7"):
        plot_partition(graph, layer=7)


def test_show_kernel_is_the_generated_triton_function(dense):
    text = kernel_source(dense, 0)
    assert text.startswith("@triton.jit\ndef k0_") and "tl.store" in text
    html = show_kernel(dense, 0).data
    assert "<span" in html and "triton" in html and "tl" in html  # highlighted, the same code
    with pytest.raises(ConfigError, match="generated kernels"):
        kernel_source(dense, "no_such_kernel")
