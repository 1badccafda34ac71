"""--precision auto: which candidates get built and which one is kept (edgepack.builder.selection),
then end to end on the trained digits CNN for the onnx and tflite targets."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from conftest import DIGITS, run_cli

from edgepack.builder.selection import (
    Candidate,
    choose,
    contenders,
    not_worth_building,
    paired,
    race,
)
from edgepack.bundle import manifest as mf


def _c(precision: str, nbytes: int | None, status: str = "passed",
       ratio: float | None = None) -> Candidate:
    return Candidate(precision, status, None, nbytes, vs_preferred=ratio)


def test_only_as_small_candidates_are_built_after_a_pass():
    assert not_worth_building("int8", [], 100) is None
    assert not_worth_building("fp16", [_c("int8", 100, "failed")], 100) is None
    assert not_worth_building("fp16", [_c("int8", None, "skipped")], 100) is None
    passed = [_c("int8", 110)]  # 100 parameters
    assert not_worth_building("int8-dynamic", passed, 100) is None
    assert not_worth_building("fp16", passed, 100) == (
        "~0.2 kB at 16 bits per parameter; int8 met the tolerances at 0.1 kB")
    assert not_worth_building("fp32", passed, 100)
    # a form that left much in float (2.6 B/parameter): fp16 may still beat it
    assert not_worth_building("fp16", [_c("int8-dynamic", 260)], 100) is None
    assert not_worth_building("fp32", [_c("int8-dynamic", 260)], 100)
    # no parameter count: only forms with as few bits per weight
    assert not_worth_building("int8-dynamic", passed, None) is None
    assert not_worth_building("fp16", [_c("int8-dynamic", 260)], None) == (
        "16 bits per weight; int8-dynamic (8) already met the tolerances")


def test_contenders_are_the_passing_ones_near_the_smallest_in_order():
    tried = [_c("int8", 105), _c("int8-dynamic", 100), _c("fp16", 50, "failed")]
    assert [c.precision for c in contenders(tried)] == ["int8", "int8-dynamic"]
    # a CNN's int8-dynamic on ONNX Runtime keeps convolutions float: 2.8x the bytes
    assert [c.precision for c in contenders([_c("int8", 22), _c("int8-dynamic", 62)])] == [
        "int8"]
    assert contenders([_c("int8", 1, "failed")]) == []


@pytest.mark.parametrize("tried, chosen, words", [
    ([_c("int8", 100), _c("int8-dynamic", 300)], "int8", "the smallest"),
    # untimed near-ties: the profile's order decides, and says so
    ([_c("int8", 103), _c("int8-dynamic", 100)], "int8", "first in the profile's order"),
    # timed: faster by more than the margin wins; within it the order's pick stays
    ([_c("int8", 103, ratio=1.0), _c("int8-dynamic", 100, ratio=0.90)], "int8-dynamic",
     "0.90x the host latency of int8"),
    ([_c("int8", 103, ratio=1.0), _c("int8-dynamic", 100, ratio=0.96)], "int8",
     "not 5% faster here"),
    ([_c("int8", 10, "failed"), _c("int8-dynamic", 30, "deferred")], "int8-dynamic",
     "the smallest"),
    ([_c("int8", 10, "failed"), _c("int8-dynamic", 30, "failed")], None,
     "no candidate met"),
])
def test_choice_and_its_reason(tried, chosen, words):
    winner, why = choose(tried)
    assert (winner.precision if winner else None) == chosen
    assert words in why


class _Sleeper:
    name = "sleeper"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def run(self, feeds):
        time.sleep(self.seconds)
        return {}


def test_race_pairs_rounds_and_orders_by_latency():
    rows = race({"slow": _Sleeper(0.004), "fast": _Sleeper(0.001)}, {}, rounds=3,
                seconds=0.3)
    assert len(rows["slow"]) == len(rows["fast"]) == 3
    assert paired(rows, "fast", "slow") < 0.6  # 0.25 + sleep overhead
    assert paired(rows, "slow", "slow") == 1.0


@pytest.fixture(scope="module")
def auto_dist(tmp_path_factory):
    out = tmp_path_factory.mktemp("auto") / "dist"
    proc = run_cli("build", DIGITS / "edgepack.yaml", "--target", "onnx", "--target",
                   "tflite", "--precision", "auto", "--out", out, "--json")
    return out, proc


def test_auto_builds_the_int8_forms_and_keeps_the_best(auto_dist):
    out, proc = auto_dist
    assert proc.returncode == 0, proc.stderr
    bundles = {b["target"]: b for b in json.loads(proc.stdout)["bundles"]}
    assert set(bundles) == {"onnx-cpu", "android-arm64"}
    for target, bundle in bundles.items():
        sel = mf.read(out / bundle["path"])["selection"]
        tried = {c["precision"]: c for c in sel["candidates"]}
        # fp16/fp32 cannot be as small once an int8 form passed: not built, and said so
        assert [(p, c["status"]) for p, c in tried.items()] == [
            ("int8", "passed"), ("int8-dynamic", "passed"), ("fp16", "not built"),
            ("fp32", "not built")], target
        # both int8 forms are within 10 % of each other on both targets (digits)
        ratio = tried["int8"]["bytes"] / tried["int8-dynamic"]["bytes"]
        assert 1.0 < ratio < 1.10, (target, ratio)
        assert sel["chosen"] == bundle["precision"]
        if target == "onnx-cpu":
            # the host runs ONNX Runtime: both were timed, interleaved, and the faster
            # by at least 5 % wins, else the profile's order (static int8 first)
            vs = tried["int8-dynamic"]["host_latency_vs_preferred"]
            assert tried["int8"]["host_latency_vs_preferred"] == 1.0
            assert tried["int8"]["host_p50_ms"] > 0 and tried["int8-dynamic"]["host_p50_ms"] > 0
            assert sel["chosen"] == ("int8-dynamic" if vs < 0.95 else "int8"), (vs, sel)
            assert ("host latency" in sel["why"]) == (vs < 0.95)
        else:
            # LiteRT on this x86 host says nothing about the phone: the order decides
            assert "host_p50_ms" not in tried["int8"]
            assert sel["chosen"] == "int8"
            assert "first in the profile's order" in sel["why"]


def test_race_on_real_sessions_is_near_one_for_the_same_file(auto_dist):
    from edgepack.runners.onnxruntime import OnnxRuntimeRunner

    out, _ = auto_dist
    (model,) = out.glob("digits-onnx-cpu-*/model.onnx")
    x = np.load(DIGITS / "eval.npz")
    feeds = {k: v[:1] for k, v in x.items() if k != "labels"}
    rows = race({"a": OnnxRuntimeRunner(model), "b": OnnxRuntimeRunner(model)}, feeds,
                rounds=5, seconds=0.5)
    assert 0.7 < paired(rows, "a", "b") < 1.4


def test_auto_without_calibration_data(tmp_path):
    """No --calib: static int8 is skipped (never calibrated on random data) and the
    int8-dynamic form, convolutions weight-only int8, is the smallest that passes."""
    config = tmp_path / "edgepack.yaml"
    config.write_text((DIGITS / "edgepack.yaml").read_text().replace("calib: calib.npz\n", "")
                      .replace("model.py:build", str(DIGITS / "model.py") + ":build")
                      .replace("eval.npz", str(DIGITS / "eval.npz")))
    proc = run_cli("build", config, "--target", "onnx", "--precision", "auto", "--out",
                   tmp_path / "dist", "--json")
    assert proc.returncode == 0, proc.stderr
    (bundle,) = json.loads(proc.stdout)["bundles"]
    assert bundle["precision"] == "int8-dynamic" and bundle["status"] == "passed"
    sel = mf.read(tmp_path / "dist" / bundle["path"])["selection"]
    assert [(c["precision"], c["status"]) for c in sel["candidates"]] == [
        ("int8", "skipped"), ("int8-dynamic", "passed"), ("fp16", "not built"),
        ("fp32", "not built")]
    assert sel["candidates"][0]["reason"] == "no calibration data (--calib)"
    assert sel["why"] == "int8-dynamic: the smallest artifact that met the tolerances"
