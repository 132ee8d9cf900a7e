"""The template configurations every build check test compiles (a test fixture: it left
`fxforge.codegen.build`, which keeps the spec builders). bf16 specs carry "min_arch": 90."""

from __future__ import annotations

from fxforge.codegen.build import attention_spec, bmm_spec, gemm_spec


def standard_specs() -> list[dict]:
    """The template configurations every build check compiles. bf16 specs carry "min_arch": 90."""
    specs = [
        gemm_spec("float16", 4096, 4096, 4096),
        gemm_spec("float16", 4096, 4096, 4096, bias=True, activation="gelu", residual=True),
        gemm_spec("float16", 64, 4096, 4096, bias=True, activation="silu", out_dtype="float32"),
        gemm_spec("float16", 4096, 11008, 4096, mul=True, residual=True),
        gemm_spec("float32", 4096, 4096, 4096, bias=True, activation="relu"),
        gemm_spec("float32", 512, 512, 512, activation="gelu_tanh", residual=True),
        dict(gemm_spec("bfloat16", 4096, 4096, 4096, bias=True, activation="sigmoid"), min_arch=90),
        bmm_spec("float16", 1024, 1024, 128),
        attention_spec("float16", 4096, 4096, 64, causal=True),
        attention_spec("float16", 1024, 1024, 128, mask="add"),
        attention_spec("float16", 1, 4096, 80, gqa=True),
        attention_spec("float32", 512, 512, 64, mask="bool"),
        dict(attention_spec("bfloat16", 2048, 2048, 128, causal=True, gqa=True), min_arch=90),
    ]
    return specs
