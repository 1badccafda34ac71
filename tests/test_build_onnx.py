"""End to end on the onnx target with the trained digits CNN and its real data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import DIGITS, run_cli

from edgepack import manifest as mf

PRECISIONS = ["fp32", "fp16", "int8-dynamic", "int8"]


def _bundle(out: Path, precision: str) -> Path:
    return out / f"digits-onnx-cpu-{precision}"


def test_build_all_precisions_pass(digits_dist):
    out, proc = digits_dist
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert [b["precision"] for b in summary["bundles"]] == PRECISIONS
    assert {b["status"] for b in summary["bundles"]} == {"passed"}
    assert json.loads((out / "summary.json").read_text())["exit_code"] == 0
    for p in PRECISIONS:
        m = mf.read(_bundle(out, p))
        assert m["validation"]["status"] == "passed"
        assert m["validation"]["samples"] == 450
        assert m["validation"]["data"] == "eval.npz"


def test_accuracy_numbers(digits_dist):
    out, _ = digits_dist
    fp32 = mf.read(_bundle(out, "fp32"))["validation"]["metrics"]["logits"]
    assert fp32["cosine_min"] >= 0.99999
    assert fp32["top1_agreement"] == 1.0
    int8 = mf.read(_bundle(out, "int8"))
    metrics = int8["validation"]["metrics"]["logits"]
    assert metrics["reference_task_accuracy"] > 97.0
    assert metrics["reference_task_accuracy"] - metrics["task_accuracy"] <= 1.0
    q = int8["quantization"]
    assert q["passed"] is True and q["per_channel"] is True


def test_int8_is_smaller(digits_dist):
    out, _ = digits_dist
    size = {p: (_bundle(out, p) / "model.onnx").stat().st_size for p in PRECISIONS}
    assert size["int8"] < size["fp32"] / 2.0
    assert size["fp16"] < size["fp32"] * 0.6


def test_manifest_contract(digits_dist):
    out, _ = digits_dist
    m = mf.read(_bundle(out, "int8"))
    for key in ("schema_version", "edgepack_version", "source", "target", "precision",
                "signature", "artifacts", "quantization", "validation", "toolchain", "harness"):
        assert key in m
    assert m["target"] == {"name": "onnx-cpu", "backend": "onnx", "runtime": "onnxruntime"}
    assert m["signature"]["inputs"][0]["shape"] == [1, 1, 8, 8]
    assert m["signature"]["outputs"][0]["name"] == "logits"
    assert m["toolchain"]["onnxruntime"] and m["toolchain"]["torch"].startswith("2.13")
    assert mf.read(_bundle(out, "fp32"))["quantization"] is None
    text = (_bundle(out, "int8") / "manifest.json").read_text()
    assert str(out) not in text and "/tmp" not in text  # no absolute paths in hashed content


def test_builds_are_byte_identical(digits_dist, tmp_path):
    out, _ = digits_dist
    again = tmp_path / "again"
    proc = run_cli("build", DIGITS / "edgepack.yaml", "--target", "onnx",
                   "--precision", "fp32", "--precision", "int8", "--out", again, "--quiet")
    assert proc.returncode == 0, proc.stderr
    for p in ("fp32", "int8"):
        for name in ("model.onnx", "manifest.json", "reference/inputs.npz",
                     "reference/outputs.npz"):
            assert (_bundle(out, p) / name).read_bytes() == (_bundle(again, p) / name).read_bytes()


def test_validate_passes_then_catches_one_byte(digits_dist, tmp_path):
    out, _ = digits_dist
    proc = run_cli("validate", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    copy = tmp_path / "b"
    shutil.copytree(_bundle(out, "int8"), copy)
    model = copy / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    proc = run_cli("validate", copy)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.onnx" in lines[0] and "Traceback" not in proc.stderr


def test_tolerance_override_fails_build_naming_metric(tmp_path):
    proc = run_cli("build", DIGITS / "edgepack.yaml", "--target", "onnx", "--precision", "fp32",
                   "--tolerance", "cosine_min=1.01", "--out", tmp_path / "d")
    assert proc.returncode == 1
    assert "cosine_min" in proc.stderr
    m = mf.read(tmp_path / "d" / "digits-onnx-cpu-fp32")
    assert m["validation"]["status"] == "failed"
    assert any("cosine_min" in f for f in m["validation"]["failures"])


def test_harness_runs_in_bundle(digits_dist, tmp_path):
    out, _ = digits_dist
    result = tmp_path / "r.json"
    proc = run_cli("bench", _bundle(out, "int8"), "--runs", "30", "--warmup", "3",
                   "--json", result)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = json.loads(result.read_text())
    assert r["golden"]["status"] == "passed"
    assert r["runtime"]["name"] == "onnxruntime"
    for k in ("p50", "p90", "p99", "mean", "min", "max"):
        assert r["latency_ms"][k] > 0
    assert r["throughput_per_s"] > 0


@pytest.mark.parametrize("args, needle", [
    (["build", "missing.onnx", "--target", "onnx"], "no such file"),
    (["build", "{random}", "--target", "onnx"], "not a valid ONNX model"),
    (["build", "{digits}", "--target", "nowhere"], "unknown target"),
    (["build", "{digits}", "--target", "onnx", "--precision", "int4"], "precision"),
    (["build", "{digits}", "--target", "onnx", "--input", "input:1x1x9x9"], "input"),
    (["build", "{digits}", "--target", "onnx", "--calib", "{badcalib}", "--precision", "int8"],
     "calibration"),
    (["build", "{digits}", "--target", "onnx", "--tolerance", "cosine=0.9"], "cosine"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, args, needle):
    import numpy as np

    random = tmp_path / "random.onnx"
    random.write_bytes(np.random.default_rng(0).bytes(4096))
    badcalib = tmp_path / "calib.npz"
    np.savez(badcalib, wrong=np.zeros((4, 1, 8, 8), np.float32))
    subst = {"{random}": str(random), "{digits}": str(DIGITS / "edgepack.yaml"),
             "{badcalib}": str(badcalib)}
    out = tmp_path / "dist"
    proc = run_cli(*[subst.get(a, a) for a in args], "--out", out)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0] and "Traceback" not in proc.stderr
    assert not out.exists() or not [p for p in out.iterdir() if not p.name.startswith(".")]
