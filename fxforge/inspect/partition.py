"""Pictures of the fusion partition: one decoder layer's ops as a graph with each kernel group in its
own colour (networkx), and the generated Triton source of one kernel, syntax-highlighted (pygments).

Decisions:
- A decoder layer is the ops from the first to the last one reading a weight of that layer
  (`model.layers.<i>.`), in graph order; weight constants themselves are left out (they are not
  computation).
- Host ops (views, sources, externs) are drawn grey; each kernel group gets a colour of the `tab20` map.
- `show_kernel` reads the module text codegen writes for the graph (`codegen.module.generate_source`),
  so what it shows is exactly what runs.
"""

from __future__ import annotations

import re
from typing import Any

from fxforge.errors import ConfigError
from fxforge.inspect._common import HTML, figure, layer_index, optional


def layer_ops(graph: Any, layer: int) -> list[Any]:
    """The ops of decoder layer `layer`: from the first to the last op that reads one of its weights."""
    consts = {id(op.result) for op in graph.ops if op.opcode == "const" and layer_index(str(op.attrs.get("weight", ""))) == layer}
    reads = [i for i, op in enumerate(graph.ops) if any(id(v) in consts for v in op.operands)]
    if not reads:
        raise ConfigError(f"no op reads a weight of decoder layer {layer} (weights named '...layers.{layer}...'); "
                          "pass a layer the model has")
    return [op for op in graph.ops[reads[0]:reads[-1] + 1] if op.opcode != "const"]


def plot_partition(graph: Any, layer: int = 0) -> Any:
    """The ops of one decoder layer as a data-flow graph, each kernel group coloured, host ops grey."""
    nx = optional("networkx")
    cm = optional("matplotlib").colormaps
    if graph.partition is None:
        raise ConfigError("the graph has no partition: compile with executor='interpret' (the fuse pass runs last)")
    ops = layer_ops(graph, layer)
    group_of = graph.partition.group_of()
    groups = list(dict.fromkeys(id(group_of[id(op)]) for op in ops if id(op) in group_of))
    colour = {g: cm["tab20"](i % 20) for i, g in enumerate(groups)}
    g = nx.DiGraph()
    producers = {id(r): op for op in ops for r in op.results}
    for op in ops:
        g.add_node(id(op), label=op.opcode)
        for v in op.operands:
            if id(v) in producers:
                g.add_edge(id(producers[id(v)]), id(op))
    for gen, nodes in enumerate(nx.topological_generations(g)):
        for n in nodes:
            g.nodes[n]["gen"] = gen
    pos = nx.multipartite_layout(g, subset_key="gen", align="horizontal", scale=-1)
    fig, axes = figure(width=10, height=max(6.0, 0.35 * len(set(nx.get_node_attributes(g, "gen").values()))))
    ax = axes[0][0]
    colours = [colour[id(group_of[n])] if n in group_of else (0.8, 0.8, 0.8, 1.0) for n in g.nodes]
    nx.draw_networkx(g, pos, ax=ax, node_color=colours, labels=nx.get_node_attributes(g, "label"), font_size=6,
                     node_size=260, arrowsize=6, width=0.6)
    ax.set_title(f"decoder layer {layer}: {len(ops)} ops, {len(groups)} kernels (colour = kernel, grey = host)")
    ax.set_axis_off()
    return fig


def _source(target: Any) -> tuple[str, list[Any]]:
    from fxforge.codegen.module import generate_source

    graph = getattr(target, "graph", target)
    source, infos, _, _ = generate_source(graph)
    return source, infos


def kernel_source(target: Any, group: int | str) -> str:
    """The `@triton.jit` function of kernel `group` (its index in the partition, or its name) in the
    module codegen writes for `target` (a CompiledModule or a partitioned Graph)."""
    source, infos = _source(target)
    names = [k.name for k in infos]
    name = names[group] if isinstance(group, int) and 0 <= group < len(names) else group
    found = re.search(rf"^@triton\.jit\ndef {re.escape(str(name))}\(.*?(?=\n\n\n|\Z)", source, re.S | re.M)
    if found is None:
        generated = [n for n in names if re.search(rf"^def {re.escape(n)}\(", source, re.M)]
        raise ConfigError(f"kernel {group!r} is not a generated Triton kernel of this module (a template call, or no such "
                          f"kernel); generated kernels: {generated}")
    return found.group(0)


def show_kernel(target: Any, group: int | str) -> HTML:
    """The generated Triton source of one fused kernel, syntax-highlighted as HTML."""
    text = kernel_source(target, group)
    pygments = optional("pygments")
    lexers, formatters = optional("pygments.lexers"), optional("pygments.formatters")
    formatter = formatters.HtmlFormatter(noclasses=True, style="friendly")
    return HTML(pygments.highlight(text, lexers.PythonLexer(), formatter))
