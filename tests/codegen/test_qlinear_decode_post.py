"""The 4-bit decode GEMM's post-norm prologue and xIELU epilogue (`qlinear_decode_fuse.prologue_rows` POST_NORM,
`qlinear_decode._epilogue`), issue #13 "fewer launches": numerics under the interpreter against the op table's
references, the fusion rule that hands a post-norm residual add and an xIELU to a 4-bit decode qlinear, and the
kernels' sm_90 / sm_80 builds (no spill; the K loop's cost unchanged)."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from fxforge.codegen.build import build_in_subprocess  # noqa: E402
from fxforge.codegen.pool import Workspace  # noqa: E402
from fxforge.codegen.templates.qlinear_cost import per_weight  # noqa: E402
from fxforge.codegen.templates.qlinear_decode import decode_operand, qlinear_w4_decode, w4_decode_spec  # noqa: E402
from fxforge.errors import ShapeError  # noqa: E402
from fxforge.ir.lowp_ops import decode_weight, encode_weight, qlinear_ref  # noqa: E402
from fxforge.ir.ops import OPS  # noqa: E402
from fxforge.ir.weight_layouts import to_decode_layout  # noqa: E402

XIELU = (0.8, 0.9, 0.5, -1e-6)  # alpha_p, alpha_n, beta, eps


def _ref(x, w, scheme, group):
    act = "f8e4m3" if scheme == "w4a8-fp" else None
    return qlinear_ref(x.float(), decode_weight(w), None, scheme=scheme, act_format=act, group=group, lorc_rank=0)


# (scheme, rows, norm of z, residual, post weight dtype, K splits, fp8 layout): Gemma's (z then its norm, fp32
# weights), OLMo2's (z itself), a norm of a norm (no residual), split K (each split writes its own K range of z),
# w4a8-fp (E4M3 after the steps), the FP8-MMA layout, and prefill (z by `post_norm_rows` first)
CASES = [("w4a16-int4", 1, True, True, torch.float32, None, False), ("w4a16-int4", 3, False, True, torch.float16, 2, False),
         ("w4a16-int4", 2, True, False, torch.float16, None, False), ("w4a8-fp", 2, True, True, torch.float16, None, False),
         ("w4a8-fp", 1, False, True, torch.float16, None, True), ("w4a16-int4", 40, True, True, torch.float32, None, False)]


@pytest.mark.parametrize("scheme,M,norm,res,pw_dtype,split,fp8", CASES)
def test_post_norm_prologue_matches_reference(scheme, M, norm, res, pw_dtype, split, fp8):
    """y = qlinear(rms_norm(z, g) or z), z = res + rms_norm(h, pw) (the op table's rms_norm and add, fp16 roundings);
    z itself (`keep_z`) equal to the reference's, into the caller's `z_out`."""
    torch.manual_seed(M)
    N, K, group = 80, 256, 64 if not fp8 else 32
    w = encode_weight(torch.randn(N, K), scheme, group=group)
    h, r = torch.randn(M, K).half(), torch.randn(M, K).half() if res else None
    pw, g = (torch.rand(K) + 0.5).to(pw_dtype), (torch.rand(K) + 0.5).to(pw_dtype)
    z_out = torch.full((M, K), float("nan"), dtype=torch.float16)
    y, z = qlinear_w4_decode(h, to_decode_layout(w, fp8=fp8), norm=(g, 1e-6) if norm else None,
                             post_norm=(r, pw, 1e-5), keep_z=True, z_out=z_out, split_k=split, ws=Workspace())
    zr = OPS["rms_norm"].ref(h, pw, eps=1e-5).half()
    zr = OPS["add"].ref(r, zr) if res else zr
    ref = _ref(OPS["rms_norm"].ref(zr, g, eps=1e-6).half() if norm else zr, w, scheme, group)
    assert z is z_out or z.data_ptr() == z_out.data_ptr()
    assert (z.float() - zr.float()).abs().max() <= 2e-3 * zr.abs().max()  # one fp16 ulp at most
    assert y.shape == (M, N) and (y.float() - ref).abs().max() <= 2e-3 * ref.abs().max()
    y2 = qlinear_w4_decode(h, to_decode_layout(w, fp8=fp8), norm=(g, 1e-6) if norm else None, post_norm=(r, pw, 1e-5),
                           split_k=split)
    assert torch.equal(y2, y)  # without z: the same y


@pytest.mark.parametrize("M,split", [(3, 2), (40, None)])  # 40 rows: prefill (z by `post_norm_rows` first)
def test_bf16_post_norm_past_fp16_range(M, split):
    """bf16 h and a residual at 3e5 (past fp16's range): z = res + rms_norm(h, pw) stays bf16 (recomputed in the
    last pass, not staged in the fp16 scratch rows), then the row is scaled into fp16 (`f16_row_scale`). Tolerance:
    the interpreter truncates each of the bf16 roundings where a GPU rounds to nearest."""
    torch.manual_seed(M)
    N, K, group = 48, 256, 64
    w = encode_weight(torch.randn(N, K), "w4a16-int4", group=group)
    h, r = torch.randn(M, K).bfloat16(), (torch.randn(M, K) * 3e5).bfloat16()
    pw = (torch.rand(K) + 0.5).bfloat16()
    y, z = qlinear_w4_decode(h, to_decode_layout(w), post_norm=(r, pw, 1e-5), keep_z=True, split_k=split)
    zr = r.float() + OPS["rms_norm"].ref(h.float(), pw.float(), eps=1e-5)
    ref = _ref(zr, w, "w4a16-int4", group)
    assert torch.isfinite(y).all() and torch.isfinite(z).all()
    assert (z.float() - zr).abs().max() <= 2**-6 * zr.abs().max()
    assert (y.float() - ref).abs().max() <= 2**-6 * ref.abs().max()


@pytest.mark.parametrize("scheme,M", [("w4a16-int4", 1), ("w4a8-fp", 3), ("w4a16-int4", 20)])
def test_xielu_epilogue_matches_reference(scheme, M):
    torch.manual_seed(M)
    N, K, group = 96, 128, 32
    w = encode_weight(torch.randn(N, K), scheme, group=group)
    x, b = torch.randn(M, K).half(), torch.randn(N).half()
    y = qlinear_w4_decode(x, to_decode_layout(w), b, activation="xielu", act_args=XIELU, ws=Workspace())
    ref = OPS["xielu"].ref(_ref(x, w, scheme, group) + b.float(), *XIELU)
    assert y.shape == (M, N) and (y.float() - ref).abs().max() <= 2e-3 * ref.abs().max()


def test_post_norm_and_xielu_operands_are_checked():
    w = to_decode_layout(encode_weight(torch.randn(16, 64), "w4a16-int4", group=64))
    x = torch.randn(2, 64).half()
    with pytest.raises(ShapeError, match="post_norm"):
        qlinear_w4_decode(x, w, post_norm=(torch.randn(3, 64).half(), None, 1e-6))
    with pytest.raises(ShapeError, match="post_norm"):
        qlinear_w4_decode(x, w, post_norm=(None, torch.ones(63).half(), 1e-6))
    with pytest.raises(ShapeError, match="keep_z"):
        qlinear_w4_decode(x, w, keep_z=True)
    with pytest.raises(ShapeError, match="xielu"):
        qlinear_w4_decode(x, w, activation="xielu")  # its scalars are required


class _PostNormMLP(torch.nn.Module):
    """h2 = h + norm1(o(a)); y = down(xielu(up(norm2(h2) or h2))); h2 + norm3(y): a post-norm block (Gemma's with
    `pre`, OLMo2's without) with Apertus' xIELU, HF's own RMSNorm and activation modules."""

    def __init__(self, pre: bool) -> None:
        from transformers.activations import XIELUActivation
        from transformers.models.llama.modeling_llama import LlamaRMSNorm

        super().__init__()
        self.o, self.up, self.down = (torch.nn.Linear(i, o, bias=False) for i, o in ((64, 64), (64, 128), (128, 64)))
        self.norms = torch.nn.ModuleList(LlamaRMSNorm(64, eps=1e-6) for _ in range(3))
        for n in self.norms:
            torch.nn.init.uniform_(n.weight, 0.5, 1.5)
        self.act, self.pre = XIELUActivation(), pre

    def forward(self, a, h):
        h2 = h + self.norms[0](self.o(a))
        y = self.down(self.act(self.up(self.norms[1](h2) if self.pre else h2)))
        return h2 + self.norms[2](y)


@pytest.mark.parametrize("pre", [True, False], ids=["gemma", "olmo2"])
def test_post_norm_block_runs_in_three_decode_gemms(pre):
    """w4a16-int4 at 2 rows (the decode layout): the up projection's group takes the post-norm residual add (z kept:
    the last add reads it), its norm and the xIELU: 3 decode GEMMs and the last norm + add (a graph output, no
    GEMM after it), where there were 5 + a pointwise xIELU; the reference executor's result on the same graph."""
    import fxforge
    from fxforge.testing import counting_launches

    torch.manual_seed(0)
    m = _PostNormMLP(pre).half().eval()
    a, h = torch.randn(1, 2, 64).half(), torch.randn(1, 2, 64).half()
    opts = dict(dynamic=False, quantize="w4a16-int4", quantize_group=32)
    mod = fxforge.compile_aot(m, (a, h), executor="interpret", **opts)
    up = next(g for g in mod.graph.partition.groups if g.params.get("activation") == "xielu")
    assert up.params["post_norm"] is not None and (up.params["norm"] is not None) == pre
    with counting_launches() as names:
        got = mod(a, h)
    assert names == ["qlinear_w4_decode_kernel"] * 3 + [names[-1]], names
    want = fxforge.compile_aot(m, (a, h), executor="reference", **opts)(a, h)
    assert (got.float() - want.float()).abs().max() <= 2e-3 * want.abs().max()


@pytest.mark.parametrize("arch", [90, 80])
def test_post_norm_decode_kernel_builds_without_spills(arch):
    """Gemma's [gate; up] GEMM with z, its norm and z stored, against the same kernel without the post-norm step:
    no spill, and the K loop (`sass.main_loop`; the prologue's loops are
    outside it) within ptxas' allocation noise of the kernel without the step (measured: -6 to +5 instructions of
    ~450; w4a8-fp group 32 on sm_80 +7 of 478), at the plain kernels' per-weight bound."""
    kw, xperm = decode_operand(arch)
    op = dict(kw=kw, xperm=xperm, arch=arch)
    specs = [w4_decode_spec(16384, 2048, 128, 128, norm=True, post_norm=True, swiglu=True, **op),
             w4_decode_spec(16384, 2048, 128, 128, norm=True, swiglu=True, **op)]
    builds = build_in_subprocess(specs, arch)
    assert all(b.ok and b.spills == 0 for b in builds), [(s["label"], b.error, b.spills) for s, b in zip(specs, builds)]
    assert builds[0].loop_instructions <= 1.02 * builds[1].loop_instructions
    assert all(0 < per_weight(s, b) <= 2.0 for s, b in zip(specs, builds))


@pytest.mark.slow
@pytest.mark.parametrize("arch", [90, 80])
def test_more_post_norm_and_xielu_kernels_build_without_spills(arch):
    """OLMo2's QKV on z with K splits (each writes its own K range of z), w4a8-fp's post-norm step before its norm
    and E4M3 steps, Apertus' up projection with xIELU and its 64-row prefill tile: no spill, at the plain kernels'
    per-weight bounds."""
    kw, xperm = decode_operand(arch)
    op = dict(kw=kw, xperm=xperm, arch=arch)
    specs = [w4_decode_spec(3072, 2048, 128, 128, post_norm=True, split_k=4, **op),
             w4_decode_spec(4096, 4096, 32, 128, fp4=True, post_norm=True, norm=True, **op),
             w4_decode_spec(4096, 4096, 128, 128, activation="xielu", **op),
             w4_decode_spec(4096, 4096, 128, 128, activation="xielu", M=64, **op)]
    if arch >= 90:  # the FP8-MMA kernel (sm_90) with the same prologue (z recomputed in its last pass: E4M3 scratch)
        from fxforge.codegen.templates.qlinear_decode_f8 import w4_f8_decode_spec

        specs.append(w4_f8_decode_spec(16384, 2048, 32, arch=arch, norm=True, swiglu=True, post_norm=True))
    builds = build_in_subprocess(specs, arch)
    assert all(b.ok and b.spills == 0 for b in builds), [(s["label"], b.error, b.spills) for s, b in zip(specs, builds)]
    costs = [per_weight(s, b) for s, b in zip(specs[:3], builds)]
    assert 0 < costs[0] <= 2.0 and 0 < costs[1] <= 2.6 and 0 < costs[2] <= 2.0, costs
