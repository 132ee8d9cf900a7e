"""Build specs of the dense templates for `fxforge.codegen.build`: which signature, constexprs and launch options
a contiguous call of the GEMM (`gemm.py`), bmm, attention and decode attention (split-KV + combine) kernels compiles
with at given sizes, tiles from `fxforge.codegen.blocks` as their launchers pick them."""

from __future__ import annotations

TRITON_TYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}  # torch dtype name -> Triton
_GEMM_MODULE = "fxforge.codegen.templates.gemm"
_ATTN_MODULE = "fxforge.codegen.templates.attention"


def gemm_spec(dtype: str, M: int, N: int, K: int, *, bias: bool = False, activation: str = "none",
              residual: bool = False, out_dtype: str | None = None, mul: bool = False, arch: int | None = None,
              keep: bool = False, norm: bool = False, swiglu: bool = False, split_k: int | None = None,
              gate: str = "silu", layer_norm: bool = False, bare_norm: bool = False, post_norm: bool = False,
              post_scale: bool = False) -> dict:
    """Spec of `gemm_kernel` for contiguous operands of a M x N x K linear, blocks from `gemm_blocks`
    (`arch`: the decode table's configs for that GPU, as the launcher picks them there, split-K included);
    `norm`: the RMSNorm prologue, `swiglu`: the [gate; up] epilogue (N is the output width, the weight
    has 2N rows; `gate`: its activation, GeGLU's "gelu_tanh"); `split_k`: K splits instead of the table's;
    `layer_norm`: the LayerNorm prologue (weight and bias; `bare_norm`: neither, OLMo) instead of the RMSNorm one;
    `post_norm`: the post-norm residual step before it (z = res + rms_norm(h, w), z stored); `post_scale`: the
    multiplier after the activation (a logit soft-cap: activation "tanh")."""
    from fxforge.codegen.blocks import gemm_blocks, swiglu_blocks

    cfg = gemm_blocks(M, N, K, dtype, arch)
    cfg = swiglu_blocks(cfg) if swiglu else cfg
    split = split_k or cfg["SPLIT_K"]
    t, to = TRITON_TYPES[dtype], TRITON_TYPES[out_dtype or dtype]
    sig = {"a_ptr": f"*{t}", "w_ptr": f"*{t}", "out_ptr": f"*{to}", "bias_ptr": f"*{t}", "res_ptr": f"*{to}",
           "mul_ptr": f"*{to}", "M": "i32", "N": "i32", "K": "i32", "stride_am": "i32", "stride_wn": "i32",
           "stride_om": "i32", "stride_rm": "i32", "stride_mm": "i32", "scale": "fp32", "keep_ptr": f"*{t}",
           "post_scale": "fp32"}
    const = {"stride_ak": 1, "stride_wk": 1, "stride_on": 1, "stride_rn": 1, "stride_mn": 1, "HAS_MUL": mul,
             "stride_km": 1, "HAS_KEEP": keep,
             "BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"], "BLOCK_K": cfg["BLOCK_K"], "GROUP_M": 8,
             "HAS_BIAS": bias, "ACTIVATION": activation, "HAS_RESIDUAL": residual, "UPCAST": False,
             "INPUT_PRECISION": "ieee" if dtype == "float32" else "tf32", "HAS_NORM": norm or layer_norm,
             "SWIGLU": swiglu, "GATE": gate, "LAYER_NORM": layer_norm, "HAS_NB": layer_norm and not bare_norm,
             "HAS_NW": not bare_norm, "stride_pk": 1, "POST_NORM": post_norm, "WRITE_Z": post_norm,
             "HAS_POST_SCALE": post_scale}
    sig.update(res2_ptr=f"*{t}", stride_pm="i32", post_eps="fp32", stride_zm="i32")  # res2: A itself when off
    sig.update({"post_w_ptr": f"*{t}", "z_ptr": f"*{t}"} if post_norm else {})
    const.update({} if post_norm else {"post_w_ptr": None, "z_ptr": None})
    sig["eps"] = "fp32"
    sig.update(dict.fromkeys(("act_p0", "act_p1", "act_p2", "act_p3"), "fp32"))  # a PARAM_ACTIVATIONS one's scalars
    const["SPLIT_K"] = split
    if split > 1:  # split-K: fp32 partials, one arrival counter per tile, K steps per split
        sig.update(part_ptr="*fp32", lock_ptr="*i32", k_per_split="i32")
    else:
        const.update(part_ptr=None, lock_ptr=None, k_per_split=1)
    if (norm or layer_norm) and not bare_norm:
        sig["norm_ptr"] = f"*{t}"
    else:
        const["norm_ptr"] = None
    if layer_norm and not bare_norm:
        sig["nb_ptr"] = f"*{t}"
    else:
        const["nb_ptr"] = None
    epi = "+".join([s for s, on in (("post_norm", post_norm), ("norm", norm), ("layer_norm", layer_norm), ("bare", bare_norm),
                                    ("bias", bias), (activation, activation != "none"), ("post_scale", post_scale), ("mul", mul),
                                    ("swiglu" if gate == "silu" else f"gated-{gate}", swiglu), ("res", residual), ("keep", keep),
                                    (f"splitk{split}", split > 1)) if on]) or "plain"
    return {"module": _GEMM_MODULE, "kernel": "gemm_kernel", "signature": sig, "constexprs": const,
            "divisible": ["N", "K", "stride_am", "stride_wn", "stride_om", "stride_rm", "stride_mm"],
            "num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"],
            "label": f"gemm {dtype} {M}x{N}x{K} {epi}" + (f" decode-table sm_{arch}" if arch else "")}


def bmm_spec(dtype: str, M: int, N: int, K: int) -> dict:
    """Spec of `bmm_kernel` for contiguous [B0, B1, M, K] @ [B0, B1, K, N]."""
    from fxforge.codegen.blocks import gemm_blocks

    cfg = gemm_blocks(M, N, K, dtype)
    t = TRITON_TYPES[dtype]
    sig = {"a_ptr": f"*{t}", "b_ptr": f"*{t}", "out_ptr": f"*{t}", "M": "i32", "N": "i32", "K": "i32", "B1": "i32",
           "stride_a0": "i32", "stride_a1": "i32", "stride_am": "i32", "stride_b0": "i32", "stride_b1": "i32",
           "stride_bk": "i32", "stride_o0": "i32", "stride_o1": "i32", "stride_om": "i32", "scale": "fp32"}
    const = {"stride_ak": 1, "stride_bn": 1, "stride_on": 1,
             "BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"], "BLOCK_K": cfg["BLOCK_K"], "GROUP_M": 8,
             "UPCAST": False, "INPUT_PRECISION": "ieee" if dtype == "float32" else "tf32"}
    divisible = [n for n in sig if n.startswith("stride")] + ["N", "K"]
    return {"module": "fxforge.codegen.templates.bmm", "kernel": "bmm_kernel", "signature": sig, "constexprs": const, "divisible": divisible,
            "num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"], "label": f"bmm {dtype} {M}x{N}x{K}"}


def attention_spec(dtype: str, Lq: int, Lk: int, D: int, *, causal: bool = False, mask: str = "none",
                   gqa: bool = False, softcap: bool = False, sinks: bool = False, dv: int | None = None) -> dict:
    """Spec of `attention_kernel` for contiguous q/k [B, H, L, D], v [B, H, L, dv or D] (mask "none", "bool" or "add";
    logit soft-cap; sinks)."""
    from fxforge.codegen.blocks import attention_blocks

    cfg = attention_blocks(Lq, Lk, D, dtype, masked=mask != "none", dv=dv)
    t = TRITON_TYPES[dtype]
    sig = {"q_ptr": f"*{t}", "k_ptr": f"*{t}", "v_ptr": f"*{t}", "mask_ptr": {"none": f"*{t}", "bool": "*u8", "add": f"*{t}"}[mask],
           "out_ptr": f"*{t}", "Hq": "i32", "Lq": "i32", "Lk": "i32", "D": "i32", "DV": "i32", "GROUP": "i32",
           "qk_scale": "fp32", "cap_scale": "fp32"}
    strides = ["stride_qb", "stride_qh", "stride_qm", "stride_kb", "stride_kh", "stride_kn", "stride_vb", "stride_vh",
               "stride_vn", "stride_mb", "stride_mh", "stride_mm", "stride_ob", "stride_oh", "stride_om"]
    sig.update({s: "i32" for s in strides}, sinks_ptr=f"*{t}")  # sinks_ptr: out when no sinks (never read)
    const = {"stride_qd": 1, "stride_kd": 1, "stride_vd": 1, "stride_mn": 1, "stride_od": 1,
             "BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"], "BLOCK_D": cfg["BLOCK_D"],
             "BLOCK_DV": cfg["BLOCK_DV"],
             "DV_APART": bool(dv) and dv != D,
             "IS_CAUSAL": causal, "MASK_KIND": mask, "SOFTCAP": softcap, "HAS_SINKS": sinks, "UPCAST": False,
             "INPUT_PRECISION": "ieee" if dtype == "float32" else "tf32"}
    divisible = [s for s in strides if not s.startswith("stride_m")] + (["Lk"] if mask != "none" else [])
    tags = [s for s, on in (("causal", causal), (f"{mask}-mask", mask != "none"), ("gqa", gqa), ("softcap", softcap), ("sinks", sinks)) if on]
    return {"module": _ATTN_MODULE, "kernel": "attention_kernel", "signature": sig, "constexprs": const,
            "divisible": divisible, "num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"],
            "label": f"attention {dtype} {Lq}x{Lk} D={D}{f' DV={dv}' if dv else ''} {' '.join(tags) or 'plain'}"}


_DECODE_ATTN_MODULE = "fxforge.codegen.templates.decode_attention"


def decode_attention_specs(dtype: str, group: int, Lk: int, D: int, *, mask: str = "none", arch: int = 90,
                           kv_format: str = "dense", kv_block: int = 32, softcap: bool = False, sinks: bool = False,
                           dv: int | None = None) -> list[dict]:
    """Specs of the flash-decoding kernels (`decode_split_kernel` with its final and partial stores, and
    `decode_combine_kernel`) for contiguous q [B, Hq, 1, D], k [B, Hkv, Lk, D], v [B, Hkv, Lk, dv or D] (or packed
    rows) on `arch`."""
    from fxforge.codegen.blocks import decode_attention_blocks
    from fxforge.codegen.templates.decode_attention import kv_constexprs, packed_blocks

    cfg = packed_blocks(decode_attention_blocks(8, group, Lk, D, dtype, arch, mask != "none", dv=dv), kv_format)
    t = TRITON_TYPES[dtype]
    sig = {"q_ptr": f"*{t}", "k_ptr": f"*{t}", "v_ptr": f"*{t}", "mask_ptr": {"none": f"*{t}", "bool": "*u8", "add": f"*{t}"}[mask],
           "sinks_ptr": f"*{t}", "out_ptr": f"*{t}", "part_ptr": "*fp32", "ml_ptr": "*fp32", "Hq": "i32", "Lk": "i32", "D": "i32",
           "DV": "i32", "GROUP": "i32", "qk_scale": "fp32", "cap_scale": "fp32", "keys_per_split": "i32"}
    strides = ["stride_qb", "stride_qh", "stride_kb", "stride_kh", "stride_kn", "stride_vb", "stride_vh", "stride_vn",
               "stride_mb", "stride_mh", "stride_ob", "stride_oh"]
    sig.update({s: "i32" for s in strides})
    const = {"stride_qd": 1, "stride_kd": 1, "stride_vd": 1, "stride_mn": 1, "stride_od": 1, "BLOCK_G": cfg["BLOCK_G"],
             "BLOCK_N": cfg["BLOCK_N"], "BLOCK_D": cfg["BLOCK_D"], "BLOCK_DV": cfg["BLOCK_DV"],
             "DV_APART": bool(dv) and dv != D, "MASK_KIND": mask, "SOFTCAP": softcap, "HAS_SINKS": sinks,
             "UPCAST": False,
             "INPUT_PRECISION": "ieee" if dtype == "float32" else "tf32", **kv_constexprs(kv_format, kv_block, D)}
    if kv_format != "dense":  # packed cache rows (uint8), decoded in the key loop
        sig.update(k_ptr="*u8", v_ptr="*u8")
    label = f"decode-attention {dtype} G={group} Lk={Lk} D={D}{f' DV={dv}' if dv else ''} {mask}-mask sm_{arch}" + (
        f" {kv_format}/{kv_block}" if kv_format != "dense" else "") + (" softcap" if softcap else "") + (" sinks" if sinks else "")
    split = [{"module": _DECODE_ATTN_MODULE, "kernel": "decode_split_kernel", "signature": sig,
              "constexprs": dict(const, FINAL=final), "divisible": [s for s in strides if not s.startswith("stride_m")],
              "num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"],
              "label": f"{label} {'final' if final else 'split'}"} for final in (True, False)]
    combine = {"module": _DECODE_ATTN_MODULE, "kernel": "decode_combine_kernel",
               "signature": {"out_ptr": f"*{t}", "part_ptr": "*fp32", "ml_ptr": "*fp32", "Hq": "i32", "D": "i32",
                             "n_splits": "i32", "stride_ob": "i32", "stride_oh": "i32"},
               "constexprs": {"stride_od": 1, "BLOCK_S": 64, "BLOCK_D": cfg["BLOCK_DV"]},
               "divisible": ["stride_ob", "stride_oh"],
               "num_warps": 4, "num_stages": 1, "label": f"decode-attention-combine {dtype} D={dv or D}"}
    return [*split, combine]
