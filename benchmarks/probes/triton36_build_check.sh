#!/usr/bin/env bash
# Issue #7's done-when on the GPU machine's Triton: `fxforge compile --executor interpret --build-check`, dense and
# with each --quantize scheme, on models outside the test zoo (benchmarks/probes/hidden_like.py), under Triton 3.6.0
# (CI's cached second venv) with TRITON_INTERPRET unset. Prints one line per compile: exit code and the spill figure.
#   MODELS="qwen2 neox phi" SCHEMES="none w8a8-int8" benchmarks/probes/triton36_build_check.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
venv=$(.ci/triton36-venv .venv/bin/python)
out=${OUT_DIR:-$(mktemp -d)}
for m in ${MODELS:-qwen2}; do
  for q in ${SCHEMES:-none w8a8-int8 w8a8-fp8 w4a16-int4 w4a8-fp}; do
    env -u TRITON_INTERPRET PYTHONPATH="$PWD" "$venv/bin/python" -c "import sys; from fxforge.cli.app import main; sys.exit(main())" \
      compile "benchmarks/probes/hidden_like.py:$m" --example-input 'int64[2,12]' -o "$out/$m-$q" \
      --executor interpret --build-check --quantize "$q" > "$out/$m-$q.log" 2>&1
    echo "$m $q rc=$? $(grep -Eo '[0-9]+ B spilled[^;]*' "$out/$m-$q.log" | head -1)"
  done
done
