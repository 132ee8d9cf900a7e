"""An allocation-free `run()` for a decode step (issue #13, item 2), proven two ways on the CPU:
- the planner's output: every step of the decode step's generated program that produces a tensor with
  storage of its own writes a planned buffer (`BufferPlan.allocating` is empty), and the text of `run()`
  has no allocating torch call (the buffers are made in `_plan`, once per size key);
- a second decode call makes no new tensor storage: every aten op that runs outside the Triton kernels
  (the launchers' host code, views, `out=` host ops) returns storage one of its inputs already had,
  seen by a `TorchDispatchMode` (kernels' own interpreter work is not the launcher's and is skipped).
The detector is shown to fire: the same call with fresh output buffers (the default outside a decode
loop) reports the one `empty_like` of the logits."""

from __future__ import annotations

import contextlib
import re

import pytest
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from triton.runtime.interpreter import InterpretedFunction

import fxforge
from fxforge.codegen.buffers import BufferPlan
from fxforge.runtime.generate import StaticKVCache

ALLOCATING = re.compile(r"torch\.(empty|zeros|ones|full|cat|stack|arange)\b(?![^\n]*out=)|F\.embedding|OPS\[|"
                        r"\.(clone|contiguous)\(")


def decoder(arch: str) -> torch.nn.Module:
    import transformers

    torch.manual_seed(0)
    config = {"qwen2": transformers.Qwen2Config, "llama": transformers.LlamaConfig}[arch]
    cfg = config(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=256, max_position_embeddings=512)
    model = {"qwen2": transformers.Qwen2ForCausalLM, "llama": transformers.LlamaForCausalLM}[arch](cfg)
    return model.eval()


class NewStorage(TorchDispatchMode):
    """Records the aten ops (outside kernel launches) whose result has storage none of its inputs had."""

    def __init__(self) -> None:
        super().__init__()
        self.new: list[str] = []
        self.in_kernel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not self.in_kernel:
            seen = {t.untyped_storage().data_ptr() for t in pytree.tree_leaves((args, kwargs))
                    if isinstance(t, torch.Tensor)}
            for t in pytree.tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes() > 0 \
                        and t.untyped_storage().data_ptr() not in seen:
                    self.new.append(str(func))
        return out


@contextlib.contextmanager
def watching():
    mode = NewStorage()
    original = InterpretedFunction.run

    def run(self, *args, **kwargs):  # a kernel's interpretation is not the launcher's allocation
        mode.in_kernel += 1
        try:
            return original(self, *args, **kwargs)
        finally:
            mode.in_kernel -= 1

    InterpretedFunction.run = run
    try:
        with mode:
            yield mode
    finally:
        InterpretedFunction.run = original


@pytest.fixture(scope="module")
def step():
    dec = fxforge.compile_decoder(decoder("qwen2"), max_length=12, executor="interpret")
    cache = StaticKVCache.for_step(dec.graph)
    ids = torch.randint(3, 256, (1, 5), generator=torch.Generator().manual_seed(0))
    dec(ids[:, :4], torch.arange(4), cache.tensors)  # prefill: its own size key
    return dec, cache, ids


def check_plan(dec) -> None:
    graph = dec.graph
    plan = BufferPlan.build(graph, graph.partition)
    assert plan.allocating == [], plan.allocating
    assert plan.late == set() and plan.n_buffers > 0
    source = dec.program.executor.module.source
    body = source[source.index("\ndef run("):]
    assert not ALLOCATING.findall(body), ALLOCATING.findall(body)
    assert "_pooled(pool, _plan," in body and ", out=" in body
    # the GQA head repeat (a copy of the whole cache per call) is folded into the attention (gqa_attention)
    assert [op.attrs["enable_gqa"] for op in graph.find("attention")] == [True]
    assert not graph.find("expand")


def test_decode_plan_binds_every_result_to_a_planned_buffer(step):
    check_plan(step[0])


@pytest.mark.slow
def test_llama_decode_plan_binds_every_result_to_a_planned_buffer():
    check_plan(fxforge.compile_decoder(decoder("llama"), max_length=12, executor="interpret"))


def test_second_decode_call_allocates_nothing(step):
    dec, cache, ids = step
    program = dec.program
    with program.static_outputs():
        first = dec(ids[:, 4:5], torch.tensor([4]), cache.tensors)  # warm-up: the T=1 key's buffers
        pool = program.buffer_pool()
        made = pool.allocations
        with watching() as seen:
            second = dec(ids[:, 4:5], torch.tensor([4]), cache.tensors)
    assert seen.new == [], seen.new
    assert pool.allocations == made and second.data_ptr() == first.data_ptr()
    with watching() as fresh:  # outside a decode loop the caller keeps its logits: one fresh buffer
        third = dec(ids[:, 4:5], torch.tensor([4]), cache.tensors)
    assert fresh.new == ["aten.empty_like.default"], fresh.new
    assert third.data_ptr() != second.data_ptr() and torch.equal(third, second)


def test_pool_keeps_one_set_per_size_key_and_holds_what_a_graph_replays():
    from fxforge.codegen.pool import BufferPool, pooled

    def make(device, s0):
        return [torch.empty(s0, device=device), torch.empty(2 * s0, device=device)]

    pool = BufferPool(max_keys=2)
    a = pool.take(make, (1,), ("cpu", 3))
    b = pool.take(make, (1,), ("cpu", 3))
    assert a[0] is b[0] and a[1] is not b[1]  # scratch reused; the output fresh (the caller keeps it)
    pool.static_outputs = True
    assert pool.take(make, (1,), ("cpu", 3))[1] is pool.take(make, (1,), ("cpu", 3))[1]
    held = pool.held()
    pool.take(make, (1,), ("cpu", 4))
    pool.take(make, (1,), ("cpu", 5))  # a third key: the least recently used (3) goes
    assert list(pool.sets) == [("cpu", 4), ("cpu", 5)] and pool.allocations == 3
    assert any(t is a[0] for t in held)  # a CUDA graph's references outlive the pool's
    ws = a[-1]
    x, y = ws.take("cpu", ((4, 3), torch.float32), ((5,), torch.int32))
    assert x.data_ptr() != y.data_ptr() and y.data_ptr() >= x.data_ptr() + 48 and ws.grows == 1
    assert len(pooled(None, make, (1,), "cpu", 3)) == 3  # no pool: made afresh
    pool.clear()
    assert not pool.sets
