"""IR text: lark's syntax errors in plain words, with line and column (`IRParseError`)."""

from __future__ import annotations

import lark
from lark import Lark

from fxforge.ir.errors import IRParseError

_WORDS = {
    "VALUE": "a value name like %x",
    "GLOBAL": "a global name like @name",
    "ENCODING": "an encoding like #quantized<...>",
    "OPREF": "an operand reference like $0",
    "NAME": "a name",
    "NUMBER": "a number",
    "STRING": 'a string like "text"',
    "EXPR": "a parenthesised expression like (s0 - 1)",
    "RETURN": "'return'",
    "GRAPH": "'graph'",
    "$END": "the end of the text",
    "<END-OF-FILE>": "the end of the text",
}



def _describe(names, parser: Lark) -> str:
    words = set()
    for name in names:
        if name in _WORDS:
            words.add(_WORDS[name])
            continue
        try:
            pattern = parser.get_terminal(name).pattern
        except KeyError:
            words.add(name)
            continue
        words.add(repr(pattern.value) if pattern.type == "str" else name)
    return ", ".join(sorted(words))


def _end_position(text: str) -> tuple[int, int]:
    line = text.count("\n") + 1
    return line, len(text) - (text.rfind("\n") + 1) + 1


def syntax_error(e: lark.exceptions.UnexpectedInput, text: str, parser: Lark) -> IRParseError:
    """The IRParseError for a lark syntax error: what came, what was expected, where."""
    if isinstance(e, lark.exceptions.UnexpectedToken):
        tok = e.token
        if tok.type == "$END":
            line, col = _end_position(text)
            got = "end of the text"
        else:
            line, col = tok.line, tok.column
            got = f"{str(tok)!r}"
        return IRParseError(f"unexpected {got}; expected {_describe(e.expected, parser)}", line, col)
    if isinstance(e, lark.exceptions.UnexpectedCharacters):
        expected = _describe(e.allowed, parser) if e.allowed else "something else"
        if e.char == '"' and "STRING" in (e.allowed or ()):
            return IRParseError("unterminated string (a string is JSON, on one line)", e.line, e.column)
        return IRParseError(f"unexpected character {e.char!r}; expected {expected}", e.line, e.column)
    if isinstance(e, lark.exceptions.UnexpectedEOF):
        line, col = _end_position(text)
        return IRParseError(f"unexpected end of the text; expected {_describe(e.expected, parser)}", line, col)
    return IRParseError(str(e))
