"""The `fxforge` command line end to end: compile a model file, run the artifact in a fresh process,
inspect it, and the one-line errors (exit status 2) for bad input.

`compile` and `run` go through real processes (`python -m fxforge.cli`), so the artifact is shown to
run without the model's source; `inspect` and most error cases call `main(argv)` in this process,
which is the same code without the start-up cost.
"""

import importlib.util
import shutil
import subprocess
import sys

import pytest
import torch

from fxforge.cli import inputs as cli_inputs
from fxforge.cli import main
from fxforge.cli.inputs import UsageError

MODEL_SOURCE = '''
import torch
from transformers import LlamaConfig, LlamaForCausalLM


def make_model():
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=128, vocab_size=256)
    return LlamaForCausalLM(config).eval()
'''
EXAMPLE = "int64[2,8]"


def fxforge(*args):
    return subprocess.run([sys.executable, "-m", "fxforge.cli", *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    (root / "tiny_llama.py").write_text(MODEL_SOURCE)
    return root


@pytest.fixture(scope="module")
def compiled(workdir):
    out = workdir / "out"
    result = fxforge("compile", f"{workdir / 'tiny_llama.py'}:make_model", "--example-input", EXAMPLE, "-o", out)
    assert result.returncode == 0, result.stderr
    return out, result.stdout


def eager_model(workdir):
    spec = importlib.util.spec_from_file_location("tiny_llama_eager", workdir / "tiny_llama.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_model()


def test_compile_prints_summary(compiled):
    out, stdout = compiled
    assert "compiled LlamaForCausalLM" in stdout
    assert "signature: forward(%input_ids: i64[s0, s1])" in stdout  # both dims dynamic
    assert "fxforge ops" in stdout and "extern" in stdout and f"wrote {out}" in stdout
    assert "hint:" not in stdout  # no size-1 example dim
    assert {p.name for p in out.iterdir()} >= {"manifest.json", "graph.fxir", "trace.json", "weights.safetensors"}


def test_run_in_fresh_process_matches_eager(workdir, compiled):
    out, _ = compiled
    ids = torch.randint(0, 256, (3, 13), generator=torch.Generator().manual_seed(1))  # not the example's shape
    torch.save(ids, workdir / "ids.pt")
    result = fxforge("run", out, "--input-file", workdir / "ids.pt", "--output-file", workdir / "logits.pt")
    assert result.returncode == 0, result.stderr
    assert "logits: float32[3,13,256]" in result.stdout
    got = torch.load(workdir / "logits.pt", weights_only=True)
    with torch.no_grad():
        want = eager_model(workdir)(ids).logits
    assert got["logits"].shape == want.shape
    assert (got["logits"] - want).abs().max().item() <= 1e-5


def test_run_random_inputs(compiled, capsys):
    out, _ = compiled
    assert main(["run", str(out), "--input", "int64[4,5]", "--seed", "3"]) == 0
    stdout = capsys.readouterr().out
    assert "input  input_ids: int64[4,5]" in stdout and "logits: float32[4,5,256]" in stdout


def test_inspect_lists_passes(compiled, capsys):
    out, _ = compiled
    assert main(["inspect", str(out)]) == 0
    stdout = capsys.readouterr().out
    for name in ("canonicalize", "constant_fold", "cse", "dce", "shape_prop"):
        assert f"  {name} " in stdout
    assert "->" in stdout and "final graph:" in stdout


def test_inspect_pass_ir_and_diff(compiled, capsys):
    out, _ = compiled
    assert main(["inspect", str(out), "--pass", "cse"]) == 0
    ir = capsys.readouterr().out
    assert ir.startswith("graph @forward(%input_ids: i64[s0, s1]) {") and "return" in ir
    assert main(["inspect", str(out), "--pass", "cse", "--diff"]) == 0
    diff = capsys.readouterr().out
    assert diff.startswith("--- before cse\n+++ after cse") and "\n-  %" in diff
    assert main(["inspect", str(out), "--ir"]) == 0
    assert capsys.readouterr().out == (out / "graph.fxir").read_text().rstrip("\n") + "\n"


@pytest.mark.parametrize("spec, message", [
    ("int64[1,x]", "bad input spec 'int64[1,x]': dim 'x' is not a non-negative integer"),
    ("int65[2]", "unknown dtype 'int65'"),
    ("int64", "bad input spec 'int64': write dtype[d0,d1,...]"),
])
def test_bad_spec(compiled, capsys, spec, message):
    out, _ = compiled
    assert main(["run", str(out), "--input", spec]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fxforge: error: ") and message in err and err.count("\n") == 1


def test_missing_factory(workdir, capsys):
    assert main(["compile", f"{workdir / 'tiny_llama.py'}:nope", "--example-input", EXAMPLE, "-o", str(workdir / "x")]) == 2
    err = capsys.readouterr().err
    assert "has no 'nope'" in err and "make_model" in err


def test_corrupt_weights(compiled, tmp_path, capsys):
    out, _ = compiled
    bad = shutil.copytree(out, tmp_path / "bad")
    data = bytearray((bad / "weights.safetensors").read_bytes())
    data[-16] ^= 0xFF
    (bad / "weights.safetensors").write_bytes(bytes(data))
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fxforge: error: ") and "does not match the hash" in err


def test_incomplete_artifact_in_fresh_process(compiled, tmp_path):
    out, _ = compiled
    bad = shutil.copytree(out, tmp_path / "bad")
    (bad / "graph.fxir").unlink()
    result = fxforge("run", bad, "--input", "int64[2,4]")
    assert result.returncode == 2
    assert result.stderr.strip() == f"fxforge: error: artifact {bad} is incomplete: missing graph.fxir; compile it again"
    assert "Traceback" not in result.stderr


def test_not_an_artifact(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nothing")]) == 2
    assert "is not an artifact directory" in capsys.readouterr().err


def test_size_one_dims_and_specs():
    assert cli_inputs.parse_spec("int64[1, 128]") == (torch.int64, (1, 128))
    assert cli_inputs.parse_spec("f32[]") == (torch.float32, ())
    args, kwargs = cli_inputs.make_inputs(["int64[1,8]"], ["use_cache=false"], seed=0, int_high=7)
    assert kwargs == {"use_cache": False} and 0 <= int(args[0].min()) and int(args[0].max()) < 7
    assert cli_inputs.size_one_dims(args, {}, ["input_ids"]) == ["input_ids[dim 0]"]


def test_inspect_quant_shows_per_layer_error_and_bytes(tmp_path, capsys):
    import fxforge
    from fxforge import testing as zoo
    from fxforge.cli import main

    model = zoo.build("mlp")
    fxforge.compile_aot(model, (zoo.example_input("mlp"),), quantize="w8a8-int8").save(str(tmp_path / "q"))
    assert main(["inspect", str(tmp_path / "q"), "--quant"]) == 0
    out = capsys.readouterr().out
    assert "quantization: w8a8-int8" in out and "up " in out and "down " in out and "total: 2 layers" in out
    fxforge.compile_aot(model, (zoo.example_input("mlp"),)).save(str(tmp_path / "plain"))
    assert main(["inspect", str(tmp_path / "plain"), "--quant"]) == 0
    assert "no quantize pass" in capsys.readouterr().out


# -- compression options and calibration files ------------------------------------------------------

def test_compile_quantized_with_calibration_file_then_run(workdir, tmp_path, capsys):
    gen = torch.Generator().manual_seed(4)
    torch.save([torch.randint(0, 256, (2, 8), generator=gen), (torch.randint(0, 256, (1, 12), generator=gen),)],
               tmp_path / "calib.pt")
    out = tmp_path / "q"
    assert main(["compile", f"{workdir / 'tiny_llama.py'}:make_model", "--example-input", EXAMPLE, "-o", str(out),
                 "--quantize", "w8a8-int8", "--quantize-override", "*.mlp.down_proj=none",
                 "--calibration", str(tmp_path / "calib.pt")]) == 0
    stdout = capsys.readouterr().out
    assert "quantize: 12 linears (w8a8-int8), 3 kept high precision" in stdout and "on calibration" in stdout
    import fxforge

    module = fxforge.load(str(out))
    # on a GPU ("auto" -> triton) concat_linears stacks siblings: a stacked weight's name counts its linears
    quantized = sum(op.operands[1].producer.attrs["weight"].count("+") + 1 for op in module.graph.find("qlinear"))
    assert quantized == 12 and module.config.quantize == "w8a8-int8"
    stats = module.record.trace.record("quantize").stats
    assert stats["error_data"] == "calibration"
    assert stats["skipped"]["model.layers.0.mlp.down_proj"].startswith("kept high precision (quantize_overrides")
    assert main(["inspect", str(out)]) == 0
    assert "quantize=w8a8-int8 quantize_overrides={'*.mlp.down_proj': None}" in capsys.readouterr().out
    ids = torch.randint(0, 256, (2, 5), generator=gen)
    torch.save(ids, tmp_path / "ids.pt")
    assert main(["run", str(out), "--input-file", str(tmp_path / "ids.pt"), "--output-file", str(tmp_path / "y.pt")]) == 0
    got = torch.load(tmp_path / "y.pt", weights_only=True)["logits"]
    with torch.no_grad():
        want = eager_model(workdir)(ids).logits
    rel = ((got - want).norm() / want.norm()).item()
    assert 0 < rel < 0.05  # quantized: close to eager, and not eager itself


def test_inspect_quant_shows_the_methods_and_errors_per_step(tmp_path, capsys):
    import fxforge
    from fxforge import testing as zoo

    model = zoo.build("llama")
    calib = [(zoo.example_input("llama", seed=s),) for s in (3, 4)]
    fxforge.compile_aot(model, (zoo.example_input("llama"),), quantize="w8a8-int8", quantize_method="rtn", rotate=True,
                        smooth=True, calibration=calib).save(str(tmp_path / "q"))
    assert main(["inspect", str(tmp_path / "q"), "--quant"]) == 0
    out = capsys.readouterr().out
    assert "methods: smooth on: asked for; rotate on: asked for" in out
    head = next(line for line in out.splitlines() if line.startswith("error per layer"))
    assert head.split()[-4:] == ["rtn", "rotate", "smooth", "final"]
    row = [line for line in out.splitlines() if line.startswith("model.layers.0.mlp.down_proj ")][-1].split()
    assert len(row) == 5 and float(row[1]) > float(row[2])  # rotation lowered the round-to-nearest error
    fxforge.compile_aot(model, (zoo.example_input("llama"),), quantize="w8a8-int8").save(str(tmp_path / "plain"))
    assert main(["inspect", str(tmp_path / "plain"), "--quant"]) == 0
    assert "skipped: rotate (default with calibration data; none given)" in capsys.readouterr().out


def test_method_flags(tmp_path):
    config = _compile_args(tmp_path, "--quantize", "w8a8-int8", "--quantize-method", "rtn", "--rotate", "on",
                           "--smooth", "off", "--gptq", "auto")
    assert (config.quantize_method, config.rotate, config.smooth, config.gptq) == ("rtn", True, False, None)
    with pytest.raises(UsageError, match="on, off or auto"):
        _compile_args(tmp_path, "--rotate", "yes")


def _compile_args(tmp_path, *extra):
    from fxforge.cli import build_parser
    from fxforge.cli.compile import config_from_args

    return config_from_args(build_parser().parse_args(["compile", "m.py:f", "-o", str(tmp_path / "o"), *extra]))


def test_compression_flags_set_the_config(tmp_path):
    config = _compile_args(tmp_path, "--quantize", "w4a16-int4", "--quantize-group", "32", "--lorc-rank", "4",
                           "--quantize-override", "lm_head=w8a8-int8", "--quantize-override", "*.o_proj=none")
    assert config.quantize == "w4a16-int4" and config.quantize_group == 32 and config.lorc_rank == 4
    assert config.quantize_overrides == {"lm_head": "w8a8-int8", "*.o_proj": None}
    plain = _compile_args(tmp_path)
    assert plain.quantize is None and plain.quantize_overrides == {} and plain.calibration is None


def test_calibration_file_layouts(tmp_path):
    from safetensors.torch import save_file

    from fxforge.cli.calibration import load_calibration

    a, b = torch.arange(6).reshape(2, 3), torch.ones(1, 4, dtype=torch.int64)
    torch.save([a, [a, b], {"input_ids": b}], tmp_path / "c.pt")
    got = load_calibration(str(tmp_path / "c.pt"))
    assert torch.equal(got[0], a) and isinstance(got[1], tuple) and torch.equal(got[1][1], b) and set(got[2]) == {"input_ids"}
    save_file({"0.0": a, "0.1": b, "1.input_ids": b.clone(), "2": a.clone()}, str(tmp_path / "c.safetensors"))
    got = load_calibration(str(tmp_path / "c.safetensors"))
    assert isinstance(got[0], tuple) and torch.equal(got[0][1], b) and list(got[1]) == ["input_ids"]
    assert isinstance(got[2], tuple) and len(got[2]) == 1 and torch.equal(got[2][0], a)


def _bad_files(tmp_path):
    from safetensors.torch import save_file

    torch.save({"input_ids": torch.ones(2, 3)}, tmp_path / "dict.pt")
    torch.save([torch.ones(2), 3], tmp_path / "int.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    save_file({"input_ids": torch.ones(2)}, str(tmp_path / "key.safetensors"))
    save_file({"0.0": torch.ones(2), "0.x": torch.ones(2)}, str(tmp_path / "mixed.safetensors"))
    (tmp_path / "c.npy").write_bytes(b"")
    return [("missing.pt", "does not exist", "torch.save([example"), ("dict.pt", "holds a dict", "torch.save([example"),
            ("int.pt", "example 1 is a int", "torch.save([example"), ("junk.pt", "cannot read", "torch.save([example"),
            ("key.safetensors", "key 'input_ids'", "'<example>.<input>'"),
            ("mixed.safetensors", "not both", "'<example>.<input>'"), ("c.npy", "unknown kind '.npy'", ".safetensors")]


def test_bad_calibration_file_is_one_line_exit_2(workdir, tmp_path, capsys):
    for name, problem, layout in _bad_files(tmp_path):
        assert main(["compile", f"{workdir / 'tiny_llama.py'}:make_model", "--example-input", EXAMPLE, "-o",
                     str(tmp_path / "o"), "--quantize", "w8a8-int8", "--calibration", str(tmp_path / name)]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith(f"fxforge: error: calibration file {tmp_path / name}") and err.count("\n") == 1, err
        assert problem in err and layout in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flags, message", [
    (["--quantize", "w3a3"], "--quantize 'w3a3' is not a quantization scheme; use one of w8a8-int8"),
    (["--quantize-override", "lm_head"], "bad --quantize-override 'lm_head': write GLOB=SCHEME"),
    (["--quantize-group", "0"], "--quantize-group '0' must be an integer >= 1"),
    (["--lorc-rank", "x"], "--lorc-rank 'x' must be an integer >= 0"),
    (["--pass-option", "quantise.group=3"], "not '<pass>.<option>' with a known pass"),
    (["--calibration", "CALIB"], "--calibration: calibration inputs were given, but no pass of the pipeline"),
])
def test_bad_compression_flag(workdir, tmp_path, capsys, flags, message):
    torch.save([torch.ones(2, 8, dtype=torch.int64)], tmp_path / "calib.pt")
    flags = [str(tmp_path / "calib.pt") if f == "CALIB" else f for f in flags]
    assert main(["compile", f"{workdir / 'tiny_llama.py'}:make_model", "--example-input", EXAMPLE, "-o",
                 str(tmp_path / "o"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fxforge: error: ") and message in err and err.count("\n") == 1, err


def test_console_script_is_the_cli_main():
    import importlib
    import tomllib
    from pathlib import Path

    from fxforge.cli.app import main as app_main

    scripts = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, attr = scripts["fxforge"].partition(":")
    assert getattr(importlib.import_module(module), attr) is app_main


def test_block_format_flags(tmp_path):
    config = _compile_args(tmp_path, "--quantize", "nvfp4", "--kv-cache", "bfp4", "--kv-block", "16", "--k-sort", "on")
    assert (config.quantize, config.kv_cache, config.kv_block, config.k_sort) == ("nvfp4", "bfp4", 16, "on")
    assert _compile_args(tmp_path, "--kv-cache", "none").kv_cache is None
    with pytest.raises(UsageError, match="16, 32, 64"):
        _compile_args(tmp_path, "--kv-block", "24")
