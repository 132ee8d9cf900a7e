"""Test-wide settings, applied before anything imports triton or compiles a model.

- TRITON_INTERPRET=1: there is no GPU in CI; Triton kernels run in the interpreter (it must be set
  before triton is first imported). GPU-target build checks run in subprocesses without it.
- FXFORGE_VERIFY=1: every compile in the tests verifies the IR after every pass.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("FXFORGE_VERIFY", "1")
os.environ.setdefault("MPLBACKEND", "Agg")  # fxforge.inspect tests draw without a display
