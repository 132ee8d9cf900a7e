"""The 4-bit decode GEMMs' PTX paths on a real GPU against the reference (issue #13): the CPU runs only their
portable decodes under the interpreter, so this is where the inline asm meets hardware.

    OUT=... python benchmarks/gpu/check_decode_kernels.py > $OUT/decode_kernels.txt   (run_all.sh runs it)

For each layout the arch can run (int4 "i4w128", FP4 "f4w128" at groups 128 and 32, and on sm_89+ the FP8-MMA
"f4w128e" at groups 32 and 128) and batch 1, 5, 16 and 40 (prefill tiles): max |y - ref| / max |ref| of
`qlinear_w4_decode` against `qlinear_ref` on the row-major weight (fp16 output: <= 2e-3 expected), one line each,
then ("fused") the same with a post-norm block's prologue (z = res + rms_norm(h, pw), its RMSNorm, z kept) and the
xIELU epilogue, z and y against the op table's references, and ("bf16") bf16 x at batch 1, 16 (rows at 3e5,
past fp16's range) and 40, scaled into fp16 per row by the kernel (bf16 output: <= 8e-3, one bf16 step);
a last line "ok" or "FAILED".
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "0")

import torch  # noqa: E402

from fxforge.codegen.pool import Workspace  # noqa: E402
from fxforge.codegen.templates.qlinear_decode import decode_operand, qlinear_w4_decode  # noqa: E402
from fxforge.ir.lowp_ops import decode_weight, encode_weight, qlinear_ref  # noqa: E402
from fxforge.ir.weight_layouts import to_decode_layout  # noqa: E402

FP16_BOUND, BF16_BOUND = 2e-3, 8e-3  # max |y - ref| / max |ref|: about one fp16 / bf16 output step


def main() -> None:
    major, minor = torch.cuda.get_device_capability()
    arch = 10 * major + minor
    kw, xperm = decode_operand(arch)
    cases = [("w4a16-int4", 128, False), ("w4a8-fp", 128, False), ("w4a8-fp", 32, False)]
    cases += [("w4a8-fp", 32, True), ("w4a8-fp", 128, True)] if arch >= 89 else []
    worst = 0.0
    for scheme, group, fp8 in cases:
        torch.manual_seed(group)
        N, K = 4096, 2048
        w = encode_weight(torch.randn(N, K), scheme, group=group)
        d = to_decode_layout(w, kw=kw, xperm=xperm, fp8=fp8)
        d = type(d)(d.data, d.encoding, {k: v.cuda() for k, v in d.payload.items()})
        for M in (1, 5, 16, 40):
            x = torch.randn(M, K).half()
            y = qlinear_w4_decode(x.cuda(), d, ws=Workspace()).float().cpu()
            act = "f8e4m3" if scheme == "w4a8-fp" else None
            ref = qlinear_ref(x.float(), decode_weight(w), None, scheme=scheme, act_format=act, group=group,
                              lorc_rank=0)
            err = ((y - ref).abs().max() / ref.abs().max()).item()
            worst = max(worst, err / FP16_BOUND)
            print(f"sm_{arch} {scheme} g{group} {d.encoding.layout} M={M}: rel err {err:.2e}", flush=True)
            if M != 16:
                err = _fused(x, w, d, scheme, group)
                worst = max(worst, err / FP16_BOUND)
                print(f"sm_{arch} {scheme} g{group} {d.encoding.layout} M={M} fused: rel err {err:.2e}", flush=True)
            if M != 5:
                err = _bf16(M, w, d, scheme, group)
                worst = max(worst, err / BF16_BOUND)
                print(f"sm_{arch} {scheme} g{group} {d.encoding.layout} M={M} bf16: rel err {err:.2e}", flush=True)
    print("ok" if worst <= 1 else f"FAILED (worst {worst:.2f} x its bound)")


def _bf16(M: int, w, d, scheme: str, group: int) -> float:
    """max relative error of bf16 x (rows at 3e5 at batch 16) against the reference on the same bf16 values."""
    x = (torch.randn(M, w.data.shape[1]) * (3e5 if M == 16 else 1.0)).bfloat16()
    y = qlinear_w4_decode(x.cuda(), d, ws=Workspace()).float().cpu()
    act = "f8e4m3" if scheme == "w4a8-fp" else None
    ref = qlinear_ref(x.float(), decode_weight(w), None, scheme=scheme, act_format=act, group=group, lorc_rank=0)
    return ((y - ref).abs().max() / ref.abs().max()).item()


def _fused(h, w, d, scheme: str, group: int) -> float:
    """max relative error of y and z for `post_norm=`, `norm=`, xielu against the op table's references."""
    from fxforge.ir.ops import OPS

    K, xi = h.shape[1], (0.8, 0.9, 0.5, -1e-6)
    res, pw, g = torch.randn_like(h), torch.rand(K) + 0.5, (torch.rand(K) + 0.5).half()
    y, z = qlinear_w4_decode(h.cuda(), d, norm=(g.cuda(), 1e-6), post_norm=(res.cuda(), pw.cuda(), 1e-5), keep_z=True,
                             activation="xielu", act_args=xi, ws=Workspace())
    zr = OPS["add"].ref(res, OPS["rms_norm"].ref(h, pw, eps=1e-5).half())
    act = "f8e4m3" if scheme == "w4a8-fp" else None
    ref = OPS["xielu"].ref(qlinear_ref(OPS["rms_norm"].ref(zr, g, eps=1e-6).float(), decode_weight(w), None,
                                       scheme=scheme, act_format=act, group=group, lorc_rank=0), *xi)
    return max(((y.float().cpu() - ref).abs().max() / ref.abs().max()).item(),
               ((z.float().cpu() - zr.float()).abs().max() / zr.float().abs().max()).item())


if __name__ == "__main__":
    main()
