"""The on-device harness, run as a subprocess from hand-written bundles of real ONNX models."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgepack.harness

HARNESS_DIR = Path(edgepack.harness.__file__).parent
DISABLED = ["WeightBiasQuantization"]


def linear_model(path: Path) -> None:
    """x (N, 8) -> MatMul + Add -> logits (N, 4): a tiny classifier."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(8, 4)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "B")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]),
             helper.make_node("Add", ["h", "B"], ["logits"])]
    graph = helper.make_graph(
        nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], inits)
    save(graph, path)


def qdq_conv_model(path: Path) -> None:
    """QDQ activations around a float Conv: ORT's WeightBiasQuantization re-quantizes it."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(size=8).astype(np.float32), "B"),
             numpy_helper.from_array(np.array(0.02, np.float32), "s"),
             numpy_helper.from_array(np.array(128, np.uint8), "z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
             helper.make_node("Conv", ["d", "W", "B"], ["c"]),
             helper.make_node("QuantizeLinear", ["c", "s", "z"], ["q2"]),
             helper.make_node("DequantizeLinear", ["q2", "s", "z"], ["y"])]
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 6, 6])], inits)
    save(graph, path)


def save(graph, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def make_bundle(root: Path, build_model, sample_shape, samples: int = 16, batch: int = 1,
                runtime_options: dict | None = None) -> Path:
    """A minimal bundle as the bundle writer lays it out, golden outputs from ORT."""
    root.mkdir(parents=True)
    build_model(root / "model.onnx")
    x = np.random.default_rng(2).normal(size=(samples, *sample_shape)).astype(np.float32)
    session = ort.InferenceSession(str(root / "model.onnx"), providers=["CPUExecutionProvider"],
                                   disabled_optimizers=DISABLED)
    out = session.get_outputs()[0].name
    y = np.concatenate([session.run(None, {"x": x[i:i + batch]})[0]
                        for i in range(0, samples, batch)])
    (root / "reference").mkdir()
    np.savez(root / "reference" / "inputs.npz", x=x)
    np.savez(root / "reference" / "outputs.npz", **{out: y})
    for lib in ("edgepack_harness.py", "edgepack_metrics.py", "edgepack_tasks.py"):
        shutil.copy(HARNESS_DIR / lib, root / lib)
    shutil.copy(HARNESS_DIR / "bench_onnxruntime.py", root / "bench.py")
    manifest = {
        "schema_version": 1,
        "target": {"name": "onnx-cpu", "backend": "onnx", "runtime": "onnxruntime"},
        "precision": "fp32",
        "signature": {
            "inputs": [{"name": "x", "shape": [batch, *sample_shape], "dtype": "float32",
                        "layout": None}],
            "outputs": [{"name": out, "shape": [batch, *y.shape[1:]], "dtype": "float32",
                         "layout": None}],
        },
        "artifacts": [{"path": "model.onnx", "sha256": "0" * 64,
                       "bytes": (root / "model.onnx").stat().st_size}],
        "validation": {"status": "passed", "reason": None, "samples": samples, "metrics": {},
                       "tolerances": {"cosine_min": 0.9999, "cosine_mean": 0.99999,
                                      "max_abs_err": 1e-4, "top1_agreement": 1.0}},
        "harness": {"entry": "bench.py", "command": "python bench.py", "batch": batch,
                    "runtime_options": (runtime_options if runtime_options is not None
                                        else {"disabled_optimizers": DISABLED})},
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return root


def bench(bundle: Path, *args: str, cwd: Path | None = None, env_extra: dict | None = None,
          script: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, str(script or "bench.py"), *args], cwd=cwd or bundle, env=env,
        capture_output=True, text=True, timeout=120)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return make_bundle(tmp_path / "tiny-onnx-cpu-fp32", linear_model, (8,))


def test_passes_and_writes_every_contract_key(bundle: Path):
    r = bench(bundle, "--runs", "20", "--warmup", "3", "--threads", "1", "--json", "r.json")
    assert r.returncode == 0, r.stderr
    assert "PASSED" in r.stdout and "p50" in r.stdout
    res = json.loads((bundle / "r.json").read_text())
    assert res["runtime"]["name"] == "onnxruntime"
    assert res["runtime"]["version"] == ort.__version__
    assert set(res["device"]) >= {"platform", "processor", "machine", "python"}
    assert res["device"]["processor"]
    lat = res["latency_ms"]
    assert set(lat) == {"p50", "p90", "p99", "mean", "min", "max"}
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"] < 1000
    assert lat["min"] <= lat["mean"] <= lat["max"]
    assert res["throughput_per_s"] == pytest.approx(1000 / lat["mean"], rel=1e-4)
    assert (res["runs"], res["warmup"], res["threads"], res["batch"]) == (20, 3, 1, 1)
    assert res["bundle"] == {"target": "onnx-cpu", "precision": "fp32"}
    g = res["golden"]
    assert g["status"] == "passed" and g["failures"] == [] and g["samples"] == 16
    # only the subset-monotone tolerances are applied to golden samples
    assert g["tolerances"] == {"cosine_min": 0.9999, "max_abs_err": 0.0001}
    assert g["metrics"]["logits"]["cosine_min"] == 1.0
    assert g["metrics"]["logits"]["top1_agreement"] == 1.0


def test_defaults_and_other_cwd(bundle: Path, tmp_path: Path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = bench(bundle, "--json", "out.json", cwd=elsewhere, script=bundle / "bench.py")
    assert r.returncode == 0, r.stderr
    res = json.loads((elsewhere / "out.json").read_text())  # --json is relative to the cwd
    assert (res["runs"], res["warmup"], res["threads"]) == (200, 20, None)


def test_batched_golden_and_timing(tmp_path: Path):
    b = make_bundle(tmp_path / "b", linear_model, (8,), samples=12, batch=4)
    r = bench(b, "--runs", "10", "--json", "r.json")
    assert r.returncode == 0, r.stderr
    res = json.loads((b / "r.json").read_text())
    assert res["batch"] == 4 and res["golden"]["samples"] == 12
    assert res["throughput_per_s"] == pytest.approx(4000 / res["latency_ms"]["mean"], rel=1e-4)


def test_altered_golden_outputs_fail(bundle: Path):
    path = bundle / "reference" / "outputs.npz"
    with np.load(path) as d:
        y = d["logits"].copy()
    y[3, 1] += 0.5
    np.savez(path, logits=y)
    r = bench(bundle, "--runs", "5", "--json", "r.json")
    assert r.returncode == 1, r.stderr
    assert "FAILED" in r.stdout and "FAIL logits: max_abs_err 0.5 > 0.0001" in r.stdout
    g = json.loads((bundle / "r.json").read_text())["golden"]
    assert g["status"] == "failed"
    assert g["failures"] == ["logits: cosine_min 0.995566 < 0.9999",
                             "logits: max_abs_err 0.5 > 0.0001"]


def assert_one_line_error(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w in lines[0]


def test_corrupt_model_exits_2_in_one_line(bundle: Path):
    (bundle / "model.onnx").write_bytes(b"this is not an onnx model" * 10)
    r = bench(bundle, "--runs", "5", "--json", "r.json")
    assert_one_line_error(r, "cannot load model.onnx", "onnxruntime")
    assert not (bundle / "r.json").exists()


def test_missing_manifest_and_golden_exit_2(bundle: Path):
    (bundle / "reference" / "inputs.npz").unlink()
    assert_one_line_error(bench(bundle, "--runs", "5"), "missing golden file")
    (bundle / "manifest.json").write_text("{not json")
    assert_one_line_error(bench(bundle, "--runs", "5"), "manifest.json is unreadable")


def test_missing_onnxruntime_exits_2_in_one_line(bundle: Path, tmp_path: Path):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "onnxruntime.py").write_text("raise ImportError('No module named onnxruntime')\n")
    r = bench(bundle, "--runs", "5", env_extra={"PYTHONPATH": str(fake)})
    assert_one_line_error(r, "onnxruntime cannot be imported", "pip install onnxruntime")


def test_session_honours_disabled_optimizers(tmp_path: Path):
    """Golden outputs come from a session without WeightBiasQuantization (as the host runs it);
    the harness matches them only when it disables the optimizer as the manifest says."""
    ok = make_bundle(tmp_path / "ok", qdq_conv_model, (3, 8, 8), samples=4)
    r = bench(ok, "--runs", "5", "--json", "r.json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads((ok / "r.json").read_text())["golden"]["metrics"]["y"]["max_abs_err"] == 0
    bad = make_bundle(tmp_path / "bad", qdq_conv_model, (3, 8, 8), samples=4, runtime_options={})
    r = bench(bad, "--runs", "5")
    assert r.returncode == 1 and "max_abs_err" in r.stdout
