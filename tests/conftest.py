"""Test-wide settings, applied before anything imports triton or compiles a model.

- TRITON_INTERPRET=1: there is no GPU in CI; Triton kernels run in the interpreter (it must be set
  before triton is first imported). GPU-target build checks run in subprocesses without it.
- FXFORGE_VERIFY=1: every compile in the tests verifies the IR after every pass.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("FXFORGE_VERIFY", "1")
os.environ.setdefault("MPLBACKEND", "Agg")  # fxforge.inspect tests draw without a display


# Tests `make test` (CI) leaves out, on top of those decorated `@pytest.mark.slow`, to keep CI under 15 minutes;
# `make test-all` runs them. Each row names what still covers the same ground in CI.
SLOW_IN_CI = {
    # the other qlinear schemes (int8, int4, W4A8) run end to end; fp8 and LoRC kernels have interpreter unit tests
    "tests/codegen/test_qlinear_models.py::test_quantized_llama_runs_qlinear_kernels[w8a8-fp8]",
    "tests/codegen/test_qlinear_models.py::test_quantized_llama_runs_qlinear_kernels[w4a8-fp-lorc4]",
    # pruned + W8A8-INT8 and plain 2:4 run end to end; every value kind has test_sparse_qlinear unit tests
    "tests/codegen/test_sparse_models.py::test_pruned_and_quantized_llama_runs_the_sparse_qlinear_template[w8a8-fp8]",
    "tests/codegen/test_sparse_models.py::test_pruned_and_quantized_llama_runs_the_sparse_qlinear_template[w4a16-int4]",
    "tests/codegen/test_sparse_models.py::test_pruned_and_quantized_llama_runs_the_sparse_qlinear_template[w4a8-fp]",
    "tests/codegen/test_sparse_models.py::test_pruned_llama_runs_the_sparse_template[4:8]",
    # nvfp4 runs end to end; mxfp4's codes are unit-tested
    "tests/codegen/test_qlinear_block.py::test_quantized_llama_runs_block_kernels[mxfp4]",
    # the online Hadamard kernels have unit tests against the reference (fused act-quant included); the whole
    # rotated model through them runs in make test-all
    "tests/codegen/test_hadamard_kernel.py::test_rotated_model_runs_hadamard_kernels_and_matches_reference",
    # W4A8 runs end to end through the decode layout (tests/passes/test_decode_layout.py); int8 and int4 here
    "tests/codegen/test_qlinear_models.py::test_quantized_llama_runs_qlinear_kernels[w4a8-fp]",
    # Mistral is Llama's graph plus a sliding window that these lengths never reach; llama, gpt2, bert stay
    "tests/codegen/test_interpret_models.py::test_interpret_matches_reference[mistral]",
}
# The sm_80 builds of the kernel files run in make test-all: CI builds sm_90, the GPU machine's arch (H100/H200),
# on Triton 3.6; both archs are built on both Tritons by `make test-all` and the build check (`--build-check`).
SM80_BUILD = ("tests/codegen/*build*[[]80]", "tests/codegen/*build*[[]*-80]")
# Left to the Triton 3.6.0 run (make test-triton36) on the newest Triton: the GPU builds of the kernel files (the GPU
# machine runs 3.6, so CI builds sm_80 and sm_90 there; make test-all builds them on both) and the zoo models'
# launched-kernel build check (node ids, or fnmatch patterns with a '*').
LEFT_TO_TRITON36 = {
    "tests/codegen/test_build.py::test_standard_specs_build[90]",
    "tests/codegen/test_build.py::test_decode_table_builds[90]",
    "tests/codegen/test_qlinear.py::test_qlinear_kernels_build[90]",
    "tests/codegen/test_qlinear_block.py::test_block_kernels_build_without_spills[90]",
    "tests/codegen/test_decode_attention.py::test_decode_attention_builds[90]",
    "tests/codegen/test_hadamard_kernel.py::test_builds_without_spills[90]",
    "tests/codegen/test_decode_fusions.py::test_decode_step_fused_kernels_build_without_spills",
    "tests/codegen/test_buildcheck.py::test_every_kernel_builds[[]*",
    "tests/codegen/test_buildcheck.py::test_generated_and_template_kernels_are_found",
    "tests/codegen/test_buildcheck.py::test_inspect_kernels_cli",
    "tests/codegen/test_build.py::test_standard_specs_build[80]",
    "tests/codegen/test_build.py::test_decode_table_builds[80]",
    "tests/codegen/test_qlinear.py::test_qlinear_kernels_build[80]",
    "tests/codegen/test_qlinear_block.py::test_block_kernels_build_without_spills[80]",
    "tests/codegen/test_decode_attention.py::test_decode_attention_builds[80]",
    "tests/codegen/test_hadamard_kernel.py::test_builds_without_spills[80]",
    "tests/codegen/test_qlinear_decode.py::test_decode_kernel_builds_at_two_instructions_per_weight[[]*",
    "tests/codegen/test_qlinear_decode.py::test_prefill_tile_builds_without_spills[[]*",
    "tests/codegen/test_qlinear_decode.py::test_fp4_narrow_group_builds_without_spills[[]*",
    "tests/codegen/test_qlinear_decode.py::test_fused_decode_kernels_build_without_spills[[]*",
    "tests/codegen/test_qlinear_decode_post.py::test_post_norm_decode_kernel_builds_without_spills[[]*",
    "tests/codegen/test_triton_compat.py::test_int8_dot_builds[[]*",
}


# Model-level tests inside the kernel files run once, in the main venv (the 3.6 run is about the kernels).
MAIN_VENV_ONLY = {
    "tests/codegen/test_hadamard_kernel.py::test_rotated_model_runs_hadamard_kernels_and_matches_reference",
    "tests/codegen/test_qlinear_block.py::test_quantized_llama_runs_block_kernels[nvfp4]",
    "tests/codegen/test_attention_sinks.py::test_gpt_oss_attention_is_one_op_with_sinks[reference]",
    "tests/codegen/test_moe_template.py::test_moe_decoder_decodes_eager_tokens*",
}


# CI runs the main suite on 2 xdist workers with `--dist loadfile --no-loadscope-reorder` (Makefile): a module's
# tests run on one worker (its module fixtures are built once) and modules are handed out in collection order. The
# longest modules (CI's --durations, >= ~25 s each) are moved to the front, so the modules left at the end are
# short ones and neither worker idles long while the other finishes (the notebook, collected last, used to run
# alone for ~50 s at the end). The rest keep their collection order.
LONGEST_FIRST = (
    "tests/test_notebook.py",
    "tests/passes/test_ffn_skip.py",
    "tests/costmodel/test_cli_costmodel.py",
    "tests/models/test_end_to_end.py",
    "tests/test_cli.py",
    "tests/passes/test_kv_cache_ksort.py",
    "tests/runtime/test_jit_calibration.py",
    "tests/runtime/test_generate.py",
    "tests/passes/test_sparsify_refine.py",
    "tests/models/test_multi_result.py",
    "tests/codegen/test_interpret_models.py",
    "tests/export/test_compressed_tensors.py",
    "tests/runtime/test_decode_launches.py",
    "tests/runtime/test_interpret_anywhere.py",
)


def _module_rank(item) -> int:
    path = item.nodeid.split("::", 1)[0]
    return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(config, items):
    from fnmatch import fnmatchcase

    import pytest
    import triton

    newest = tuple(int(p) for p in triton.__version__.split(".")[:2]) > (3, 6)
    slow = SLOW_IN_CI | set(SM80_BUILD) | (LEFT_TO_TRITON36 if newest else MAIN_VENV_ONLY)
    for item in items:
        if item.nodeid in slow or any(fnmatchcase(item.nodeid, p) for p in slow if "*" in p):
            item.add_marker(pytest.mark.slow)
    items.sort(key=_module_rank)  # stable: the order inside a module and among the other modules is kept
