"""Build specs of the qlinear kernels (`templates/qlinear.py`) for `fxforge.codegen.build`: which
signatures, constexprs and launch options a contiguous M x N x K call of each scheme compiles with."""

from __future__ import annotations

from fxforge.codegen.blocks import qlinear_blocks, row_blocks
from fxforge.codegen.templates.dense_specs import TRITON_TYPES
from fxforge.ir import formats
from fxforge.ir.lowp_ops import get_scheme

_MODULE = "fxforge.codegen.templates.qlinear"


def qlinear_spec(scheme: str, M: int, N: int, K: int, *, x_dtype: str = "float16", out_dtype: str | None = None,
                 group: int | None = None, fp8_dot: bool = False, bias: bool = True, activation: str = "none",
                 residual: bool = False, lorc: bool = False, keep: bool = False) -> dict:
    """A `fxforge.codegen.build` spec of this scheme's kernel for contiguous operands (blocks from `qlinear_blocks`)."""
    sc = get_scheme(scheme)
    t = TRITON_TYPES[x_dtype]
    to = TRITON_TYPES[out_dtype or x_dtype]
    g = sc.group if group is None else group
    g = g if g > 0 else K
    epi_sig = {"out_ptr": f"*{to}", "bias_ptr": f"*{t}", "add_ptr": "*fp32", "res_ptr": f"*{to}",
               "M": "i32", "N": "i32", "K": "i32", "stride_am": "i32", "stride_wn": "i32",
               "stride_om": "i32", "stride_dm": "i32", "stride_rm": "i32", "keep_ptr": f"*{t}"}
    const = {"stride_ak": 1, "stride_wk": 1, "stride_on": 1, "stride_dn": 1, "stride_rn": 1, "GROUP_M": 8,
             "HAS_BIAS": bias, "HAS_ADDEND": lorc, "ACTIVATION": activation, "HAS_RESIDUAL": residual,
             "stride_km": 1, "HAS_KEEP": keep}
    divisible = ["N", "K", "stride_am", "stride_wn", "stride_om", "stride_dm", "stride_rm"]
    if scheme == "w8a8-int8":
        kernel, dot = "qlinear_w8a8_int8_kernel", "int8"
        sig = {"a_ptr": "*i8", "a_scale_ptr": "*fp32", "w_ptr": "*i8", "w_scale_ptr": "*fp32"}
    elif scheme == "w8a8-fp8":
        kernel, dot = "qlinear_w8a8_fp8_kernel", "fp8" if fp8_dot else "fp16"
        sig = {"a_ptr": "*u8", "a_scale_ptr": "*fp32", "w_ptr": "*u8", "w_scale_ptr": "*fp32"}
        const["FP8_DOT"] = fp8_dot
    elif scheme == "w4a16-int4":
        kernel, dot = "qlinear_w4a16_int4_kernel", {"float32": "fp32"}.get(x_dtype, TRITON_TYPES[x_dtype])
        sig = {"a_ptr": f"*{t}", "w_ptr": "*u8", "scale_ptr": "*fp16", "zero_ptr": "*u8",
               "stride_sn": "i32", "stride_zn": "i32"}
        const.update(stride_sg=1, stride_zg=1, GROUP=g, DOT=dot)
    else:
        kernel, dot = "qlinear_w4a8_fp_kernel", "fp8" if fp8_dot else "fp16"
        sig = {"a_ptr": "*u8", "a_scale_ptr": "*fp32", "w_ptr": "*u8", "smax_ptr": "*fp32", "shift_ptr": "*u8",
               "stride_kn": "i32"}
        const.update(stride_kg=1, GROUP=g, FP8_DOT=fp8_dot)
    sig.update(epi_sig)
    cfg = qlinear_blocks(M, N, K, g if sc.group else 0, dot)
    const.update(BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"])
    tag = "fp8-dot" if fp8_dot else dot
    return {"module": _MODULE, "kernel": kernel, "signature": sig, "constexprs": const, "divisible": divisible,
            "num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"],
            "label": f"qlinear {scheme} {x_dtype} {M}x{N}x{K} g={g} {tag}" + (" keep" if keep else ""), **({"min_arch": 89} if fp8_dot else {})}


def qlinear_block_spec(scheme: str, M: int, N: int, K: int, *, x_dtype: str = "float16", bias: bool = True,
                       activation: str = "none", residual: bool = False) -> dict:
    """A build spec of `qlinear_block_kernel` (MX / NVFP4 schemes, `templates/qlinear_block.py`)."""
    from fxforge.codegen.templates.qlinear_block import block_launch_config, element_params

    t = TRITON_TYPES[x_dtype]
    sig = {"a_ptr": f"*{t}", "a_ts_ptr": "*fp32", "w_ptr": "*u8", "ws_ptr": "*u8", "w_ts_ptr": "*fp32",
           "out_ptr": f"*{t}", "bias_ptr": f"*{t}", "res_ptr": f"*{t}", "M": "i32", "N": "i32", "K": "i32",
           "stride_am": "i32", "stride_wn": "i32", "stride_sn": "i32", "stride_om": "i32", "stride_rm": "i32"}
    cfg = block_launch_config(scheme, M, N, K)
    const = {"stride_ak": 1, "stride_on": 1, "stride_rn": 1, "GROUP_M": 8, "BLOCK_M": cfg["BLOCK_M"],
             "BLOCK_N": cfg["BLOCK_N"], "BLOCK_K": cfg["BLOCK_K"], **element_params(get_scheme(scheme).weight_format),
             "HAS_BIAS": bias, "ACTIVATION": activation, "HAS_RESIDUAL": residual}
    return {"module": "fxforge.codegen.templates.qlinear_block", "kernel": "qlinear_block_kernel", "signature": sig,
            "constexprs": const, "divisible": ["N", "K", "stride_am", "stride_om", "stride_rm"],
            "num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"],
            "label": f"qlinear {scheme} {x_dtype} {M}x{N}x{K}"}


def block_specs() -> list[dict]:
    """The block-scheme qlinear configurations the build check compiles (every scheme, decode and prefill
    shapes, fp16 and fp32 activations)."""
    specs = []
    for scheme in ("mxfp8", "mxfp6", "mxfp4", "mxint8", "nvfp4"):
        specs += [qlinear_block_spec(scheme, 4096, 4096, 4096, activation="silu"),
                  qlinear_block_spec(scheme, 16, 4096, 4096, residual=True),
                  qlinear_block_spec(scheme, 64, 384, 1536, x_dtype="float32")]
    return specs


def act_quant_spec(fmt: str, K: int, x_dtype: str = "float16") -> dict:
    """A build spec of `act_quant_kernel` for rows of K elements."""
    block = row_blocks(min(K, 4096))
    sig = {"x_ptr": f"*{TRITON_TYPES[x_dtype]}", "q_ptr": "*i8" if fmt == "i8" else "*u8", "s_ptr": "*fp32", "K": "i32",
           "stride_xm": "i32", "stride_qm": "i32"}
    const = {"stride_xk": 1, "FORMAT": fmt, "MAX_VALUE": formats.get_format(fmt).max_value, "BLOCK": block["BLOCK"]}
    return {"module": "fxforge.codegen.templates.act_quant", "kernel": "act_quant_kernel", "signature": sig, "constexprs": const,
            "divisible": ["K", "stride_xm", "stride_qm"], "num_warps": block["num_warps"], "num_stages": 2,
            "label": f"act_quant {fmt} {x_dtype} K={K}"}


def qlinear_specs() -> list[dict]:
    """The quantized-linear configurations the build check compiles (fp8-dot ones carry "min_arch": 89)."""
    shapes = [(4096, 4096, 4096), (16, 4096, 4096)]
    specs = []
    for M, N, K in shapes:
        specs += [
            qlinear_spec("w8a8-int8", M, N, K, activation="silu"),
            qlinear_spec("w8a8-fp8", M, N, K, residual=True),
            qlinear_spec("w8a8-fp8", M, N, K, residual=True, fp8_dot=True),
            qlinear_spec("w4a16-int4", M, N, K, activation="gelu"),
            qlinear_spec("w4a8-fp", M, N, K, lorc=True),
            qlinear_spec("w4a8-fp", M, N, K, lorc=True, fp8_dot=True),
        ]
    specs += [qlinear_spec("w4a16-int4", 64, 4096, 4096, x_dtype="float32"),
              act_quant_spec("i8", 4096), act_quant_spec("f8e4m3", 4096)]
    return specs + block_specs()
