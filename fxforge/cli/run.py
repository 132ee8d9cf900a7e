"""`fxforge run ARTIFACT`: load an artifact and run it on random inputs (from specs) or saved ones."""

from __future__ import annotations

import argparse
import time


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("run", parents=[common], help="run an artifact on random or saved inputs")
    p.add_argument("artifact", help="an artifact directory (from fxforge compile)")
    p.add_argument("--input", action="append", default=[], metavar="SPEC", help="a random positional input, e.g. 'int64[2,16]'")
    p.add_argument("--kwarg", action="append", default=[], metavar="NAME=SPEC", help="a keyword input (SPEC or a literal)")
    p.add_argument("--input-file", metavar="FILE", help="inputs saved with torch.save: a tensor, a tuple or a dict")
    p.add_argument("--output-file", metavar="FILE", help="save the outputs here with torch.save")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    p.add_argument("--int-high", type=int, metavar="N", help="random integers are drawn from [0, N) (default: the vocabulary)")
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    import torch

    import fxforge
    from fxforge.cli import inputs as ci
    from fxforge.errors import FxforgeError

    ci.check_inputs(args.input, args.kwarg)
    if not args.input and not args.kwarg and not args.input_file:
        raise ci.UsageError("give the inputs: --input 'int64[2,16]' (one per positional input) or --input-file inputs.pt")
    module = fxforge.load(args.artifact)
    file_args, file_kwargs = ci.load_input_file(args.input_file) if args.input_file else ((), {})
    high = args.int_high or ci.int_high_of_graph(module.graph)
    spec_args, spec_kwargs = ci.make_inputs(args.input, args.kwarg, args.seed, high)
    call_args, call_kwargs = (*file_args, *spec_args), {**file_kwargs, **spec_kwargs}
    start = time.perf_counter()
    try:
        outputs = module(*call_args, **call_kwargs)
    except FxforgeError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise ci.UsageError(f"running {args.artifact} raised {type(e).__name__}: {first}; check the inputs' dtypes, "
                            f"shapes and values (random integers are drawn from [0, {high}); --int-high sets that)") from e
    seconds = time.perf_counter() - start
    print(f"fxforge: ran {args.artifact} ({module.source or 'model'}) in {seconds * 1e3:.1f} ms "
          f"on the {module.program.executor_name} executor")
    for name, value in ci.named_inputs(module.arg_names, call_args, call_kwargs):
        print(f"  input  {name}: {ci.describe(value)}")
    print(f"  output {type(outputs).__name__}:")
    for path, value in ci.leaves(outputs):
        print(f"    {path}: {ci.describe(value)}")
    if args.output_file:
        torch.save(ci.plain(outputs), args.output_file)
        print(f"  wrote {args.output_file} (torch.load(path, weights_only=True) reads it)")
    return 0


