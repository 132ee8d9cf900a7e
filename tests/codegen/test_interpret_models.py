"""Every zoo model through the generated Triton module under the CPU interpreter, against the
reference executor (fp32, <= 1e-4 max abs), at two sequence lengths from one compile; each test
prints its kernel count beside the number of captured ATen ops."""

from __future__ import annotations

import pytest
import torch
from torch.utils import _pytree as pytree

import fxforge
import fxforge.runtime.triton_executor  # noqa: F401  (registers the interpret/triton executors)
from fxforge import zoo

TOL = 1e-4
MODELS = ["llama", "mistral", "gpt2", "bert", "mlp"]


def tensors(out) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("name", MODELS)
def test_interpret_matches_reference(name):
    model = zoo.build(name)
    example = (zoo.example_input(name, batch=2, seq=8),)
    compiled = fxforge.compile_aot(model, example, executor="interpret")
    reference = fxforge.compile_aot(model, example, executor="reference")
    for seq in (8, 5):
        x = zoo.example_input(name, batch=2, seq=seq, seed=seq)
        got, want = tensors(compiled(x)), tensors(reference(x))
        assert len(got) == len(want) and got
        diff = max((a - b).abs().max().item() for a, b in zip(got, want))
        assert diff <= TOL, f"{name} seq={seq}: max abs diff {diff}"
    executor = compiled.program.executor
    kernels = executor.kernels
    kinds = {k: sum(1 for i in kernels if i.kind == k) for k in ("gemm", "attention", "row", "pointwise")}
    print(f"\n{name}: {compiled.record.aten_ops} ATen ops -> {len(compiled.graph.ops)} IR ops -> "
          f"{len(kernels)} kernels {kinds}")
    assert compiled.program.calls == 2
    assert 0 < len(kernels) < compiled.record.aten_ops
