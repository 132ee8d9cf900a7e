"""Every zoo model through the generated Triton module under the CPU interpreter, against the
reference executor (fp32, <= 1e-4 max abs), at two sequence lengths from one compile; each test
prints its kernel count beside the number of captured ATen ops."""

from __future__ import annotations

import pytest
import torch
from torch.utils import _pytree as pytree

import fxforge
import fxforge.runtime.triton_executor  # noqa: F401  (registers the interpret/triton executors)
from fxforge import testing as zoo

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


def test_jit_generation_with_a_growing_kv_cache():
    model = zoo.build("llama")
    prompt = zoo.example_input("llama", batch=1, seq=6)
    with torch.no_grad():
        expected = model.generate(prompt, max_new_tokens=3, do_sample=False, min_new_tokens=3)
        compiled = fxforge.compile(model, executor="interpret")
        got = compiled.generate(prompt, max_new_tokens=3, do_sample=False, min_new_tokens=3)
    assert torch.equal(got, expected)
    assert compiled.fxforge_report.calls == 3


def test_fp16_mlp_within_fp16_tolerance():
    model = zoo.build("mlp").half()
    x = zoo.example_input("mlp", batch=2, seq=8).half()
    compiled = fxforge.compile_aot(model, (x,), executor="interpret")
    reference = fxforge.compile_aot(model, (x,), executor="reference")
    diff = (compiled(x) - reference(x)).abs().max().item()
    assert diff <= 1e-2  # fp16: fp32 accumulation in the GEMM vs torch's CPU fp16 GEMM, per-op rounding


def test_triton_executor_needs_a_gpu():
    from fxforge.errors import ConfigError
    from fxforge.ir.graph import Graph
    from fxforge.runtime.executors import make_executor

    with pytest.raises(ConfigError, match="executor='interpret'"):
        make_executor("triton", Graph())


def test_generated_kernel_executors_need_the_partition_and_the_pipeline_gives_it(tmp_path):
    from fxforge.ir.partition import PartitionError
    from fxforge.runtime.executors import make_executor

    model = zoo.build("mlp")
    x = zoo.example_input("mlp", batch=2, seq=4)
    # a custom pass list without `fuse`: the pipeline still appends it for the interpret executor
    compiled = fxforge.compile_aot(model, (x,), executor="interpret", passes=["canonicalize", "dce"])
    assert compiled.record.trace.names()[-1] == "fuse" and compiled.graph.partition is not None
    graph = compiled.graph
    graph.partition = None
    with pytest.raises(PartitionError, match="run the `fuse` pass"):
        make_executor("interpret", graph)
    # a loaded artifact has no partition on disk: load runs `fuse` for the generated-kernel executor
    fxforge.compile_aot(model, (x,), executor="interpret").save(str(tmp_path / "a"))
    loaded = fxforge.load(str(tmp_path / "a"))
    assert loaded.graph.partition is not None and loaded.program.executor_name == "interpret"
    torch.testing.assert_close(loaded(x), model(x), atol=1e-4, rtol=1e-4)
