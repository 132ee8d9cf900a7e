"""Buffers written in forward: the JIT path writes them back (eager's values over several calls);
the AOT path refuses them by name."""

from __future__ import annotations

import copy

import pytest
import torch

import fxforge
from fxforge.errors import CaptureError


class Counter(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros(1))
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.count.add_(1)
        return self.lin(x) * self.count


class KVBuffer(torch.nn.Module):
    """A cache kept as buffers: each call writes one row and advances a position."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("cache", torch.zeros(6, 4))
        self.register_buffer("pos", torch.zeros((), dtype=torch.long))
        self.proj = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.cache.index_copy_(0, self.pos.view(1), self.proj(x))
        self.pos.add_(1)
        return torch.softmax(self.cache @ x.T, dim=0).T @ self.cache


def run_both(cls, executor: str, calls: int = 4, train: bool = False, shape=(1, 4)):
    torch.manual_seed(0)
    model = cls().train(train)
    eager = copy.deepcopy(model)
    compiled = fxforge.compile(model, executor=executor)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(calls):
            x = torch.randn(*shape, generator=gen)
            got, want = compiled(x), eager(x)
            assert torch.allclose(got, want, atol=1e-5), (got, want)
            for name, buf in eager.named_buffers():
                assert torch.allclose(dict(model.named_buffers())[name].float(), buf.float(), atol=1e-5), name
    assert compiled.fxforge_report.calls == calls
    return model


@pytest.mark.parametrize("executor", ["reference", "interpret"])
def test_counter_buffer_counts_like_eager(executor):
    model = run_both(Counter, executor, shape=(2, 4))
    assert model.count.item() == 4.0  # [1, 2, 3, 4], not [1, 1, 1, 1]


def test_kv_cache_buffers_are_written_back():
    model = run_both(KVBuffer, "reference", calls=5)
    assert model.pos.item() == 5 and bool((model.cache[:5] != 0).all()) and bool((model.cache[5] == 0).all())


def test_batchnorm_running_stats_update_under_jit_in_train_mode():
    class BN(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn = torch.nn.BatchNorm1d(4)

        def forward(self, x):
            return self.bn(x) * 2

    model = run_both(BN, "reference", calls=3, train=True, shape=(8, 4))
    assert int(model.bn.num_batches_tracked) == 3 and model.bn.running_mean.abs().sum() > 0


def test_aot_refuses_a_forward_that_writes_a_buffer():
    model = Counter().eval()
    with pytest.raises(CaptureError, match=r"writes \['count'\] in place.*fxforge.compile"):
        fxforge.compile_aot(model, (torch.randn(2, 4),))
    assert model.count.item() == 0.0
