#!/usr/bin/env bash
# One-shot GPU check, for a lent GPU machine (python 3.12, torch 2.11+cu130, triton 3.6, no network):
# the Triton kernels' tests on the real GPU (no interpreter), the model benchmark (triton executor vs
# eager vs torch.compile), and the sm_90 build figures. Everything it measures lands in $OUT.
# Run from the repository root:  OUT=/tmp/out bash benchmarks/gpu/run_all.sh
set -uo pipefail
: "${OUT:?set OUT to a folder for the results}"
if ls .whl/*.whl >/dev/null 2>&1; then  # carried wheels (lark is not installed there)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1 TRITON_INTERPRET=0  # real kernels, not the interpreter
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/device.csv" 2>&1
python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/codegen/test_gemm.py tests/codegen/test_attention.py \
  tests/codegen/test_qlinear.py 2>&1 | tail -30 > "$OUT/gpu_tests.txt"
timeout 400 python3 benchmarks/gpu/bench_models.py --out "$OUT/models.json" 2>&1 | tail -20 > "$OUT/models.log"
echo "done: $(ls "$OUT")"
