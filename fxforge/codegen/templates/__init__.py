"""Hand-written Triton kernel templates (GEMM family, attention) and their Python launchers."""
