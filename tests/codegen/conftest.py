"""Codegen tests run Triton's CPU interpreter: TRITON_INTERPRET=1 must be set before triton is imported."""

import os

os.environ["TRITON_INTERPRET"] = "1"
