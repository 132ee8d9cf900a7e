"""Exceptions raised by the IR. `fxforge.errors` re-exports them beside the user-facing ones;
they live here because the IR imports nothing else of fxforge's."""


class FxforgeError(Exception):
    """Base of every error fxforge raises on purpose (re-exported as fxforge.errors.FxforgeError)."""


class IRError(FxforgeError):
    """Base of every IR error."""


class ShapeError(IRError):
    """Operand shapes or dtypes that an op cannot take."""


class VerifyError(IRError):
    """A graph that breaks an IR invariant (types, dominance, use-def chains, attributes)."""


class IRParseError(IRError):
    """Malformed IR text; the message names the line and column."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        where = f"line {line}, column {column}: " if line is not None else ""
        super().__init__(f"{where}{message}")
        self.line = line
        self.column = column
