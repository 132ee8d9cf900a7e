"""Two compiles shared by the inspection tests: a dense llama on the interpret executor (partitioned,
so it has kernels), and a llama quantized (smooth, rotate, GPTQ), a 4-layer one with FFN skipping, one pruned 2:4."""

import pytest

import fxforge
from fxforge import testing as zoo


@pytest.fixture(scope="session")
def dense():
    model = zoo.build("llama")
    x = zoo.example_input("llama", batch=2, seq=16)
    return fxforge.compile_aot(model, (x,), executor="interpret")


@pytest.fixture(scope="session")
def compressed():
    model = zoo.build("llama")
    x = zoo.example_input("llama", batch=2, seq=16)
    cal = [zoo.example_input("llama", batch=2, seq=16, seed=s) for s in range(2, 6)]
    return fxforge.compile_aot(model, (x,), quantize="w4a16-int4", smooth=True, rotate=True,
                               calibration=cal)


@pytest.fixture(scope="session")
def skipping():
    # apart from quantization: after `quantize` the FFN blocks are qlinears, which ffn_skip does not find (yet)
    model = zoo.build("llama", layers=4)
    cal = [zoo.example_input("llama", batch=2, seq=16, seed=s) for s in range(2, 6)]
    return fxforge.compile_aot(model, (cal[0],), ffn_skip=0.3, calibration=cal)


@pytest.fixture(scope="session")
def sparse():
    model = zoo.build("llama")
    return fxforge.compile_aot(model, (zoo.example_input("llama", batch=2, seq=16),), sparsity="2:4")


@pytest.fixture(scope="session")
def ksorted():
    """A 1-layer llama with head_dim 64 and planted K outliers, its cache bfp4 in blocks of 16, K-sorted;
    with the planted channels (layer 0, head 0) and its calibration inputs."""
    import torch

    model = zoo.plant_k_outliers(zoo.build("llama", layers=1, heads=1, kv_heads=1), pairs=2)
    cal = [zoo.example_input("llama", batch=1, seq=16, seed=s) for s in (2, 3)]
    chans = torch.randperm(32, generator=torch.Generator().manual_seed(0))[:2]  # plant_k_outliers' first draw
    c = fxforge.compile_aot(model, (cal[0],), kv_cache="bfp4", kv_block=16, k_sort="auto", calibration=cal)
    return c, cal, sorted(torch.cat([chans, chans + 32]).tolist())


@pytest.fixture(scope="session")
def planned():
    """The zoo MLP compiled under an accuracy budget (the cost model chooses a scheme per linear)."""
    model = zoo.build("mlp")
    cal = [zoo.example_input("mlp", batch=2, seq=8, seed=s) for s in (0, 1)]
    return fxforge.compile_aot(model, (cal[0],), budget=0.02, calibration=cal, quantize_method="rtn")
