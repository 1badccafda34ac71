"""A real pretrained ImageNet classifier (EfficientNet-Lite0) with real photos,
given as TorchScript and as ONNX: fp32/fp16/int8 with the profile's default
tolerances; int8 must keep >= 0.95 top-1 agreement on held-out photos."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("form", ["onnx", "torchscript"])
def test_real_classifier_onnx_target(effnet, tmp_path, form):
    args = ["build", effnet[form], "--target", "onnx", "--precision", "fp32",
            "--precision", "fp16", "--precision", "int8", "--calib", effnet["calib"],
            "--eval", effnet["eval"], "--task", "classification", "--out", tmp_path, "--json"]
    if form == "torchscript":
        args += ["--input", "input:1x3x224x224:float32", "--output", "logits"]
    proc = run_cli(*args, timeout=1500)
    summary = json.loads(proc.stdout)
    by_precision = {b["precision"]: b for b in summary["bundles"]}
    assert proc.returncode == 0, proc.stderr + json.dumps(summary["bundles"], indent=1)
    assert {b["status"] for b in summary["bundles"]} == {"passed"}
    int8 = by_precision["int8"]["metrics"]["logits"]
    assert int8["top1_agreement"] >= 0.95
    assert int8["cosine_mean"] >= 0.99
    fp16 = by_precision["fp16"]["metrics"]["logits"]
    assert fp16["cosine_min"] >= 0.999
    assert by_precision["int8"]["bytes"] < by_precision["fp32"]["bytes"] / 3.5
