"""Graph passes: the pass manager, the pattern rewriter, and one module per pass.

This package's `__init__` imports only the manager and the rewriter (what pass authors use); it does
not import the pass modules, and they do not register themselves. `fxforge.pipeline.PASS_TABLE` is
the table of passes by name.
"""

from fxforge.passes.manager import Pass, PassContext, PassManager, PassRecord, PassVerifyError, Trace
from fxforge.passes.rewriter import P, RewriteError, Rule, apply_rules, rule

__all__ = [
    "Pass", "PassContext", "PassManager", "PassRecord", "PassVerifyError", "Trace",
    "P", "RewriteError", "Rule", "apply_rules", "rule",
]
