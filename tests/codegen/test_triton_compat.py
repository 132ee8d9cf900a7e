"""Version differences of Triton (`fxforge.codegen.triton_compat`): CI runs tests/codegen on 3.6.0 and the newest.

- Under the interpreter, kernel loops bounded by a scalar argument (`range(0, K, BLOCK)`,
  `range(tl.cdiv(K, BLOCK))`) run on every release (3.6's interpreter failed on them with numpy >= 2.4).
- int8 x int8 -> int32 dots with an accumulator run under the interpreter and build for sm_80/sm_90.
"""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from fxforge.codegen import build, triton_compat


@triton.jit
def _loops_kernel(x_ptr, out_ptr, K, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    total = tl.zeros((BLOCK,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK):
        total += tl.load(x_ptr + k0 + offs, mask=k0 + offs < K, other=0.0)
    for i in range(0, tl.cdiv(K, BLOCK)):
        total += tl.load(x_ptr + i * BLOCK + offs, mask=i * BLOCK + offs < K, other=0.0)
    tl.store(out_ptr + offs, total)


@triton.jit
def _int8_dot_kernel(a_ptr, b_ptr, out_ptr, K, BLOCK: tl.constexpr):
    r = tl.arange(0, BLOCK)
    acc = tl.zeros((BLOCK, BLOCK), dtype=tl.int32)
    for k0 in range(0, K, BLOCK):
        a = tl.load(a_ptr + r[:, None] * K + k0 + r[None, :])
        b = tl.load(b_ptr + (k0 + r[:, None]) * BLOCK + r[None, :])
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
    tl.store(out_ptr + r[:, None] * BLOCK + r[None, :], acc)


def test_version_table():
    assert triton_compat.TRITON_VERSION >= triton_compat.MIN_SUPPORTED
    assert triton_compat._version("3.6.0") == (3, 6, 0) and triton_compat._version("3.10.0+git1") == (3, 10, 0)
    assert set(triton_compat.SWITCHES) == {"interpreter_index_squeezes"}
    assert triton_compat.patch_interpreter() is not triton_compat.has("interpreter_index_squeezes")


def test_scalar_bounded_loops_under_interpreter():
    x = torch.randn(100)
    out = torch.zeros(32)
    _loops_kernel[(1,)](x, out, 100, BLOCK=32)
    expect = 2 * torch.nn.functional.pad(x, (0, 28)).reshape(4, 32).sum(0)
    torch.testing.assert_close(out, expect)


def test_int8_dot_with_accumulator_under_interpreter():
    a = torch.randint(-128, 128, (32, 64), dtype=torch.int8)
    b = torch.randint(-128, 128, (64, 32), dtype=torch.int8)
    out = torch.zeros(32, 32, dtype=torch.int32)
    _int8_dot_kernel[(1,)](a, b, out, 64, BLOCK=32)
    assert torch.equal(out, a.int() @ b.int())


@pytest.mark.parametrize("arch", [90, 80])
def test_int8_dot_builds(arch):
    spec = {"module": __name__, "path": __file__, "kernel": "_int8_dot_kernel",
            "signature": {"a_ptr": "*i8", "b_ptr": "*i8", "out_ptr": "*i32", "K": "i32"}, "constexprs": {"BLOCK": 32},
            "divisible": ["K"], "num_warps": 4, "num_stages": 2, "label": "int8 dot"}
    (b,) = build.build_in_subprocess([spec], arch, timeout=240, jobs=1, sass_counts=False)
    assert b.ok and b.spills == 0, b.error[-1000:]
