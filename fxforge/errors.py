"""Every error fxforge raises on purpose. Each message names the problem and the fix.

The IR's own errors live in `fxforge.ir.errors` (the IR imports nothing else of fxforge's) and are
re-exported here, so users catch everything as `fxforge.errors.FxforgeError`.
"""

from __future__ import annotations

from fxforge.ir.errors import FxforgeError, IRError, IRParseError, ShapeError, VerifyError


class NotCompilableError(FxforgeError, TypeError):
    """compile() was given something that is not an nn.Module or a function."""


class InputError(FxforgeError, ValueError):
    """Inputs that do not fit what the model or artifact was compiled for."""


class CaptureError(FxforgeError, RuntimeError):
    """torch.export (or dynamo) could not capture the model."""


class ArtifactError(FxforgeError, OSError):
    """A missing, incomplete or corrupt artifact directory."""


class ConfigError(FxforgeError, ValueError):
    """An unknown or malformed compile option."""


class ExportError(FxforgeError, ValueError):
    """A compiled model that an export format cannot express (the message names the layers and why)."""


__all__ = [
    "FxforgeError", "IRError", "IRParseError", "ShapeError", "VerifyError", "NotCompilableError",
    "InputError", "CaptureError", "ArtifactError", "ConfigError", "ExportError",
]
