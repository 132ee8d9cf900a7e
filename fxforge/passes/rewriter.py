"""The pattern rewriter: pattern objects, rules, and the one greedy driver every local rewrite uses.

Patterns mirror the op constructors (after tinygrad's UPat):

    P.op("matmul", P.any("x"), P.op("permute", P.const("w"), dims=(1, 0)))

`P.op(opcode, *operands, name=, single_use=, commutative=, check=, **attrs)` matches a value
produced by an op of that opcode (or one of a tuple of opcodes) whose operands match the operand
patterns (no operand patterns: any operands) and whose attributes equal the given values or satisfy
the given predicates; `check(value)` is a last predicate on the matched value. `P.any(name)` matches
any value, `P.const(name)` a value made by `const`, `P.full(name, value=None)` a `full` whose every
dim is 1 (rank 0 included: a scalar that broadcasts), with an optional value or value predicate.
A name bound twice must bind the same value (`mul(x, sigmoid(x))`). `P.either(*ops, check=)` matches as the
first alternative that does, after one `check` of the value: a rule's many variants as one root.

Decisions:
- Matching is a generator over the ways a pattern can match, so `commutative=True` (try both operand
  orders of a binary op) backtracks correctly even when nested.
- "Single use" means the matched op's results are used only by other ops of the same match and are
  not graph outputs: the rewrite removes the op, so it never computes the same work twice. A node
  asks for it with `single_use=True`; a rule with `single_use=True` asks it of every interior op
  (ops matched by `P.op` below the root; leaves bound by `any`/`const`/`full` never count).
- A rule's function builds replacement ops with `graph.insert_before(op, ...)` and returns the new
  value, or None (no change; it must then not have built anything). The replacement must have the
  root's type (dims compared as expressions): a rule that changes a type is a bug, raised as
  `RewriteError`, never silently applied.
- `apply_rules` sweeps the ops in order, applies the first rule that matches each op, redirects the
  root's uses, erases the matched ops left dead (leaves included: a `full` only the rewritten ops
  used goes too), and repeats until a sweep changes nothing. No fixpoint within `max_iterations`
  sweeps means rules undo each other: that raises too. It returns {rule name: rewrites}.
- `same_type`/`dims_match` are `TensorType.same_as`/`dims_equal` with a fast path (ints, expanded
  polynomials in the size symbols) and a memo: rules compare types constantly, and
  `sympy.simplify` on every unequal pair made canonicalization 30x slower on symbolic graphs.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import sympy

from fxforge.ir.errors import IRError
from fxforge.ir.graph import Graph, Op, Value, freeze
from fxforge.ir.printer import print_op, print_type
from fxforge.ir.types import Dim, TensorType, dims_equal


@functools.lru_cache(maxsize=65536)
def _dims_match(a: Dim, b: Dim) -> bool:
    diff = sympy.expand(sympy.sympify(a) - sympy.sympify(b))
    if diff == 0:
        return True
    if diff.is_polynomial():  # a nonzero polynomial is not identically zero: no need to simplify
        return False
    return dims_equal(a, b)


def dims_match(a: Dim, b: Dim) -> bool:
    """`types.dims_equal`, fast on the common cases (ints, polynomials in the size symbols), memoised."""
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    return a == b or _dims_match(a, b)


def same_type(a: TensorType, b: TensorType) -> bool:
    """`TensorType.same_as` with `dims_match`: passes compare types often, sympy.simplify is slow."""
    return a is b or (a.dtype == b.dtype and a.encoding == b.encoding and a.rank == b.rank
                      and all(dims_match(x, y) for x, y in zip(a.shape, b.shape, strict=True)))


class RewriteError(IRError):
    """A rule produced a value of the wrong type, built ops it did not use, or rules never converge."""


@dataclass(frozen=True)
class State:
    """A partial match: names bound so far, and the ops matched by `P.op` nodes (root first)."""

    bindings: tuple[tuple[str, Value], ...] = ()
    ops: tuple[Op, ...] = ()
    single: tuple[Op, ...] = ()  # ops that asked for single use
    leaves: tuple[Op, ...] = ()  # const/full ops matched as leaves: erased when dead, never checked

    def bind(self, name: str | None, value: Value) -> State | None:
        if name is None:
            return self
        for k, v in self.bindings:
            if k == name:
                return self if v is value else None
        return State(self.bindings + ((name, value),), self.ops, self.single, self.leaves)

    def add_op(self, op: Op, single_use: bool, leaf: bool = False) -> State:
        if leaf:
            return State(self.bindings, self.ops, self.single, self.leaves + (op,))
        return State(self.bindings, self.ops + (op,), self.single + ((op,) if single_use else ()), self.leaves)


class Pattern:
    name: str | None = None

    def match(self, value: Value, state: State) -> Iterator[State]:
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class AnyPat(Pattern):
    name: str | None = None
    check: Callable[[Value], bool] | None = None

    def match(self, value: Value, state: State) -> Iterator[State]:
        if self.check is None or self.check(value):
            out = state.bind(self.name, value)
            if out is not None:
                yield out


def _attr_ok(want: Any, have: Any) -> bool:
    if callable(want):
        return bool(want(have))
    return freeze(want) == have


@dataclass(frozen=True, eq=False)
class OpPat(Pattern):
    opcodes: tuple[str, ...]
    operands: tuple[Pattern, ...] | None
    attrs: tuple[tuple[str, Any], ...]
    name: str | None = None
    single_use: bool = False
    commutative: bool = False
    check: Callable[[Value], bool] | None = None
    leaf: bool = False  # const/full leaves: bound, never erased or checked for single use

    def match(self, value: Value, state: State) -> Iterator[State]:
        op = value.producer
        if op is None or op.opcode not in self.opcodes or len(op.results) != 1:
            return
        if any(k not in op.attrs or not _attr_ok(w, op.attrs[k]) for k, w in self.attrs):
            return
        if self.check is not None and not self.check(value):
            return
        state = state.bind(self.name, value)
        if state is None:
            return
        state = state.add_op(op, self.single_use, self.leaf)
        if self.operands is None:
            yield state
            return
        if len(self.operands) != len(op.operands):
            return
        orders = [op.operands]
        if self.commutative and len(op.operands) == 2:
            orders.append(op.operands[::-1])
        for operands in orders:
            yield from _match_all(self.operands, operands, state)


@dataclass(frozen=True, eq=False)
class EitherPat(Pattern):
    """The matches of each alternative op pattern in turn, after one `check` of the value (`P.either`)."""

    alternatives: tuple[OpPat, ...]
    check: Callable[[Value], bool] | None = None
    leaf: bool = False

    @property
    def opcodes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(o for alt in self.alternatives for o in alt.opcodes))

    def match(self, value: Value, state: State) -> Iterator[State]:
        if self.check is None or self.check(value):
            for alt in self.alternatives:
                yield from alt.match(value, state)


def _match_all(pats, values, state: State) -> Iterator[State]:
    if not pats:
        yield state
        return
    for s in pats[0].match(values[0], state):
        yield from _match_all(pats[1:], values[1:], s)


def _is_unit(value: Value) -> bool:
    return all(d == 1 for d in value.type.shape)


class P:
    """Pattern constructors."""

    @staticmethod
    def op(opcode: str | tuple[str, ...], *operands: Pattern, name: str | None = None, single_use: bool = False,
           commutative: bool = False, check: Callable[[Value], bool] | None = None, **attrs: Any) -> OpPat:
        opcodes = (opcode,) if isinstance(opcode, str) else tuple(opcode)
        return OpPat(opcodes, tuple(operands) if operands else None, tuple(attrs.items()), name, single_use,
                     commutative, check)

    @staticmethod
    def either(*alternatives: OpPat, check: Callable[[Value], bool] | None = None) -> EitherPat:
        """The first of `alternatives` that matches (a rule's variants as one root: `check` runs once per value,
        where separate rules would each start a match on every op of their root's opcode)."""
        return EitherPat(tuple(alternatives), check)

    @staticmethod
    def any(name: str | None = None, check: Callable[[Value], bool] | None = None) -> AnyPat:
        return AnyPat(name, check)

    @staticmethod
    def const(name: str | None = None, check: Callable[[Value], bool] | None = None) -> OpPat:
        return OpPat(("const",), None, (), name, check=check, leaf=True)

    @staticmethod
    def full(name: str | None = None, value: Any = None, check: Callable[[Value], bool] | None = None) -> OpPat:
        attrs = (("value", value),) if value is not None else ()

        def unit(v: Value) -> bool:
            return _is_unit(v) and (check is None or check(v))

        return OpPat(("full",), None, attrs, name, check=unit, leaf=True)


RuleFn = Callable[[Graph, Op, dict[str, Value]], "Value | None"]


@dataclass(frozen=True)
class Rule:
    """A named (pattern, fn) pair; the pattern's root must be a `P.op` (or `P.either` of them)."""

    pattern: OpPat | EitherPat
    fn: RuleFn
    name: str = ""
    single_use: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, (OpPat, EitherPat)) or self.pattern.leaf:
            raise TypeError(f"rule {self.name or self.fn.__name__}: the root pattern must be P.op(...) or "
                            "P.either(...)")
        if not self.name:
            object.__setattr__(self, "name", self.fn.__name__)

    def match(self, op: Op) -> State | None:
        """The first complete match rooted at op that passes the single-use checks, or None."""
        outputs = {id(v) for v in op.graph.outputs} if op.graph is not None else set()
        for state in self.pattern.match(op.results[0], State()):
            inside = {id(o) for o in state.ops}
            need = state.ops[1:] if self.single_use else state.single
            if all(_contained(o, inside, outputs) for o in need if o is not op):
                return state
        return None


def _contained(op: Op, inside: set[int], outputs: set[int]) -> bool:
    return all(id(r) not in outputs and all(id(u) in inside for u in r.uses) for r in op.results)


def rule(pattern: OpPat, name: str = "", single_use: bool = False) -> Callable[[RuleFn], Rule]:
    """Decorator: `@rule(P.op(...))` turns a function into a `Rule` named after it."""

    def make(fn: RuleFn) -> Rule:
        return Rule(pattern, fn, name or fn.__name__, single_use)

    return make


def as_rule(r: Rule | tuple) -> Rule:
    return r if isinstance(r, Rule) else Rule(r[0], r[1], *r[2:])


def apply_rules(graph: Graph, rules: list[Rule | tuple], max_iterations: int = 20) -> dict[str, int]:
    """Rewrite greedily to a fixpoint; returns {rule name: rewrites} (rules that never fired omitted)."""
    rules = [as_rule(r) for r in rules]
    by_opcode: dict[str, list[Rule]] = {}
    for r in rules:
        for opcode in r.pattern.opcodes:
            by_opcode.setdefault(opcode, []).append(r)
    counts: Counter[str] = Counter()
    for _ in range(max_iterations):
        changed = False
        erased: set[int] = set()
        for op in list(graph.ops):
            if id(op) in erased or len(op.results) != 1 or op.opcode not in by_opcode:
                continue
            for r in by_opcode[op.opcode]:
                state = r.match(op)
                if state is None:
                    continue
                if _rewrite(graph, op, r, state, erased):
                    counts[r.name] += 1
                    changed = True
                    break
        if not changed:
            return dict(counts)
    raise RewriteError(f"rewrite rules did not reach a fixpoint in {max_iterations} sweeps (rules that fired: "
                       f"{dict(counts)}); two rules probably undo each other")


def _rewrite(graph: Graph, op: Op, r: Rule, state: State, erased: set[int]) -> bool:
    count = len(graph.ops)
    old = op.results[0]
    new = r.fn(graph, op, dict(state.bindings))
    if new is None:
        if len(graph.ops) != count:
            raise RewriteError(f"rule {r.name} built ops at {print_op(op)} but returned None; build nothing "
                               "unless you return the new value")
        return False
    if new is old:
        return False
    if not same_type(new.type, old.type):
        raise RewriteError(f"rule {r.name} replaced {print_op(op)} by a value of type {print_type(new.type)}; "
                           "a rewrite must keep the type (check it in the rule and return None)")
    graph.replace_all_uses(old, new)
    _erase_dead(graph, state.ops + state.leaves, erased)
    return True


def _erase_dead(graph: Graph, ops: tuple[Op, ...], erased: set[int]) -> None:
    """Erase the matched ops nobody uses any more (a matched op may feed another matched op)."""
    pending = list(dict.fromkeys(ops))
    outputs = {id(v) for v in graph.outputs}
    progress = True
    while progress:
        progress = False
        for o in list(pending):
            if all(not r.uses and id(r) not in outputs for r in o.results):
                graph.erase(o)
                erased.add(id(o))
                pending.remove(o)
                progress = True
