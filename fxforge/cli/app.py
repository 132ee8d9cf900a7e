"""The `fxforge` command line's parser and `main`: `compile` a model file into an artifact, `run` an
artifact, `inspect` it (each command in a module of its own: `compile.py`, `run.py`, `inspect.py`).

    fxforge compile models/tiny.py:make_model --example-input 'int64[2,128]' -o out/ [--quantize w8a8-int8 ...]
    fxforge run out/ --input 'int64[2,16]' --output-file y.pt
    fxforge inspect out/ [--pass cse [--diff]] [--diff] [--ir]
    fxforge export out/ --format compressed-tensors -o ckpt/

Decisions:
- Every `FxforgeError` and every bad command line input (`cli.inputs.UsageError`, a missing file)
  prints one line `fxforge: error: ...` to stderr and exits with status 2, as argparse does for a
  bad option; `--traceback` (before or after the subcommand) prints the traceback first. Anything
  else is a bug of fxforge and keeps its traceback.
- Each command imports the heavy parts (the model, the compiler, codegen) when it runs; `cli.inputs`
  holds the helpers (model files, input specs and files, output views). Each command module has an
  `add_parser(sub, common)` that declares its options, so this module stays the parser and `main`.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from fxforge.cli import compile as compile_cmd
from fxforge.cli import costmodel as costmodel_cmd
from fxforge.cli import export as export_cmd
from fxforge.cli import inspect as inspect_cmd
from fxforge.cli import run as run_cmd


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
    parser = argparse.ArgumentParser(prog="fxforge", description="fxforge: compile, run and inspect PyTorch models.")
    parser.add_argument("--traceback", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{compile,run,inspect,export,costmodel}")
    for command in (compile_cmd, run_cmd, inspect_cmd, export_cmd, costmodel_cmd):
        command.add_parser(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from fxforge.cli.inputs import UsageError
    from fxforge.errors import FxforgeError

    try:
        return args.func(args)
    except BrokenPipeError:  # `fxforge inspect out --ir | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (FxforgeError, UsageError, OSError) as e:
        if args.traceback:
            traceback.print_exc()
        message = " ".join(line.strip() for line in str(e).strip().splitlines() if line.strip())
        print(f"fxforge: error: {message}", file=sys.stderr)
        return 2

