"""Hand-written Triton kernel templates (GEMM family, attention) and their Python launchers.

Importing any template first applies `fxforge.codegen.triton_compat` (Triton 3.6's interpreter fix)."""

from fxforge.codegen import triton_compat  # noqa: F401
