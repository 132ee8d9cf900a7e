#!/usr/bin/env bash
# One-shot GPU check, for a lent GPU machine (python 3.12, torch 2.11+cu130, triton 3.6, no network):
# the Triton kernels' tests on the real GPU (no interpreter), the model benchmark (triton executor vs
# eager vs torch.compile), the decode benchmark (benchmarks/gpu/decode.py), and the sm_90 build figures. Everything it measures lands in $OUT.
# Run from the repository root:  OUT=/tmp/out bash benchmarks/gpu/run_all.sh
set -uo pipefail
: "${OUT:?set OUT to a folder for the results}"
if ls .whl/*.whl >/dev/null 2>&1; then  # carried wheels (lark is not installed there)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1 TRITON_INTERPRET=0  # real kernels, not the interpreter
if [ "${ONLY:-}" = "decode" ]; then  # the decode benchmark alone (< 8 min): ONLY=decode OUT=... bash run_all.sh
  timeout 470 python3 benchmarks/gpu/decode.py --out "$OUT" 2>&1 | tail -60 > "$OUT/decode.log"
  echo "done: $(ls "$OUT")"; exit 0
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/device.csv" 2>&1
python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/codegen/test_gemm.py tests/codegen/test_attention.py \
  tests/codegen/test_qlinear.py 2>&1 | tail -30 > "$OUT/gpu_tests.txt"
timeout 120 python3 benchmarks/gpu/check_decode_kernels.py > "$OUT/decode_kernels.txt" 2>&1  # the 4-bit decode PTX
timeout 400 python3 benchmarks/gpu/bench_models.py --out "$OUT/models.json" 2>&1 | tail -20 > "$OUT/models.log"
# decode (issue #13): Llama-3.2-1B-shaped, batch 1/8, context 1k/8k, six variants + 4096^3 GEMMs; its own
# budget (420 s) skips what does not fit and says so; the markdown table lands in $OUT and benchmarks/results/
timeout 470 python3 benchmarks/gpu/decode.py --out "$OUT" 2>&1 | tail -60 > "$OUT/decode.log"
# the MoE path (moe op: router + experts in two launches; int4 experts): Mixtral-shaped, batch 1/8, context 1k
timeout 200 python3 benchmarks/gpu/decode.py --model mixtral --variants eager "fxforge bf16" "fxforge w4a16-int4" \
  --contexts 1024 --budget-s 170 --out "$OUT" 2>&1 | tail -30 > "$OUT/decode-moe.log"
cp "$OUT"/decode-*.md benchmarks/results/ 2>/dev/null || true
echo "done: $(ls "$OUT")"
