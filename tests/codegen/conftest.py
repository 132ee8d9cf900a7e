"""Codegen tests run Triton's CPU interpreter: TRITON_INTERPRET=1 must be set before triton is imported.
Every test starts from the same random seed."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # a GPU run sets TRITON_INTERPRET=0

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
