"""The `fxforge` command line: `compile` a model file into an artifact, `run` an artifact, `inspect` it.

    fxforge compile models/tiny.py:make_model --example-input 'int64[2,128]' -o out/
    fxforge run out/ --input 'int64[2,16]' --output-file y.pt
    fxforge inspect out/ [--pass cse [--diff]] [--diff] [--ir]

Decisions:
- Every `FxforgeError` and every bad command line input (`cli_inputs.UsageError`, a missing file)
  prints one line `fxforge: error: ...` to stderr and exits with status 2, as argparse does for a
  bad option; `--traceback` (before or after the subcommand) prints the traceback first. Anything
  else is a bug of fxforge and keeps its traceback.
- Each command imports what it needs itself; `cli_inputs` holds the helpers (model files, input
  specs and files, output views), so this module stays the commands and the parser.
- `inspect` shows views of an artifact; each view beside the pass trace is an `InspectView` in
  `INSPECT_VIEWS` (flag, help, function of the loaded module and the parsed arguments). A new view
  (e.g. `--kernels`) is one more entry there: the parser and the command pick it up.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _csv(values: list[str]) -> list[str]:
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


# -- compile ----------------------------------------------------------------------------------------

def cmd_compile(args: argparse.Namespace) -> int:
    if args.executor == "interpret" and "triton" not in sys.modules:
        os.environ["TRITON_INTERPRET"] = "1"  # importing torch pulls in triton, which picks the interpreter then
    import torch

    import fxforge
    from fxforge import cli_inputs as ci
    from fxforge.config import CompileConfig
    from fxforge.passes.manager import build_pipeline, default_pipeline

    if args.build_check and args.executor != "interpret":
        raise ci.UsageError("--build-check records the kernel launches under Triton's interpreter; add --executor interpret")
    if not args.example_input and not args.kwarg:
        raise ci.UsageError("give the example inputs: --example-input 'int64[2,128]' (one per positional input)")
    ci.check_inputs(args.example_input, args.kwarg)
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise ci.UsageError(f"{out} exists and is not a directory; give -o a directory for the artifact")
    passes = _csv(args.passes) if args.passes else None
    options = {k: ci.parse_literal(v) for k, v in (ci.parse_kwarg(o, "--pass-option") for o in args.pass_option)}
    config = CompileConfig.from_options(None, passes=passes, disable=_csv(args.disable), executor=args.executor,
                                        verify=args.verify, debug=args.debug, dynamic=False if args.no_dynamic else None,
                                        pass_options=options)
    try:  # a typo in a pass name should not wait for the capture
        build_pipeline(passes if passes is not None else default_pipeline(), config.disable)
    except ValueError as e:
        raise ci.UsageError(f"{e}; fix --passes/--disable") from None
    torch.manual_seed(args.seed)
    model = ci.load_model(args.model)
    example_args, example_kwargs = ci.make_inputs(args.example_input, args.kwarg, args.seed, ci.int_high_of_model(model))
    start = time.perf_counter()
    compiled = fxforge.compile_aot(model, example_args, example_kwargs or None, config=config)
    build_lines, build_failed = [], False
    if args.build_check:  # before save: the figures go into the trace
        from fxforge.codegen.buildcheck import RECORD_NAME, check_kernels, summary

        check = check_kernels(compiled, example_args, example_kwargs=example_kwargs or None)
        compiled.record.add_check(RECORD_NAME, check.stats, check.seconds)
        build_lines, build_failed = summary(compiled.record.trace), not check.ok
    compiled.save(str(out))
    seconds = time.perf_counter() - start
    rec, graph = compiled.record, compiled.graph
    shown = [f"{n}={ci.tensor_type(t) if isinstance(t, torch.Tensor) else repr(t)}"
             for n, t in ci.named_inputs(compiled.arg_names, example_args, example_kwargs)]
    print(f"fxforge: compiled {type(model).__name__} ({args.model}) in {seconds:.2f} s")
    print(f"  example inputs: {', '.join(shown)}")
    print(f"  signature: {ci.signature(graph)}")
    print(f"  graph: {rec.aten_ops} ATen ops -> {len(graph.ops)} fxforge ops: {ci.counts(graph.op_counts())}")
    if rec.trace is not None:
        print("  passes: " + ", ".join(f"{r.name} {r.seconds * 1e3:.1f} ms" for r in rec.trace.records))
    if rec.externs:
        print(f"  extern (runs through torch): {ci.counts(rec.externs)}")
    for note in rec.notes:
        print(f"  note: {note}")
    ones = ci.size_one_dims(example_args, example_kwargs, compiled.arg_names)
    if ones and not args.no_dynamic:
        print(f"  hint: torch.export specialises example dims of size 1, so {', '.join(ones)} accept only size 1; "
              "give examples with sizes >= 2 (e.g. int64[2,128]) to keep those dims dynamic")
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"  wrote {out}/ ({', '.join(sorted(f.name for f in out.iterdir()))}; {size / 1e6:.2f} MB)")
    example = " ".join([*(f"--input '{spec}'" for spec in args.example_input), *(f"--kwarg '{kw}'" for kw in args.kwarg)])
    print(f"  next: fxforge run {out} {example}  |  fxforge inspect {out}")
    for line in build_lines:
        print(f"  build check {line}")
    if build_failed:  # the artifact is written; `fxforge inspect --kernels` shows the errors
        print(f"fxforge: error: kernels failed the GPU build check; see fxforge inspect {out} --kernels", file=sys.stderr)
        return 1
    return 0


# -- run --------------------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace) -> int:
    import torch

    import fxforge
    from fxforge import cli_inputs as ci
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


# -- inspect ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class InspectView:
    """One optional view of `fxforge inspect`: `--flag` prints `show(module, args)`."""

    flag: str
    help: str
    show: Callable[[Any, argparse.Namespace], str]

    @property
    def dest(self) -> str:
        return "view_" + self.flag.lstrip("-").replace("-", "_")


def _show_ir(module: Any, args: argparse.Namespace) -> str:
    from fxforge.runtime.artifact import FILES

    return (Path(args.artifact) / FILES["graph"]).read_text().rstrip("\n")


def _show_kernels(module: Any, args: argparse.Namespace) -> str:
    from fxforge.codegen.buildcheck import format_kernel_table

    return format_kernel_table(module.record.trace)


def _show_quant(module: Any, args: argparse.Namespace) -> str:
    """Per quantized layer: scheme, relative output error, weight bytes before (fp16) and after."""
    records = [r for r in module.record.trace.records if r.name == "quantize" and r.stats.get("layers") is not None]
    if not records:
        return "no quantize pass in this artifact (compile with a quantize scheme, e.g. CompileConfig(quantize='w4a8-fp'))"
    stats = records[-1].stats
    rows = [f"quantization: {stats['scheme']} (errors measured on {stats['error_data']})",
            f"{'layer':<44}{'scheme':<12}{'rel err':>9}{'fp16 B':>10}{'after B':>10}{'ratio':>7}"]
    for name, layer in stats["layers"].items():
        rows.append(f"{name:<44}{layer['scheme']:<12}{layer['rel_error']:>9.4f}{layer['bytes_fp16']:>10}"
                    f"{layer['bytes_after']:>10}{layer['bytes_fp16'] / max(layer['bytes_after'], 1):>6.2f}x")
    rows += [f"{name:<44}{why}" for name, why in stats["skipped"].items()]
    total = stats["summary"]
    rows.append(f"total: {total['layers_quantized']} layers, {total['bytes_fp16_before']} B fp16 -> {total['bytes_after']} B; "
                f"mean rel err {total['mean_rel_error']:.4f}, max {total['max_rel_error']:.4f}"
                + (f"; model output rel err {total['output_rel_error']:.4f}" if "output_rel_error" in total else ""))
    return "\n".join(rows)


def _compact(stats: dict[str, Any]) -> str:
    """One short line of pass statistics: scalars as they are, collections by size."""
    def short(v: Any) -> str:
        if isinstance(v, dict):
            return json.dumps(v, sort_keys=True) if len(json.dumps(v)) <= 80 else f"{{{len(v)} entries}}"
        if isinstance(v, list):
            return f"[{len(v)} items]"
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{k}={short(v)}" for k, v in stats.items())


INSPECT_VIEWS: list[InspectView] = [
    InspectView("--quant", "per quantized layer: scheme, output error, weight bytes before/after", _show_quant),
    InspectView("--ir", "print the final IR (graph.fxir)", _show_ir),
    InspectView("--kernels", "per GPU arch, each kernel's registers, spills and shared memory (from --build-check)",
                _show_kernels),
]


def cmd_inspect(args: argparse.Namespace) -> int:
    import fxforge

    module = fxforge.load(args.artifact)
    trace = module.record.trace
    parts = []
    if args.pass_name or args.diff:
        parts.append(_pass_view(trace, args.pass_name, args.diff))
    parts += [view.show(module, args) for view in INSPECT_VIEWS if getattr(args, view.dest)]
    print("\n".join(parts) if parts else _overview(module, args))
    return 0


def _select(trace: Any, key: str) -> Any:
    """A pass run by position (`3`), name (`cse`: its first run) or name and run (`canonicalize#2`)."""
    from fxforge.cli_inputs import UsageError

    runs = "; it ran: " + ", ".join(f"{i}:{n}" for i, n in enumerate(trace.names(), 1))
    if key.isdigit():
        if not 1 <= int(key) <= len(trace.records):
            raise UsageError(f"no pass #{key} in the trace{runs}")
        return trace.records[int(key) - 1]
    name, _, nth = key.partition("#")
    if nth and not nth.isdigit() or nth == "0":
        raise UsageError(f"bad --pass {key!r}: write NAME, NAME#k (its k-th run) or the position in the list{runs}")
    if name not in trace.names():
        raise UsageError(f"no pass {name!r} in the trace{runs}")
    try:
        return trace.record(name, int(nth or 1) - 1)
    except KeyError:
        raise UsageError(f"pass {name!r} ran {trace.names().count(name)} time(s), not {nth}{runs}") from None


def _pass_view(trace: Any, key: str | None, diff: bool) -> str:
    if key is None:  # --diff alone: every pass that changed something
        counts: dict[str, int] = {}
        out, same = [], []
        for r in trace.records:
            counts[r.name] = counts.get(r.name, 0) + 1
            label = r.name if counts[r.name] == 1 else f"{r.name}#{counts[r.name]}"
            (out.append(r.diff().rstrip("\n")) if r.ir_before != r.ir_after else same.append(label))
        return "\n".join(out + ([f"(unchanged by: {', '.join(same)})"] if same else []))
    rec = _select(trace, key)
    if not diff:
        return rec.ir_after.rstrip("\n")
    return rec.diff().rstrip("\n") or f"({key} changed nothing)"


def _overview(module: Any, args: argparse.Namespace) -> str:
    from fxforge import cli_inputs as ci
    from fxforge.runtime.artifact import FILES

    manifest = json.loads((Path(args.artifact) / FILES["manifest"]).read_text())
    versions = ", ".join(f"{k} {v}" for k, v in manifest.get("versions", {}).items())
    cfg = module.config
    lines = [f"artifact {args.artifact}: {module.source or 'model'} ({versions})",
             f"config: passes={','.join(cfg.passes) if cfg.passes is not None else 'default'} "
             f"disable={','.join(cfg.disable) or '-'} executor={cfg.executor} ({module.program.executor_name}) "
             f"dynamic={cfg.dynamic is not False} verify={cfg.verify}",
             f"signature: {ci.signature(module.graph)}", "",
             f"{'#':>3}  {'pass':<16}{'ms':>9}{'ops':>14}  changes / stats"]
    for i, r in enumerate(module.record.trace.records, 1):
        before, after = sum(r.ops_before.values()), sum(r.ops_after.values())
        delta = {k: r.ops_after.get(k, 0) - r.ops_before.get(k, 0) for k in {*r.ops_before, *r.ops_after}}
        changes = ", ".join(f"{k} {v:+d}" for k, v in sorted(delta.items()) if v)
        stats = _compact(r.stats) if r.stats else ""
        lines.append(f"{i:>3}  {r.name:<16}{r.seconds * 1e3:>9.2f}{f'{before} -> {after}':>14}  "
                     + "  ".join(x for x in (changes, stats) if x))
    lines += ["", f"final graph: {len(module.graph.ops)} ops: {ci.counts(module.graph.op_counts(), top=50)}"]
    if module.record.externs:
        lines.append(f"extern (runs through torch): {ci.counts(module.record.externs)}")
    lines += [f"note: {n}" for n in module.record.notes]
    flags = ", ".join(f"{v.flag}: {v.help}" for v in INSPECT_VIEWS)
    lines.append(f"(--pass NAME|NAME#k|N: the IR after that pass; --diff: what it changed; {flags})")
    return "\n".join(lines)


# -- the parser -------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from fxforge.config import EXECUTOR_CHOICES

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
    parser = argparse.ArgumentParser(prog="fxforge", description="fxforge: compile, run and inspect PyTorch models.")
    parser.add_argument("--traceback", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{compile,run,inspect}")

    p = sub.add_parser("compile", parents=[common], help="compile a model (torch.export) into an artifact directory")
    p.add_argument("model", help="path/to/file.py:factory (a function or nn.Module class making the model, or a module)")
    p.add_argument("--example-input", action="append", default=[], metavar="SPEC",
                   help="an example positional input, dtype[d0,d1,...], e.g. 'int64[2,128]' (repeat per input)")
    p.add_argument("--kwarg", action="append", default=[], metavar="NAME=SPEC", help="an example keyword input (or a literal)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="the artifact directory to write")
    p.add_argument("--passes", action="append", metavar="A,B", help="the pass pipeline (default: the default pipeline)")
    p.add_argument("--disable", action="append", default=[], metavar="X", help="skip these passes (repeatable, commas)")
    p.add_argument("--pass-option", action="append", default=[], metavar="KEY=VALUE", help="a pass option, e.g. cse.x=1")
    p.add_argument("--executor", default="auto", choices=EXECUTOR_CHOICES)
    p.add_argument("--verify", action="store_true", help="verify the IR after every pass")
    p.add_argument("--debug", action="store_true", help="verify, and print the compile report")
    p.add_argument("--no-dynamic", action="store_true", help="export with the example shapes only (no dynamic dims)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random example inputs (and of the factory)")
    p.add_argument("--build-check", action="store_true",
                   help="with --executor interpret: compile every launched kernel for sm_90 and sm_80 and keep the "
                        "registers/spills/shared figures in the trace (fxforge inspect --kernels); exit 1 if one fails")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("run", parents=[common], help="run an artifact on random or saved inputs")
    p.add_argument("artifact", help="an artifact directory (from fxforge compile)")
    p.add_argument("--input", action="append", default=[], metavar="SPEC", help="a random positional input, e.g. 'int64[2,16]'")
    p.add_argument("--kwarg", action="append", default=[], metavar="NAME=SPEC", help="a keyword input (SPEC or a literal)")
    p.add_argument("--input-file", metavar="FILE", help="inputs saved with torch.save: a tensor, a tuple or a dict")
    p.add_argument("--output-file", metavar="FILE", help="save the outputs here with torch.save")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    p.add_argument("--int-high", type=int, metavar="N", help="random integers are drawn from [0, N) (default: the vocabulary)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("inspect", parents=[common], help="show an artifact's pass trace and IR")
    p.add_argument("artifact", help="an artifact directory (from fxforge compile)")
    p.add_argument("--pass", dest="pass_name", metavar="NAME", help="print the IR after this pass (NAME, NAME#k or its position)")
    p.add_argument("--diff", action="store_true", help="with --pass: a unified diff before -> after; alone: every pass's diff")
    for view in INSPECT_VIEWS:
        p.add_argument(view.flag, dest=view.dest, action="store_true", help=view.help)
    p.set_defaults(func=cmd_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from fxforge.cli_inputs import UsageError
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


if __name__ == "__main__":
    sys.exit(main())
