"""The `fxforge` command line: `compile`, `run` and `inspect` (console script `fxforge = fxforge.cli:main`).

    app.py          the parser, `main` and the one-line error convention
    compile.py      `fxforge compile` and its compression options (one table row per option)
    calibration.py  reading a calibration file (.pt or .safetensors) into example inputs
    run.py          `fxforge run`
    inspect.py      `fxforge inspect` and its views
    export.py       `fxforge export` (a checkpoint for another runtime: compressed-tensors for vLLM)
    inputs.py       model files, input specs and files, output views (helpers of every command)
"""

from fxforge.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
