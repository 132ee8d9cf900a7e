"""Quantized-linear kernels (`fxforge.codegen.templates.qlinear`) against the reference `qlinear_ref`.

Kernels run under the Triton interpreter (TRITON_INTERPRET=1 is set before triton is imported).
The kernels and the reference use the SAME quantized values (the per-token codes are checked bit-exact
against `lowp_ops`' encoders), so only the accumulation order differs. Tolerances, as max |error| /
max |reference|: fp32 outputs 1e-5 (measured <= ~4e-7 on these shapes); fp16 outputs 2e-3 (the fp16
rounding of the output, plus W4A16's fp16 dequantized weight on its fp16 dot path).
Shapes are awkward on purpose: M not a multiple of the block and M = 1, N odd, K a few groups, K not a
multiple of BLOCK_K (per-channel schemes), and groups that are not a power of two (the per-element
scale gather path). The build test compiles every scheme's kernel for sm_90 (fp8 dots included, whose
PTX must contain an e4m3 wgmma) and sm_80 (no fp8 dots) in subprocesses without the interpreter.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

from fxforge.codegen import build  # noqa: E402
from fxforge.codegen.blocks import qlinear_blocks  # noqa: E402
from fxforge.codegen.templates import qlinear as ql  # noqa: E402
from fxforge.codegen.templates import qlinear_specs as qs  # noqa: E402
from fxforge.errors import ShapeError  # noqa: E402
from fxforge.ir import formats  # noqa: E402
from fxforge.ir.lowp_ops import decode_weight, encode_elements, encode_weight, fake_quant_act, get_scheme, qlinear_ref  # noqa: E402

if not isinstance(ql.qlinear_w4a8_fp_kernel, InterpretedFunction):  # imported earlier without the interpreter
    from fxforge.codegen import decode
    from fxforge.codegen.templates import gemm

    importlib.reload(decode)
    importlib.reload(gemm)
    ql = importlib.reload(ql)

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")

FP32_REL = 1e-5
FP16_REL = 2e-3


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _rel_err(y, ref):
    return ((y.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


def _reference(x, weight, scheme, bias=None, lorc=None):
    sc = get_scheme(scheme)
    ops = [x, decode_weight(weight)] + ([bias] if bias is not None else []) + (list(lorc) if lorc else [])
    return qlinear_ref(*ops, scheme=scheme, act_format=sc.act_format, group=weight.encoding.group,
                       lorc_rank=lorc[0].shape[1] if lorc else 0)


# ---------------------------------------------------------------- per-token activation quantization


def test_act_quant_int8_bit_exact():
    x = _randn(6, 77, seed=1) * torch.tensor([1.0, 1e-3, 50.0, 1.0, 0.0, 3.0])[:, None]
    x[3, :8] = torch.tensor([127.0, 0.5, 1.5, 2.5, -0.5, -2.5, -126.5, 3.5])  # s = 1: ties to even
    x[3, 8:] = 0.25
    q, s = ql.quantize_activations(x, "i8")
    s_ref = torch.where(x.abs().amax(-1) > 0, x.abs().amax(-1) / 127.0, torch.ones(6))
    assert torch.equal(s, s_ref)
    assert torch.equal(q, encode_elements(x / s_ref[:, None], "i8"))
    assert torch.equal(ql.dequantize_activations(q, s, "i8"), fake_quant_act(x, "i8"))


def test_act_quant_fp8_bit_exact():
    vals = formats.float_values("f8e4m3")
    finite = vals[~torch.isnan(vals)].sort().values
    mids = (finite[1:] + finite[:-1]) / 2  # ties: round to the even code
    row = torch.cat([finite, mids, torch.tensor([448.0])])  # amax 448: s = 1
    x = torch.zeros(5, row.numel())
    x[0] = row
    x[1] = _randn(row.numel(), seed=2) * 1e-4
    x[2] = _randn(row.numel(), seed=3) * 30.0
    x[3, :5] = torch.tensor([1.0, -1e-6, 2e-7, -0.0, 0.0])  # subnormal codes, negative zero
    q, s = ql.quantize_activations(x, "f8e4m3")  # x[4] is all zero: s = 1
    s_ref = torch.where(x.abs().amax(-1) > 0, x.abs().amax(-1) / 448.0, torch.ones(5))
    assert torch.equal(s, s_ref)
    assert torch.equal(q, formats.encode_float(x / s_ref[:, None], "f8e4m3"))
    assert torch.equal(ql.dequantize_activations(q, s, "f8e4m3"), fake_quant_act(x, "f8e4m3"))


# ---------------------------------------------------------------- the GEMMs against qlinear_ref

# (scheme, M, N, K, group): per-channel 8-bit with K not a multiple of BLOCK_K; grouped 4-bit with
# K = a few groups (BLOCK_K divides the group), and groups of 24 / 48 (not powers of two)
CASES = [
    ("w8a8-int8", 33, 47, 65, None),
    ("w8a8-int8", 1, 47, 96, None),
    ("w8a8-fp8", 33, 47, 65, None),
    ("w8a8-fp8", 1, 31, 96, None),
    ("w4a16-int4", 33, 47, 256, None),
    ("w4a16-int4", 1, 47, 144, 48),
    ("w4a16-int4", 19, 33, 72, 24),
    ("w4a8-fp", 33, 47, 96, None),
    ("w4a8-fp", 1, 47, 128, None),
    ("w4a8-fp", 19, 33, 72, 24),
]


@pytest.mark.parametrize("scheme,M,N,K,group", CASES)
def test_qlinear_matches_reference(scheme, M, N, K, group):
    x, w, b = _randn(M, K, seed=1), _randn(N, K, seed=2), _randn(N, seed=3)
    weight = encode_weight(w, scheme, group)
    y = ql.qlinear(x, weight, scheme, b)
    assert y.shape == (M, N) and y.dtype == torch.float32
    assert _rel_err(y, _reference(x, weight, scheme, b)) <= FP32_REL


# groups that do not divide K: the requested group holds, the last one is partial (K = 100: 32,32,32,4;
# group 7: fourteen of 7 and one of 2), on the one-scale-per-tile path (32) and the gather path (7, 24)
PARTIAL = [("w4a16-int4", 5, 33, 100, 32), ("w4a16-int4", 3, 17, 100, 7), ("w4a8-fp", 5, 33, 100, 32),
           ("w4a8-fp", 3, 17, 100, 24)]


@pytest.mark.parametrize("scheme,M,N,K,group", PARTIAL)
def test_qlinear_partial_last_group(scheme, M, N, K, group):
    x, w, b = _randn(M, K, seed=4), _randn(N, K, seed=5), _randn(N, seed=6)
    weight = encode_weight(w, scheme, group)
    assert weight.encoding.group == group
    y = ql.qlinear(x, weight, scheme, b)
    assert _rel_err(y, _reference(x, weight, scheme, b)) <= FP32_REL
    y16 = ql.qlinear(x.half(), weight, scheme, b.half())
    assert _rel_err(y16, _reference(x.half(), weight, scheme, b.half())) <= FP16_REL


@pytest.mark.parametrize("scheme", ql.QLINEAR_SCHEMES)
def test_qlinear_epilogue_lorc_activation_residual(scheme):
    N, K, r = 37, 64, 8
    x, w, b = _randn(3, 7, K, seed=4), _randn(N, K, seed=5), _randn(N, seed=6)
    u, v = _randn(N, r, seed=7) * 0.1, _randn(K, r, seed=8) * 0.1
    res = _randn(N, seed=9)  # broadcast residual
    weight = encode_weight(w, scheme)
    y = ql.qlinear(x, weight, scheme, b, lorc=(u, v), activation="silu", residual=res)
    ref = F.silu(_reference(x, weight, scheme, b, (u, v))) + res
    assert y.shape == (3, 7, N)
    assert _rel_err(y, ref) <= FP32_REL


@pytest.mark.parametrize("scheme", ["w8a8-fp8", "w4a8-fp"])
def test_fp8_dot_path_under_interpreter(scheme):
    """FP8_DOT=True (bitcast codes, fp8 tl.dot): the interpreter's fp8 dot is right for these values."""
    x, w = _randn(17, 96, seed=10), _randn(33, 96, seed=11)
    weight = encode_weight(w, scheme)
    assert _rel_err(ql.qlinear(x, weight, scheme, fp8_dot=True), _reference(x, weight, scheme)) <= FP32_REL


@pytest.mark.parametrize("scheme", ["w4a16-int4", "w8a8-fp8"])
def test_fp16_activations(scheme):
    x, w = _randn(9, 128, seed=12, dtype=torch.float16), _randn(31, 128, seed=13)
    weight = encode_weight(w, scheme)
    y = ql.qlinear(x, weight, scheme)
    assert y.dtype == torch.float16
    assert _rel_err(y, _reference(x, weight, scheme)) <= FP16_REL
    y32 = ql.qlinear(x, weight, scheme, out_dtype=torch.float32)
    assert y32.dtype == torch.float32


def test_errors():
    w = _randn(16, 64, seed=14)
    with pytest.raises(ShapeError, match="encode it"):
        ql.qlinear(_randn(2, 64), encode_weight(w, "w8a8-int8"), "w4a8-fp")
    with pytest.raises(ShapeError, match="per-channel"):
        ql.qlinear(_randn(2, 64), encode_weight(w, "w8a8-int8", 32), "w8a8-int8")
    with pytest.raises(ShapeError, match="does not fit"):
        ql.qlinear(_randn(2, 32), encode_weight(w, "w4a16-int4"), "w4a16-int4")


def test_blocks_align_with_groups():
    assert qlinear_blocks(1, 4096, 4096, 128, "fp16")["BLOCK_K"] == 64
    assert qlinear_blocks(1, 4096, 4096, 32, "fp16")["BLOCK_K"] == 32
    assert qlinear_blocks(1, 4096, 4096, 32, "fp8")["BLOCK_K"] == 32
    assert qlinear_blocks(64, 64, 72, 24, "fp16")["BLOCK_K"] == 64  # no aligned power of two: gather path
    assert qlinear_blocks(64, 64, 4096, 0, "int8")["BLOCK_K"] >= 32


# ---------------------------------------------------------------- builds for sm_90 / sm_80

_PTX_SCRIPT = r"""
import json, re, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fxforge.codegen import build
from fxforge.codegen.templates import qlinear as ql
spec, arch = json.loads(sys.stdin.read())
kernel = getattr(ql, spec["kernel"])
sig = dict(spec["signature"]); sig.update({k: "constexpr" for k in spec["constexprs"]})
names = list(kernel.arg_names)
attrs = {(names.index(a),): [["tt.divisibility", 16]] for a in names if sig[a].startswith("*") or a in spec["divisible"]}
src = ASTSource(fn=kernel, signature={a: sig[a] for a in names}, constexprs=spec["constexprs"], attrs=attrs)
k = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": spec["num_warps"],
                   "num_stages": spec["num_stages"], "enable_fp_fusion": build.FP_FUSION == "1"})
print("MMA " + json.dumps(sorted(set(re.findall(r"(?:wgmma\.mma_async|mma\.sync)\S*", k.asm["ptx"])))))
"""


def _build_specs():
    shape = (4096, 4096, 4096)
    return [
        qs.qlinear_spec("w8a8-int8", *shape, activation="silu"),
        qs.qlinear_spec("w8a8-fp8", *shape, residual=True),
        qs.qlinear_spec("w8a8-fp8", *shape, residual=True, fp8_dot=True),
        qs.qlinear_spec("w4a16-int4", *shape, activation="gelu"),
        qs.qlinear_spec("w4a8-fp", *shape, lorc=True),
        qs.qlinear_spec("w4a8-fp", *shape, lorc=True, fp8_dot=True),
        qs.act_quant_spec("f8e4m3", 4096),
    ]


@pytest.mark.parametrize("arch", [90, 80])
def test_qlinear_kernels_build(arch):
    specs = build.specs_for_arch(_build_specs(), arch)
    assert len(specs) == (7 if arch == 90 else 5)
    builds = build.build_in_subprocess(specs, arch, timeout=240, sass_counts=False)
    report = "\n".join(f"sm_{arch} {b.label}: ok={b.ok} regs={b.registers} stack={b.spills} shared={b.shared_bytes} "
                       f"{b.error[:300]}" for b in builds)
    print(report)
    for b in builds:
        assert b.ok, report
        assert 0 < b.registers <= 255, report
        assert b.spills == 0, report
        assert 0 < b.shared_bytes <= build.SHARED_LIMITS[arch], report


def test_fp8_dot_uses_fp8_wgmma_on_sm90():
    spec = qs.qlinear_spec("w8a8-fp8", 4096, 4096, 4096, residual=True, fp8_dot=True)
    proc = subprocess.run([sys.executable, "-c", _PTX_SCRIPT], input=json.dumps([spec, 90]), capture_output=True,
                          text=True, env=build._subprocess_env(), timeout=240)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("MMA ")]
    assert lines, proc.stderr[-2000:]
    mma = json.loads(lines[-1][4:])
    assert any(m.startswith("wgmma") and "e4m3.e4m3" in m for m in mma), mma
