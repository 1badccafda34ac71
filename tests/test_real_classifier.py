"""A real pretrained ImageNet classifier (EfficientNet-Lite0) with real photos,
given as TorchScript and as ONNX: fp32/fp16/int8 with the profile's default
tolerances; int8 must keep >= 0.95 top-1 agreement on held-out photos."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT, run_cli

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("form", ["onnx", "torchscript"])
def test_real_classifier_onnx_target(effnet, tmp_path, form):
    """int8 (the accuracy search) and int8-dynamic from the ONNX form; the TorchScript
    form checks the export of a real network at fp32/fp16 (its int8 would repeat the
    same search)."""
    precisions = ["fp32", "fp16"] + (["int8-dynamic", "int8"] if form == "onnx" else [])
    args = ["build", effnet[form], "--target", "onnx", "--calib", effnet["calib"],
            "--eval", effnet["eval"], "--task", "classification", "--out", tmp_path, "--json"]
    for p in precisions:
        args += ["--precision", p]
    if form == "torchscript":
        args += ["--input", "input:1x3x224x224:float32", "--output", "logits"]
    proc = run_cli(*args, timeout=1500)
    summary = json.loads(proc.stdout)
    by_precision = {b["precision"]: b for b in summary["bundles"]}
    assert proc.returncode == 0, proc.stderr + json.dumps(summary["bundles"], indent=1)
    assert sorted(by_precision) == sorted(precisions)
    assert {b["status"] for b in summary["bundles"]} == {"passed"}
    fp16 = by_precision["fp16"]["metrics"]["logits"]
    assert fp16["cosine_min"] >= 0.999
    assert by_precision["fp32"]["metrics"]["logits"]["cosine_min"] >= 0.9999
    if form != "onnx":
        return
    int8 = by_precision["int8"]["metrics"]["logits"]
    assert int8["top1_agreement"] >= 0.95
    assert int8["cosine_mean"] >= 0.99 and int8["cosine_min"] > 0.98
    manifest = json.loads((tmp_path / by_precision["int8"]["path"] / "manifest.json")
                          .read_text())
    quant = manifest["quantization"]
    assert quant["search"]["passed"] and len(quant["nodes_kept_float"]) <= 4, quant["search"]
    assert by_precision["int8"]["bytes"] < by_precision["fp32"]["bytes"] / 3.5
    # int8-dynamic: MatMul/Gemm dynamic, the 49 convolutions weight-only int8 (fp32
    # kernels after ONNX Runtime folds the dequantization at load). Measured: 3.86x
    # smaller, top-1 agreement 0.983, cosine min 0.958 (ConvInteger: 0.60, 17x slower)
    dynamic = by_precision["int8-dynamic"]
    assert dynamic["bytes"] < by_precision["fp32"]["bytes"] / 3.7
    assert dynamic["metrics"]["logits"]["top1_agreement"] >= 0.97
    weight_only = json.loads((tmp_path / dynamic["path"] / "manifest.json").read_text()
                             )["quantization"]["weight_only"]
    assert weight_only["layers"] >= 45 and weight_only["op_types"] == ["Conv"]


@pytest.mark.parametrize("form", ["python", "onnx"])
def test_real_classifier_tflite_int8(effnet, tmp_path, form):
    """Full-integer TFLite from torch (litert-torch PT2E) and from ONNX (onnx2tf +
    TFLiteConverter). Before conv+ReLU6 fusion the PT2E route gave top-1 0.717."""
    if form == "python":
        # a config: the search is capped to keep the suite short (all-int8 scores 0.988
        # on calibration data, 120 s of search 0.9939; both pass the bars). A count, not
        # seconds, so every machine stops at the same step: 8 candidates took ~40 s here
        # (top-1 agreement 0.983 on the held-out photos)
        config = tmp_path / "edgepack.yaml"
        entry = ROOT / "benchmarks" / "real_models" / "efficientnet_lite0.py"
        config.write_text(f"model: {entry}:load_model\n"
                          "inputs: [{name: input, shape: [1, 3, 224, 224], dtype: float32}]\n"
                          "outputs: [logits]\nint8: {max_candidates: 8}\n")
        model, extra = config, []
    else:
        model, extra = effnet["onnx"], []
    proc = run_cli("build", model, *extra, "--target", "tflite", "--precision", "int8",
                   "--calib", effnet["calib"], "--eval", effnet["eval"],
                   "--task", "classification", "--out", tmp_path / "dist", "--json",
                   timeout=1500)
    summary = json.loads(proc.stdout)
    (bundle,) = summary["bundles"]
    assert proc.returncode == 0, proc.stderr[-2000:] + json.dumps(bundle, indent=1)
    assert bundle["status"] == "passed"
    logits = bundle["metrics"]["logits"]
    assert logits["top1_agreement"] >= 0.9
    assert logits["cosine_mean"] >= 0.98
    manifest = json.loads((tmp_path / "dist" / bundle["path"] / "manifest.json").read_text())
    quant = manifest["quantization"]
    if form == "python":
        assert quant["route"] == "litert-torch"
        assert quant["fused_activations"] == 33  # every conv+BN+ReLU6 of the network
    else:
        assert quant["route"] == "onnx2tf"
        assert "score" in quant["full_integer_check"]  # judged before it could ship
    # 4.65 M parameters: int8 weights plus scales, well under fp32's 18.6 MB / 3.5
    assert bundle["bytes"] < 18_641_356 / 3.4
