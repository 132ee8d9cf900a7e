"""`fxforge compile FILE.py:factory`: capture a model with torch.export, compile it, write an artifact.

Decisions:
- Compile options that set a `CompileConfig` field (the compression options: `--quantize`,
  `--quantize-override`, `--quantize-group`, `--lorc-rank`, `--calibration`) are rows of
  `CONFIG_FLAGS`: flag, config field, a parser of the command line value(s), metavar and help. The
  parser and `config_from_args` read the table, so a later option (`--sparsity`, `--ffn-skip`,
  `--budget`) is one row. A row's parser raises `UsageError` naming the flag and the valid values.
- A flag that is not given leaves the config's default; `none` as a scheme means "no quantization"
  (for an override: keep those layers high precision).
- Pass names and the example inputs are checked before the model file is imported (a typo should
  not wait for the capture).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fxforge.cli.calibration import load_calibration
from fxforge.cli.inputs import UsageError


def _scheme(flag: str, text: str) -> str | None:
    from fxforge.ir.lowp_ops import SCHEMES

    name = text.strip().lower()
    if name == "none":
        return None
    if name not in SCHEMES:
        raise UsageError(f"{flag} {text!r} is not a quantization scheme; use one of {', '.join(SCHEMES)} or none")
    return name


def _overrides(flag: str, items: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for item in items:
        pattern, sep, scheme = item.rpartition("=")
        if not sep or not pattern.strip():
            raise UsageError(f"bad {flag} {item!r}: write GLOB=SCHEME, e.g. 'model.layers.0.*=w8a8-int8' or '*.down_proj=none'")
        out[pattern.strip()] = _scheme(flag, scheme)
    return out


_SWITCH = {"on": True, "off": False, "auto": None}


def _switch(flag: str, text: str) -> bool | None:
    if text.strip().lower() not in _SWITCH:
        raise UsageError(f"{flag} {text!r} must be on, off or auto (the scheme's default with calibration data)")
    return _SWITCH[text.strip().lower()]


def _choice(choices: tuple[str, ...]) -> Callable[[str, str], str]:
    def parse(flag: str, text: str) -> str:
        if text.strip().lower() not in choices:
            raise UsageError(f"{flag} {text!r} must be one of {', '.join(choices)}")
        return text.strip().lower()

    return parse


def _count(least: int) -> Callable[[str, str], int]:
    def parse(flag: str, text: str) -> int:
        if not text.strip().isdigit() or int(text) < least:
            raise UsageError(f"{flag} {text!r} must be an integer >= {least}")
        return int(text)

    return parse


def _share(flag: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"{flag} {text!r} must be a number, the share of FFN token-rows to skip (e.g. 0.2)") from None


def _budget(flag: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"{flag} {text!r} must be a number, the mean relative output error allowed (e.g. 0.05)") from None


@dataclass(frozen=True)
class ConfigFlag:
    """One `fxforge compile` flag that sets the `CompileConfig` field `field` to `parse(flag, value)`
    (with `repeat`, the flag may be given several times and `parse` gets the list of values)."""

    flag: str
    field: str
    parse: Callable[[str, Any], Any]
    metavar: str
    help: str
    repeat: bool = False


CONFIG_FLAGS: tuple[ConfigFlag, ...] = (
    ConfigFlag("--quantize", "quantize", _scheme, "SCHEME",
               "quantize every linear (lm_head and tied embeddings stay high precision): w8a8-int8, w8a8-fp8, "
               "w4a16-int4, w4a8-fp, the block schemes mxfp8, mxfp6, mxfp4, mxint8, nvfp4, or none"),
    ConfigFlag("--quantize-override", "quantize_overrides", _overrides, "GLOB=SCHEME",
               "the scheme (or none) of the layers whose name matches GLOB; repeatable, the first match wins", repeat=True),
    ConfigFlag("--quantize-group", "quantize_group", _count(1), "N", "group size of the grouped (4-bit) schemes"),
    ConfigFlag("--lorc-rank", "lorc_rank", _count(0), "N", "low-rank error compensation of quantized layers (0: off)"),
    ConfigFlag("--quantize-method", "quantize_method", _choice(("auto", "rtn")), "auto|rtn",
               "auto: with calibration data each scheme runs its best methods (rotation, smoothing, GPTQ); rtn: round to nearest"),
    ConfigFlag("--rotate", "rotate", _switch, "on|off|auto", "Hadamard rotations (residual stream + online) before quantizing"),
    ConfigFlag("--smooth", "smooth", _switch, "on|off|auto", "SmoothQuant / AWQ per-channel smoothing (needs --calibration)"),
    ConfigFlag("--gptq", "gptq", _switch, "on|off|auto", "GPTQ rounding (needs --calibration)"),
    ConfigFlag("--sparsity", "sparsity", lambda flag, v: None if v.strip().lower() == "none" else v.strip(), "N:M",
               "N:M pruning of every linear but lm_head (e.g. 2:4, 4:8; composes with --quantize)"),
    ConfigFlag("--sparsity-method", "sparsity_method", lambda flag, v: v.strip(), "METHOD",
               "magnitude, wanda or sparsegpt (default: sparsegpt with --calibration, else magnitude)"),
    ConfigFlag("--sparsity-refine", "sparsity_refine", _count(0), "STEPS",
               "steps of block-output refitting of the kept values after pruning (default: on with --calibration; 0: off)"),
    ConfigFlag("--ffn-skip", "ffn_skip", _share, "SHARE",
               "skip this share of FFN token-rows at run time, per token, by a gate fitted on --calibration (0 < SHARE <= 0.9)"),
    ConfigFlag("--ffn-skip-gate", "ffn_skip_gate", _choice(("linear", "quadratic", "carry", "oracle")), "linear|quadratic|carry|oracle",
               "the skip gate: least-squares predictor (default), FFN-SkipLLM's carry-over rule, or the oracle (measures only)"),
    ConfigFlag("--ffn-skip-warmup", "ffn_skip_warmup", _count(0), "N", "tokens at positions below N always run their FFNs"),
    ConfigFlag("--ffn-skip-mode", "ffn_skip_mode", _choice(("auto", "compact", "mask")), "auto|compact|mask",
               "compact the kept rows, or keep flags on the device (decode: no host sync); auto: flags in decode graphs"),
    ConfigFlag("--kv-cache", "kv_cache", lambda flag, v: None if v.strip().lower() == "none" else
               _choice(("bfp4", "bfp8", "fp8", "int8"))(flag, v), "bfp4|bfp8|fp8|int8|none",
               "store K (after RoPE) and V as a compressed KV cache would (teacher-forced accuracy; bytes per token in the report)"),
    ConfigFlag("--kv-block", "kv_block", lambda flag, v: int(_choice(("16", "32", "64"))(flag, v)), "16|32|64",
               "elements per shared scale along head_dim of --kv-cache (default 32)"),
    ConfigFlag("--k-sort", "k_sort", _choice(("off", "on", "auto")), "off|on|auto",
               "per-KV-head channel permutation of K chosen on --calibration to cut the cache's logit error (default auto)"),
    ConfigFlag("--budget", "budget", _budget, "ERR",
               "choose dense or a scheme per linear: fastest predicted plan whose mean relative output error on "
               "--calibration stays <= ERR (see fxforge inspect --plan)"),
    ConfigFlag("--calibration", "calibration", lambda flag, path: load_calibration(path), "FILE",
               "example inputs the quantization errors are measured on: a .pt file (torch.save of a list of examples, "
               "each a tensor, a tuple of args or a dict of kwargs) or a .safetensors file with keys '<example>.<input>'"),
)


def _csv(values: list[str]) -> list[str]:
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from fxforge.config import EXECUTOR_CHOICES

    p = sub.add_parser("compile", parents=[common], help="compile a model (torch.export) into an artifact directory")
    p.add_argument("model", help="path/to/file.py:factory (a function or nn.Module class making the model, or a module)")
    p.add_argument("--example-input", action="append", default=[], metavar="SPEC",
                   help="an example positional input, dtype[d0,d1,...], e.g. 'int64[2,128]' (repeat per input)")
    p.add_argument("--kwarg", action="append", default=[], metavar="NAME=SPEC", help="an example keyword input (or a literal)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="the artifact directory to write")
    p.add_argument("--passes", action="append", metavar="A,B", help="the pass pipeline (default: the default pipeline)")
    p.add_argument("--disable", action="append", default=[], metavar="X", help="skip these passes (repeatable, commas)")
    p.add_argument("--pass-option", action="append", default=[], metavar="PASS.OPTION=VALUE",
                   help="a pass option, e.g. constant_fold.max_elements=0 (repeatable)")
    p.add_argument("--executor", default="auto", choices=EXECUTOR_CHOICES)
    p.add_argument("--verify", action="store_true", help="verify the IR after every pass")
    p.add_argument("--debug", action="store_true", help="verify, and print the compile report")
    p.add_argument("--no-dynamic", action="store_true", help="export with the example shapes only (no dynamic dims)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random example inputs (and of the factory)")
    p.add_argument("--build-check", action="store_true",
                   help="with --executor interpret: compile every launched kernel for sm_90 and sm_80 and keep the "
                        "registers/spills/shared figures in the trace (fxforge inspect --kernels); exit 1 if one fails")
    group = p.add_argument_group("compression")
    for row in CONFIG_FLAGS:
        group.add_argument(row.flag, dest=row.field, metavar=row.metavar, help=row.help,
                           action="append" if row.repeat else "store", default=[] if row.repeat else None)
    p.set_defaults(func=cmd_compile)


def config_from_args(args: argparse.Namespace) -> Any:
    """The `CompileConfig` of a `compile` command line; pass names are checked here, before any capture."""
    from fxforge.cli import inputs as ci
    from fxforge.config import CompileConfig
    from fxforge.pipeline import build_passes, check_calibration, default_pipeline

    passes = _csv(args.passes) if args.passes else None
    options = {k: ci.parse_literal(v) for k, v in (ci.parse_kwarg(o, "--pass-option") for o in args.pass_option)}
    fields = {row.field: row.parse(row.flag, getattr(args, row.field)) for row in CONFIG_FLAGS
              if getattr(args, row.field) not in (None, [])}
    config = CompileConfig.from_options(None, passes=passes, disable=_csv(args.disable), executor=args.executor,
                                        verify=args.verify, debug=args.debug, dynamic=False if args.no_dynamic else None,
                                        pass_options=options, **fields)
    names = passes if passes is not None else default_pipeline(config)
    try:
        build_passes(names, config.disable)
    except ValueError as e:
        raise UsageError(f"{e}; fix --passes/--disable/--pass-option") from None
    try:
        if config.budget is None:  # with a budget, the plan's selection reads the calibration
            check_calibration([n for n in names if n not in config.disable], config.calibration)
    except ValueError as e:
        raise UsageError(f"--calibration: {e}".replace("quantize='w8a8-int8'", "--quantize w8a8-int8")) from None
    return config


def cmd_compile(args: argparse.Namespace) -> int:
    if args.executor == "interpret" and "triton" not in sys.modules:
        os.environ["TRITON_INTERPRET"] = "1"  # importing torch pulls in triton, which picks the interpreter then
    import torch

    import fxforge
    from fxforge.cli import inputs as ci

    if args.build_check and args.executor != "interpret":
        raise UsageError("--build-check records the kernel launches under Triton's interpreter; add --executor interpret")
    if not args.example_input and not args.kwarg:
        raise UsageError("give the example inputs: --example-input 'int64[2,128]' (one per positional input)")
    ci.check_inputs(args.example_input, args.kwarg)
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a directory; give -o a directory for the artifact")
    config = config_from_args(args)
    torch.manual_seed(args.seed)
    model = ci.load_model(args.model)
    example_args, example_kwargs = ci.make_inputs(args.example_input, args.kwarg, args.seed, ci.int_high_of_model(model))
    start = time.perf_counter()
    compiled = fxforge.compile_aot(model, example_args, example_kwargs or None, config=config)
    build_lines, build_failed = [], False
    if args.build_check:  # before save: the figures go into the trace
        from fxforge.codegen.buildcheck import RECORD_NAME, check_kernels, summary

        check = check_kernels(compiled, example_args, example_kwargs=example_kwargs or None)
        compiled.record.add_check(RECORD_NAME, check.stats, check.seconds)  # files the figures in the trace
        build_lines, build_failed = summary(compiled.record.trace), not check.ok
    compiled.save(str(out))
    _print_summary(args, model, compiled, example_args, example_kwargs, time.perf_counter() - start)
    for line in build_lines:
        print(f"  build check {line}")
    if build_failed:  # the artifact is written; `fxforge inspect --kernels` shows the errors
        print(f"fxforge: error: kernels failed the GPU build check; see fxforge inspect {out} --kernels", file=sys.stderr)
        return 1
    return 0


def _quantize_line(trace: Any) -> str | None:
    records = [r for r in trace.records if r.name == "quantize" and r.stats.get("layers") is not None]
    if not records:
        return None
    stats = records[-1].stats
    total = stats["summary"]
    return (f"  quantize: {total['layers_quantized']} linears ({stats['scheme'] or 'overrides'}), {len(stats['skipped'])} kept "
            f"high precision; weights {total['bytes_fp16_before'] / 1e6:.2f} MB fp16 -> {total['bytes_after'] / 1e6:.2f} MB; "
            f"mean layer rel err {total['mean_rel_error']:.4f} on {stats['error_data']} (fxforge inspect --quant)")


def _print_summary(args: argparse.Namespace, model: Any, compiled: Any, example_args: tuple, example_kwargs: dict,
                   seconds: float) -> None:
    import torch

    from fxforge.cli import inputs as ci

    out = Path(args.output)
    rec, graph = compiled.record, compiled.graph
    shown = [f"{n}={ci.tensor_type(t) if isinstance(t, torch.Tensor) else repr(t)}"
             for n, t in ci.named_inputs(compiled.arg_names, example_args, example_kwargs)]
    print(f"fxforge: compiled {type(model).__name__} ({args.model}) in {seconds:.2f} s")
    print(f"  example inputs: {', '.join(shown)}")
    print(f"  signature: {ci.signature(graph)}")
    print(f"  graph: {rec.aten_ops} ATen ops -> {len(graph.ops)} fxforge ops: {ci.counts(graph.op_counts())}")
    if rec.trace is not None:
        print("  passes: " + ", ".join(f"{r.name} {r.seconds * 1e3:.1f} ms" for r in rec.trace.records))
        quantized = _quantize_line(rec.trace)
        if quantized:
            print(quantized)
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
