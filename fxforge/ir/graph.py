"""The SSA graph: `Value`, `Op`, `Weight` and `Graph`.

A `Graph` owns ordered ops, its inputs and outputs, and a weight table. It keeps use-def chains up
to date through its mutators (`add_op`, `insert_before`, `replace_all_uses`, `erase`), so passes
never edit `operands` or `uses` lists by hand. `graph.nx()` is a networkx view for global analyses.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import networkx as nx
import torch

from fxforge.ir import optable  # noqa: F401  (fills the op table)
from fxforge.ir.dtypes import DType
from fxforge.ir.errors import IRError, ShapeError
from fxforge.ir.ops import OpDef, lookup
from fxforge.ir.printer import print_graph
from fxforge.ir.types import Encoding, TensorType

if TYPE_CHECKING:
    from fxforge.ir.partition import Partition


def freeze(value: Any) -> Any:
    """Attribute values are immutable: lists become tuples, recursively (so ops hash for CSE)."""
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, dict):
        return {k: freeze(v) for k, v in value.items()}
    return value


class Value:
    """One SSA result (or graph input), with its type and the ops that use it."""

    __slots__ = ("name", "type", "producer", "uses")

    def __init__(self, name: str, type: TensorType, producer: Op | None = None) -> None:
        self.name = name
        self.type = type
        self.producer = producer
        self.uses: list[Op] = []

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type.dtype}{list(self.type.shape)}"


class Op:
    """One operation: opcode from the op table, operands, attributes and results."""

    __slots__ = ("opcode", "operands", "attrs", "results", "graph")

    def __init__(self, opcode: str, operands: list[Value], attrs: dict[str, Any], graph: Graph | None = None) -> None:
        self.opcode = opcode
        self.operands = list(operands)
        self.attrs = dict(attrs)
        self.results: list[Value] = []
        self.graph = graph

    @property
    def opdef(self) -> OpDef:
        return lookup(self.opcode)

    @property
    def result(self) -> Value:
        if len(self.results) != 1:
            raise IRError(f"{self.opcode} has {len(self.results)} results; use .results")
        return self.results[0]

    def __repr__(self) -> str:
        res = ", ".join(f"%{r.name}" for r in self.results)
        ops = ", ".join(f"%{v.name}" for v in self.operands)
        return f"{res} = {self.opcode}({ops}) {self.attrs}"


@dataclass
class Weight:
    """A constant tensor of the graph. `payload` holds the packed parts of an encoded weight
    (codes, scales, sparse indices); `data` is then its high-precision original, if kept."""

    data: torch.Tensor
    encoding: Encoding | None = None
    payload: dict[str, torch.Tensor] = field(default_factory=dict)

    def nbytes(self) -> int:
        parts = self.payload.values() if self.payload else [self.data]
        return sum(t.numel() * t.element_size() for t in parts)


class Graph:
    """A function: inputs, ordered ops, outputs and a weight table."""

    def __init__(self, name: str = "forward") -> None:
        self.name = name
        self.inputs: list[Value] = []
        self.ops: list[Op] = []
        self.outputs: list[Value] = []
        self.weights: dict[str, Weight] = {}
        self.partition: Partition | None = None  # kernel groups, set by the `fuse` pass (ir/partition.py)
        self._names: set[str] = set()
        self._counter = itertools.count()
        self._near = 0  # where the last op was placed or erased: see `_position`

    # -- names ----------------------------------------------------------------------------------
    def fresh_name(self, hint: str | None = None) -> str:
        base = re.sub(r"[^A-Za-z0-9_]", "_", hint) if hint else ""
        if base and not base[0].isalpha() and base[0] != "_":
            base = "v" + base
        if base and base not in self._names:
            self._names.add(base)
            return base
        while True:
            name = f"{base}_{next(self._counter)}" if base else str(next(self._counter))
            if name not in self._names:
                self._names.add(name)
                return name

    # -- building -------------------------------------------------------------------------------
    def add_input(self, name: str, type: TensorType) -> Value:
        value = Value(self.fresh_name(name), type)
        self.inputs.append(value)
        return value

    def add_weight(self, name: str, weight: Weight | torch.Tensor) -> str:
        """Any non-empty name (torch's parameter names, `0.weight` of an nn.Sequential included);
        the text form quotes names that are not plain (see printer.print_global)."""
        if not isinstance(name, str) or not name:
            raise IRError(f"a weight name must be a non-empty string, got {name!r}")
        self.weights[name] = weight if isinstance(weight, Weight) else Weight(weight)
        return name

    def make_op(
        self,
        opcode: str,
        operands: Iterable[Value] = (),
        attrs: dict[str, Any] | None = None,
        result_types: list[TensorType] | None = None,
        names: list[str | None] | None = None,
    ) -> Op:
        """Build an op (not yet placed): attributes checked, result types inferred unless given."""
        opdef = lookup(opcode)
        operands = list(operands)
        lo, hi = opdef.arity
        if len(operands) < lo or (hi is not None and len(operands) > hi):
            raise ShapeError(f"{opcode}: takes {lo}..{hi if hi is not None else 'any'} operands, got {len(operands)}")
        full = freeze(opdef.full_attrs(attrs or {}))
        if result_types is None:
            result_types = self.infer_types(opcode, operands, full)
        if opdef.num_results >= 0 and len(result_types) != opdef.num_results:
            raise ShapeError(f"{opcode}: has {opdef.num_results} result(s), {len(result_types)} result type(s) given")
        op = Op(opcode, operands, full, self)
        op.results = [Value(self.fresh_name(n), t, op) for n, t in zip(_result_names(names, len(result_types)), result_types)]
        return op

    def infer_types(self, opcode: str, operands: list[Value], attrs: dict[str, Any]) -> list[TensorType]:
        opdef = lookup(opcode)
        if opcode == "const":
            w = self.weight(attrs["weight"])
            return [TensorType(tuple(w.data.shape), _dtype_of(w), w.encoding)]
        if opdef.infer is None:
            raise ShapeError(f"{opcode}: result types must be given (the op declares them)")
        types = [v.type for v in operands]
        key = _infer_key(opcode, types, attrs)
        hit = _INFERRED.get(key) if key is not None else None
        if hit is not None:
            return list(hit)
        inferred = opdef.infer(types, attrs)
        if key is not None:
            if len(_INFERRED) >= MAX_INFERRED:
                _INFERRED.clear()
            _INFERRED[key] = tuple(inferred)
        return inferred

    def add_op(self, opcode: str, operands: Iterable[Value] = (), attrs: dict[str, Any] | None = None,
               result_types: list[TensorType] | None = None, name: str | None = None) -> Op:
        """Append a new op at the end of the graph."""
        op = self.make_op(opcode, operands, attrs, result_types, [name] if name else None)
        self._place(op, len(self.ops))
        return op

    def insert_before(self, anchor: Op, opcode: str, operands: Iterable[Value] = (),
                      attrs: dict[str, Any] | None = None, result_types: list[TensorType] | None = None,
                      name: str | None = None) -> Op:
        op = self.make_op(opcode, operands, attrs, result_types, [name] if name else None)
        self._place(op, self._position(anchor))
        return op

    def _place(self, op: Op, index: int) -> None:
        self.ops.insert(index, op)
        self._near = index + 1
        for v in op.operands:
            v.uses.append(op)

    def _position(self, op: Op) -> int:
        """The index of `op` in `ops`. Edits cluster (a rule inserts before its root, then erases the root and
        the ops it matched just before it), so the few places around the last edit are looked at first: a
        `list.index` walks the ops one rich comparison at a time, and a deep graph's ~1000 edits made that
        quadratic in depth."""
        ops, near = self.ops, getattr(self, "_near", 0)
        lo, hi = max(near - 8, 0), min(near + 8, len(ops))
        for i in range(lo, hi):
            if ops[i] is op:
                return i
        return ops.index(op)

    def set_outputs(self, outputs: Iterable[Value]) -> None:
        self.outputs = list(outputs)

    # -- editing --------------------------------------------------------------------------------
    def set_operand(self, op: Op, index: int, value: Value) -> None:
        old = op.operands[index]
        old.uses.remove(op)
        op.operands[index] = value
        value.uses.append(op)

    def replace_all_uses(self, old: Value, new: Value) -> None:
        for user in list(old.uses):
            for i, v in enumerate(user.operands):
                if v is old:
                    self.set_operand(user, i, new)
        self.outputs = [new if v is old else v for v in self.outputs]

    def erase(self, op: Op) -> None:
        """Remove an op whose results are unused."""
        for r in op.results:
            if r.uses or any(r is o for o in self.outputs):
                raise IRError(f"cannot erase {op.opcode} %{r.name}: it still has uses")
        for v in op.operands:
            v.uses.remove(op)
        index = self._position(op)
        del self.ops[index]
        self._near = index
        for r in op.results:
            self._names.discard(r.name)

    def replace_op(self, op: Op, new_values: list[Value]) -> None:
        """Redirect the uses of op's results to new_values, then erase op."""
        for old, new in zip(op.results, new_values):
            self.replace_all_uses(old, new)
        self.erase(op)

    # -- queries --------------------------------------------------------------------------------
    def weight(self, name: str) -> Weight:
        try:
            return self.weights[name]
        except KeyError:
            raise IRError(f"weight {name!r} is not in the graph's weight table") from None

    def values(self) -> Iterator[Value]:
        yield from self.inputs
        for op in self.ops:
            yield from op.results

    def find(self, opcode: str) -> list[Op]:
        return [op for op in self.ops if op.opcode == opcode]

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self.ops:
            counts[op.opcode] = counts.get(op.opcode, 0) + 1
        return dict(sorted(counts.items()))

    def nx(self) -> nx.DiGraph:
        """Ops as nodes (keyed by position), an edge per producer -> consumer value."""
        g = nx.DiGraph()
        index = {id(op): i for i, op in enumerate(self.ops)}
        for i, op in enumerate(self.ops):
            g.add_node(i, op=op, opcode=op.opcode)
            for v in op.operands:
                if v.producer is not None:
                    g.add_edge(index[id(v.producer)], i, value=v.name)
        return g

    def __deepcopy__(self, memo: dict[int, Any]) -> Graph:
        """A deep copy made op by op: the default one follows use-def chains recursively (producer ->
        operands -> producer ...), so a few hundred ops (a 2-layer Llama) exceeded Python's recursion limit."""
        import copy

        new = Graph.__new__(Graph)
        memo[id(self)] = new
        values = list(self.values())
        for v in values:  # shells first, so every reference below resolves through memo
            memo[id(v)] = Value.__new__(Value)
        for op in self.ops:
            memo[id(op)] = Op.__new__(Op)
        for v in values:
            c = memo[id(v)]
            c.name, c.type = v.name, copy.deepcopy(v.type, memo)
            c.producer = memo.get(id(v.producer)) if v.producer is not None else None
            c.uses = [copy.deepcopy(u, memo) for u in v.uses]
        for op in self.ops:
            c = memo[id(op)]
            c.opcode, c.attrs, c.graph = op.opcode, copy.deepcopy(op.attrs, memo), new
            c.operands = [copy.deepcopy(v, memo) for v in op.operands]
            c.results = [memo[id(r)] for r in op.results]
        for key, val in self.__dict__.items():
            setattr(new, key, copy.deepcopy(val, memo))
        return new

    def __str__(self) -> str:
        return print_graph(self)

    def __repr__(self) -> str:
        return f"<Graph @{self.name}: {len(self.inputs)} inputs, {len(self.ops)} ops, {len(self.weights)} weights>"

    def rename_value(self, value: Value, name: str) -> None:
        """Give `value` exactly this name (the parser keeps names as written, `%0` included);
        raises IRError if another value of the graph has it."""
        if name == value.name:
            return
        if name in self._names:
            raise IRError(f"value name %{name} is already taken")
        self._names.discard(value.name)
        self._names.add(name)
        value.name = name


# Result types by (opcode, operand types, attributes): an op's inference reads nothing else, and a deep
# model's layers repeat the same signatures (a 32-layer Llama: ~2500 inferences at capture and again in
# shape_prop, ~100 distinct). Attribute values are keyed with their types (1, 1.0 and True are equal keys
# otherwise, and promote differently); an unhashable attribute (a dict) is not cached.
_INFERRED: dict[tuple, tuple[TensorType, ...]] = {}
MAX_INFERRED = 8192


def _infer_key(opcode: str, types: list[TensorType], attrs: dict[str, Any]) -> tuple | None:
    key = (opcode, tuple(types), tuple((k, _typed(v)) for k, v in attrs.items()))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _typed(value: Any) -> Any:
    if type(value) is tuple:
        return tuple, tuple(_typed(v) for v in value)
    return type(value), value


def _result_names(names: list[str | None] | None, count: int) -> list[str | None]:
    """One name hint per result: a single hint for a multi-result op names them `x`, `x_1`, ..."""
    names = list(names or [])
    if len(names) > count:
        raise IRError(f"{len(names)} result names for {count} result(s)")
    if len(names) == 1 and count > 1 and names[0]:
        return [names[0]] + [f"{names[0]}_{i}" for i in range(1, count)]
    return names + [None] * (count - len(names))


def _dtype_of(w: Weight) -> DType:
    if w.encoding is not None and getattr(w.encoding, "format", None) in DType.__members__:
        return DType[w.encoding.format]
    return DType.from_torch(w.data.dtype)
