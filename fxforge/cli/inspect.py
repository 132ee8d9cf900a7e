"""`fxforge inspect ARTIFACT`: the pass trace of an artifact, the IR after a pass, diffs, and views.

Decisions:
- Each view beside the pass trace is an `InspectView` in `INSPECT_VIEWS` (flag, help, function of the
  loaded module and the parsed arguments). A new view (e.g. `--kernels`) is one more entry there:
  the parser and the command pick it up.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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


def _show_sparsity(module: Any) -> str | None:
    """Per pruned layer: N:M pattern, method, scheme of the kept values, relative output error, bytes."""
    records = [r for r in module.record.trace.records if r.name == "sparsify" and r.stats.get("layers") is not None]
    if not records:
        return None
    stats = records[-1].stats
    rows = [f"sparsity: method {stats['method']} (errors measured on {stats['error_data']})"
            + (f"; {stats['note']}" if "note" in stats else ""),
            f"{'layer':<44}{'pattern':<8}{'method':<11}{'scheme':<12}{'rel err':>9}{'fp16 B':>10}{'after B':>10}{'tail':>6}"]
    for name, layer in stats["layers"].items():
        rows.append(f"{name:<44}{layer['pattern']:<8}{layer['method']:<11}{layer['scheme'] or '-':<12}"
                    f"{layer['rel_error']:>9.4f}{layer['bytes_fp16']:>10}{layer['bytes_after']:>10}{layer['dense_tail']:>6}"
                    + (f"  ({layer['note']})" if "note" in layer else ""))
    rows += [f"{name:<44}{why}" for name, why in stats["skipped"].items()]
    total = stats["summary"]
    rows.append(f"total: {total['layers_pruned']} layers, {total['bytes_fp16_before']} B fp16 -> {total['bytes_after']} B; "
                f"mean rel err {total['mean_rel_error']:.4f}, max {total['max_rel_error']:.4f}")
    return "\n".join(rows)


def _show_quant(module: Any, args: argparse.Namespace) -> str:
    """Per quantized layer: scheme, group used (+ zero-padded columns), relative output error, weight bytes
    before (fp16) and after; then the pruned layers, when the artifact is sparse."""
    sparse = _show_sparsity(module)
    records = [r for r in module.record.trace.records if r.name == "quantize" and r.stats.get("layers")]
    if not records:
        return sparse or "no quantize pass in this artifact (compile with a quantize scheme, e.g. CompileConfig(quantize='w4a8-fp'))"
    if sparse:
        return _quant_table(module, records) + "\n" + sparse
    return _quant_table(module, records)


def _quant_table(module: Any, records: list) -> str:
    stats = records[-1].stats
    rows = [f"quantization: {stats['scheme']} (errors measured on {stats['error_data']})",
            f"{'layer':<44}{'scheme':<12}{'group':>10}{'rel err':>9}{'fp16 B':>10}{'after B':>10}{'ratio':>7}"]
    for name, layer in stats["layers"].items():
        group = str(layer.get("group") or "channel") + (f"+{layer['padded']}" if layer.get("padded") else "")
        rows.append(f"{name:<44}{layer['scheme']:<12}{group:>10}{layer['rel_error']:>9.4f}{layer['bytes_fp16']:>10}"
                    f"{layer['bytes_after']:>10}{layer['bytes_fp16'] / max(layer['bytes_after'], 1):>6.2f}x")
    rows += [f"{name:<44}{why}" for name, why in stats["skipped"].items()]
    rows += _method_rows(module.record.trace.records)
    total = stats["summary"]
    rows.append(f"total: {total['layers_quantized']} layers, {total['bytes_fp16_before']} B fp16 -> {total['bytes_after']} B; "
                f"mean rel err {total['mean_rel_error']:.4f}, max {total['max_rel_error']:.4f}"
                + (f"; model output rel err {total['output_rel_error']:.4f}" if "output_rel_error" in total else ""))
    return "\n".join(rows)


def _method_rows(records: list[Any]) -> list[str]:
    """The accuracy methods the compile ran (or skipped, and why) and each layer's error after each."""
    from fxforge.passes.quant_methods import METHODS, method_report

    plan = next((r.stats["methods"] for r in records if r.name == "rotate" and "methods" in r.stats), None)
    if plan is None:
        return []
    rows = ["methods: " + "; ".join(f"{m} {plan['methods'][m]}" for m in METHODS)]
    rows += [f"skipped: {m} ({why})" for m, why in plan["skipped"].items()]
    report = method_report(records)
    steps = [s for s in ("rtn", "rotate", "smooth", "final") if any(s in v for v in report.values())]
    if report and steps != ["rtn", "final"]:
        rows.append(f"{'error per layer on the calibration rows':<44}" + "".join(f"{s:>9}" for s in steps))
        for name, errs in report.items():
            rows.append(f"{name:<44}" + "".join(f"{errs[s]:>9.4f}" if s in errs else f"{'-':>9}" for s in steps))
    return rows


def _show_ffn_skip(module: Any, args: argparse.Namespace) -> str:
    from fxforge.passes.ffn_skip import format_report

    records = [r for r in module.record.trace.records if r.name == "ffn_skip" and "target" in r.stats]
    if not records:
        return "no ffn_skip pass in this artifact (compile with ffn_skip=<share> and calibration=[...])"
    return format_report(records[-1].stats)


def _show_plan(module: Any, args: argparse.Namespace) -> str:
    """The plan `--budget` chose: per site the choice, its measured error and predicted time."""
    plan = module.record.plan
    if plan is None:
        return f"no budget plan in this artifact (compile with --budget B --calibration FILE); weight bytes {module.record.weight_bytes}"
    lines = [f"budget {plan['budget']}: {'met' if plan['met'] else 'NOT met'}, measured error {plan['error']}, "
             f"predicted time {plan['predicted_time_us']} us ({plan['predictor']}); weight bytes {module.record.weight_bytes}",
             f"  {'site':<40}{'choice':<14}{'error':>10}{'time us':>10}{'bytes':>12}"]
    for site, row in plan["plan"].items():
        lines.append(f"  {site:<40}{row['choice']:<14}{row['error']:>10.4f}{row['predicted_time_us']:>10.2f}"
                     f"{row['weight_bytes']:>12}")
    lines += [f"  note: {n}" for n in plan.get("notes", [])]
    return "\n".join(lines)


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
    InspectView("--plan", "the plan --budget chose: per site the choice, error and predicted time; weight bytes", _show_plan),
    InspectView("--quant", "per quantized layer: scheme, output error, weight bytes before/after", _show_quant),
    InspectView("--ffn-skip", "per FFN block: gated, threshold, calibrated share, gate quality vs the oracle", _show_ffn_skip),
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
    from fxforge.cli.inputs import UsageError

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


def _compression(cfg: Any) -> str:
    """` quantize=w8a8-int8 ...`: the compression options (`compile.CONFIG_FLAGS`) the artifact was compiled with."""
    from fxforge.cli.compile import CONFIG_FLAGS
    from fxforge.config import CompileConfig

    default = CompileConfig()
    shown = [f"{row.field}={getattr(cfg, row.field)}" for row in CONFIG_FLAGS
             if row.field != "calibration" and getattr(cfg, row.field) != getattr(default, row.field)]
    return "".join(" " + s for s in shown)


def _overview(module: Any, args: argparse.Namespace) -> str:
    from fxforge.cli import inputs as ci
    from fxforge.runtime.artifact import FILES

    manifest = json.loads((Path(args.artifact) / FILES["manifest"]).read_text())
    versions = ", ".join(f"{k} {v}" for k, v in manifest.get("versions", {}).items())
    cfg = module.config
    lines = [f"artifact {args.artifact}: {module.source or 'model'} ({versions})",
             f"config: passes={','.join(cfg.passes) if cfg.passes is not None else 'default'} "
             f"disable={','.join(cfg.disable) or '-'} executor={cfg.executor} ({module.program.executor_name}) "
             f"dynamic={cfg.dynamic is not False} verify={cfg.verify}{_compression(cfg)}",
             f"signature: {ci.signature(module.graph)}", "",
             f"{'#':>3}  {'pass':<16}{'ms':>9}{'ops':>14}  changes / stats"]
    for i, r in enumerate(module.record.trace.records, 1):
        before, after = sum(r.ops_before.values()), sum(r.ops_after.values())
        delta = {k: r.ops_after.get(k, 0) - r.ops_before.get(k, 0) for k in {*r.ops_before, *r.ops_after}}
        changes = ", ".join(f"{k} {v:+d}" for k, v in sorted(delta.items()) if v)
        stats = _compact(r.stats) if r.stats else ""
        lines.append(f"{i:>3}  {r.name:<16}{r.seconds * 1e3:>9.2f}{f'{before} -> {after}':>14}  "
                     + "  ".join(x for x in (changes, stats) if x))
    lines += ["", f"final graph: {len(module.graph.ops)} ops: {ci.counts(module.graph.op_counts(), top=50)}",
              f"weight bytes (as stored): {module.record.weight_bytes}"]
    plan = module.record.plan
    if plan is not None:
        chosen = [row["choice"] for row in plan["plan"].values()]
        lines.append(f"plan (budget {plan['budget']}, {'met' if plan['met'] else 'NOT met'}, error {plan['error']}): "
                     f"{ci.counts({c: chosen.count(c) for c in set(chosen)})} (--plan: per site)")
    if module.record.externs:
        lines.append(f"extern (runs through torch): {ci.counts(module.record.externs)}")
    lines += [f"note: {n}" for n in module.record.notes]
    flags = ", ".join(f"{v.flag}: {v.help}" for v in INSPECT_VIEWS)
    lines.append(f"(--pass NAME|NAME#k|N: the IR after that pass; --diff: what it changed; {flags})")
    return "\n".join(lines)



def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("inspect", parents=[common], help="show an artifact's pass trace and IR")
    p.add_argument("artifact", help="an artifact directory (from fxforge compile)")
    p.add_argument("--pass", dest="pass_name", metavar="NAME", help="print the IR after this pass (NAME, NAME#k or its position)")
    p.add_argument("--diff", action="store_true", help="with --pass: a unified diff before -> after; alone: every pass's diff")
    for view in INSPECT_VIEWS:
        p.add_argument(view.flag, dest=view.dest, action="store_true", help=view.help)
    p.set_defaults(func=cmd_inspect)
