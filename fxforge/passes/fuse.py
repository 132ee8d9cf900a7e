"""Fusion partitioning: which ops of a graph run together as one kernel, and why the rest do not.

`partition(graph)` returns a `Partition` (`ir/partition.py`): `KernelGroup`s (plain data naming ops
of the graph) and, for every op left outside a kernel, the reason. The graph itself is not rewritten
(no new opcodes: it stays valid IR for the verifier). The pass `fuse` (a row of `fxforge.pipeline.PASS_TABLE`, run
last for the `interpret`/`triton` executors) and `fuse(graph)` store the partition in the graph's `partition` field,
which codegen requires, and its summary in `ctx.stats`.
Which ops may anchor or join a kernel is read from the op table's traits (`fusion_rules.py`).

The rule table (`FUSION_RULES` prints it):
- gemm: `linear` / `matmul` + an epilogue in the GEMM template's order `scale (mul by a rank-0 full) -> bias add
  [N] (linear only) -> activation -> post-scale (the same mul after it: a logit soft-cap cap * tanh(y / cap)) -> mul
  by a tensor of the output's shape (linear only: SwiGLU's `silu(gate) * up`) -> residual add -> cast`, each step
  only when the intermediate has a single use and is not a graph output. A mul of two GEMM results goes to the later
  GEMM (the one whose other operand, the earlier GEMM's, is ready first).
  `qlinear` (a `#quantized` const weight of a scheme the qlinear kernels take, float activations)
  anchors the same epilogue minus the scale (the qlinear template has none; the 4-bit decode kernel has): its kernel decodes the
  packed weight tile by tile (`codegen.templates.qlinear`); its bias and LoRC operands go with it. A dense
  `linear` also takes its input's norm (`norm_prologue`) and a post-norm residual add before it (`norm_prologues.py`).
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
- attention: alone (the flash-attention template); heads wider than it takes run on the host (`wide_head`).
- rope_cache: after a concatenated QKV GEMM, the q/k/v head views, RoPE of q and k and the two `cache_write`s
  (`rope_sites.py`); kv_attention: an attention over `kv_load`s of packed caches and their GQA repeat views
  (`kv_attention_sites.py`): one template launch each (`templates/rope_cache.py`, `templates/kv_attention.py`).
- nm: a `linear`/`qlinear` whose weight is an `#nm` const runs the N:M sparse template of its GEMM rule
  (`ENCODED_GEMM_RULES`: the dense epilogue for `linear`, the qlinear one for `qlinear`); the pass's
  statistics say which path each pruned layer took (`sparse_paths`: template or host, and why).
Everything else runs on the host with torch, reason recorded: views (reshape, permute, expand, slice are strided
views; cat not fused as above, index_select, gather copy on the host), sources (const, full, arange), externs, embedding
(a gather), reductions not over the last dim, pointwise ops without a kernel emitter (triu, tril) or fp8/packed types.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fxforge.ir.attention_op import wide_head
from fxforge.ir.graph import Graph, Op, Value
from fxforge.ir.partition import KernelGroup, Partition
from fxforge.ir.types import dims_equal
from fxforge.passes.fusion_rules import (
    FUSION_RULES,
    GemmRule,
    can_merge_horizontal,
    cat_ok,
    epilogue_activation,
    gated_activation,
    gemm_rule,
    host_reason,
    kernel_types_ok,
    literal_value,
    normalizes,
    pointwise_ok,
    row_ok,
    same_shape,
    scale_of,
    single_use,
    sparse_paths,
    swiglu_ops,
    takes_scale,
    weight_encoding_kind,
)
from fxforge.passes.kv_attention_sites import kv_attention_sites
from fxforge.passes.manager import PassContext
from fxforge.passes.norm_prologues import norm_ops, post_norm_prologue
from fxforge.passes.rope_sites import rope_sites

# -- the GEMM epilogue, in the template's order ------------------------------------------------------
# Each step: (params key, taker(fuser, anchor, rule, user, y) -> the value it records, or None).
# A user joins the group when a step after the last one taken accepts it.


def _same(user: Op, y: Value) -> bool:
    return same_shape(user.result, y) and user.result.type.dtype == y.type.dtype


def _other(user: Op, y: Value) -> Value | None:
    others = [v for v in user.operands if v is not y]
    return others[0] if len(others) == 1 else None


def _scale(f, op, rule, user, y, post=False):
    return scale_of(user, y) if takes_scale(rule, op, post) and _same(user, y) else None


def _bias(f, op, rule, user, y):
    b = _other(user, y)
    if user.opcode != "add" or not _same(user, y) or b is None:
        return None
    ok = b.type.rank == 1 and dims_equal(b.type.shape[0], y.type.shape[-1]) and b.type.dtype == y.type.dtype
    return b if ok else None


def _activation(f, op, rule, user, y):
    return epilogue_activation(rule, user, op) if _same(user, y) else None


def _mul(f, op, rule, user, y):
    return f.mul_operand(op, rule, user, y) if _same(user, y) else None


def _residual(f, op, rule, user, y):
    r = _other(user, y)
    return r if user.opcode == "add" and _same(user, y) and r is not None and r.type.dtype == y.type.dtype else None


def _out_dtype(f, op, rule, user, y):
    ok = user.opcode == "cast" and user.result.type.dtype.is_float and y.type.dtype.is_float
    return user.result.type.dtype if ok else None


EPILOGUE: list[tuple[str, Callable[..., Any]]] = [
    ("scale", _scale), ("bias", _bias), ("activation", _activation), ("post_scale", lambda *a: _scale(*a, post=True)),
    ("mul", _mul), ("residual", _residual), ("out_dtype", _out_dtype)]
_LINEAR_ONLY = {"bias", "post_scale", "mul", "residual", "out_dtype"}  # a batched matmul's template call has none
_DEFAULTS = {"scale": 1.0, "bias": None, "activation": "none", "post_scale": 1.0, "mul": None, "residual": None,
             "out_dtype": None, "norm": None, "norm_x": None, "post_norm": None, "swiglu": False, "gate": "silu"}
_STEP = {key: i for i, (key, _) in enumerate(EPILOGUE)}

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
            rule = gemm_rule(op)
            if rule is not None and self.free(op):
                self.gemm(op, rule)
        for kind, sites in (("rope_cache", rope_sites(self.graph)), ("kv_attention", kv_attention_sites(self.graph))):  # before pointwise
            for site in (s for s in sites if all(self.free(op) for op in s.ops)):
                self.claim(KernelGroup(kind, list(site.ops), [], [], FUSION_RULES[kind], {"site": site}))
        for op in ops:
            if row_ok(op) and self.free(op):
                self.row(op)
            elif op.opdef.kernel == "template" and self.free(op) and not wide_head(op):  # alone, its template
                reason = FUSION_RULES.get(op.opcode, f"{op.opcode} alone (its template)")
                self.claim(KernelGroup(op.opcode, [op], [], [], reason))
        for op in reversed(ops):  # pointwise trees, grown from their roots (last op first)
            if pointwise_ok(op) and self.free(op):
                members = self.grow([op], op, allow_cat=True)
                self.claim(KernelGroup("pointwise", members, [], [],
                                       FUSION_RULES["pointwise"] if len(members) > 1 else "single pointwise op"))
        order = {id(op): i for i, op in enumerate(ops)}
        for g in self.groups:
            g.ops.sort(key=lambda o: order[id(o)])
            self.finish(g)
        self.groups.sort(key=lambda g: order[id(g.root)])
        for step in (self.horizontal, self.absorb, self.horizontal, self.absorb):
            step(order)
        host: dict[int, str] = {}
        host_ops: dict[str, str] = {}
        for op in ops:
            if id(op) not in self.claimed:
                host[id(op)] = host_reason(op)
                names = ", ".join("%" + r.name for r in op.results)
                host_ops[f"{names} = {op.opcode}"] = host[id(op)]
        return Partition(self.groups, host, host_ops)

    def absorb(self, order: dict[int, int]) -> None:
        """Pull into a pointwise group what only it reads: a host `cat` it could read through, or a whole
        earlier pointwise group (RoPE's tables: cos and sin of cat(f, f), f = pos * inv_freq, one kernel
        instead of two and a host cat). Absorbed values are recomputed where read; the group's root,
        hence its place in the launch order, is unchanged."""
        changed = True
        while changed:
            changed = False
            for g in [g for g in self.groups if g.kind == "pointwise"]:
                for v in g.inputs:
                    p = v.producer
                    src = self.claimed.get(id(p)) if p is not None else None
                    ops = [p] if p is not None and src is None and cat_ok(p) else src.ops if (
                        src is not None and src is not g and src.kind == "pointwise") else []
                    if ops and self.only_read_by(ops, g):
                        self.groups = [x for x in self.groups if x is not src]
                        g.ops = sorted(g.ops + ops, key=lambda o: order[id(o)])
                        g.inputs, g.outputs = [], []
                        self.finish(g)
                        for op in ops:
                            self.claimed[id(op)] = g
                        g.reason += f" (+ {len(ops)} absorbed producer op(s) only it reads)"
                        changed = True
                        break

    def only_read_by(self, ops: list[Op], g: KernelGroup) -> bool:
        inside = {id(op) for op in [*g.ops, *ops]}
        outs = {id(o) for o in self.graph.outputs}
        return all(id(r) not in outs and all(id(u) in inside for u in r.uses) for op in ops for r in op.results)

    def horizontal(self, order: dict[int, int]) -> None:
        """Merge pointwise groups (in root order) into the first earlier one `can_merge_horizontal` allows (the module
        notes say when); run again after `absorb`, which can give groups a common input (Gemma 3's RoPE tables)."""
        merged: list[KernelGroup] = []
        readers: dict[int, set[int]] = {}  # input id -> positions in `merged` of its readers: only they can merge
        first_use: list[float] = []  # per merged group, its outputs' first reader: no later root merges with it
        for g in self.groups:  # linear in depth: a group is tried only while alive and sharing an input
            now, uses = order[id(g.root)], min((order[id(u)] for v in g.outputs for u in v.uses), default=float("inf"))
            near = sorted({i for v in g.inputs for i in readers.get(id(v), ()) if first_use[i] > now}) if g.kind == "pointwise" else []
            at = next((i for i in near if can_merge_horizontal(merged[i], g, order)), None)
            for v in g.inputs:
                readers.setdefault(id(v), set()).add(len(merged) if at is None else at)
            if at is None:
                merged.append(g)
                first_use.append(uses)
                continue
            target, first_use[at] = merged[at], min(first_use[at], uses)
            target.params["trees"] = n_trees = target.params.get("trees", 1) + g.params.get("trees", 1)
            target.ops = sorted(target.ops + g.ops, key=lambda o: order[id(o)])
            target.inputs += [v for v in g.inputs if all(v is not u for u in target.inputs)]
            target.outputs = sorted(target.outputs + g.outputs, key=lambda v: order[id(v.producer)])
            target.reason = f"horizontal: {n_trees} pointwise trees of one domain shape with a common input"
            for op in g.ops:
                self.claimed[id(op)] = target
        self.groups = sorted(merged, key=lambda g: order[id(g.root)])

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

    def mul_operand(self, op: Op, rule: GemmRule, user: Op, y: Value) -> Value | None:
        """The tensor t of `user` = mul(y, t) / mul(t, y) that the GEMM epilogue of `op` can take (same
        shape and dtype as y, not a `full`), else None. None as well when t is the single-use result of
        a later GEMM that can take this mul itself (SwiGLU: the up projection takes `silu(gate) * up`)."""
        t = _other(user, y)
        if user.opcode != "mul" or not rule.mul or t is None:
            return None
        if not (same_shape(t, y) and t.type.dtype == y.type.dtype and t.type.encoding is None):
            return None
        if literal_value(t) is not None:
            return None
        p = t.producer
        later = gemm_rule(p)
        if (later is not None and later.mul and later.linear_like(p) and self.free(p) and p is not op
                and single_use(t, self.graph)):
            return None  # the later GEMM fuses it
        return t

    def gemm(self, op: Op, rule: GemmRule) -> None:
        """The anchor and the epilogue steps its template takes, in order; a GEMM that is not
        linear-like (a batched matmul) takes one step at most, scale or activation."""
        params: dict[str, Any] = dict(_DEFAULTS, anchor=op)
        linear_like = params["linear_like"] = rule.linear_like(op)
        nxt = 2 if len(op.operands) in rule.bias_arity else 0  # a bias operand: the activation is next
        members, y = [op], op.result
        found = norm_ops(op, self.graph) if rule.norm else None
        prologue = found[2] if found is not None and all(self.free(o) for o in found[2]) else []
        if prologue:
            members += prologue
            params["norm"], params["norm_x"] = found[0], found[1]
        post = post_norm_prologue(op, self.graph, params["norm_x"], params["norm"]) if rule.norm else None
        if post is not None and all(self.free(o) for o in post.ops):  # z = res + norm(h) (or norm(h)), in the load
            members += post.ops
            prologue = [*prologue, *post.ops]
            params["post_norm"] = post
        swiglu = swiglu_ops(op, self.graph) if rule.swiglu else None
        if swiglu is not None and all(self.free(o) for o in swiglu):  # the activation and mul steps, in the template
            members += swiglu
            params["swiglu"], params["gate"], y, nxt = True, gated_activation(swiglu), swiglu[-1].result, _STEP["residual"]
        while single_use(y, self.graph):
            user = y.uses[0]
            if (not self.free(user) or len(user.results) != 1 or not kernel_types_ok(user)  # (topk: 2 results)
                    or (not linear_like and len(members) > 1)):
                break
            taken = self.epilogue_step(op, rule, user, y, nxt, linear_like)
            if taken is None:
                break
            nxt, params[EPILOGUE[taken[0]][0]] = taken[0] + 1, taken[1]
            members.append(user)
            y = user.result
        epi = [m.opcode for m in members[1:] if all(m is not o for o in prologue)]
        reason = f"gemm + epilogue ({', '.join(epi)})" if epi else "gemm alone"
        if params["norm"]:
            reason = f"{params['norm'].opcode} prologue + " + reason
        if params["post_norm"]:
            reason = ("post-norm residual (add of an rms_norm) + " if params["post_norm"].add else "norm of a norm + ") + reason
        src = op.operands[0].producer
        if rule.keep and src is not None and src.opcode == "row_keep":  # FFN skipping: early exit on the flags
            params["keep"] = src.operands[1]
            reason += ", keep flags of the row_keep input (early exit)"
        if weight_encoding_kind(op) == "nm":
            enc = op.operands[1].type.encoding
            reason = f"N:M sparse template ({enc.n}:{enc.m}, {enc.scheme or 'fp16/bf16'} kept values): {reason}"
        self.claim(KernelGroup("gemm", members, [], [], reason, params))

    def epilogue_step(self, op: Op, rule: GemmRule, user: Op, y: Value, start: int, linear_like: bool) -> tuple[int, Any] | None:
        """The first epilogue step from `start` on that takes `user`: (its index, the value recorded)."""
        for i in range(start, len(EPILOGUE)):
            key, take = EPILOGUE[i]
            if key in _LINEAR_ONLY and not linear_like:
                continue
            value = take(self, op, rule, user, y)
            if value is not None:
                return i, value
        return None

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
        if normalizes(op):
            while single_use(y, self.graph):
                user = y.uses[0]
                if not (self.free(user) and pointwise_ok(user) and same_shape(user.result, op.result)):
                    break
                members.append(user)
                epilogue += 1
                y = user.result
        reason = f"row {op.opcode}" + (f" + {prologue} prologue op(s)" if prologue else "") + (f" + {epilogue} epilogue op(s)" if epilogue else "")
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
        if g.kind == "rope_cache":  # the template's reads (tables read through their repeat) and results, in its order
            site = g.params["site"]
            g.inputs[:] = site.reads
            g.outputs += [site.q, site.k_written, site.v_written]
            return
        keep = g.params.get("keep")
        if keep is not None and id(keep) not in seen:  # read by the template, operand of no member
            g.inputs.append(keep)
        outs = {id(o) for o in self.graph.outputs}
        for op in g.ops:
            for r in op.results:
                if id(r) in outs or any(id(u) not in inside for u in r.uses):
                    g.outputs.append(r)


def partition(graph: Graph) -> Partition:
    """Kernel groups of the graph by the rule table, and the reason for every op left on the host."""
    return _Partitioner(graph).run()


def fuse(graph: Graph) -> Graph:
    """Partition the graph and store the partition in `graph.partition` (what codegen reads)."""
    graph.partition = partition(graph)
    return graph


class FusePass:
    """Partitions the graph into kernel groups (`graph.partition`); the IR is unchanged."""

    name = "fuse"

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        part = fuse(graph).partition
        assert part is not None
        ctx.stats.update(part.stats())
        paths = sparse_paths(graph, part)
        if paths:
            ctx.stats["sparse_paths"] = paths
        ctx.stats["rules"] = FUSION_RULES
        return graph
