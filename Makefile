# Two commands matter: `make demo` and `make test`. Each bootstraps .venv on a fresh machine.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all test-triton36 lint bench clean

# CI (`make test`, the README's command) leaves out the tests marked `slow` (exhaustive size sweeps, full method
# matrices) to stay under 15 minutes; `make test-all` runs everything, in both Triton venvs.
MARK ?= -m "not slow"
# CI's second venv: the GPU machine's Triton 3.6.0 (cached outside the clone by .ci/triton36-venv) runs the tests
# of the kernels themselves: every template under the interpreter, the sm_80/sm_90 build checks (standard specs, the
# decode table, every zoo model's launched kernels run under 3.6's interpreter). Model-level codegen tests
# (fusion plans, kernel sharing, quantized/pruned zoo models end to end) run once, in the main venv.
T36_TESTS ?= $(addprefix tests/codegen/,test_attention.py test_build.py test_buildcheck.py test_decode.py \
	test_decode_attention.py test_decode_fusions.py test_gemm.py test_kv_cache_kernels.py test_hadamard_kernel.py test_kernels.py test_qlinear.py \
	test_qlinear_block.py test_qlinear_decode.py test_qlinear_decode_split.py test_sass.py test_split_k.py \
	test_sparse_gemm.py test_sparse_qlinear.py test_triton_compat.py test_moe_template.py test_attention_sinks.py \
	test_rope_halves.py test_qlinear_decode_f8.py test_rope_before_transpose.py)

$(STAMP): pyproject.toml requirements-dev.txt
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) (Python 3.11) on PATH, or run: make PY=python3 ..."; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

# --dist loadfile: a module's tests on one worker (module fixtures built once); --no-loadscope-reorder: modules in
# collection order, which tests/conftest.py starts with the longest ones (LONGEST_FIRST) so the run ends on short ones.
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=15 $(MARK) tests

test-all: $(STAMP)
	$(MAKE) test MARK=
	$(MAKE) test-triton36 MARK= T36_TESTS=tests/codegen

test-triton36: $(STAMP)
	@venv=$$(.ci/triton36-venv $(BIN)/python) && echo "triton 3.6 venv: $$venv" && \
		PYTHONPATH=$(CURDIR) $$venv/bin/python -m pytest -n 2 -p no:cacheprovider $(MARK) $(T36_TESTS)

lint: $(STAMP)
	$(BIN)/ruff check fxforge tests benchmarks examples

bench: $(STAMP)
	$(BIN)/python benchmarks/compile_time.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
