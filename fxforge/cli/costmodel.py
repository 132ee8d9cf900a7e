"""`fxforge costmodel profile | train | eval`: build kernels and record their figures, fit the models, and
measure how well the shipped model ranks kernels of models it never saw.

    fxforge costmodel profile --models zoo.py:bert,zoo.py:llama --example-input 'int64[1,16]' -o data/
    fxforge costmodel train --data data/kernels-v1-....json -o model.json
    fxforge costmodel eval --models zoo.py:gpt2 --example-input 'int64[1,16]' --json eval.json [--model-file model.json]

Decisions:
- Models are `FILE:FACTORY` (as `fxforge compile` takes them); every model meets every example input and
  every scheme (`dense` and the quantization schemes). A model that does not take an input is skipped
  with the reason in the dataset, not an error.
- `eval` refuses models the model file was trained on (held-out models only; the file lists them).
- Jobs run in local processes (`--workers`, default 2) or on Ray (`--ray auto|HOST:PORT`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

SCHEMES = ("dense", "w8a8-int8", "w8a8-fp8", "w4a16-int4", "w4a8-fp")
PREDICTED = ("registers", "instructions")


def _list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", required=True, metavar="FILE:FACTORY[,...]", help="the models whose kernels to build")
    p.add_argument("--example-input", action="append", required=True, metavar="SPEC",
                   help="an input shape, e.g. 'int64[1,16]' (repeat for several shapes: decode M=1..16, prefill)")
    p.add_argument("--schemes", default=",".join(SCHEMES), help=f"comma list of {', '.join(SCHEMES)}")
    p.add_argument("--arch", default="90,80", help="GPU archs to build for (default 90,80)")
    p.add_argument("--workers", type=int, default=2, help="local worker processes (default 2)")
    p.add_argument("--ray", metavar="auto|HOST:PORT", help="run the jobs on a Ray cluster (needs the ray extra)")
    p.add_argument("--mlir", choices=("auto", "on", "off"), default="auto",
                   help="torch-mlir op-token features (auto: when torch-mlir is installed)")


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("costmodel", parents=[common], help="profile kernels, train and evaluate the cost model")
    cm = p.add_subparsers(dest="costmodel_command", required=True, metavar="{profile,train,eval}")
    prof = cm.add_parser("profile", parents=[common], help="build kernels for sm_90/sm_80 and record their figures")
    _common(prof)
    prof.add_argument("-o", "--output", default=None, help="dataset directory or .json file (default: the package's data/)")
    prof.set_defaults(func=cmd_profile)
    tr = cm.add_parser("train", parents=[common], help="fit the models on datasets")
    tr.add_argument("--data", required=True, metavar="FILE[,FILE]", help="datasets from `costmodel profile`")
    tr.add_argument("-o", "--output", required=True, help="the model file to write (JSON)")
    tr.set_defaults(func=cmd_train)
    ev = cm.add_parser("eval", parents=[common], help="rank quality of a model on held-out models' kernels")
    _common(ev)
    ev.add_argument("--model-file", help="the cost model file (default: the shipped one)")
    ev.add_argument("--json", required=True, metavar="OUT", help="write the figures here")
    ev.set_defaults(func=cmd_eval)


def _mlir(mode: str) -> bool:
    from fxforge.cli.inputs import UsageError
    from fxforge.costmodel.mlir import available

    if mode == "on" and not available():
        raise UsageError("--mlir on needs torch-mlir: pip install 'fxforge[mlir]' (torch-mlir==20261001)")
    return mode == "on" or (mode == "auto" and available())


def _run(args: argparse.Namespace) -> tuple[list[dict], list[str], list[int], bool]:
    from fxforge.cli import inputs as ci
    from fxforge.cli.costmodel_jobs import jobs_for, profile_job
    from fxforge.costmodel.parallel import parallelism, run_jobs
    from fxforge.costmodel.profile import attach_figures

    models, schemes = _list(args.models), _list(args.schemes)
    bad = [s for s in schemes if s not in SCHEMES]
    if bad:
        raise ci.UsageError(f"--schemes: {bad} are not among {list(SCHEMES)}")
    for spec in args.example_input:
        ci.parse_spec(spec)
    for m in models:
        path = Path(m.rpartition(":")[0])
        if not path.is_file():
            raise ci.UsageError(f"model file {path} does not exist (give FILE:FACTORY)")
    archs = [int(a) for a in _list(args.arch)]
    mlir = _mlir(args.mlir)
    def run(fn: Any, jobs: list) -> list:
        return run_jobs(fn, jobs, workers=args.workers, ray=args.ray, flat=False)

    rows = [r for rows in run(profile_job, jobs_for(models, args.example_input, schemes, archs, mlir)) for r in rows]
    # a batch is one build subprocess (torch + Triton imported once): a few per worker, not one per kernel
    batches = 4 * parallelism(args.workers, args.ray)
    return attach_figures(rows, run, batches=batches), models, archs, mlir


def cmd_profile(args: argparse.Namespace) -> int:
    from fxforge.costmodel import dataset

    rows, models, archs, mlir = _run(args)
    ds = dataset.new_dataset(rows, archs=archs, models=models, inputs=args.example_input,
                             feature_set="ir+mlir" if mlir else "ir")
    path = dataset.save(ds, args.output or dataset.DATA_DIR)
    built = dataset.measured(rows)
    skipped = [r for r in rows if "skipped" in r]
    print(f"{len(built)} kernel builds measured ({len(rows) - len(built) - len(skipped)} failed, {len(skipped)} jobs "
          f"skipped), feature set {ds['feature_set']}: {path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from fxforge.costmodel import dataset
    from fxforge.costmodel.models import save_model, train

    sets = [dataset.load(p) for p in _list(args.data)]
    rows = [r for ds in sets for r in ds["rows"]]
    meta = {"models": sorted({m for ds in sets for m in ds["models"]}),
            "feature_set": "+".join(sorted({ds["feature_set"] for ds in sets})),
            "datasets": [Path(p).name for p in _list(args.data)]}
    model = train(rows, meta)
    path = save_model(model, args.output)
    print(f"trained on {model.meta['n_rows']} kernels of {len(meta['models'])} models ({meta['feature_set']}): {path}")
    return 0


def _same_model(a: str, b: str) -> bool:
    pa, _, fa = a.rpartition(":")
    pb, _, fb = b.rpartition(":")
    return fa == fb and (Path(pa).name == Path(pb).name)


def cmd_eval(args: argparse.Namespace) -> int:
    from fxforge.cli.inputs import UsageError
    from fxforge.costmodel.evaluate import evaluate_rows
    from fxforge.costmodel.models import load_model, shipped_model

    model = load_model(args.model_file) if args.model_file else shipped_model()
    if model is None:
        raise UsageError("no shipped cost model in this install; give --model-file (from `fxforge costmodel train`)")
    seen = [m for m in _list(args.models) if any(_same_model(m, t) for t in model.meta.get("models", []))]
    if seen:
        raise UsageError(f"{seen} were in the model's training set; eval takes held-out models only")
    rows, _, _, mlir = _run(args)
    report: dict[str, Any] = evaluate_rows(model, rows)
    report["feature_set"] = "ir+mlir" if mlir else "ir"
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("n_kernels", "spearman", "mape", "roofline_spearman")}))
    return 0
