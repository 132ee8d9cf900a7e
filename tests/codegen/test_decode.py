"""The Triton decode helpers agree bit for bit with fxforge.ir.formats over every code.

Kernels run under the Triton interpreter (TRITON_INTERPRET=1 is set before triton is imported); one
test compiles the same kernels for sm_90 in a subprocess without the interpreter.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

_COMPILE_ONLY = os.environ.get("FXFORGE_DECODE_COMPILE_ONLY") == "1"
if not _COMPILE_ONLY:
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

from fxforge.codegen import decode  # noqa: E402
from fxforge.ir.block_formats import decode_e8m0  # noqa: E402
from fxforge.ir.formats import decode_float, get_format, unpack_int4, unpack_nibbles  # noqa: E402

if not _COMPILE_ONLY and not isinstance(decode.fp4e2m1_to_f32, InterpretedFunction):
    decode = importlib.reload(decode)  # imported earlier without the interpreter

fp8e4m3_to_f32 = decode.fp8e4m3_to_f32
fp8e5m2_to_f32 = decode.fp8e5m2_to_f32
fp6e2m3_to_f32 = decode.fp6e2m3_to_f32
fp6e3m2_to_f32 = decode.fp6e3m2_to_f32
fp4e2m1_to_f32 = decode.fp4e2m1_to_f32
e8m0_to_f32 = decode.e8m0_to_f32
unpack_nibbles_tl = decode.unpack_nibbles
unpack_int4_tl = decode.unpack_int4
interleave_nibbles = decode.interleave_nibbles

# kernel FMT argument -> (format name, number of codes); "e8m0" decodes block scales
DECODERS = {0: ("f8e4m3", 256), 1: ("f8e5m2", 256), 2: ("f6e2m3", 64), 3: ("f6e3m2", 64),
            4: ("f4e2m1", 16), 5: ("e8m0", 256)}


@triton.jit
def _decode_kernel(codes_ptr, out_ptr, n, FMT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    c = tl.load(codes_ptr + offs, mask=mask, other=0)
    if FMT == 0:
        v = fp8e4m3_to_f32(c)
    elif FMT == 1:
        v = fp8e5m2_to_f32(c)
    elif FMT == 2:
        v = fp6e2m3_to_f32(c)
    elif FMT == 3:
        v = fp6e3m2_to_f32(c)
    elif FMT == 4:
        v = fp4e2m1_to_f32(c)
    else:
        v = e8m0_to_f32(c)
    tl.store(out_ptr + offs, v, mask=mask)


@triton.jit
def _nibble_kernel(packed_ptr, lo_ptr, hi_ptr, slo_ptr, shi_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    p = tl.load(packed_ptr + offs, mask=mask, other=0)
    lo, hi = unpack_nibbles_tl(p)
    slo, shi = unpack_int4_tl(p)
    tl.store(lo_ptr + offs, lo, mask=mask)
    tl.store(hi_ptr + offs, hi, mask=mask)
    tl.store(slo_ptr + offs, slo, mask=mask)
    tl.store(shi_ptr + offs, shi, mask=mask)


@triton.jit
def _interleave_kernel(packed_ptr, out_ptr, ROWS: tl.constexpr, HALF_K: tl.constexpr):
    r = tl.arange(0, ROWS)[:, None]
    p = tl.load(packed_ptr + r * HALF_K + tl.arange(0, HALF_K)[None, :])
    v = interleave_nibbles(p)
    tl.store(out_ptr + r * (2 * HALF_K) + tl.arange(0, 2 * HALF_K)[None, :], v)


def _reference(name: str, codes: torch.Tensor) -> torch.Tensor:
    return decode_e8m0(codes) if name == "e8m0" else decode_float(codes, get_format(name))


def _assert_same_bits(got: torch.Tensor, want: torch.Tensor) -> None:
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(got), nan)
    assert torch.equal(got[~nan].view(torch.int32), want[~nan].view(torch.int32))


@pytest.mark.parametrize("fmt", sorted(DECODERS))
def test_decoder_matches_formats_on_every_code(fmt: int) -> None:
    name, n = DECODERS[fmt]
    codes = torch.arange(n, dtype=torch.int32).to(torch.uint8)
    out = torch.empty(n, dtype=torch.float32)
    _decode_kernel[(2,)](codes, out, n, FMT=fmt, BLOCK=128)
    _assert_same_bits(out, _reference(name, codes))


def test_negative_zero_and_specials_bits() -> None:
    codes = torch.tensor([0x80, 0x7F, 0xFF, 0x7E], dtype=torch.uint8)
    out = torch.empty(4, dtype=torch.float32)
    _decode_kernel[(1,)](codes, out, 4, FMT=0, BLOCK=128)
    assert out[0].view(torch.int32).item() == -(2**31)  # -0.0
    assert torch.isnan(out[1:3]).all() and out[3].item() == 448.0
    out5 = torch.empty(4, dtype=torch.float32)
    _decode_kernel[(1,)](torch.tensor([0x7C, 0xFC, 0x7D, 0x7B], dtype=torch.uint8), out5, 4, FMT=1, BLOCK=128)
    assert out5[0].item() == float("inf") and out5[1].item() == float("-inf")
    assert torch.isnan(out5[2]) and out5[3].item() == 57344.0


def test_unpack_nibbles_and_int4_every_byte() -> None:
    packed = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    outs = [torch.empty(256, dtype=torch.int32) for _ in range(4)]
    _nibble_kernel[(2,)](packed, *outs, 256, BLOCK=128)
    lo, hi, slo, shi = outs
    want = unpack_nibbles(packed.unsqueeze(-1))
    assert torch.equal(lo, want[:, 0].int()) and torch.equal(hi, want[:, 1].int())
    want_signed = unpack_int4(packed.unsqueeze(-1), signed=True)
    assert torch.equal(slo, want_signed[:, 0].int()) and torch.equal(shi, want_signed[:, 1].int())


def test_interleave_nibbles_restores_logical_order() -> None:
    g = torch.Generator().manual_seed(0)
    packed = torch.randint(0, 256, (4, 16), generator=g, dtype=torch.int32).to(torch.uint8)
    out = torch.empty(4, 32, dtype=torch.int32)
    _interleave_kernel[(1,)](packed, out, ROWS=4, HALF_K=16)
    assert torch.equal(out, unpack_nibbles(packed).int())


_COMPILE_SCRIPT = r"""
import importlib.util, re, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
spec = importlib.util.spec_from_file_location("_test_decode_compiled", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
sig = {"codes_ptr": "*u8", "out_ptr": "*fp32", "n": "i32", "FMT": "constexpr", "BLOCK": "constexpr"}
for fmt in sorted(mod.DECODERS):
    src = ASTSource(fn=mod._decode_kernel, signature=sig, constexprs={"FMT": fmt, "BLOCK": 256})
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    ptx = k.asm["ptx"]
    assert ".target sm_90" in ptx, ptx[:400]
    assert not re.search(r"cvt[.a-z0-9]*e[45]m[23]", ptx), "fp8 conversion instruction emitted"
    assert len(k.asm["cubin"]) > 0
print("COMPILED", len(mod.DECODERS))
"""


def test_decode_kernels_compile_for_sm90() -> None:
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(FXFORGE_DECODE_COMPILE_ONLY="1", TRITON_DEFAULT_FP_FUSION="0",
               PYTHONPATH=os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")])))
    proc = subprocess.run(
        [sys.executable, "-c", _COMPILE_SCRIPT, __file__],
        check=False, env=env, cwd=root, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "COMPILED 6" in proc.stdout
