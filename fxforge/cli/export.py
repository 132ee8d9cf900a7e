"""`fxforge export ARTIFACT --format compressed-tensors -o DIR`: write a compiled Hugging Face model as a
checkpoint another runtime serves (vLLM reads compressed-tensors), with fxforge's own quantized weights."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from fxforge.export import FORMATS

    p = sub.add_parser("export", parents=[common], help="write an artifact as a checkpoint for another runtime (vLLM)")
    p.add_argument("artifact", help="an artifact directory (from fxforge compile) of a Hugging Face model")
    p.add_argument("--format", default="compressed-tensors", choices=sorted(FORMATS), help="checkpoint format")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="the checkpoint directory to write")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    import fxforge

    module = fxforge.load(args.artifact)
    out = module.export(args.output, format=args.format)
    print(f"fxforge: wrote {args.format} checkpoint {out} from {args.artifact} ({module.source or 'model'}); "
          f"load it with transformers.AutoModelForCausalLM.from_pretrained({out!r}) or serve it with vLLM")
    return 0
