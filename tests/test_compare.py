"""Metrics and tolerance decisions on hand-made arrays with hand-computed numbers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edgepack import compare as c
from edgepack.errors import UsageError, ValidationFailed
from edgepack.harness import edgepack_metrics as h

REF = np.array([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]], dtype=np.float32)


def perturbed() -> np.ndarray:
    cand = REF.copy()
    cand[0, 3] += 0.5  # sample 0: same class, small error
    cand[1, 0] = 1.0  # sample 1: class 0 -> class 1 (3.5 wins)
    cand[1, 1] = 3.5
    return cand


def test_identity_is_perfect_and_snr_capped():
    m = c.compute_metrics({"y": REF}, {"y": REF.copy()})["y"]
    assert m == {"max_abs_err": 0.0, "mean_abs_err": 0.0, "cosine_min": 1.0,
                 "cosine_mean": 1.0, "snr_db": h.SNR_CAP_DB, "top1_agreement": 1.0,
                 "top1_agreement_ci95": [0.342372, 1.0]}  # Wilson, 2 samples
    json.dumps(m, allow_nan=False)


def test_known_perturbation_exact_numbers():
    m = c.compute_metrics({"y": REF}, {"y": perturbed()})["y"]
    cos0 = 32.0 / math.sqrt(30.0 * 34.25)
    cos1 = 19.5 / math.sqrt(30.0 * 18.25)
    assert m["max_abs_err"] == 3.0
    assert m["mean_abs_err"] == 0.5  # (0.5 + 3 + 0.5) / 8
    assert m["cosine_min"] == pytest.approx(cos1, rel=1e-6)
    assert m["cosine_mean"] == pytest.approx((cos0 + cos1) / 2, rel=1e-6)
    assert m["snr_db"] == pytest.approx(10 * math.log10(60.0 / 9.5), rel=1e-6)
    assert m["top1_agreement"] == 0.5
    assert "top5_agreement" not in m  # only 4 classes


def test_rounding_is_six_significant_digits():
    m = c.compute_metrics({"y": REF}, {"y": perturbed()})["y"]
    for v in m.values():
        for x in v if isinstance(v, list) else [v]:  # intervals are [low, high]
            assert x == float(f"{x:.6g}")
    assert h.rounded(-0.0) == 0.0 and math.copysign(1, h.rounded(-0.0)) == 1
    assert h.rounded(float("nan")) is None


def test_zero_vectors_in_cosine():
    zero = np.zeros((1, 3), np.float32)
    one = np.ones((1, 3), np.float32)
    assert h.cosine_per_sample(zero, zero).tolist() == [1.0]
    assert h.cosine_per_sample(zero, one).tolist() == [0.0]
    assert h.cosine_per_sample(one, -one).tolist() == [-1.0]
    m = c.compute_metrics({"z": zero}, {"z": zero})["z"]
    assert m["snr_db"] == h.SNR_CAP_DB and m["cosine_min"] == 1.0
    assert c.compute_metrics({"z": zero}, {"z": one})["z"]["snr_db"] == -h.SNR_CAP_DB


def test_top1_and_top5_on_crafted_scores():
    ref = np.array([[0, 1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1, 0], [0, 0, 9, 0, 0, 0, 0]],
                   np.float32)
    cand = ref.copy()
    cand[0, 5] = 7  # top-1 flips to 5; reference class 6 still in top 5
    cand[2] = [9, 8, 7, 6, 5, 0, 0]  # reference class 2 ranked 3rd
    cand[2, 2] = -1  # now ranked last: out of top 5
    m = c.compute_metrics({"p": ref}, {"p": cand})["p"]
    assert m["top1_agreement"] == pytest.approx(1 / 3, rel=1e-5)
    assert m["top5_agreement"] == pytest.approx(2 / 3, rel=1e-5)


def test_classification_detection():
    feat = np.ones((2, 3, 4), np.float32)  # not (N, C): no top-1 unless asked
    assert "top1_agreement" not in c.compute_metrics({"f": feat}, {"f": feat})["f"]
    assert "top1_agreement" in c.compute_metrics({"f": feat}, {"f": feat},
                                                 task="classification")["f"]
    assert "top1_agreement" not in c.compute_metrics({"y": REF}, {"y": REF}, task="regression")["y"]
    ints = np.ones((2, 3), np.int64)
    assert "top1_agreement" not in c.compute_metrics({"i": ints}, {"i": ints})["i"]


def test_task_accuracy_with_labels():
    labels = np.array([3, 1])  # reference right on sample 0 only; candidate on both
    m = c.compute_metrics({"y": REF}, {"y": perturbed()}, labels=labels)["y"]
    assert m["task_accuracy"] == 100.0
    assert m["reference_task_accuracy"] == 50.0
    with pytest.raises(ValidationFailed, match="3 labels for 2 samples"):
        c.compute_metrics({"y": REF}, {"y": REF}, labels=np.array([0, 1, 2]))


def test_missing_output_and_shape_mismatch_fail_without_crash():
    with pytest.raises(ValidationFailed, match="y: missing"):
        c.compute_metrics({"y": REF}, {"other": REF})
    r = c.compare({"y": REF, "z": REF}, {"y": REF[:, :3], "z": REF}, {"cosine_min": 0.9})
    assert r.status == "failed" and not r.passed
    assert r.failures == ["y: shape [2, 3] differs from reference [2, 4]"]
    assert list(r.metrics) == ["z"]


def test_tolerance_directions():
    ref, cand = {"y": REF}, {"y": perturbed()}
    cos_min = c.compute_metrics(ref, cand)["y"]["cosine_min"]
    assert c.compare(ref, cand, {"cosine_min": cos_min}).passed  # bound is inclusive
    assert c.compare(ref, cand, {"max_abs_err": 3.0}).passed
    r = c.compare(ref, cand, {"cosine_min": 0.999, "max_abs_err": 2.9, "mean_abs_err": 0.6,
                              "snr_db": 30, "top1_agreement": 0.5, "cosine_mean": 0.9})
    assert r.status == "failed"
    assert r.failures == [
        "y: cosine_min 0.833379 < 0.999",
        "y: max_abs_err 3 > 2.9",
        "y: snr_db 8.00428 < 30",
    ]
    assert r.reason == "y: cosine_min 0.833379 < 0.999 (+2 more)"
    assert set(c.TOLERANCE_KEYS) == set(h.TOLERANCE_KEYS)
    assert {k for k, d in c.TOLERANCE_KEYS.items() if d == "max"} == {
        "max_abs_err", "mean_abs_err", "task_accuracy_drop"}


def test_worst_output_decides():
    good, bad = REF, perturbed()
    r = c.compare({"a": good, "b": good}, {"a": good, "b": bad}, {"cosine_min": 0.99})
    assert r.failures == ["b: cosine_min 0.833379 < 0.99"]


def test_task_accuracy_drop():
    labels = np.array([3, 0])  # reference right on both; candidate misses sample 1
    r = c.compare({"y": REF}, {"y": perturbed()}, {"task_accuracy_drop": 10.0}, labels=labels)
    assert r.failures == ["y: task_accuracy_drop 50 > 10 (reference 100%, artifact 50%)"]
    assert c.compare({"y": REF}, {"y": perturbed()}, {"task_accuracy_drop": 50.0},
                     labels=labels).passed


def test_inapplicable_tolerances_are_skipped_not_failed():
    feat = np.ones((2, 3, 4), np.float32)
    r = c.compare({"f": feat}, {"f": feat},
                  {"top1_agreement": 1.0, "task_accuracy_drop": 0.0, "cosine_min": 0.99})
    # a regression output: class metrics do not apply, and are not even listed
    assert r.passed and r.tasks == {"f": {"task": "regression", "inferred": True}}
    assert r.skipped == []
    r = c.compare({"f": feat}, {"f": feat}, {"top1_agreement": 1.0, "task_accuracy_drop": 0.0},
                  task="classification")
    assert r.passed and r.skipped == ["task_accuracy_drop"]  # no labels
    r = c.compare({"y": REF}, {"y": REF}, {"task_accuracy_drop": 0.0})  # no labels
    assert r.passed and r.skipped == ["task_accuracy_drop"]


def test_nan_output_fails_its_tolerances():
    cand = REF.copy()
    cand[0, 0] = np.nan
    r = c.compare({"y": REF}, {"y": cand}, {"cosine_min": 0.5})
    assert r.failures == ["y: NaN or Inf in 1 of 2 samples (the source's outputs are finite)",
                          "y: cosine_min is not finite (NaN or Inf in the outputs)"]
    assert r.reason == "y: NaN or Inf in 1 of 2 samples (the source's outputs are finite) (+1 more)"
    json.dumps(r.to_dict(), allow_nan=False)


def test_unknown_key_and_option_parsing():
    with pytest.raises(UsageError, match="unknown tolerance cos_min; valid: box_iou_mean, cosine"):
        c.check_tolerance_keys({"cos_min": 0.9})
    with pytest.raises(UsageError, match="unknown tolerance"):
        c.compare({"y": REF}, {"y": REF}, {"top_1": 0.9})
    with pytest.raises(UsageError, match="finite number"):
        c.check_tolerance_keys({"cosine_min": float("nan")})
    assert c.parse_tolerance_option("cosine_min=0.999") == ("cosine_min", 0.999)
    assert c.parse_tolerance_option(" max_abs_err = 1e-3") == ("max_abs_err", 0.001)
    for bad in ("cosine_min", "cosine_min=high", "=0.1", "cosine=0.9"):
        with pytest.raises(UsageError):
            c.parse_tolerance_option(bad)


def test_golden_subset_rule():
    full = {"cosine_min": 0.99, "cosine_mean": 0.999, "snr_db": 20, "top1_agreement": 0.9,
            "max_abs_err": 0.5, "mean_abs_err": 0.1, "task_accuracy_drop": 1}
    assert c.golden_tolerances(full) == {"cosine_min": 0.99, "max_abs_err": 0.5}
    assert c.golden_tolerances({"top1_agreement": 0.9}) == {}
    # on any subset of samples the golden metrics can only be at least as good
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(32, 10)).astype(np.float32)
    cand = ref + rng.normal(scale=0.3, size=ref.shape).astype(np.float32)
    whole = c.compute_metrics({"y": ref}, {"y": cand})["y"]
    for idx in (slice(0, 16), slice(5, 9), [0, 31]):
        sub = c.compute_metrics({"y": ref[idx]}, {"y": cand[idx]})["y"]
        assert sub["cosine_min"] >= whole["cosine_min"]
        assert sub["max_abs_err"] <= whole["max_abs_err"]


def test_to_dict_roundtrip_and_determinism():
    kwargs = dict(labels=np.array([3, 1]))
    tol = {"top1_agreement": 0.5, "cosine_min": 0.5, "task_accuracy_drop": 5}
    a = c.compare({"y": REF}, {"y": perturbed()}, tol, **kwargs).to_dict()
    b = c.compare({"y": REF}, {"y": perturbed()}, dict(reversed(tol.items())), **kwargs).to_dict()
    assert json.dumps(a) == json.dumps(b)
    assert list(a) == ["status", "reason", "proxy", "samples", "tolerances", "metrics",
                       "failures", "skipped", "tasks", "notes"]
    assert list(a["tolerances"]) == sorted(tol)
    order = [k for k in a["metrics"]["y"] if not k.endswith("_ci95")]
    assert order == [k for k in h.METRIC_ORDER if k in a["metrics"]["y"]]
    assert a["status"] == "passed" and a["samples"] == 2
    back = c.ValidationResult.from_dict(json.loads(json.dumps(a)))
    assert back.to_dict() == a


def test_deferred_is_never_passed():
    d = c.deferred("Core ML runtime needs macOS", {"cosine_min": 0.99})
    assert d.status == "deferred" and not d.passed and d.reason == "Core ML runtime needs macOS"
    assert d.metrics == {} and d.proxy is False
    proxy = c.compute_metrics({"y": REF}, {"y": perturbed()})
    d = c.deferred("TensorRT needs an NVIDIA GPU", {"cosine_min": 0.99}, proxy, samples=2)
    assert d.status == "deferred" and d.proxy and d.samples == 2
    assert d.failures == ["y: cosine_min 0.833379 < 0.99"]
    assert c.ValidationResult.from_dict(d.to_dict()) == d
    with pytest.raises(ValueError):
        c.ValidationResult.from_dict({"status": "ok"})
