"""`copy.deepcopy(graph)` (the budget's selection copies the graph per candidate) works on long graphs
and gives an independent graph with the same text, use-def chains and partition."""

import copy

import torch

from fxforge.ir.dtypes import DType
from fxforge.ir.graph import Graph
from fxforge.ir.types import TensorType
from fxforge.passes.fuse import fuse


def chain(n: int) -> Graph:
    g = Graph()
    x = g.add_input("x", TensorType((4, 8), DType.f32))
    w = g.add_op("const", [], {"weight": g.add_weight("w", torch.ones(8))}).result
    for _ in range(n):
        x = g.add_op("mul", [g.add_op("add", [x, w]).result, w]).result
    g.set_outputs([x])
    return g


def test_deepcopy_of_a_long_graph_is_independent_and_equal():
    g = chain(200)  # 400 ops: the default deepcopy recursed along the chain past the recursion limit
    fuse(g)
    c = copy.deepcopy(g)
    assert str(c) == str(g)
    assert all(op.graph is c for op in c.ops) and not set(map(id, c.ops)) & set(map(id, g.ops))
    for op in c.ops:
        assert all(op in v.uses for v in op.operands) and all(r.producer is op for r in op.results)
    assert c.outputs[0] is c.ops[-1].result and c.weights["w"].data is not g.weights["w"].data
    grouped = {id(op) for grp in c.partition.groups for op in grp.ops}
    assert grouped <= set(map(id, c.ops)) and grouped
    c.add_op("neg", [c.outputs[0]])
    assert len(c.ops) == len(g.ops) + 1 and not g.outputs[0].uses


def test_inferred_types_are_reused_by_signature_only(monkeypatch):
    # a deep model's layers repeat op signatures: inference runs once per (opcode, operand types, typed attrs)
    import dataclasses

    from fxforge.ir import graph as ir_graph

    key = ir_graph._infer_key
    t = TensorType((4, 8), DType.f32)
    assert key("add", [t], {"alpha": 1}) != key("add", [t], {"alpha": 1.0}) != key("add", [t], {"alpha": True})
    assert key("add", [t], {"dims": (1, 2)}) != key("add", [t], {"dims": (1, 2.0)})
    assert key("add", [t], {"table": {"a": 1}}) is None  # unhashable: not cached
    g, calls, real = chain(3), [], ir_graph.lookup
    counted = dataclasses.replace(real("add"), infer=lambda types, attrs: calls.append(1) or real("add").infer(types, attrs))
    monkeypatch.setattr(ir_graph, "lookup", lambda opcode: counted if opcode == "add" else real(opcode))
    monkeypatch.setattr(ir_graph, "_INFERRED", {})
    adds = [op for op in g.ops if op.opcode == "add"]
    first = g.infer_types("add", adds[0].operands, adds[0].attrs)
    first.append("scribbled")  # the caller's list: the cache keeps its own
    again = [g.infer_types("add", op.operands, op.attrs) for op in adds]
    assert len(calls) == 1 and again[0] == [adds[0].result.type] and all(a == again[0] for a in again)


def test_edits_find_their_op_near_the_last_edit_or_anywhere():
    g = chain(20)
    ops = list(g.ops)
    for near in (0, 5, 39, 10**6):  # a stale hint still finds every op
        g._near = near
        assert [g._position(op) for op in ops] == list(range(len(ops)))
    add = next(op for op in ops if op.opcode == "add")
    new = g.insert_before(add, "mul", [add.operands[0], add.operands[1]])
    g.insert_before(add, "neg", [new.result])  # the anchor moved by one: found where the last insert left it
    g.replace_all_uses(add.result, g.ops[g._position(add) - 1].result)
    g.erase(add)
    assert [op.opcode for op in g.ops[:4]] == ["const", "mul", "neg", "mul"] and add not in g.ops
