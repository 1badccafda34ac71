"""Core ML target: real conversions to .mlpackage on Linux, deferred validation with
proxy metrics, byte-determinism, the structural check and the device harness.

Fast tests use the trained digits CNN (on a 64-sample slice of its real data)
and tiny torch/ONNX models; the real ImageNet classifier runs are marked slow.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import DIGITS, ROOT, run_cli

from edgepack.bundle import manifest as mf

ct = pytest.importorskip("coremltools")
torch = pytest.importorskip("torch")

PRECISIONS = ["fp32", "fp16", "int8"]
DEFERRED = "Core ML runs only on macOS/iOS"
HALF_STEP_FP16 = 0.65 / 127  # int8 rounding (0.5 step) + fp16 scale and expansion


def _spec_io(package: Path) -> tuple[list, list]:
    from edgepack.convert.torch_to_coreml import feature_type, load_spec

    spec = load_spec(package)
    return ([(f.name, *feature_type(f)) for f in spec.description.input],
            [(f.name, *feature_type(f)) for f in spec.description.output])


def _package_bytes(bundle: Path) -> int:
    return sum(p.stat().st_size for p in (bundle / "model.mlpackage").rglob("*") if p.is_file())


def _weight_bytes(bundle: Path) -> int:
    w = bundle / "model.mlpackage" / "Data" / "com.apple.CoreML" / "weights"
    return sum(p.stat().st_size for p in w.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def digits_data(tmp_path_factory) -> dict[str, Path]:
    """A 64-sample slice of the digits eval/calib data: real images, a fast build."""
    folder = tmp_path_factory.mktemp("digits-data")
    out = {}
    for name in ("eval", "calib"):
        with np.load(DIGITS / f"{name}.npz") as f:
            arrays = {k: f[k][:64] for k in f.files}
        np.savez(folder / f"{name}.npz", **arrays)
        out[name] = folder / f"{name}.npz"
    return out


def _build_digits(out: Path, data: dict[str, Path], *extra: str) -> subprocess.CompletedProcess:
    return run_cli("build", DIGITS / "edgepack.yaml", "--eval", data["eval"], "--calib",
                   data["calib"], "--out", out, "--json", *extra)


@pytest.fixture(scope="module")
def digits_coreml(tmp_path_factory, digits_data) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("coreml") / "dist"
    proc = _build_digits(out, digits_data, "--target", "coreml", "--precision", "all")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return out, json.loads(proc.stdout)


def _bundle(out: Path, precision: str, target: str = "ios", model: str = "digits") -> Path:
    return out / f"{model}-{target}-{precision}"


def test_digits_deferred_with_proxy_metrics(digits_coreml):
    out, summary = digits_coreml
    assert [b["precision"] for b in summary["bundles"]] == PRECISIONS
    for p in PRECISIONS:
        m = mf.read(_bundle(out, p))
        v = m["validation"]
        assert v["status"] == "deferred" and v["proxy"] is True
        assert v["reason"].startswith(DEFERRED) and "proxy metrics from torch" in v["reason"]
        logits = v["metrics"]["logits"]
        assert logits["top1_agreement"] >= 0.98, p
        assert logits["reference_task_accuracy"] - logits["task_accuracy"] <= 1.0
        assert m["target"] == {"name": "ios", "backend": "coreml", "runtime": "coreml"}
        assert m["toolchain"]["coremltools"] == "9.0"
        checks = m["harness"]["runtime_options"]["host_checks"]
        assert checks["structure"]["status"] == "passed"
    fp16 = mf.read(_bundle(out, "fp16"))
    assert fp16["validation"]["metrics"]["logits"]["cosine_min"] >= 0.999
    assert "fp16 compute" in fp16["validation"]["reason"]
    assert fp16["harness"]["runtime_options"]["host_checks"]["weight_error"]["rel_err_max"] < 1e-3
    assert mf.read(_bundle(out, "fp32"))["quantization"] is None


def test_digits_int8_record_and_size(digits_coreml):
    out, _ = digits_coreml
    m = mf.read(_bundle(out, "int8"))
    q = m["quantization"]
    assert q["weights"] == "int8" and q["mode"] == "linear_symmetric"
    assert q["per_channel"] is True and q["symmetric"] is True and q["zero_point"] == 0
    assert q["compressed_tensors"] == 3  # the first conv (144 weights) stays fp16
    assert q["kept_in_float"]["tensors"] == 1
    assert q["proxy_tensors"] == {"reproduced": 3, "of": 3, "unmatched": []}
    err = q["weight_error"]
    # symmetric int8 rounding: half a step (step = channel max / 127), plus fp16 scales
    # and fp16 expansion on the device (~0.06 step each)
    assert 0 < err["max_rel_to_range"] <= HALF_STEP_FP16
    assert 0 < err["rel_err_max"] < 0.02
    assert "int8 weights (3/3 tensors)" in m["validation"]["reason"]
    assert _weight_bytes(_bundle(out, "int8")) <= 0.3 * _weight_bytes(_bundle(out, "fp32"))
    assert _package_bytes(_bundle(out, "int8")) <= 0.36 * _package_bytes(_bundle(out, "fp32"))
    assert _package_bytes(_bundle(out, "fp16")) <= 0.6 * _package_bytes(_bundle(out, "fp32"))


def test_package_spec_matches_manifest(digits_coreml):
    out, _ = digits_coreml
    for p in PRECISIONS:
        bundle = _bundle(out, p)
        m = mf.read(bundle)
        model = ct.models.MLModel(str(bundle / "model.mlpackage"), skip_model_load=True)
        spec = model.get_spec()
        assert spec.WhichOneof("Type") == "mlProgram"
        ins, outs = _spec_io(bundle / "model.mlpackage")
        sig = m["signature"]
        assert ins == [(t["name"], tuple(t["shape"]), t["dtype"]) for t in sig["inputs"]]
        assert outs == [(t["name"], tuple(t["shape"]), t["dtype"]) for t in sig["outputs"]]
        assert ins == [("input", (1, 1, 8, 8), "float32")]
        assert outs == [("logits", (1, 10), "float32")]
        # every file of the package is listed and hashed
        listed = {a["path"] for a in m["artifacts"] if a["role"] == "model"}
        assert "model.mlpackage/Manifest.json" in listed
        assert "model.mlpackage/Data/com.apple.CoreML/weights/weight.bin" in listed
        assert "conversion_date" not in str(dict(spec.description.metadata.userDefined))


def test_builds_are_byte_identical(digits_coreml, digits_data, tmp_path):
    out, _ = digits_coreml
    again = tmp_path / "again"
    proc = _build_digits(again, digits_data, "--target", "coreml", "--precision", "fp16",
                         "--precision", "int8")
    assert proc.returncode == 0, proc.stderr
    for p in ("fp16", "int8"):
        a, b = _bundle(out, p), _bundle(again, p)
        files = sorted(str(f.relative_to(a)) for f in a.rglob("*") if f.is_file())
        assert files == sorted(str(f.relative_to(b)) for f in b.rglob("*") if f.is_file())
        for rel in files:
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_bench_on_linux_exits_2_in_one_line(digits_coreml):
    import ast

    out, _ = digits_coreml
    bundle = _bundle(out, "int8")
    for name in ("bench.py", "edgepack_harness.py", "edgepack_metrics.py", "edgepack_tasks.py"):
        ast.parse((bundle / name).read_text(), feature_version=(3, 8))
    for args in ([], ["--compute-units", "cpu-ne", "--runs", "5"]):
        proc = subprocess.run([sys.executable, "bench.py", *args], cwd=bundle,
                              capture_output=True, text=True, timeout=60)
        if sys.platform == "darwin":
            pytest.skip("Core ML can run here")
        assert proc.returncode == 2
        assert proc.stdout == ""
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr
        assert lines[0].startswith("error: Core ML runs only on macOS/iOS")
    proc = subprocess.run([sys.executable, "bench.py", "--compute-units", "gpu-only"],
                          cwd=bundle, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


def test_validate_defers_on_linux(digits_coreml):
    out, _ = digits_coreml
    if sys.platform == "darwin":
        pytest.skip("Core ML can run here")
    proc = run_cli("validate", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "deferred" in proc.stdout


def test_palettized_weights_option(digits_data, tmp_path):
    import yaml

    profile = yaml.safe_load((ROOT / "targets" / "ios.yaml").read_text())
    profile.update(name="ios-pal4", aliases=[])
    profile["options"]["int8_weights"] = "palettize-4"
    path = tmp_path / "ios-pal4.yaml"
    path.write_text(yaml.safe_dump(profile))
    proc = _build_digits(tmp_path / "out", digits_data, "--target", path, "--precision", "int8")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    bundle = tmp_path / "out" / "digits-ios-pal4-int8"
    m = mf.read(bundle)
    q = m["quantization"]
    assert q["weights"] == "4-bit palette" and q["lut_entries"] == 16
    assert q["proxy_tensors"]["reproduced"] == q["proxy_tensors"]["of"] == 3
    assert 0 < q["weight_error"]["rel_err_max"] < 0.2
    assert m["validation"]["status"] == "deferred"
    assert m["validation"]["metrics"]["logits"]["top1_agreement"] >= 0.95


def test_bad_options_are_a_usage_error_before_any_work(tmp_path, digits_data):
    """CoreMLBackend.check runs in the build process: exit 2, one line, no bundle."""
    import yaml

    profile = yaml.safe_load((ROOT / "targets" / "ios.yaml").read_text())
    profile.update(name="ios-bad", aliases=[])
    profile["options"]["compute_units"] = "NEURAL_ONLY"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(profile))
    proc = _build_digits(tmp_path / "out", digits_data, "--target", path, "--precision", "fp16")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "compute_units must be one of ALL, CPU_ONLY, CPU_AND_GPU, CPU_AND_NE" in lines[0]
    assert not (tmp_path / "out").exists()


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 32, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(32)
        self.fc = torch.nn.Linear(32 * 4 * 4, 5)
        with torch.no_grad():  # a batch norm that is not the identity
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.uniform_(-2.0, 2.0)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.nn.functional.adaptive_avg_pool2d(x, 4)
        return self.fc(torch.flatten(x, 1))


def _tiny_onnx(path: Path, input_name: str = "input.1") -> Path:
    model = Tiny().eval()
    torch.onnx.export(model, (torch.zeros(1, 3, 8, 8),), str(path), dynamo=False,
                      opset_version=17, input_names=[input_name], output_names=["scores:0"])
    return path


def test_onnx_source_through_onnx2torch(tmp_path):
    """ONNX -> onnx2torch -> checked against ONNX Runtime -> Core ML; names Core ML cannot
    take ("input.1", "scores:0") are mapped, and the manifest keeps the source's names."""
    model = _tiny_onnx(tmp_path / "tiny.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", **{"input.1": rng.standard_normal((8, 3, 8, 8))
                                        .astype(np.float32)})
    proc = run_cli("build", model, "--target", "coreml", "--precision", "fp32", "--precision",
                   "int8", "--calib", tmp_path / "calib.npz", "--out", tmp_path / "out",
                   "--json")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    for p in ("fp32", "int8"):
        bundle = _bundle(tmp_path / "out", p, model="tiny")
        m = mf.read(bundle)
        opts = m["harness"]["runtime_options"]
        assert opts["feature_names"] == {"input.1": "input_1", "scores:0": "scores_0"}
        assert [t["name"] for t in m["signature"]["inputs"]] == ["input.1"]
        ins, outs = _spec_io(bundle / "model.mlpackage")
        assert ins == [("input_1", (1, 3, 8, 8), "float32")]
        assert outs == [("scores_0", (1, 5), "float32")]
        o2t = opts["host_checks"]["onnx_to_torch"]
        assert o2t["metrics"]["scores:0"]["cosine_min"] >= 0.9999
        assert "onnx2torch model" in m["validation"]["reason"]
        with np.load(bundle / "reference" / "inputs.npz") as f:
            assert f.files == ["input.1"]
    q = mf.read(_bundle(tmp_path / "out", "int8", model="tiny"))["quantization"]
    assert q["proxy_tensors"] == {"reproduced": 1, "of": 1, "unmatched": []}  # fc: 2560 weights


def test_intermediate_check_catches_a_bad_model(tmp_path):
    from edgepack.convert.onnx_to_torch import check_intermediate, onnx_to_torch
    from edgepack.errors import ConversionError
    from edgepack.runners.onnxruntime import OnnxRuntimeRunner

    path = _tiny_onnx(tmp_path / "tiny.onnx")
    x = {"input.1": np.random.default_rng(1).standard_normal((4, 3, 8, 8)).astype(np.float32)}
    from edgepack.runners.base import run_samples

    reference = run_samples(OnnxRuntimeRunner(path), x, 1)
    module = onnx_to_torch(path)
    good = check_intermediate(module, ["input.1"], ["scores:0"], x, reference,
                              {"cosine_min": 0.9999}, 1)
    assert good["metrics"]["scores:0"]["cosine_min"] >= 0.9999
    with torch.no_grad():  # a wrong intermediate: one weight flipped in sign
        first = next(p for p in module.parameters() if p.dim() == 4)
        first.mul_(-1.0)
    with pytest.raises(ConversionError, match="disagrees with ONNX Runtime"):
        check_intermediate(module, ["input.1"], ["scores:0"], x, reference,
                           {"cosine_min": 0.9999}, 1)


def test_torch_export_source(tmp_path):
    ep = torch.export.export(Tiny().eval(), (torch.zeros(1, 3, 8, 8),))
    torch.export.save(ep, str(tmp_path / "tiny.pt2"))
    proc = run_cli("build", tmp_path / "tiny.pt2", "--target", "coreml", "--precision", "fp16",
                   "--out", tmp_path / "out", "--json")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    m = mf.read(_bundle(tmp_path / "out", "fp16", model="tiny"))
    assert m["validation"]["status"] == "deferred"
    assert m["validation"]["metrics"]["output0"]["cosine_min"] >= 0.999
    assert "exported source" in m["validation"]["reason"]


def test_proxy_reproduces_folded_batchnorm_weights(tmp_path):
    """The conv's compressed weight is the batch-norm-folded one; the proxy carries the
    package's expanded weight back to the unfolded parameter, channel by channel."""
    from edgepack.convert import torch_to_coreml as cv
    from edgepack.quantize import coreml_compress as cc
    from edgepack.runners.coreml_proxy import match_weights, weight_error
    from edgepack.signature import Signature, TensorSpec

    sig = Signature((TensorSpec("x", (1, 3, 8, 8)),), (TensorSpec("y", (1, 5)),))
    program = cv.torch_program(Tiny().eval(), sig)
    fp16 = cv.convert(program, sig, "float16", "iOS16")
    small, _ = cc.compress(fp16, "linear", weight_threshold=512)  # conv (864) and fc
    path = cv.save_deterministic(small, tmp_path / "m.mlpackage")
    tensors = cc.compressed_tensors(fp16, path)
    matches, unmatched = match_weights(program.module, tensors)
    assert unmatched == [] and sorted(m.parameter for m in matches) == ["conv.weight",
                                                                         "fc.weight"]
    conv = next(m for m in matches if m.parameter == "conv.weight")
    w = program.module.conv.weight.detach().numpy()
    # on the int8 grid of the unfolded weight, per channel: off-grid values would be
    # up to 0.5 step away; fp16 scales and fp16 expansion move them by < 0.25
    step = np.abs(w).reshape(32, -1).max(axis=1) / 127
    codes = conv.replacement.reshape(32, -1) / step[:, None]
    assert np.abs(codes - np.round(codes)).max() < 0.25
    assert np.abs(np.round(codes)).max() <= 127
    assert weight_error(tensors)["max_rel_to_range"] <= HALF_STEP_FP16


def test_structural_check_rejects_a_wrong_signature(digits_coreml):
    from edgepack.convert.coreml_check import structural_check
    from edgepack.errors import ConversionError
    from edgepack.signature import Signature

    out, _ = digits_coreml
    bundle = _bundle(out, "fp16")
    sig = Signature.from_dict(mf.read(bundle)["signature"])
    assert structural_check(bundle / "model.mlpackage", sig, {})["status"] == "passed"
    wrong = Signature.from_dict({"inputs": [{"name": "input", "shape": [1, 1, 8, 9]}],
                                 "outputs": [{"name": "probs", "shape": [1, 10]}]})
    with pytest.raises(ConversionError, match="does not match the signature"):
        structural_check(bundle / "model.mlpackage", wrong, {})


# ---------------------------------------------------------------- real classifier (slow)


@pytest.mark.slow
@pytest.mark.parametrize("form", ["torchscript", "onnx"])
def test_real_classifier_coreml(effnet, tmp_path, form):
    args = ["build", effnet[form], "--target", "coreml", "--precision", "all", "--calib",
            effnet["calib"], "--eval", effnet["eval"], "--task", "classification",
            "--out", tmp_path, "--json"]
    if form == "torchscript":
        args += ["--input", "input:1x3x224x224:float32", "--output", "logits"]
    proc = run_cli(*args, timeout=2400)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    summary = json.loads(proc.stdout)
    assert {b["status"] for b in summary["bundles"]} == {"deferred"}
    bundles = {p: next(tmp_path.glob(f"effnet_lite0*-ios-{p}")) for p in PRECISIONS}
    metrics = {p: mf.read(b)["validation"]["metrics"]["logits"] for p, b in bundles.items()}
    assert metrics["int8"]["top1_agreement"] >= 0.95
    assert metrics["int8"]["cosine_mean"] >= 0.99
    assert metrics["fp16"]["cosine_min"] >= 0.999
    assert metrics["fp32"]["cosine_min"] >= 0.9999
    q = mf.read(bundles["int8"])["quantization"]
    assert q["proxy_tensors"]["reproduced"] == q["proxy_tensors"]["of"] >= 40
    assert q["weight_error"]["max_rel_to_range"] <= HALF_STEP_FP16
    assert _package_bytes(bundles["int8"]) <= 0.35 * _package_bytes(bundles["fp32"])
    assert _weight_bytes(bundles["int8"]) <= 0.27 * _weight_bytes(bundles["fp32"])
    for b in bundles.values():
        m = mf.read(b)
        ins, outs = _spec_io(b / "model.mlpackage")
        assert [(n, list(s), d) for n, s, d in ins] == \
            [(t["name"], t["shape"], t["dtype"]) for t in m["signature"]["inputs"]]
        assert outs == [("logits", (1, 1000), "float32")]
    if form == "onnx":
        o2t = mf.read(bundles["fp32"])["harness"]["runtime_options"]["host_checks"]
        assert o2t["onnx_to_torch"]["metrics"]["logits"]["cosine_min"] >= 0.9999


class MaskedMean(torch.nn.Module):
    """transformers' and_mask pattern: ``idx.new_ones(shape, dtype=torch.bool) & ...``
    (coremltools 9.0 has no new_ones converter: MiniLM failed to convert)."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keep = mask.new_ones(mask.shape, dtype=torch.bool) & (mask > 0)
        weights = keep.to(x.dtype).unsqueeze(-1)
        count = x.new_ones(()) + weights.sum(1)
        return (x * weights).sum(1) / count


def test_new_ones_converts():
    """Core ML cannot run here; the conversion itself failed before ('new_ones' not
    implemented, then 'bitwise_and only supports boolean input' while the fill ignored
    the dtype argument). Static shapes fold the fills into constants."""
    from edgepack.convert import torch_to_coreml as cv
    from edgepack.signature import Signature, TensorSpec

    sig = Signature((TensorSpec("x", (2, 5, 3)), TensorSpec("mask", (2, 5), "int32")),
                    (TensorSpec("y", (2, 3)),))
    program = cv.torch_program(MaskedMean().eval(), sig)
    model = cv.convert(program, sig, "float32", "iOS16")
    spec = model.get_spec()
    assert [o.name for o in spec.description.output] == ["y"]
    assert list(spec.description.output[0].type.multiArrayType.shape) == [2, 3]
    ops = {op.op_type for f in model._mil_program.functions.values() for op in f.operations}
    assert {"logical_and", "reduce_sum", "real_div"} <= ops
