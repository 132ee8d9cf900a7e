"""An ATen-level torch.fx graph -> `ir.Graph`.

Both capture paths (torch.export and the torch.compile backend) end here. Placeholders become graph
inputs, or `const` ops when they are parameters, buffers or constants; symbolic-size placeholders
become symbols bound at run time; each call goes through `aten_table.LOWERINGS`, and a node without
a lowering (or whose lowering refuses it) becomes an `extern` call to torch. Every lowered node is
checked against the dtype and shape torch recorded for it; a mismatch is a lowering bug, so that
node falls back to an extern and the report says so, rather than computing something else.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import sympy
import torch
import torch.fx

from fxforge.errors import CaptureError
from fxforge.frontend.aten_complex import SHAPE_FROM_META, touches_complex
from fxforge.frontend.aten_complex import TABLE as COMPLEX_LOWERINGS
from fxforge.frontend.aten_table import IN_PLACE, LOWERINGS
from fxforge.frontend.builder import Builder, Unsupported, ir_type
from fxforge.frontend.symbols import SymbolTable
from fxforge.ir.calling import InputSlot
from fxforge.ir.dtypes import DType
from fxforge.ir.errors import ShapeError
from fxforge.ir.graph import Graph, Value
from fxforge.ir.optable import OperandRef
from fxforge.ir.types import TensorType


@dataclass
class Lowered:
    graph: Graph
    inputs: list[InputSlot]
    outputs: list[Any]  # per flat output: ("value", i) | ("symbol", expr) | ("const", python value)
    externs: dict[str, int] = field(default_factory=dict)  # aten target -> count of extern nodes
    notes: list[str] = field(default_factory=list)


def target_name(target: Any) -> str:
    if isinstance(target, torch._ops.OpOverload):
        namespace, name = target._schema.name.split("::")
        return f"{namespace}.{name}.{target._overloadname}"
    return getattr(target, "__name__", str(target))


class FxToIR:
    def __init__(self, gm: torch.fx.GraphModule, weights: dict[str, str | None], name: str = "forward") -> None:
        """weights: placeholder name -> weight name for parameters/buffers/constants."""
        self.gm = gm
        self.weight_of_placeholder = weights
        self.graph = Graph(name)
        self.symbols = SymbolTable()
        self.env: dict[torch.fx.Node, Any] = {}
        self.result = Lowered(self.graph, [], [])
        self._wants: dict[int, tuple[torch.Tensor, TensorType]] = {}  # id(meta) -> (meta, its type): see `_want`
        self._pairs: set[Value] = set()  # the Values that carry complex values as real pairs (`aten_complex`)

    # -- entry ----------------------------------------------------------------------------------
    def run(self, tensors: dict[str, torch.Tensor]) -> Lowered:
        """tensors: weight name -> the tensor (shared with the model, not copied)."""
        nodes = list(self.gm.graph.nodes)
        for node in nodes:  # bind the symbols of inputs first, in order, so they are s0, s1, ...
            if node.op == "placeholder" and node.name not in self.weight_of_placeholder:
                val = node.meta.get("val")
                if isinstance(val, torch.Tensor):
                    self.symbols.shape(val.shape)
                elif isinstance(val, torch.SymInt):
                    self.symbols.dim(val)
        for node in nodes:
            handler = getattr(self, f"_{node.op}")
            handler(node, tensors)
        return self.result

    # -- node kinds -----------------------------------------------------------------------------
    def _placeholder(self, node: torch.fx.Node, tensors) -> None:
        val = node.meta.get("val")
        wname = self.weight_of_placeholder.get(node.name)
        if wname is not None:
            self.env[node] = self._const(wname, tensors[wname])
            self.result.inputs.append(InputSlot("weight"))
        elif isinstance(val, torch.Tensor):
            t = TensorType(self.symbols.shape(val.shape), DType.from_torch(val.dtype))
            self.env[node] = self.graph.add_input(node.name, t)
            self.result.inputs.append(InputSlot("tensor"))
        elif isinstance(val, torch.SymInt):
            expr = self.symbols.dim(val)
            self.env[node] = expr
            self.result.inputs.append(InputSlot("symbol", expr if isinstance(expr, sympy.Symbol) else None))
        else:
            self.env[node] = val
            self.result.inputs.append(InputSlot("const", value=val))

    def _get_attr(self, node: torch.fx.Node, tensors) -> None:
        obj = self.gm
        for part in node.target.split("."):
            obj = getattr(obj, part)
        if not isinstance(obj, torch.Tensor):
            raise Unsupported(f"get_attr of a {type(obj).__name__}")
        name = f"constants.{node.target}"
        self.env[node] = self._const(name, obj)

    def _const(self, name: str, tensor: torch.Tensor) -> Value:
        wname = name.replace("/", ".")
        if wname not in self.graph.weights:
            self.graph.add_weight(wname, tensor.detach())
        return self.graph.add_op("const", attrs={"weight": wname}, name=wname.rsplit(".", 2)[-2] if "." in wname else wname).result

    def _call_function(self, node: torch.fx.Node, tensors) -> None:
        if node.target is torch.ops.aten.sym_size.int or _is_sym_node(node):
            self.env[node] = self.symbols.dim(node.meta["val"])
            return
        lowering = LOWERINGS.get(node.target)
        if touches_complex(node):  # complex values as real pairs: only the lowerings that know it, and no extern
            self._lower_complex(node, COMPLEX_LOWERINGS.get(node.target) or (
                lowering if node.target in SHAPE_FROM_META else None))
            return
        if lowering is not None:
            try:
                if node.target in IN_PLACE:
                    _check_own(node)
                self.env[node] = self._lower(node, lowering)
                self._rebind_written(node)
                return
            except (Unsupported, ShapeError) as e:
                self.result.notes.append(f"{node.name} ({target_name(node.target)}): {e}; runs through torch")
        if node.target is operator.getitem:  # its source was lowered to a tuple holding every used result
            raise CaptureError(f"{node.name}: result {node.args[1]} of {node.args[0]} was not lowered (a frontend bug)")
        try:
            self.env[node] = self._extern(node)
        except Unsupported as e:
            raise CaptureError(f"{node.name} ({target_name(node.target)}) has no fxforge lowering and cannot run as an "
                               f"extern: {e}. Fix: rewrite that part of the model with tensor-returning ATen ops") from None

    def _lower_complex(self, node: torch.fx.Node, lowering) -> None:
        why = "fxforge carries complex values as real pairs through polar, view_as_complex/real, products, slices and " \
              "views only"
        try:
            if lowering is not None:
                self.env[node] = self._lower(node, lowering)
                val = node.meta.get("val")
                if isinstance(val, torch.Tensor) and val.is_complex():
                    self._pairs.add(self.env[node])
                return
        except (Unsupported, ShapeError) as e:
            why = str(e)
        raise CaptureError(f"{node.name} ({target_name(node.target)}) on a complex tensor: {why} (complex values "
                           "cannot run through torch as externs). Fix: compute RoPE on real tensors, as rotate_half "
                           "does, or with static head sizes") from None

    def _rebind_written(self, node: torch.fx.Node) -> None:
        """A lowered in-place op (`index_copy_` -> `cache_write`, `add_` -> `add`) returns the tensor it wrote: later
        reads of that tensor (by its first name or an earlier in-place op's) read the result, so they come after the
        write in the SSA graph."""
        written = node
        while _writes_first(written) and isinstance(written.args[0], torch.fx.Node):
            written = written.args[0]
            self.env[written] = self.env[node]

    def _lower(self, node: torch.fx.Node, lowering) -> Any:
        args, kwargs = self._convert(node.args), self._convert(node.kwargs)
        b = Builder(self.graph, self.symbols, node.meta.get("val"), node.name, used=_used_results(node),
                    pairs=self._pairs)
        out = lowering(b, *args, **kwargs)
        self._check(node, out)
        if isinstance(out, tuple):
            for i in b.used:
                if i >= len(out) or out[i] is None:
                    raise Unsupported(f"result {i} is used but not lowered")
        return out

    def _check(self, node: torch.fx.Node, out: Any) -> None:
        """The lowering must give torch's dtype and shape; anything else is a lowering bug."""
        metas = node.meta.get("val")
        pairs = zip(out, metas) if isinstance(out, tuple) else [(out, metas)]
        for value, meta in pairs:
            if isinstance(value, Value) and isinstance(meta, torch.Tensor):
                want = self._want(meta)
                if not value.type.same_as(want):
                    raise Unsupported(f"lowering gave {value.type.dtype}{list(value.type.shape)}, torch gives {want.dtype}{list(want.shape)}")

    def _want(self, meta: torch.Tensor) -> TensorType:
        """The IR type of torch's recorded value, once per value object: the layers cloned from an exported
        one (`layer_reuse`) share its nodes' values, whose symbolic shapes cost ~10 us each to convert."""
        hit = self._wants.get(id(meta))
        if hit is None or hit[0] is not meta:
            hit = self._wants[id(meta)] = (meta, ir_type(meta, self.symbols.shape(meta.shape)))
        return hit[1]

    def _extern(self, node: torch.fx.Node) -> Any:
        if not isinstance(node.target, torch._ops.OpOverload):
            raise Unsupported(f"{target_name(node.target)} is not an ATen op and cannot run as an extern")
        operands: list[Value] = []
        args = _template(self._convert(node.args), operands)
        kwargs = _template(self._convert(node.kwargs), operands)
        metas = node.meta.get("val")
        multi = isinstance(metas, (tuple, list))
        metas_list = list(metas) if multi else [metas]
        if not all(isinstance(m, torch.Tensor) for m in metas_list):
            raise Unsupported(f"{target_name(node.target)} returns non-tensors")
        try:
            types = [TensorType(self.symbols.shape(m.shape), DType.from_torch(m.dtype)) for m in metas_list]
        except TypeError as e:  # complex results (Llama4's complex RoPE): no IR dtype to carry them between ops
            raise Unsupported(f"{e} (complex values pass only through fxforge's own lowerings, `aten_complex`)") from None
        name = target_name(node.target)
        self.result.externs[name] = self.result.externs.get(name, 0) + 1
        op = self.graph.add_op("extern", operands, {"target": name, "args": args, "kwargs": kwargs}, types, name=node.name)
        return tuple(op.results) if multi else op.result

    def _output(self, node: torch.fx.Node, tensors) -> None:
        flat = node.args[0] if isinstance(node.args[0], (tuple, list)) else [node.args[0]]
        values: list[Value] = []
        for item in flat:
            val = item.meta.get("val") if isinstance(item, torch.fx.Node) else None
            if isinstance(val, torch.Tensor) and val.is_complex():
                raise CaptureError(f"output {item.name} is a complex tensor; fxforge returns real tensors only. "
                                   "Fix: return torch.view_as_real of it")
            item = self._convert(item)
            if isinstance(item, Value):
                self.result.outputs.append(("value", len(values)))
                values.append(item)
            elif isinstance(item, sympy.Expr):
                self.result.outputs.append(("symbol", item))
            else:
                self.result.outputs.append(("const", item))
        self.graph.set_outputs(values)

    def _call_module(self, node, tensors) -> None:
        raise Unsupported(f"call_module {node.target}: the graph must be ATen-level")

    _call_method = _call_module

    # -- arguments ------------------------------------------------------------------------------
    def _convert(self, a: Any) -> Any:
        if isinstance(a, torch.fx.Node):
            return self.env[a]
        if isinstance(a, (list, tuple)):
            return type(a)(self._convert(x) for x in a) if isinstance(a, tuple) else [self._convert(x) for x in a]
        if isinstance(a, dict):
            return {k: self._convert(v) for k, v in a.items()}
        if isinstance(a, torch.SymInt):
            return self.symbols.dim(a)
        return a


def _used_results(node: torch.fx.Node) -> frozenset[int]:
    """The result indices node's users read: getitem indices, or all of them for any other user."""
    used: set[int] = set()
    metas = node.meta.get("val")
    for user in node.users:
        if user.target is operator.getitem and isinstance(user.args[1], int):
            used.add(user.args[1])
        else:
            used.update(range(len(metas)) if isinstance(metas, (tuple, list)) else (0,))
    return frozenset(used)


def _schema(node: torch.fx.Node):
    return getattr(node.target, "_schema", None) if node.op == "call_function" else None


def _writes_first(node: torch.fx.Node) -> bool:
    """Does node write its first argument in place (`add_`, `index_copy_`: its result is that tensor)?"""
    schema = _schema(node)
    alias = schema.arguments[0].alias_info if schema is not None and schema.arguments else None
    return alias is not None and alias.is_write


def _is_view(node: torch.fx.Node) -> bool:
    if node.op == "call_function" and node.target is operator.getitem:  # a piece of split/unbind: a view too
        return isinstance(node.args[0], torch.fx.Node) and _is_view(node.args[0])
    schema = _schema(node)
    return schema is not None and bool(schema.returns) and schema.returns[0].alias_info is not None \
        and not _writes_first(node)


def _check_own(node: torch.fx.Node) -> None:
    """An in-place op lowered as its out-of-place twin (`aten_pointwise.IN_PLACE`) must write a tensor that only
    its name reaches: rebinding that name (`_rebind_written`) would miss an input's caller, the base of a view,
    or a view taken before the write and read after it. Earlier in-place writes of the same tensor are that tensor."""
    chain = [node.args[0]]
    while isinstance(chain[0], torch.fx.Node) and _writes_first(chain[0]):
        chain.insert(0, chain[0].args[0])
    origin = chain[0]
    if not isinstance(origin, torch.fx.Node) or origin.op != "call_function" or _is_view(origin):
        raise Unsupported("writes an input, a weight or a view in place")
    step = origin.next
    while step is not node:
        if _is_view(step) and any(step in n.users for n in chain):
            raise Unsupported(f"writes {origin.name} in place while {step.name} views it")
        step = step.next


def _is_sym_node(node: torch.fx.Node) -> bool:
    return isinstance(node.meta.get("val"), torch.SymInt)


def _template(a: Any, operands: list[Value]) -> Any:
    """Args for an extern: Values become `$i` operand references; torch enums become strings."""
    if isinstance(a, Value):
        operands.append(a)
        return OperandRef(len(operands) - 1)
    if isinstance(a, (list, tuple)):
        return tuple(_template(x, operands) for x in a)
    if isinstance(a, dict):
        return {k: _template(v, operands) for k, v in a.items()}
    if isinstance(a, torch.dtype):
        return DType.from_torch(a)
    if isinstance(a, torch.device):
        return str(a)
    if isinstance(a, (torch.layout, torch.memory_format)):
        return str(a)  # "torch.strided", ...: turned back into the object when the extern runs
    if a is None or isinstance(a, (bool, int, float, str, sympy.Expr)):
        return a
    raise Unsupported(f"extern argument of type {type(a).__name__}")
