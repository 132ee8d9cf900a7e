"""The FP8-MMA decode GEMM (`fxforge.codegen.templates.qlinear_decode_f8`) and its "f4w128e" layout, issue #13
item 5: numerics under the interpreter (portable decode, the same bytes the PTX makes) against `qlinear_ref` on
the row-major w4a8-fp weight, and sm_90 builds: no spill, <= 2 SASS instructions per weight, and the word tile in
the register order the pack-4 inline asm assumes."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from fxforge.codegen.pool import Workspace  # noqa: E402
from fxforge.codegen.templates.qlinear_decode import qlinear_w4_decode  # noqa: E402
from fxforge.ir.lowp_ops import decode_weight, encode_weight, qlinear_ref  # noqa: E402
from fxforge.ir.weight_layouts import to_decode_layout  # noqa: E402


def _ref(x, w, group, b=None):
    return qlinear_ref(x.float(), decode_weight(w), b, scheme="w4a8-fp", act_format="f8e4m3", group=group,
                       lorc_rank=0)


@pytest.mark.parametrize("group,K", [(32, 200), (64, 256), (128, 256), (0, 160)])
def test_layout_is_exact(group, K):
    torch.manual_seed(K + group)
    w = encode_weight(torch.randn(37, K), "w4a8-fp", group=group)
    d = to_decode_layout(w, fp8=True)
    assert d.encoding.layout == "f4w128e" and "s16" not in d.payload
    assert torch.equal(decode_weight(d), decode_weight(w))


@pytest.mark.parametrize("M,N,K,group,split", [(1, 97, 256, 32, None), (5, 64, 200, 128, None),
                                              (16, 130, 96, 32, None), (3, 64, 512, 32, 2), (70, 130, 160, 32, None)])
def test_decode_kernel_matches_reference(M, N, K, group, split):
    torch.manual_seed(M * N + K)
    w = encode_weight(torch.randn(N, K), "w4a8-fp", group=group)
    x, b, res = torch.randn(M, K).half(), torch.randn(N).half(), torch.randn(M, N).half()
    y = qlinear_w4_decode(x, to_decode_layout(w, fp8=True), b, activation="silu", residual=res, split_k=split,
                          ws=Workspace())
    ref = torch.nn.functional.silu(_ref(x, w, group, b.float())) + res.float()
    assert y.shape == (M, N) and (y.float() - ref).abs().max() <= 2e-3 * ref.abs().max()


@pytest.mark.parametrize("M", [2, 20])
def test_fused_norm_and_swiglu_match_reference(M):
    from fxforge.ir.ops import OPS

    torch.manual_seed(M)
    N, K = 80, 256
    w = encode_weight(torch.randn(2 * N, K)[torch.stack([torch.arange(N), torch.arange(N, 2 * N)], 1).reshape(-1)],
                      "w4a8-fp", group=32)
    x, g = torch.randn(M, K).half(), (torch.rand(K) + 0.5).half()
    y = qlinear_w4_decode(x, to_decode_layout(w, fp8=True), norm=(g, 1e-6), swiglu=True, ws=Workspace())
    h = _ref(OPS["rms_norm"].ref(x, g, eps=1e-6), w, 32)
    ref = torch.nn.functional.silu(h[:, 0::2]) * h[:, 1::2]
    assert y.shape == (M, N) and (y.float() - ref).abs().max() <= 2e-3 * ref.abs().max()


_BUILD = r"""
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fxforge.codegen import sass
from fxforge.codegen.build import FP_FUSION, _import_spec_module, _res_usage
from fxforge.codegen.templates.qlinear_cost import weights_per_thread
from fxforge.codegen.templates.qlinear_decode_f8 import f8_pack_order_ok, w4_f8_decode_spec
out = []
for group, M in json.loads(sys.argv[1]):
    sp = w4_f8_decode_spec(4096, 4096, group, M=M, arch=90)
    kern = getattr(_import_spec_module(sp), sp["kernel"])
    sig = dict(sp["signature"], **{k: "constexpr" for k in sp["constexprs"]})
    attrs = {(kern.arg_names.index(a),): [["tt.divisibility", 16]] for a in kern.arg_names
             if sig[a].startswith("*") or a in sp["divisible"]}
    src = ASTSource(fn=kern, signature={a: sig[a] for a in kern.arg_names}, constexprs=sp["constexprs"], attrs=attrs)
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": sp["num_warps"],
                       "num_stages": sp["num_stages"], "enable_fp_fusion": FP_FUSION == "1"})
    loop = sass.main_loop(sass.sass_text(k.asm["cubin"]))
    out.append([len(loop) / weights_per_thread(sp), "QGMMA" in "".join(loop), f8_pack_order_ok(k.asm["ttgir"]),
                _res_usage(k.asm["cubin"], k.metadata.name)[1] == 0])
print(json.dumps(out))
"""


def test_kernel_builds_for_sm90_under_two_instructions_per_weight():
    """Group 32 and 128 at batch 1 and 16 (one config serves 1-16): the K loop runs on the FP8 wgmma (QGMMA), at
    <= 2 SASS instructions per weight, with no stack (spills), and the word tile reaches the pack-4 asm in
    the register order it assumes (`f8_pack_order_ok`)."""
    import json
    import subprocess
    import sys

    from fxforge.codegen.build import _subprocess_env

    cases = [(32, 1), (32, 16), (128, 16)]
    run = subprocess.run([sys.executable, "-c", _BUILD, json.dumps(cases)], capture_output=True, text=True,
                         env=_subprocess_env(), timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    for (group, M), (per_weight, qgmma, order_ok, no_stack) in zip(cases, json.loads(run.stdout.splitlines()[-1])):
        assert qgmma and order_ok and no_stack, (group, M)
        assert per_weight <= (1.8 if group == 32 else 1.3), (group, M, per_weight)


def test_gpu_without_fp8_mma_gets_an_fp16_layout_copy():
    """sm_80 (no FP8 MMA) re-encodes an "f4w128e" weight once into the fp16 kernel's layout, same values."""
    from fxforge.codegen.templates.qlinear_decode import decode_operand
    from fxforge.codegen.templates.qlinear_decode_f8 import fp16_copy

    w = encode_weight(torch.randn(64, 256), "w4a8-fp", group=32)
    d = to_decode_layout(w, fp8=True)
    copy = fp16_copy(d, 80)
    kw, xperm = decode_operand(80)
    assert copy.encoding.layout == "f4w128" + ("k4" if kw == 4 else "") + ("x" if xperm else "")
    assert torch.equal(decode_weight(copy), decode_weight(w)) and fp16_copy(d, 80) is copy


def test_ptx_places_the_layout_codes_into_e4m3_bytes():
    """`F8_PTX` (emulated: no GPU runs it in CI) turns 4 words of "f4w128e" into 8 registers whose byte b of
    register 2i + h is slot 4h + b of word i as an E4M3 byte (E2M1 times 2^-6): the bytes `dequant_f8_portable`
    makes and `decode_weight` reads."""
    from fxforge.codegen.templates.qlinear_decode_f8 import F8_PTX
    from fxforge.ir.weight_layouts import BIT_POSITIONS

    def lop3(a, b, c, lut):
        return sum(((lut >> (((a >> i) & 1) << 2 | ((b >> i) & 1) << 1 | ((c >> i) & 1))) & 1) << i for i in range(32))

    gen = torch.Generator().manual_seed(0)
    for _ in range(8):
        words = torch.randint(0, 2**32, (4,), generator=gen, dtype=torch.int64).tolist()
        regs = {f"${8 + i}": w for i, w in enumerate(words)}
        val = lambda t: regs[t] if t in regs else int(t, 0)  # noqa: E731
        for line in F8_PTX.value.split(";"):
            ins = line.strip().lstrip("{").strip()
            if not ins or ins.startswith(".reg") or ins == "}":
                continue
            op, rest = ins.split(None, 1)
            dst, *src = [o.strip() for o in rest.split(",")]
            regs[dst] = {"lop3.b32": lambda: lop3(*map(val, src)), "shl.b32": lambda: (val(src[0]) << val(src[1])),
                         "shr.u32": lambda: val(src[0]) >> val(src[1])}[op]() & 0xFFFFFFFF
        for i, w in enumerate(words):
            for e in range(8):
                code = sum(((w >> int(p)) & 1) << k for k, p in enumerate(BIT_POSITIONS["f4e2m1e"][e]))
                byte = (regs[f"${2 * i + e // 4}"] >> (8 * (e % 4))) & 0xFF
                assert byte == ((code & 7) << 2) | ((code >> 3) << 7), (i, e, code, byte)


@pytest.mark.slow  # two more sm_90 builds (~15 s)
def test_fused_and_prefill_tiles_build_without_spills():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from standard_specs import f8_decode_specs

    from fxforge.codegen.build import build_in_subprocess

    builds = build_in_subprocess(f8_decode_specs(), 90)
    assert all(b.ok and b.spills == 0 for b in builds), [(b.label, b.error[:300], b.spills) for b in builds]
