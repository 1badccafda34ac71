"""The CLI commands beside build: inspect, doctor, pack, verify, and validate failing
through its golden re-run (hashes intact, outputs wrong)."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from edgepack.bundle import folder as bd
from edgepack.bundle import manifest as mf

FP32 = "digits-onnx-cpu-fp32"


@pytest.fixture
def fp32_bundle(digits_dist, tmp_path) -> Path:
    """A private copy of the session's digits fp32 onnx bundle (tests may tamper)."""
    out, proc = digits_dist
    assert proc.returncode == 0, proc.stderr[-2000:]
    copy = tmp_path / FP32
    shutil.copytree(out / FP32, copy)
    return copy


def _rehash(bundle: Path, rel: str) -> None:
    """Record REL's new size and sha256 in the manifest, as a careful forger would."""
    m = mf.read(bundle)
    (entry,) = [e for e in m["artifacts"] if e["path"] == rel]
    entry.update(bd.file_entry(bundle, rel, entry["role"]))
    mf.write(m, bundle)
    assert bd.verify(bundle) == []


def test_validate_fails_through_the_golden_rerun_when_hashes_pass(fp32_bundle):
    ref = fp32_bundle / "reference" / "outputs.npz"
    with np.load(ref) as z:
        outputs = {k: z[k] for k in z.files}
    assert list(outputs) == ["logits"]
    outputs["logits"] = -outputs["logits"]  # the golden outputs no longer match the model
    bd.save_npz(ref, outputs)
    _rehash(fp32_bundle, "reference/outputs.npz")
    assert run_cli("verify", fp32_bundle).returncode == 0  # every hash checks out

    proc = run_cli("validate", fp32_bundle)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == [f"FAILED   {FP32}"]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{FP32}: "), lines
    assert "logits: cosine_min" in lines[0], lines  # the output and the metric that failed
    assert "Traceback" not in proc.stderr


def test_validate_passes_the_untouched_bundle(fp32_bundle):
    proc = run_cli("validate", fp32_bundle)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == [f"ok       {FP32}"]
    assert proc.stderr.strip() == ""


def test_inspect_a_model_and_a_bundle(fp32_bundle):
    m = mf.read(fp32_bundle)
    model = fp32_bundle / "model.onnx"
    proc = run_cli("inspect", model)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    (entry,) = [e for e in m["artifacts"] if e["path"] == "model.onnx"]
    assert info["kind"] == "model" and info["format"] == "onnx" and info["opset"] == 17
    assert info["bytes"] == entry["bytes"] == model.stat().st_size
    assert info["sha256"] == entry["sha256"]
    assert info["signature"] == m["signature"]
    assert "float32" in info["weight_dtypes"] and "int8" not in info["weight_dtypes"]
    # batch norm folded into the convs at export: a few parameters fewer than the source
    assert 0.99 * m["source"]["parameters"] < info["parameters"] <= m["source"]["parameters"]
    assert info["ops"]["Conv"] >= 2 and info["ops"]["Gemm"] >= 1

    proc = run_cli("inspect", fp32_bundle)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert (info["kind"], info["name"], info["precision"], info["validation"]) == \
        ("bundle", FP32, "fp32", "passed")
    assert info["target"] == {"backend": "onnx", "name": "onnx-cpu", "runtime": "onnxruntime"}
    assert info["signature"] == m["signature"]


def test_inspect_of_nothing_is_an_input_error(tmp_path):
    proc = run_cli("inspect", tmp_path / "absent.onnx")
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_doctor_lists_every_backend():
    proc = run_cli("doctor")
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[1]: line.split()[0] for line in proc.stdout.splitlines()}
    # what the [all] extra installs is usable here; the device runtimes say why not
    for name in ("torch", "onnx", "onnxruntime", "onnxscript", "onnxconverter-common",
                 "litert-torch", "ai-edge-litert", "tensorflow", "tf2onnx", "coremltools"):
        assert rows.get(name) == "ok", proc.stdout
    assert "tensorrt" in rows and "coreml" in rows
    assert set(rows.values()) <= {"ok", "missing"}


def test_pack_verify_round_trip_and_a_tampered_archive(fp32_bundle, tmp_path):
    archive = tmp_path / "a.tar.gz"
    proc = run_cli("pack", fp32_bundle, "-o", archive)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(archive) and archive.is_file()
    proc = run_cli("verify", archive)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"ok {archive}" and proc.stderr == ""

    # the same archive with one byte of the model changed (same size)
    tampered = tmp_path / "t.tar.gz"
    with tarfile.open(archive) as src, tarfile.open(tampered, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            if member.name == f"{FP32}/model.onnx":
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            dst.addfile(member, io.BytesIO(data))
    proc = run_cli("verify", tampered)
    assert proc.returncode == 1  # a failed integrity check
    assert proc.stderr.strip().splitlines() == [
        f"{FP32}: model.onnx: sha256 differs from the manifest"]
    assert proc.stdout == ""

    garbage = tmp_path / "g.tar.gz"
    garbage.write_bytes(archive.read_bytes()[:100])  # cut short: not an archive
    proc = run_cli("verify", garbage)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr  # an input error
    assert len(proc.stderr.strip().splitlines()) == 1


def test_pack_refuses_a_folder_that_is_not_a_bundle(tmp_path):
    (tmp_path / "nb").mkdir()
    proc = run_cli("pack", tmp_path / "nb")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert not (tmp_path / "nb.tar.gz").exists()
