"""Source loaders: every format loads a real tiny model with the right signature and hash."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from edgepack.errors import InputError, UsageError  # noqa: E402
from edgepack.signature import TensorSpec, parse_input_option  # noqa: E402
from edgepack.sources import accepted_formats, load_source  # noqa: E402

LAYERS_PY = '''
from torch import nn


class Block(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.bn(self.conv(x)).relu()
'''

# Imports a sibling module: the loader must put the file's folder on sys.path.
TINYNET_PY = '''
import torch
from torch import nn

from layers import Block


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block(3, 4)
        self.head = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        return self.head(torch.flatten(self.block(x), 1))


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 3)
        self.b = nn.Linear(6, 2)

    def forward(self, x, y):
        return {"sum": self.a(x + y), "diff": self.b(x - y)}


def build():
    torch.manual_seed(0)
    model = TinyNet()
    with torch.no_grad():  # non-trivial batch-norm statistics
        model.block.bn.running_mean.uniform_(-0.5, 0.5)
        model.block.bn.running_var.uniform_(0.5, 2.0)
    return model


def two_heads():
    torch.manual_seed(1)
    return TwoHeads()


def not_a_model():
    return 42


def broken():
    raise RuntimeError("weights missing")
'''

INPUT = [parse_input_option("input:1x3x8x8")]


def _write_model_files(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "layers.py").write_text(LAYERS_PY)
    (folder / "tinynet.py").write_text(TINYNET_PY)
    return folder / "tinynet.py"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same tiny network as a Python entry, TorchScript (trace, script), .pt2 and ONNX."""
    d = tmp_path_factory.mktemp("models")
    py = _write_model_files(d / "src")
    module = load_source(f"{py}:build", INPUT).torch_model
    x = torch.zeros(1, 3, 8, 8)
    with warnings.catch_warnings():  # TorchScript and the legacy exporter are "deprecated"
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(module, (x,)), d / "traced.pt")
        torch.jit.save(torch.jit.script(module), d / "scripted.pth")
        batch = torch.export.Dim("batch", min=1, max=64)
        ep = torch.export.export(module, (torch.zeros(2, 3, 8, 8),),
                                 dynamic_shapes=({0: batch},))
        torch.export.save(ep, d / "tiny.pt2")
        torch.onnx.export(module, (x,), d / "tiny.onnx", dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    return {"py": py, "pt": d / "traced.pt", "pth": d / "scripted.pth",
            "pt2": d / "tiny.pt2", "onnx": d / "tiny.onnx"}


def _sample(shape: tuple[int, ...] = (1, 3, 8, 8), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- each format ---------------------------------------------------------------------------

def test_python_file_entry(models: dict[str, Path]) -> None:
    src = load_source(f"{models['py']}:build", INPUT)
    assert src.format == "python"
    assert src.name == "tinynet"  # "build" says nothing: the file stem names the model
    assert src.location == f"{models['py']}:build"
    assert src.signature.to_dict() == {
        "inputs": [{"name": "input", "shape": [1, 3, 8, 8], "dtype": "float32",
                    "layout": "NCHW"}],
        "outputs": [{"name": "output0", "shape": [1, 5], "dtype": "float32", "layout": None}],
    }
    assert src.parameter_count() == 3 * 4 * 9 + 4 + 4 + 4 + 256 * 5 + 5
    assert not src.torch_model.training
    assert src.onnx_path is None


def test_python_module_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "tiny_pkg_mod"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(
        "import torch\n\ndef wide_mlp():\n    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh())\n"
    )
    monkeypatch.chdir(tmp_path)
    src = load_source("tiny_pkg_mod.nets:wide_mlp", [parse_input_option("x:2x4")],
                      outputs=["y"])
    assert (src.format, src.name) == ("python", "wide_mlp")
    assert src.signature.output_names == ["y"]
    assert src.signature.outputs[0].shape == (2, 3)
    assert src.signature.inputs[0].layout is None
    out = src.runner().run({"x": np.ones((2, 4), np.float32)})["y"]
    with torch.no_grad():
        want = src.torch_model(torch.ones(2, 4)).numpy()
    np.testing.assert_array_equal(out, want)
    assert str(tmp_path) not in sys.path  # the working directory was only borrowed


def test_python_hash_covers_weights_and_source_not_location(tmp_path: Path,
                                                            models: dict[str, Path]) -> None:
    a = load_source(f"{models['py']}:build", INPUT)
    b = load_source(f"{models['py']}:build", INPUT)
    assert a.sha256 == b.sha256
    # The same file elsewhere hashes the same: no absolute path in hashed content.
    moved = _write_model_files(tmp_path / "elsewhere")
    assert load_source(f"{moved}:build", INPUT).sha256 == a.sha256
    # Other weights, same code: another hash.
    moved.write_text(TINYNET_PY.replace("manual_seed(0)", "manual_seed(7)"))
    assert load_source(f"{moved}:build", INPUT).sha256 != a.sha256
    # Same weights, changed source text: another hash.
    moved.write_text(TINYNET_PY + "\n# a comment\n")
    assert load_source(f"{moved}:build", INPUT).sha256 != a.sha256


@pytest.mark.parametrize("key", ["pt", "pth"])
def test_torchscript(models: dict[str, Path], key: str) -> None:
    src = load_source(str(models[key]), INPUT, outputs=["logits"])
    assert src.format == "torchscript"
    assert src.name == models[key].stem
    assert src.sha256 == _sha(models[key])
    assert src.signature.inputs == (TensorSpec("input", (1, 3, 8, 8), "float32", "NCHW"),)
    assert src.signature.outputs == (TensorSpec("logits", (1, 5), "float32", None),)
    assert src.parameter_count() == 1405


def test_torch_export_without_inputs_uses_the_program(models: dict[str, Path]) -> None:
    src = load_source(models["pt2"])
    assert (src.format, src.name, src.sha256) == ("torch.export", "tiny", _sha(models["pt2"]))
    (inp,) = src.signature.inputs
    (out,) = src.signature.outputs
    assert inp.name == "x"  # the forward() argument
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == (3, 8, 8)
    assert (inp.dtype, inp.layout) == ("float32", "NCHW")
    assert out.name == "output0" and out.shape == (inp.shape[0], 5)
    got = src.runner().run({"x": _sample((3, 3, 8, 8))})["output0"]
    assert got.shape == (3, 5)


def test_torch_export_with_inputs(models: dict[str, Path]) -> None:
    src = load_source(models["pt2"], [parse_input_option("image:4x3x8x8")], outputs=["scores"])
    assert src.signature.input_names == ["image"]
    assert src.signature.outputs == (TensorSpec("scores", (4, 5), "float32", None),)
    with pytest.raises(UsageError, match="takes 1 inputs"):
        load_source(models["pt2"], [parse_input_option("a:1x3x8x8"),
                                    parse_input_option("b:1x3x8x8")])


def test_onnx(models: dict[str, Path]) -> None:
    src = load_source(str(models["onnx"]))
    assert (src.format, src.name, src.sha256) == ("onnx", "tiny", _sha(models["onnx"]))
    assert src.onnx_path == models["onnx"].resolve()
    assert src.torch_model is None
    assert src.signature.inputs == (TensorSpec("input", ("N", 3, 8, 8), "float32", "NCHW"),)
    assert src.signature.outputs == (TensorSpec("logits", ("N", 5), "float32", None),)
    assert src.parameter_count() == 3 * 4 * 9 + 4 + 256 * 5 + 5  # batch norm folded
    # --input fixes symbolic dims; a static dim that disagrees is refused.
    fixed = load_source(models["onnx"], [parse_input_option("input:2x3x8x8")])
    assert fixed.signature.inputs[0].shape == (2, 3, 8, 8)
    with pytest.raises(UsageError):
        load_source(models["onnx"], [parse_input_option("input:1x1x8x8")])
    with pytest.raises(UsageError):
        load_source(models["onnx"], [parse_input_option("input:1x3x8")])
    with pytest.raises(UsageError, match="not model outputs"):
        load_source(models["onnx"], outputs=["nope"])


def test_onnx_external_data_is_hashed_and_loaded(tmp_path: Path, models: dict[str, Path]) -> None:
    model = onnx.load(str(models["onnx"]))
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="ext.weights",
                    size_threshold=0)
    src = load_source(path)
    assert src.sha256 != _sha(path)  # the weights file counts too
    inline = load_source(models["onnx"])
    x = _sample()
    np.testing.assert_array_equal(src.runner().run({"input": x})["logits"],
                                  inline.runner().run({"input": x})["logits"])
    (tmp_path / "ext.weights").unlink()
    with pytest.raises(InputError, match="ext.weights"):
        load_source(path)


def test_multiple_named_outputs(models: dict[str, Path]) -> None:
    specs = [parse_input_option("x:2x6"), parse_input_option("y:2x6")]
    src = load_source(f"{models['py']}:two_heads", specs, outputs=["s", "d"])
    assert [(t.name, t.shape) for t in src.signature.outputs] == [("s", (2, 3)), ("d", (2, 2))]
    x, y = _sample((2, 6), 1), _sample((2, 6), 2)
    out = src.runner().run({"x": x, "y": y})
    m = src.torch_model
    with torch.no_grad():
        np.testing.assert_allclose(out["s"], m.a(torch.from_numpy(x + y)).numpy(), atol=1e-6)
        np.testing.assert_allclose(out["d"], m.b(torch.from_numpy(x - y)).numpy(), atol=1e-6)
    with pytest.raises(UsageError, match="returns 2 outputs but 1"):
        load_source(f"{models['py']}:two_heads", specs, outputs=["only"])


# --- agreement across formats ---------------------------------------------------------------

def test_reference_runners_agree_across_formats(models: dict[str, Path]) -> None:
    x = _sample(seed=3)
    ref = load_source(f"{models['py']}:build", INPUT).runner()
    assert ref.name == "torch"
    want = ref.run({"input": x})["output0"]
    assert np.abs(want).max() > 0.1  # a real signal, not zeros
    results = {
        "pt": load_source(models["pt"], INPUT).runner().run({"input": x})["output0"],
        "pth": load_source(models["pth"], INPUT).runner().run({"input": x})["output0"],
        "pt2": load_source(models["pt2"]).runner().run({"x": x})["output0"],
    }
    onnx_runner = load_source(models["onnx"]).runner()
    assert onnx_runner.name == "onnxruntime"
    results["onnx"] = onnx_runner.run({"input": x})["logits"]
    for key, got in results.items():
        assert got.shape == (1, 5), key
        assert np.abs(got - want).max() <= 2e-6, key


def test_hashes_stable_across_loads(models: dict[str, Path]) -> None:
    for spec, inputs in [(models["pt"], INPUT), (models["pt2"], []), (models["onnx"], [])]:
        assert load_source(spec, inputs).sha256 == load_source(spec, inputs).sha256


def test_import_without_torch() -> None:
    """Importing the package must not import torch (or onnx)."""
    code = ("import sys; import edgepack.sources; "
            "assert 'torch' not in sys.modules and 'onnx' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# --- bad input: the right exception type, one line -------------------------------------------

def _one_line_error(exc_type: type[Exception], spec: object, *args, match: str = "") -> str:
    with pytest.raises(exc_type) as info:
        load_source(spec, *args)
    msg = str(info.value)
    assert "\n" not in msg and msg
    assert match in msg, msg
    return msg


def test_bad_paths(tmp_path: Path) -> None:
    _one_line_error(InputError, tmp_path / "missing.onnx", match="no such file")
    (tmp_path / "empty.onnx").write_bytes(b"")
    _one_line_error(InputError, tmp_path / "empty.onnx", match="empty")
    (tmp_path / "model.tflite").write_bytes(b"abc")
    msg = _one_line_error(UsageError, tmp_path / "model.tflite", match=".tflite")
    assert accepted_formats() in msg
    for label in (".onnx", ".pt (TorchScript)", ".pt2 (torch.export)", "file.py:callable",
                  "pkg.module:callable"):
        assert label in msg
    _one_line_error(UsageError, tmp_path, match="folder")


def test_corrupt_onnx(tmp_path: Path, models: dict[str, Path]) -> None:
    rnd = tmp_path / "random.onnx"
    rnd.write_bytes(np.random.default_rng(0).bytes(4096))
    _one_line_error(InputError, rnd, match="is not a valid ONNX model")
    data = models["onnx"].read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    _one_line_error(InputError, cut, match="is not a valid ONNX model")
    bad = onnx.load(str(models["onnx"]))
    bad.graph.node[0].input[0] = "nowhere"  # checker: input not produced by any node
    path = tmp_path / "unchecked.onnx"
    path.write_bytes(bad.SerializeToString())
    _one_line_error(InputError, path, match="is not a valid ONNX model")


def test_corrupt_torch_files(tmp_path: Path, models: dict[str, Path],
                             capfd: pytest.CaptureFixture) -> None:
    rnd = tmp_path / "random.pt"
    rnd.write_bytes(np.random.default_rng(0).bytes(4096))
    _one_line_error(InputError, rnd, INPUT, match="not a TorchScript file")
    # A pickled state_dict is never unpickled: it is refused with a hint.
    weights = tmp_path / "weights.pth"
    torch.save(load_source(f"{models['py']}:build", INPUT).torch_model.state_dict(), weights)
    _one_line_error(InputError, weights, INPUT, match="file.py:callable")
    cut = tmp_path / "cut.pt2"
    data = models["pt2"].read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    capfd.readouterr()
    _one_line_error(InputError, cut, match="not a torch.export program")
    assert "Traceback" not in capfd.readouterr().err  # torch.export.load logs one; muted


def test_torch_sources_need_shapes_that_fit(models: dict[str, Path]) -> None:
    msg = _one_line_error(UsageError, models["pt"], match="need their input shapes")
    assert "--input input:1x3x224x224" in msg
    _one_line_error(UsageError, f"{models['py']}:build", match="need their input shapes")
    msg = _one_line_error(InputError, models["pt"], [parse_input_option("input:1x1x8x8")],
                          match="input shape input:1x1x8x8 does not fit the model: ")
    assert "channels" in msg  # torch's own reason, first line
    _one_line_error(InputError, f"{models['py']}:build", [parse_input_option("input:1x3x9x9")],
                    match="does not fit the model")
    _one_line_error(InputError, models["pt2"], [parse_input_option("x:1x3x9x9")],
                    match="does not fit the model")


def test_bad_python_entries(tmp_path: Path, models: dict[str, Path]) -> None:
    py = models["py"]
    _one_line_error(InputError, f"{tmp_path}/nope.py:build", INPUT, match="no such file")
    _one_line_error(UsageError, f"{py}:missing", INPUT, match="has no attribute 'missing'")
    _one_line_error(UsageError, f"{py}:not_a_model", INPUT, match="not a torch.nn.Module")
    _one_line_error(InputError, f"{py}:broken", INPUT, match="RuntimeError: weights missing")
    _one_line_error(UsageError, "no_such_pkg_xyz.models:build", INPUT, match="no module named")
    bad = tmp_path / "syntax.py"
    bad.write_text("def build(:\n")
    _one_line_error(InputError, f"{bad}:build", INPUT, match="SyntaxError")
    raising = tmp_path / "raising.py"
    raising.write_text("import torch\nraise ImportError('needs a GPU\\nsecond line')\n")
    msg = _one_line_error(InputError, f"{raising}:build", INPUT, match="needs a GPU")
    assert "second line" not in msg


def test_copy_of_scripted_model_hashes_its_bytes(tmp_path: Path, models: dict[str, Path]) -> None:
    copy = tmp_path / "copy.pt"
    shutil.copy(models["pt"], copy)
    assert load_source(copy, INPUT).sha256 == load_source(models["pt"], INPUT).sha256


def test_keras_and_savedmodel_sources_build_for_the_onnx_based_targets(keras_digits, tmp_path):
    """Keras/SavedModel -> ONNX (tf2onnx) -> onnx-cpu, TensorRT and Core ML (onnx2torch),
    checked against TensorFlow's own outputs on held-out digits; the graph keeps the
    source's NHWC input, so the same data feeds every artifact."""
    import json

    from conftest import run_cli

    from edgepack.bundle import manifest as mf

    out = tmp_path / "d"
    proc = run_cli("build", keras_digits["keras"], "--target", "onnx,jetson,coreml",
                   "--precision", "fp32,int8", "--calib", keras_digits["calib"], "--eval",
                   keras_digits["eval"], "--task", "classification", "--out", out, "--json",
                   timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    bundles = {(b["target"], b["precision"]): b for b in json.loads(proc.stdout)["bundles"]}
    assert len(bundles) == 6
    for (target, _), b in bundles.items():
        assert b["status"] == ("passed" if target == "onnx-cpu" else "deferred"), b
        m = b["metrics"]["output0"]
        assert m["reference_task_accuracy"] >= 90.0  # trained (92.3 %), not a toy
        assert m["reference_task_accuracy"] - m["task_accuracy"] <= 1.5
        assert m["top1_agreement"] >= 0.98
    manifest = mf.read(out / "digits-onnx-cpu-int8")
    assert manifest["source"]["format"] == "keras"
    assert {"tf2onnx", "tensorflow-cpu"} <= set(manifest["toolchain"])
    model = onnx.load(str(out / "digits-onnx-cpu-fp32" / "model.onnx"))
    (graph_input,) = model.graph.input
    assert graph_input.name == "image"
    dims = graph_input.type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [8, 8, 1]
    assert dims[0].dim_param  # Keras' batch dimension stays symbolic on onnx-cpu
    assert [o.name for o in model.graph.output] == ["output0"]
    assert run_cli("bench", out / "digits-onnx-cpu-int8", "--runs", "20").returncode == 0

    # a SavedModel takes the same route (its serving signature names the output)
    proc = run_cli("build", keras_digits["savedmodel"], "--target", "onnx", "--precision",
                   "fp32", "--eval", keras_digits["eval"], "--task", "classification",
                   "--out", tmp_path / "s", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (b,) = json.loads(proc.stdout)["bundles"]
    assert b["status"] == "passed"
    assert next(iter(b["metrics"].values()))["cosine_min"] >= 0.9999
