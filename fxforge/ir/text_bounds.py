"""IR text: the bounds on untrusted text that both readers of it apply (`parser.py`, lark's, and
`reader.py`, the fast one for the printer's canonical form), so that they accept the same texts.

Each broken bound is an `IRParseError`: bracket nesting, the size of a number literal, of a static
dim and the rank of a type. Dim expressions have their own bounds (`dim_expr.py`).
"""

from __future__ import annotations

import re

from fxforge.ir.errors import IRParseError

MAX_NESTING = 32
MAX_NUMBER_CHARS = 64
MAX_DIM_DIGITS = 19
MAX_DIM = 2**63 - 1
MAX_RANK = 64

_NESTING_TOKENS = re.compile(r'"(?:[^"\\\n]|\\.)*"|//[^\n]*|[(\[{<]|[)\]}>]')


def check_nesting(text: str) -> None:
    """Refuse brackets nested deeper than MAX_NESTING (strings and comments aside) before parsing:
    the values built from them are recursive."""
    depth = 0
    for m in _NESTING_TOKENS.finditer(text):
        ch = m.group()
        if ch in "([{<":
            depth += 1
            if depth > MAX_NESTING:
                line = text.count("\n", 0, m.start()) + 1
                raise IRParseError(f"brackets nested deeper than {MAX_NESTING}", line, m.start() - text.rfind("\n", 0, m.start()))
        elif ch in ")]}>":
            depth -= 1
