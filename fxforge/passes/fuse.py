"""Fusion partitioning: which ops of a graph run together as one kernel, and why the rest do not.

`partition(graph)` returns a `Partition`: `KernelGroup`s (plain data naming ops of the graph) and,
for every op left outside a kernel, the reason. The graph itself is not rewritten (no new opcodes:
it stays valid IR for the verifier); codegen reads the partition. The pass `fuse` (in `fxforge.pipeline.PASS_TABLE`; not
in the default pipeline; the `interpret`/`triton` executors run `partition` themselves) stores the
partition on the graph as `graph.kernel_groups` and its summary in `ctx.stats`.

The rule table (`FUSION_RULES` prints it):
- gemm: `linear` / `matmul` + an epilogue in the GEMM template's order
  `scale (mul by a rank-0 full) -> bias add [N] (linear only) -> activation -> mul by a tensor of the
  output's shape (linear only: SwiGLU's `silu(gate) * up`) -> residual add -> cast`,
  each step only when the intermediate has a single use and is not a graph output. A mul of two GEMM
  results goes to the later GEMM (the one whose other operand, the earlier GEMM's, is ready first).
  `qlinear` (a `#quantized` const weight of a scheme the qlinear kernels take, float activations)
  anchors the same epilogue minus the scale (the qlinear template has none): its kernel decodes the
  packed weight tile by tile (`codegen.templates.qlinear`); its bias and LoRC operands go with it.
- row: `softmax`, `log_softmax`, `layer_norm`, `rms_norm` over the last dim, and `sum`/`mean`/`amax`
  over the last dim (float), with their single-use pointwise producers fused into the load
  (prologue) and, for the normalising ones, a chain of same-shape pointwise consumers (epilogue).
- pointwise: a tree of pointwise ops; a producer is fused inward when its result has one use and is
  not a graph output; operands broadcast, the group's shape is its root's (the largest). A
  single-use `cat` inside the tree is fused too (each operand read at its shifted index range).
  `full` never needs a kernel: consumers inline its value as a literal.
- horizontal: pointwise groups of the same domain shape that read a common input (cos and sin of
  one tensor, RoPE of q and k) and do not depend on each other become one kernel with several
  outputs (the common input is loaded once). It runs where the last of them did, so every outside
  reader of an earlier one's outputs must come after that point. At most MAX_HORIZONTAL outputs.
- attention: alone (the flash-attention template).
Everything else runs on the host with torch, reason recorded: views (reshape, permute, expand,
slice are strided views; cat not fused as above, index_select, gather copy on the host), sources (const, full,
arange), externs, embedding (a gather), reductions not over the last dim, and pointwise ops
without a kernel emitter (triu, tril) or of types kernels do not handle (fp8, packed).
"""

from __future__ import annotations

from typing import Any

from fxforge.ir.graph import Graph, Op, Value
from fxforge.ir.types import dims_equal
from fxforge.passes.fusion_rules import (
    FUSION_RULES,
    HOST_REASONS,
    MAX_HORIZONTAL,
    MAX_ROW,
    QLINEAR_DTYPES,
    ROW_OPS,
    ROW_REDUCTIONS,
    KernelGroup,
    Partition,
    activation_of,
    cat_ok,
    kernel_types_ok,
    pointwise_ok,
    qlinear_ok,
    row_ok,
    same_shape,
    scale_of,
    single_use,
)
from fxforge.passes.manager import PassContext

# -- the partition ------------------------------------------------------------------------------


class _Partitioner:
    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.claimed: dict[int, KernelGroup] = {}
        self.groups: list[KernelGroup] = []

    def free(self, op: Op | None) -> bool:
        return op is not None and id(op) not in self.claimed

    def claim(self, group: KernelGroup) -> None:
        for op in group.ops:
            self.claimed[id(op)] = group
        self.groups.append(group)

    def run(self) -> Partition:
        ops = self.graph.ops
        for op in ops:  # anchors first: gemm epilogues, then rows, attention
            gemm_ok = (op.opcode in ("linear", "matmul") and kernel_types_ok(op)) or qlinear_ok(op)
            if gemm_ok and self.free(op):
                self.gemm(op)
        for op in ops:
            if row_ok(op) and self.free(op):
                self.row(op)
            elif op.opcode == "attention" and self.free(op):
                self.claim(KernelGroup("attention", [op], [], [], FUSION_RULES["attention"]))
            elif op.opcode == "hadamard" and self.free(op) and op.result.type.dtype in QLINEAR_DTYPES:
                self.claim(KernelGroup("hadamard", [op], [], [], FUSION_RULES["hadamard"]))
        for op in reversed(ops):  # pointwise trees, grown from their roots (last op first)
            if pointwise_ok(op) and self.free(op):
                members = self.grow([op], op, allow_cat=True)
                self.claim(KernelGroup("pointwise", members, [], [],
                                       FUSION_RULES["pointwise"] if len(members) > 1 else "single pointwise op"))
        order = {id(op): i for i, op in enumerate(ops)}
        host: dict[int, str] = {}
        host_ops: dict[str, str] = {}
        for op in ops:
            if id(op) not in self.claimed:
                host[id(op)] = self.host_reason(op)
                names = ", ".join("%" + r.name for r in op.results)
                host_ops[f"{names} = {op.opcode}"] = host[id(op)]
        for g in self.groups:
            g.ops.sort(key=lambda o: order[id(o)])
            self.finish(g)
        self.groups.sort(key=lambda g: order[id(g.root)])
        self.horizontal(order)
        return Partition(self.groups, host, host_ops)

    def horizontal(self, order: dict[int, int]) -> None:
        """Merge pointwise groups (in root order) into an earlier compatible one: same domain shape,
        a common (non-`full`) input, and no reader of either's outputs at or before the merged root
        (so neither depends on the other, and the merged kernel can run where the later one did)."""
        merged: list[KernelGroup] = []
        for g in self.groups:
            target = next((m for m in merged if self.can_merge(m, g, order)), None) if g.kind == "pointwise" else None
            if target is None:
                merged.append(g)
                continue
            n_trees = target.params.get("trees", 1) + g.params.get("trees", 1)
            target.ops = sorted(target.ops + g.ops, key=lambda o: order[id(o)])
            target.inputs += [v for v in g.inputs if all(v is not u for u in target.inputs)]
            target.outputs = sorted(target.outputs + g.outputs, key=lambda v: order[id(v.producer)])
            target.params["trees"] = n_trees
            target.reason = f"horizontal: {n_trees} pointwise trees of one domain shape with a common input"
            for op in g.ops:
                self.claimed[id(op)] = target
        merged.sort(key=lambda g: order[id(g.root)])
        self.groups = merged

    def can_merge(self, a: KernelGroup, b: KernelGroup, order: dict[int, int]) -> bool:
        if a.kind != "pointwise" or not a.outputs or not b.outputs or len(a.outputs) + len(b.outputs) > MAX_HORIZONTAL:
            return False
        if not all(same_shape(o, a.outputs[0]) for o in [*a.outputs, *b.outputs]):
            return False
        common = [v for v in a.inputs if any(v is u for u in b.inputs)]
        if not any(v.producer is None or v.producer.opcode != "full" for v in common):
            return False
        last = max(order[id(a.root)], order[id(b.root)])
        inside = {id(op) for op in [*a.ops, *b.ops]}
        for v in [*a.outputs, *b.outputs]:
            for u in v.uses:
                if id(u) in inside or order[id(u)] <= last:
                    return False
        return True

    def grow(self, members: list[Op], root: Op, allow_cat: bool = False) -> list[Op]:
        """Add single-use pointwise producers of root's operands, recursively (inward fusion);
        with `allow_cat`, also a `cat` feeding the tree (its operands are read at shifted indices)."""
        stack = [root]
        while stack:
            op = stack.pop()
            for v in op.operands:
                p = v.producer
                fusable = pointwise_ok(p) if p is not None else False
                fusable = fusable or (allow_cat and p is not None and cat_ok(p))
                if self.free(p) and p not in members and fusable and single_use(v, self.graph):
                    members.append(p)
                    stack.append(p)
        return members

    def mul_operand(self, op: Op, user: Op, y: Value, linear_like: bool) -> Value | None:
        """The tensor t of `user` = mul(y, t) / mul(t, y) that the GEMM epilogue of `op` can take (same
        shape and dtype as y, not a `full`), else None. None as well when t is the single-use result of
        a later GEMM that can take this mul itself (SwiGLU: the up projection takes `silu(gate) * up`)."""
        if user.opcode != "mul" or op.opcode == "qlinear" or not linear_like:
            return None
        other = [v for v in user.operands if v is not y]
        if len(other) != 1:
            return None
        t = other[0]
        if not (same_shape(t, y) and t.type.dtype == y.type.dtype and t.type.encoding is None):
            return None
        p = t.producer
        if p is not None and p.opcode == "full":
            return None
        if (p is not None and self.free(p) and p is not op and p.opcode in ("linear", "matmul") and kernel_types_ok(p)
                and single_use(t, self.graph)
                and (p.opcode == "linear" or (p.operands[1].type.rank == 2 and p.operands[0].type.rank >= 2))):
            return None  # the later GEMM fuses it
        return t

    def gemm(self, op: Op) -> None:
        params: dict[str, Any] = {"scale": 1.0, "bias": None, "activation": "none", "mul": None, "residual": None,
                                  "out_dtype": None}
        has_bias = op.opcode == "linear" and len(op.operands) == 3
        if op.opcode == "qlinear":  # no scale step; a bias operand is the one of (x, w, [bias], [u, v])
            has_bias = len(op.operands) in (3, 5)
        stage = 2 if has_bias else 1 if op.opcode == "qlinear" else 0
        # matmul(a, b) with a 2-D b is linear(a, b^T): it takes the whole epilogue
        linear_like = op.opcode in ("linear", "qlinear") or (op.operands[1].type.rank == 2 and op.operands[0].type.rank >= 2)
        params["linear_like"] = linear_like
        members, y = [op], op.result
        while single_use(y, self.graph):
            user = y.uses[0]
            if not self.free(user) or not kernel_types_ok(user) or (not linear_like and stage >= 1):
                break
            same = same_shape(user.result, y) and user.result.type.dtype == y.type.dtype
            scale = scale_of(user, y) if same else None
            act = activation_of(user) if same else None
            other = [v for v in user.operands if v is not y]
            if stage < 1 and scale is not None:
                params["scale"], stage = scale, 1
            elif (stage < 2 and linear_like and same and user.opcode == "add" and len(other) == 1
                  and other[0].type.rank == 1 and dims_equal(other[0].type.shape[0], y.type.shape[-1])
                  and other[0].type.dtype == y.type.dtype):
                params["bias"], stage = other[0], 2
            elif stage < 3 and act is not None:
                params["activation"], stage = act, 3
            elif stage < 4 and same and (t := self.mul_operand(op, user, y, linear_like)) is not None:
                params["mul"], stage = t, 4
            elif (stage < 5 and linear_like and same and user.opcode == "add" and len(other) == 1
                  and other[0].type.dtype == y.type.dtype):
                params["residual"], stage = other[0], 5
            elif stage < 6 and linear_like and user.opcode == "cast" and user.result.type.dtype.is_float and y.type.dtype.is_float:
                params["out_dtype"], stage = user.result.type.dtype, 6
            else:
                break
            members.append(user)
            y = user.result
        had = op.operands[0].producer
        if (op.opcode == "qlinear" and op.attrs["act_format"] is not None and len(members) > 1 and had is not None
                and had.opcode == "hadamard" and self.free(had) and single_use(op.operands[0], self.graph)):
            # the rotation runs inside the qlinear's per-token activation quantization (act_quant.py);
            # the group's root stays the epilogue's end (codegen finds the qlinear by `gemm_anchor`)
            params["hadamard"] = (had.attrs["block"], had.operands[0])
            members.insert(1, had)
        reason = "gemm + epilogue (" + ", ".join(m.opcode for m in members[1:]) + ")" if len(members) > 1 else "gemm alone"
        self.claim(KernelGroup("gemm", members, [], [], reason, params))

    def row(self, op: Op) -> None:
        members = [op]
        x = op.operands[0]
        p = x.producer
        if self.free(p) and pointwise_ok(p) and single_use(x, self.graph):
            members.append(p)
            self.grow(members, p)
        prologue = len(members) - 1
        y = op.result
        epilogue = 0
        if op.opcode in ROW_OPS:
            while single_use(y, self.graph):
                user = y.uses[0]
                if not (self.free(user) and pointwise_ok(user) and same_shape(user.result, op.result)):
                    break
                members.append(user)
                epilogue += 1
                y = user.result
        reason = f"row {op.opcode}" + (f" + {prologue} prologue op(s)" if prologue else "") + (
            f" + {epilogue} epilogue op(s)" if epilogue else "")
        self.claim(KernelGroup("row", members, [], [], reason, {"anchor": op}))

    def finish(self, g: KernelGroup) -> None:
        inside = {id(op) for op in g.ops}
        produced = {id(r) for op in g.ops for r in op.results}
        seen: set[int] = set()
        for op in g.ops:
            for v in op.operands:
                if id(v) not in produced and id(v) not in seen:
                    seen.add(id(v))
                    g.inputs.append(v)
        outs = {id(o) for o in self.graph.outputs}
        for op in g.ops:
            for r in op.results:
                if id(r) in outs or any(id(u) not in inside for u in r.uses):
                    g.outputs.append(r)

    @staticmethod
    def host_reason(op: Op) -> str:
        if op.opcode in HOST_REASONS:
            return HOST_REASONS[op.opcode] if op.opcode != "extern" else f"extern {op.attrs['target']}: calls torch on the host"
        if op.opcode == "qlinear":
            return ("qlinear: weight not a const of its scheme's #quantized layout (8-bit: per channel; 4-bit: "
                    "even input dim), or non-float operands: host torch (reference, dequantizes the weight)")
        if not kernel_types_ok(op):
            return f"{op.opcode}: operand/result types a kernel does not handle (fp8/packed/encoded): host torch"
        if op.opdef.category == "pointwise":
            return f"{op.opcode}: pointwise op without a kernel emitter: host torch"
        if op.opcode in ROW_OPS + ROW_REDUCTIONS:
            return f"{op.opcode}: not over the last dim, not float, or rows over {MAX_ROW}: host torch"
        return f"{op.opcode} ({op.opdef.category}): no kernel for it: host torch"


def partition(graph: Graph) -> Partition:
    """Kernel groups of the graph by the rule table, and the reason for every op left on the host."""
    return _Partitioner(graph).run()


class FusePass:
    """Partitions the graph into kernel groups (`graph.kernel_groups`); the IR is unchanged."""

    name = "fuse"

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        part = partition(graph)
        graph.kernel_groups = part  # type: ignore[attr-defined]
        ctx.stats.update(part.stats())
        ctx.stats["rules"] = FUSION_RULES
        return graph
