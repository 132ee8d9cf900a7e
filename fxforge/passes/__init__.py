"""Graph passes: the pass manager, the pattern rewriter, and one module per pass.

Importing this package registers every pass in `PASSES` (each module registers itself), so
`build_pipeline(default_pipeline())` works after `import fxforge.passes`.
"""

from fxforge.passes import canonicalize, constant_fold, cse, dce, fuse, quantize, shape_prop, sparsify  # noqa: F401  (registers)
from fxforge.passes.manager import (
    PASSES,
    Pass,
    PassContext,
    PassManager,
    PassRecord,
    PassVerifyError,
    Trace,
    build_pipeline,
    default_pipeline,
    register_pass,
)
from fxforge.passes.rewriter import P, RewriteError, Rule, apply_rules, rule

__all__ = [
    "PASSES", "Pass", "PassContext", "PassManager", "PassRecord", "PassVerifyError", "Trace",
    "build_pipeline", "default_pipeline", "register_pass", "P", "RewriteError", "Rule", "apply_rules", "rule",
]
