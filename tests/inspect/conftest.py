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
