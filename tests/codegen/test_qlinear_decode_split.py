"""Split-K of the 4-bit decode GEMM (`templates.qlinear_decode` SPLIT_K, issue #13 item 4): the decode table gives a
batch-1 GEMV >= 2 CTAs per SM, and forced splits (the interpreter keeps one, as the dense GEMM's table does) agree
with the unsplit kernel and the reference.

Tolerances: with exact fp32 sums (int4 codes, power-of-two group scales, small-integer x) a split's fp32 output is
bitwise the unsplit kernel's (splits change only the order of the fp32 additions); otherwise fp32 outputs agree
within 1e-5 of max |y| (SPLIT_K partials added in split order against one running sum: a few fp32 roundings), and
both within 2e-3 of max |reference| (test_qlinear_decode's bound). Kernels run under the Triton interpreter.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from fxforge.codegen.blocks import DECODE_SPLIT_STEPS, MAX_SPLIT_K, SM_COUNT, split_steps  # noqa: E402
from fxforge.codegen.pool import Workspace  # noqa: E402
from fxforge.codegen.templates.qlinear_decode import (  # noqa: E402
    decode_blocks,
    qlinear_w4_decode,
    split_plan,
    w4_decode_spec,
)
from fxforge.errors import ShapeError  # noqa: E402
from fxforge.ir.lowp_ops import decode_weight, encode_weight, qlinear_ref, weight_from_codes  # noqa: E402
from fxforge.ir.ops import OPS  # noqa: E402
from fxforge.ir.weight_layouts import to_decode_layout  # noqa: E402

F = torch.nn.functional


@pytest.mark.parametrize("arch", [90, 80])
@pytest.mark.parametrize("fp4,group", [(False, 128), (True, 32), (True, 128)], ids=["int4", "fp4-g32", "fp4-g128"])
def test_decode_table_puts_two_ctas_on_every_sm(arch, fp4, group):
    """A Llama-shaped 4096 x 4096 GEMV and the [gate; up] one of a 2048 x 8192 MLP (16384 x 2048), batch 1 and 16:
    tiles x splits >= 2 x SMs, each split >= DECODE_SPLIT_STEPS K steps, or the most such splits where the tile
    leaves too few (`blocks.decode_split`: 256-row tiles of a 4096-row weight, 16 x 16 = 256 CTAs on sm_90), within
    96% (splits of whole UNROLL-tile iterations); both GEMVs reach 96% of 2 per SM; the build spec gives the
    launcher's config."""
    want = 2 * SM_COUNT[arch]
    for N, K in [(4096, 4096), (2 * 8192, 2048)]:
        k_tiles = K // 128
        most = split_steps(k_tiles, min(MAX_SPLIT_K, k_tiles // DECODE_SPLIT_STEPS))[1]
        for M in (1, 16):
            cfg = decode_blocks(N, M, arch, fp4 and group < 128, k_tiles)
            tiles = -(-N // cfg["BLOCK_N"])
            # (>= 96%: a split is whole iterations of UNROLL tiles, which `decode_blocks` lowers below that)
            assert tiles * cfg["SPLIT_K"] >= 0.96 * min(want, tiles * most), (N, K, M, cfg)
            assert tiles * cfg["SPLIT_K"] >= 0.96 * want, (N, K, M, cfg)
            per, launched = split_steps(k_tiles, cfg["SPLIT_K"], cfg["UNROLL"])
            assert launched == cfg["SPLIT_K"] and per >= DECODE_SPLIT_STEPS, (N, K, M, cfg)
            spec = w4_decode_spec(N, K, group, 128, fp4=fp4, M=M, arch=arch)
            c = spec["constexprs"]
            assert (c["SPLIT_K"], c["BLOCK_N"], spec["num_warps"]) == (cfg["SPLIT_K"], cfg["BLOCK_N"], cfg["num_warps"])
            assert spec["signature"]["part_ptr"] == "*fp32" and f"splitk{cfg['SPLIT_K']}" in spec["label"]
    assert decode_blocks(4096, 1, None, False, 32)["SPLIT_K"] == 1  # no arch: the interpreter
    assert decode_blocks(4096, 64, arch, False, 32)["SPLIT_K"] == 1  # prefill tiles: never split
    assert w4_decode_spec(4096, 4096, arch=arch, M=64)["constexprs"]["part_ptr"] is None


def _exact_int4(N: int, K: int, group: int):
    """An int4 weight whose fp32 products and sums with small-integer x are exact: power-of-two group scales."""
    gen = torch.Generator().manual_seed(N + K)
    groups = -(-K // group)
    codes = torch.randint(0, 16, (N, K), generator=gen).to(torch.uint8)
    scale = (2.0 ** -torch.randint(0, 4, (N, groups), generator=gen).float()).half()
    zero = torch.randint(0, 16, (N, groups), generator=gen).to(torch.uint8)
    return weight_from_codes(codes, "w4a16-int4", group, {"scale": scale, "zero": zero})


def test_splits_start_on_group_boundaries():
    """`split_plan`: a split's window starts on a quantization group (`_k_window` shifts the group index)."""
    assert split_plan(600, 128, 128, 3) == (2, 3)  # 5 steps: 2 + 2 + 1
    assert split_plan(600, 128, 256, 2) == (4, 2)  # 3 + 2 would start a split mid-group: 4 + 1
    assert split_plan(1152, 128, 96, 3) == (3, 3)  # FP4 group 96 in 128-wide tiles: windows of 384 columns
    assert split_plan(600, 128, 32, 3) == (2, 3) and split_plan(600, 128, 640, 4) == (2, 3)  # one group spans K


@pytest.mark.parametrize("splits,group", [(2, 256), (3, 128)])
def test_split_is_bitwise_the_unsplit_kernel_when_sums_are_exact(splits, group):
    """5 K tiles of 128, the last 88 wide: splits of 4 + 1 (group 256) and 2 + 2 + 1; two N tiles."""
    M, N, K = 3, 96, 600
    w = _exact_int4(N, K, group)
    d = to_decode_layout(w, kw=2, xperm=True)
    x = torch.randint(-3, 4, (M, K), generator=torch.Generator().manual_seed(1)).half()
    b, r = torch.randn(N).half(), torch.randn(M, N).half()
    y0 = qlinear_w4_decode(x, d, b, activation="gelu", residual=r, out_dtype=torch.float32)
    ws = Workspace()
    y = qlinear_w4_decode(x, d, b, activation="gelu", residual=r, out_dtype=torch.float32, split_k=splits, ws=ws)
    assert torch.equal(y, y0)
    ref = F.gelu(x.float() @ decode_weight(w).T + b.float()) + r.float()
    assert (y - ref).abs().max() <= 1e-5 * ref.abs().max()
    assert int(ws.locks.abs().sum()) == 0 and ws.locks.numel() == 2  # a counter per tile, re-armed
    assert torch.equal(qlinear_w4_decode(x, d, b, activation="gelu", residual=r, out_dtype=torch.float32,
                                         split_k=splits, ws=ws), y)
    assert ws.grows == 1  # the partials: workspace scratch, taken once (an allocation-free run() after warm-up)


def _interleaved(n: int) -> torch.Tensor:
    return torch.stack([torch.arange(n), torch.arange(n, 2 * n)], dim=1).reshape(-1)


@pytest.mark.parametrize("scheme,group,M,norm,swiglu,splits", [
    ("w4a8-fp", 32, 1, True, False, 2),  # narrow groups at batch 1: PACK, with the norm + E4M3 prologue
    ("w4a8-fp", 32, 3, False, False, 3),  # narrow groups past batch 2: an MMA per K block (BLOCK_DOTS)
    ("w4a8-fp", 128, 2, True, True, 3),  # FP4 g128, norm prologue and SwiGLU epilogue
    ("w4a16-int4", 64, 5, True, True, 2),  # int4 64-wide tiles (5 K steps, the last 44 wide), norm and SwiGLU
])
def test_split_matches_unsplit_and_reference(scheme, group, M, norm, swiglu, splits):
    """fp32 outputs of the split and unsplit kernels and `qlinear_ref` (rms_norm'ed x; w4a8-fp: x quantized per token
    to E4M3 as the reference does, the same codes in every split; SwiGLU over interleaved (gate, up) rows)."""
    torch.manual_seed(M + group)
    N, K = 40, 300 if group == 64 else 600  # 5 K tiles, the last partial
    rows = torch.randn(2 * N, K)[_interleaved(N)] if swiglu else torch.randn(N, K)
    w = encode_weight(rows, scheme, group=group)
    d = to_decode_layout(w, kw=2, xperm=True)
    x, g = torch.randn(M, K).half(), (torch.rand(K) + 0.5).half()
    kwargs = dict(norm=(g, 1e-6) if norm else None, swiglu=swiglu, out_dtype=torch.float32)
    y0 = qlinear_w4_decode(x, d, **kwargs)
    ws = Workspace()
    y = qlinear_w4_decode(x, d, split_k=splits, ws=ws, **kwargs)
    assert (y - y0).abs().max() <= 1e-5 * y0.abs().max()
    xn = OPS["rms_norm"].ref(x, g, eps=1e-6) if norm else x
    act = "f8e4m3" if scheme == "w4a8-fp" else None
    ref = qlinear_ref(xn.float(), decode_weight(w), None, scheme=scheme, act_format=act, group=group, lorc_rank=0)
    ref = F.silu(ref[:, 0::2]) * ref[:, 1::2] if swiglu else ref
    assert y.shape == ref.shape and (y - ref).abs().max() <= 2e-3 * ref.abs().max()
    assert int(ws.locks.abs().sum()) == 0


def test_split_is_refused_past_one_program_row():
    w = to_decode_layout(encode_weight(torch.randn(16, 256), "w4a16-int4", group=128))
    with pytest.raises(ShapeError, match="splits K at M <= 16"):
        qlinear_w4_decode(torch.randn(20, 256).half(), w, split_k=2)
