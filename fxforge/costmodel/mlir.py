"""Optional text features from torch-mlir: the linalg/arith/math op tokens of a kernel group's reference
computation, lowered with `torch_mlir.fx.export_and_import(..., output_type="linalg-on-tensors")`.

    available()                       # is torch-mlir importable?
    group_tokens(graph, group)        # {"linalg.matmul": 1, "arith.mulf": 3, "loops": 2, ...} or {} when absent

Decisions:
- torch-mlir is optional and imported lazily; without it `group_tokens` returns {} and the feature set is
  "ir" (the dataset's header and the model file say which set was used: "ir" or "ir+mlir").
- The reference computation is the group's ops run through their op-table torch references on zero
  tensors of the group's input types (encoded weights decoded first), wrapped in a Module for export.
  A group whose reference does not export (an op torch-mlir cannot lower) gives {"mlir:failed": 1}
  rather than an exception: a missing text feature is data, the IR features still stand.
- Tokens are counted per op name (`linalg.generic`, `arith.addf`, `math.exp`, ...) plus `loops` (the
  parallel + reduction iterator count over all linalg.generic ops): the seed paper's bag of MLIR ops.
- Results are cached by the group's structural key (opcodes, attributes, types), since the same group
  appears in many models and shapes.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections import Counter
from collections.abc import Iterator
from typing import Any

from fxforge.ir.graph import Graph, Value
from fxforge.ir.partition import KernelGroup

_TOKEN = re.compile(r"\b((?:linalg|arith|math|tensor|scf)\.[a-z_]+)\b")
_ITER = re.compile(r'"(parallel|reduction)"')
_CACHE: dict[str, dict[str, int]] = {}


def available() -> bool:
    try:
        import torch_mlir.fx  # noqa: F401
    except Exception:  # ImportError, or a broken install: the feature set is then "ir"
        return False
    return True


def tokens_of(text: str) -> dict[str, int]:
    """Op-token counts of MLIR text, plus `loops` (iterator types of linalg.generic ops)."""
    counts = Counter(_TOKEN.findall(text))
    counts["loops"] = len(_ITER.findall(text))
    return dict(counts)


def _key(group: KernelGroup) -> str:
    from fxforge.ir.printer import print_op

    return "\n".join(print_op(op) for op in group.ops) + "|" + ",".join(str(v.type) for v in group.inputs)


def _reference_module(graph: Graph, group: KernelGroup) -> tuple[Any, list[Any]]:
    import torch

    from fxforge.ir.evaluate import run_op

    consts = {id(v): v for v in group.inputs if v.producer is not None and v.producer.opcode == "const"}
    args = [v for v in group.inputs if id(v) not in consts]

    class Ref(torch.nn.Module):
        def forward(self, *xs: Any) -> Any:
            env: dict[int, Any] = {id(v): x for v, x in zip(args, xs)}
            for vid, v in consts.items():
                env[vid] = run_op(graph, v.producer, [], {})[0]
            for op in group.ops:
                for r, t in zip(op.results, run_op(graph, op, [env[id(v)] for v in op.operands], {})):
                    env[id(r)] = t
            return tuple(env[id(v)] for v in group.outputs)

    return Ref(), [_zeros(v) for v in args]


def _zeros(v: Value) -> Any:
    import torch

    return torch.zeros([int(d) for d in v.type.shape], dtype=v.type.dtype.torch)


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """torch.export's warnings (pytree deprecations, data-dependent guards printed with the whole graph)
    are about our small reference modules, not the user's model: kept out of the user's terminal."""
    logger = logging.getLogger("torch.fx.experimental.symbolic_shapes")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def group_tokens(graph: Graph, group: KernelGroup) -> dict[str, int]:
    """The op tokens of the group's linalg-on-tensors text; {} without torch-mlir."""
    if not available():
        return {}
    key = _key(group)
    if key not in _CACHE:
        try:
            from torch_mlir import fx

            module, inputs = _reference_module(graph, group)
            with _quiet_export():
                text = str(fx.export_and_import(module, *inputs, output_type="linalg-on-tensors"))
            _CACHE[key] = tokens_of(text)
        except Exception:  # not lowerable: said in the row, the IR features stand
            _CACHE[key] = {"failed": 1}
    return _CACHE[key]
