"""The template configurations every build check test compiles (a test fixture: it left
`fxforge.codegen.build`, which keeps the spec builders). bf16 specs carry "min_arch": 90."""

from __future__ import annotations

from fxforge.codegen.templates.dense_specs import attention_spec, bmm_spec, gemm_spec
from fxforge.codegen.templates.gemm_prologue import post_norm_rows_spec


def standard_specs() -> list[dict]:
    """The template configurations every build check compiles. bf16 specs carry "min_arch": 90."""
    specs = [
        gemm_spec("float16", 4096, 4096, 4096),
        gemm_spec("float16", 4096, 4096, 4096, bias=True, activation="gelu", residual=True),
        gemm_spec("float16", 64, 4096, 4096, bias=True, activation="silu", out_dtype="float32"),
        gemm_spec("float16", 4096, 11008, 4096, mul=True, residual=True),
        gemm_spec("float16", 1, 4096, 11008, keep=True, mul=True, residual=True),  # FFN skipping's keep flags
        gemm_spec("float16", 2048, 8192, 2048, norm=True, swiglu=True),  # prefill [gate; up]: halved BLOCK_N
        gemm_spec("float32", 4096, 4096, 4096, bias=True, activation="relu2"),  # relu2 (squared) covers relu
        gemm_spec("float32", 512, 512, 512, activation="gelu_tanh", residual=True),
        dict(gemm_spec("bfloat16", 4096, 4096, 4096, bias=True, activation="sigmoid"), min_arch=90),
        bmm_spec("float16", 1024, 1024, 128),
        attention_spec("float16", 4096, 4096, 64, causal=True),
        attention_spec("float16", 1024, 1024, 128, mask="add"),
        attention_spec("float16", 1, 4096, 80, gqa=True),
        attention_spec("float32", 512, 512, 64, mask="bool"),
        dict(attention_spec("bfloat16", 2048, 2048, 128, causal=True, gqa=True), min_arch=90),
        attention_spec("float16", 1024, 1024, 128, mask="add", gqa=True, softcap=True),  # Gemma2's logit soft-cap
        attention_spec("float16", 1024, 1024, 64, mask="add", gqa=True, sinks=True),  # GPT-OSS's attention sinks
        dict(attention_spec("bfloat16", 1024, 1024, 64, mask="add", gqa=True, sinks=True), min_arch=90),
        post_norm_rows_spec("float16"),  # a post-norm GEMM of more than 16 rows (prefill): z by a row kernel first
        dict(post_norm_rows_spec("bfloat16"), min_arch=90),
    ]
    return specs + sparse_specs() + keep_specs() + moe_specs_list()


def f8_decode_specs() -> list[dict]:
    """The FP8-MMA decode GEMM (sm_90): a decode step's [gate; up] with the RMSNorm prologue and SwiGLU epilogue, and
    its prefill tile (64 rows), at w4a8-fp's group 32 (slow: `test_qlinear_decode_f8` builds them; its CI test builds
    the plain decode shapes)."""
    from fxforge.codegen.templates.qlinear_decode_f8 import w4_f8_decode_spec

    return [dict(w4_f8_decode_spec(16384, 2048, 32, M=1, norm=True, swiglu=True), min_arch=90),
            dict(w4_f8_decode_spec(4096, 4096, 32, M=64), min_arch=90)]


def moe_specs_list() -> list[dict]:
    """The MoE templates: decode Mixtral-shaped fp16 (16-bit and int4 experts), GPT-OSS's biases / transposed
    interleaved weights / clamped SwiGLU in bf16 (sm_90), GLM-4.5-Air-shaped DeepSeek-V3-style routing (sigmoid,
    choice bias, a gated shared expert) in bf16 (sm_90, as every bf16 spec), the up kernel with Cohere 2 MoE's
    LayerNorm; the grouped prefill kernels fp16
    (16-bit and int4; their router the DeepSeek-V3 form). The
    other shapes (Qwen3-MoE's 128 experts top-8 at 8 tokens, fp32, 16-row tiles) build too: `all_moe_specs`."""
    from fxforge.codegen.templates.moe import moe_specs
    from fxforge.codegen.templates.moe_grouped import moe_grouped_specs

    return [*moe_specs("float16", 1, 8, 4096, 14336, 2), *moe_specs("float16", 1, 8, 4096, 14336, 2, quant=True),
            moe_specs("float16", 1, 8, 4096, 14336, 2, norm="layer")[0],  # (its down kernel is the first spec's)
            *(dict(s, min_arch=90) for s in moe_specs("bfloat16", 1, 32, 2880, 2880, 4, gpt_oss=True)),
            *(dict(s, min_arch=90) for s in moe_specs("bfloat16", 1, 128, 4096, 1408, 8, deepseek=True)),
            *moe_grouped_specs("float16"), *moe_grouped_specs("float16", quant=True)]


def all_moe_specs() -> list[dict]:
    """Every MoE configuration checked when the templates change (by hand, not in CI)."""
    from fxforge.codegen.templates.moe import moe_specs
    from fxforge.codegen.templates.moe_grouped import moe_grouped_specs

    return [*moe_specs_list(), *moe_specs("float16", 8, 128, 2048, 768, 8), *moe_specs("float32", 1, 8, 1024, 2048, 2),
            *(dict(s, min_arch=90) for s in moe_grouped_specs("bfloat16", gpt_oss=True)),
            *moe_grouped_specs("float16", block_m=16), *moe_grouped_specs("float32")]


def keep_specs() -> list[dict]:
    """FFN skipping's decode form: the qlinear kernels with keep flags (early exit), decode shapes."""
    from fxforge.codegen.templates.qlinear_specs import qlinear_spec

    return [qlinear_spec("w8a8-int8", 1, 11008, 4096, activation="silu", keep=True),
            qlinear_spec("w4a16-int4", 1, 11008, 4096, keep=True),
            qlinear_spec("w8a8-fp8", 1, 4096, 11008, residual=True, fp8_dot=True, keep=True)]


def sparse_specs() -> list[dict]:
    """The N:M sparse templates: 16-bit kept values (fp16/bf16) and quantized ones (int8, fp8, int4, fp4),
    decode (M=1) and prefill (M=128) tiles, 2:4, 4:8 (3-bit indices across bytes) and 2:8, with epilogues."""
    from fxforge.codegen.templates.sparse_gemm import nm_gemm_spec
    from fxforge.codegen.templates.sparse_qlinear import nm_qlinear_spec

    specs = [
        nm_gemm_spec("float16", 1, 4096, 4096, 2, 4, bias=True),
        nm_gemm_spec("float16", 128, 4096, 4096, 2, 4, activation="silu", mul=True, residual=True),
        nm_gemm_spec("float16", 128, 4096, 4096, 4, 8, bias=True, activation="gelu"),
        nm_gemm_spec("float16", 1, 4096, 4096, 2, 8, activation="tanh", post_scale=True),  # a soft-capped head
        nm_gemm_spec("float32", 16, 512, 512, 2, 4, residual=True),
        dict(nm_gemm_spec("bfloat16", 128, 4096, 4096, 2, 4, bias=True), min_arch=90),
        dict(nm_gemm_spec("bfloat16", 1, 4096, 4096, 4, 8), min_arch=90),
    ]
    for scheme in ("w8a8-int8", "w8a8-fp8", "w4a16-int4", "w4a8-fp"):
        group = {"w4a16-int4": 64, "w4a8-fp": 16}.get(scheme, 0)
        specs += [nm_qlinear_spec(scheme, "float16", 1, 4096, 4096, 2, 4, group=group, bias=True),
                  nm_qlinear_spec(scheme, "float16", 128, 4096, 4096, 2, 4, group=group, activation="silu", residual=True),
                  nm_qlinear_spec(scheme, "float32", 16, 512, 512, 4, 8, group=group)]
    specs.append(dict(nm_qlinear_spec("w4a16-int4", "bfloat16", 128, 4096, 4096, 2, 4, group=64), min_arch=90))
    return specs


HIDDEN_SIZES = (64, 96, 128, 192, 256)  # the zoo's 64 alone hid sm_80 spills at 96-192
HEAD_DIMS = (16, 24, 32, 48, 64, 80, 128)  # hidden 64..256 over 4 heads, and the usual 64/80/128


def size_sweep_specs() -> list[dict]:
    """Template configurations at several model sizes: the GEMMs and quantized GEMMs of a layer of each
    hidden size (decode M=16 and prefill M=2048 tokens, fp32 and fp16 activations), and attention at
    head dims 16..128 with each mask kind. Distinct specs only (small sizes clamp to the same blocks)."""
    from fxforge.codegen.templates.qlinear_specs import qlinear_spec

    specs = []
    for h in HIDDEN_SIZES:
        for M in (16, 2048):
            for dt in ("float32", "float16"):
                specs += [gemm_spec(dt, M, h, h, bias=True), gemm_spec(dt, M, 4 * h, h, activation="gelu", mul=True),
                          gemm_spec(dt, M, h, 4 * h, residual=True)]
                specs += [qlinear_spec(s, M, 4 * h, h, x_dtype=dt, activation="silu")
                          for s in ("w8a8-int8", "w8a8-fp8", "w4a16-int4", "w4a8-fp")]
                specs += [qlinear_spec(s, M, h, 4 * h, x_dtype=dt, fp8_dot=True) for s in ("w8a8-fp8", "w4a8-fp")]
    specs.append(gemm_spec("float16", 4096, 4096, 4096, norm=True, activation="xielu"))  # prefill xIELU (the decode: below)
    for D in HEAD_DIMS:
        for dt in ("float32", "float16"):
            specs += [attention_spec(dt, 1024, 1024, D, causal=True), attention_spec(dt, 1024, 1024, D, mask="add"),
                      attention_spec(dt, 1024, 1024, D, mask="bool", gqa=True), attention_spec(dt, 1024, 1024, D)]
    unique: dict[str, dict] = {}
    for s in specs:
        key = repr((s["kernel"], sorted(s["signature"].items()), sorted(s["constexprs"].items()), s["num_warps"], s["num_stages"]))
        unique.setdefault(key, s)
    return list(unique.values())


def decode_specs(arch: int) -> list[dict]:
    """The decode table's GEMMs (`blocks.DECODE_GEMM`) on `arch`, at a Llama-3.2-1B layer's shapes
    (hidden 2048, GQA QKV 3072 concatenated, intermediate 8192, vocab 128256) for M = 1, 8 and 64, in
    fp16 and bf16 (bf16 from sm_90), with the epilogues those GEMMs carry (fused RMSNorm prologue and
    SwiGLU as `compile_decoder` runs them, and unfused as a quantized or unconcatenated model does)."""

    specs = []
    for M in (1, 8, 64):
        for dt in ("float16", "bfloat16"):
            layer = [gemm_spec(dt, M, 3072, 2048, bias=True, norm=True, arch=arch),  # QKV + input_layernorm
                     gemm_spec(dt, M, 3072, 2048, bias=True, arch=arch),
                     gemm_spec(dt, M, 2048, 2048, residual=True, arch=arch),
                     gemm_spec(dt, M, 8192, 2048, norm=True, swiglu=True, arch=arch),  # [gate; up] + SwiGLU
                     gemm_spec(dt, M, 8192, 2048, activation="silu", arch=arch),
                     gemm_spec(dt, M, 8192, 2048, mul=True, arch=arch),
                     gemm_spec(dt, M, 2048, 8192, residual=True, arch=arch),
                     gemm_spec(dt, M, 128256, 2048, norm=True, arch=arch)]
            specs += [dict(s, min_arch=90) if dt == "bfloat16" else s for s in layer]
    specs.append(gemm_spec("float16", 1, 8192, 2048, norm=True, swiglu=True, gate="gelu_tanh", arch=arch))  # GeGLU
    specs.append(gemm_spec("float16", 1, 8192, 2048, norm=True, swiglu=True, bias=True, arch=arch))  # mlp_bias
    specs.append(gemm_spec("float16", 1, 8192, 2048, norm=True, activation="xielu", arch=arch))  # Apertus' up + xIELU
    for dt in ("float16", "bfloat16"):  # post-norm blocks (Gemma2/3, OLMo2, EXAONE 4), OLMo's / NanoChat's bare norms
        cap = dict(activation="tanh", post_scale=True) if dt == "float16" else {}  # Gemma2's logit soft-cap (fp16)
        post = [gemm_spec(dt, 1, 8192, 2048, post_norm=True, norm=True, swiglu=True, gate="gelu_tanh", arch=arch),
                gemm_spec(dt, 1, 3072, 2048, post_norm=True, arch=arch),  # OLMo2's QKV: z itself
                gemm_spec(dt, 1, 2048, 2048, post_norm=True, split_k=4, arch=arch),  # z written by each K split
                gemm_spec(dt, 1, 128256, 2048, post_norm=True, norm=True, arch=arch, **cap),  # the final norm + lm_head
                gemm_spec(dt, 16, 3072, 2048, post_norm=True, layer_norm=True, arch=arch),  # the most rows it takes
                gemm_spec(dt, 1, 3072, 2048, layer_norm=True, bare_norm=True, arch=arch),
                gemm_spec(dt, 1, 8192, 2048, norm=True, bare_norm=True, activation="relu2", arch=arch),  # NanoChat's fc1
                _bare_post(gemm_spec(dt, 1, 3072, 2048, post_norm=True, norm=True, bare_norm=True, arch=arch))]
        specs += [dict(s, min_arch=90) if dt == "bfloat16" else s for s in post]
    specs.append(_weightless_w4_decode(arch))
    unique: dict[str, dict] = {}
    for s in specs:
        key = repr((sorted(s["signature"].items()), sorted(s["constexprs"].items()), s["num_warps"], s["num_stages"]))
        unique.setdefault(key, s)
    return list(unique.values())


def _bare_post(spec: dict) -> dict:
    """A post-norm GEMM spec without the step's residual and weight: z = rms_norm(h) (NanoChat's norm of a norm)."""
    sig = {k: v for k, v in spec["signature"].items() if k not in ("res2_ptr", "post_w_ptr")}
    return dict(spec, signature=sig, constexprs={**spec["constexprs"], "res2_ptr": None, "post_w_ptr": None},
                label=spec["label"] + " bare_post")


def _weightless_w4_decode(arch: int) -> dict:
    """The 4-bit decode GEMM with a weightless RMSNorm prologue (norm_ptr None: NanoChat's fc1 in w4a16) on `arch`."""
    from fxforge.codegen.templates.qlinear_decode import decode_operand, w4_decode_spec

    kw, xperm = decode_operand(arch)
    spec = w4_decode_spec(8192, 2048, 128, 128, kw=kw, xperm=xperm, arch=arch, norm=True)
    del spec["signature"]["norm_ptr"]
    return dict(spec, constexprs={**spec["constexprs"], "norm_ptr": None}, label=spec["label"] + " weightless")
