"""The CI regression gate: `edgepack validate DIST --baseline OLD` on real builds of the
digits model and of a copy whose weights were perturbed, plus the pure rules."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import DIGITS, run_cli

from edgepack.bundle import manifest as mf
from edgepack.errors import UsageError
from edgepack.report import gate

FP32 = ["--target", "onnx", "--precision", "fp32"]


def _build(model: Path, out: Path, *extra: str) -> Path:
    proc = run_cli("build", model, *FP32, *extra, "--out", out, "--quiet")
    assert proc.returncode in (0, 1), proc.stderr
    return out


def _accuracy(bundle: Path) -> float:
    return mf.read(bundle)["validation"]["metrics"]["logits"]["task_accuracy"]


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict[str, Path]:
    """fp32 bundles of digits (baseline), of a copy with noise on one conv's weights
    (degraded), and of digits with an impossible tolerance (strict: status failed)."""
    import torch

    root = tmp_path_factory.mktemp("gate")
    degraded = root / "degraded_model"
    shutil.copytree(DIGITS, degraded)
    state = torch.load(degraded / "weights.pt", weights_only=True)
    w = state["features.3.weight"]
    noise = torch.randn(w.shape, generator=torch.Generator().manual_seed(0))
    state["features.3.weight"] = w + 0.8 * w.std() * noise
    torch.save(state, degraded / "weights.pt")
    return {"baseline": _build(DIGITS / "edgepack.yaml", root / "baseline"),
            "degraded": _build(degraded / "edgepack.yaml", root / "degraded"),
            "strict": _build(DIGITS / "edgepack.yaml", root / "strict",
                             "--tolerance", "cosine_min=1.01")}


def test_same_model_passes_and_new_bundles_are_noted(builds, digits_dist):
    new, _ = digits_dist  # the same model at every precision: fp32 pairs, the rest are new
    proc = run_cli("validate", new, "--baseline", builds["baseline"], "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = {r["bundle"]: r for r in json.loads(proc.stdout)}
    assert len(result) == 4 and {r["status"] for r in result.values()} == {"passed"}
    assert proc.stderr.strip() == ""


def test_degraded_model_fails_naming_bundle_metric_old_and_new(builds, tmp_path):
    old = _accuracy(builds["baseline"] / "digits-onnx-cpu-fp32")
    new = _accuracy(builds["degraded"] / "digits-onnx-cpu-fp32")
    assert old - new >= 1.0, "the perturbation should cost at least a point"
    junit, md = tmp_path / "junit.xml", tmp_path / "summary.md"
    proc = run_cli("validate", builds["degraded"], "--baseline", builds["baseline"],
                   "--junit", junit, "--markdown", md)
    assert proc.returncode == 1
    # only task accuracy moved: against its own source the artifact is as exact as before
    assert proc.stderr.strip().splitlines() == [
        f"digits-onnx-cpu-fp32: task_accuracy (logits) {old:.6g} -> {new:.6g}, dropped "
        f"{old - new:.4g} points > max 0.5"]
    assert proc.stdout.splitlines() == ["FAILED   digits-onnx-cpu-fp32"]

    suite = ET.parse(junit).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("1", "1", "0")
    (case,) = suite.findall("testcase")
    assert case.get("name") == "digits-onnx-cpu-fp32"
    assert case.find("failure").get("message") == proc.stderr.strip()

    text = md.read_text()
    assert "| digits-onnx-cpu-fp32 | ❌ failed |" in text
    assert f"{old:.2f} → {new:.2f}" in text
    assert f"- `{proc.stderr.strip()}`" in text


def test_max_drop_option_loosens_the_gate(builds):
    proc = run_cli("validate", builds["degraded"], "--baseline", builds["baseline"],
                   "--max-drop", "task_accuracy=10")
    assert proc.returncode == 0, proc.stderr


def test_missing_bundles_fail_and_junit_counts_them(builds, digits_dist, tmp_path):
    old, _ = digits_dist  # every precision; the new dist has fp32 only
    junit = tmp_path / "j.xml"
    proc = run_cli("validate", builds["baseline"], "--baseline", old, "--junit", junit)
    assert proc.returncode == 1
    size = {p: mf.read(old / f"digits-onnx-cpu-{p}")["artifacts"][0]["bytes"]
            for p in ("fp16", "int8-dynamic", "int8")}
    assert proc.stderr.strip().splitlines() == [
        f"digits-onnx-cpu-{p}: missing: baseline has onnx-cpu/{p} (status passed, "
        f"{size[p]:,} bytes), this build does not" for p in ("fp16", "int8-dynamic", "int8")]
    assert "FAILED   digits-onnx-cpu-int8 (missing)" in proc.stdout
    suite = ET.parse(junit).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == ("4", "3")
    failed = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None]
    assert failed == ["digits-onnx-cpu-fp16", "digits-onnx-cpu-int8-dynamic",
                      "digits-onnx-cpu-int8"]


def test_summary_json_alone_is_a_baseline(builds, tmp_path):
    """A baseline kept as its summary.json only (no bundle folders beside it) still
    gates: the degraded build fails against it with the same line as against the
    whole dist, and the same build passes."""
    only = tmp_path / "kept" / "summary.json"
    only.parent.mkdir()
    shutil.copyfile(builds["baseline"] / "summary.json", only)
    old = _accuracy(builds["baseline"] / "digits-onnx-cpu-fp32")
    new = _accuracy(builds["degraded"] / "digits-onnx-cpu-fp32")
    proc = run_cli("validate", builds["degraded"], "--baseline", only)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"digits-onnx-cpu-fp32: task_accuracy (logits) {old:.6g} -> {new:.6g}, dropped "
        f"{old - new:.4g} points > max 0.5"]
    assert proc.stdout.splitlines() == ["FAILED   digits-onnx-cpu-fp32"]
    proc = run_cli("validate", builds["baseline"], "--baseline", only)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr.strip() == ""


def test_size_growth_fails_and_can_be_switched_off(builds, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(builds["baseline"], old)
    bundle = old / "digits-onnx-cpu-fp32"
    m = mf.read(bundle)
    real = m["artifacts"][0]["bytes"]
    m["artifacts"][0]["bytes"] = real // 2  # the baseline's model was half the size
    mf.write(m, bundle)
    proc = run_cli("validate", builds["baseline"], "--baseline", old)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"digits-onnx-cpu-fp32: size {real // 2:,} bytes -> {real:,} bytes, grew "
        f"{real / (real // 2) - 1:.1%} > max 10%"]
    proc = run_cli("validate", builds["baseline"], "--baseline", old,
                   "--max-size-growth", "off")
    assert proc.returncode == 0, proc.stderr


def test_status_got_worse(builds):
    proc = run_cli("validate", builds["strict"], "--baseline", builds["baseline"])
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "digits-onnx-cpu-fp32: build validation failed: logits: cosine_min 1 < 1.01",
        "digits-onnx-cpu-fp32: status passed -> failed (logits: cosine_min 1 < 1.01)"]


def test_step_summary_appended(builds, tmp_path, monkeypatch):
    summary = tmp_path / "step.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    proc = run_cli("validate", builds["baseline"], "--baseline", builds["baseline"])
    assert proc.returncode == 0, proc.stderr
    text = summary.read_text()
    assert text.startswith("earlier step\n### edgepack validate against")
    assert text.count("✅ passed") == 1


def test_junit_without_baseline_counts_bundles(digits_dist, tmp_path):
    out, _ = digits_dist
    junit = tmp_path / "j.xml"
    proc = run_cli("validate", out, "--junit", junit)
    assert proc.returncode == 0, proc.stderr
    root = ET.parse(junit).getroot()
    assert (root.get("tests"), root.get("failures")) == ("4", "0")
    assert len(root.iter("testcase").__next__().attrib) == 2  # classname, name


@pytest.mark.parametrize("args, needle", [
    (["--max-drop", "accuracy=1"], "unknown metric 'accuracy'"),
    (["--max-drop", "task_accuracy=-1"], "not a number >= 0"),
    (["--max-size-growth", "lots"], "--max-size-growth"),
])
def test_bad_gate_options_exit_2(builds, args, needle):
    proc = run_cli("validate", builds["baseline"], "--baseline", builds["baseline"], *args)
    assert proc.returncode == 2
    assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_gate_options_need_a_baseline(builds):
    proc = run_cli("validate", builds["baseline"], "--max-drop", "task_accuracy=1")
    assert proc.returncode == 2 and "--baseline" in proc.stderr


# ---------------------------------------------------------------- the pure rules

def _rec(precision: str = "fp32", status: str = "passed", acc: float | None = 99.0,
         top1: float = 1.0, cos: float = 0.9999, size: int | None = 1000) -> gate.Record:
    metrics = {"logits": {"task_accuracy": acc, "top1_agreement": top1, "cosine_min": cos}}
    return gate.Record(name=f"m-onnx-cpu-{precision}", target="onnx-cpu", precision=precision,
                       status=status, bytes=size, metrics=metrics if acc is not None else {})


def test_option_parsing():
    assert gate.parse_max_drop([]) == gate.DEFAULT_MAX_DROP
    limits = gate.parse_max_drop(["task_accuracy=2", "cosine_min=off", "snr_db = 3"])
    assert limits == {"task_accuracy": 2.0, "top1_agreement": 0.01, "snr_db": 3.0}
    assert gate.parse_size_growth("10%") == pytest.approx(0.1)
    assert gate.parse_size_growth("0.25") == 0.25
    assert gate.parse_size_growth("off") is None
    assert gate.parse_size_growth(None) == gate.DEFAULT_MAX_SIZE_GROWTH
    for bad in (["task_accuracy"], ["max_abs_err=1"], ["top1_agreement=nan"]):
        with pytest.raises(UsageError):
            gate.parse_max_drop(bad)


def test_rules_at_the_limits():
    limits = gate.Limits()
    assert gate.regressions(_rec(), _rec(acc=98.5, top1=0.99, cos=0.9899, size=1100),
                            limits) == []  # exactly at every limit is allowed
    lines = gate.regressions(_rec(), _rec(acc=98.4, top1=0.98, size=1101), limits)
    assert [line.split(":")[1].split()[0] for line in lines] == \
        ["task_accuracy", "top1_agreement", "size"]
    assert "99 -> 98.4" in lines[0] and "1 -> 0.98" in lines[1]


def test_status_order_and_unmeasured_metrics():
    limits = gate.Limits()
    assert gate.regressions(_rec(status="deferred"), _rec(status="passed"), limits) == []
    assert gate.regressions(_rec(status="passed"), _rec(status="deferred"), limits) == [
        "m-onnx-cpu-fp32: status passed -> deferred"]
    failed = _rec(status="failed", acc=None, size=None)
    failed.reason = "conversion failed: boom"
    assert gate.regressions(_rec(), failed, limits) == [
        "m-onnx-cpu-fp32: status passed -> failed (conversion failed: boom)"]
    lines = gate.regressions(_rec(), _rec(status="passed", acc=None), limits)
    assert lines == ["m-onnx-cpu-fp32: task_accuracy (logits) 99 -> not measured",
                     "m-onnx-cpu-fp32: top1_agreement (logits) 1 -> not measured",
                     "m-onnx-cpu-fp32: cosine_min (logits) 0.9999 -> not measured"]


def test_judge_pairs_by_target_and_precision():
    old = {r.key: r for r in (_rec("fp32"), _rec("int8"))}
    renamed = _rec("fp32")
    renamed.name = "other-onnx-cpu-fp32"
    deferred = _rec("fp16", status="deferred")
    verdicts = gate.judge([(renamed, "passed", []),
                           (deferred, "deferred", ["m-onnx-cpu-fp16: deferred: no GPU"])], old)
    assert [(v.precision, v.status) for v in verdicts] == [
        ("fp32", "passed"), ("fp16", "deferred"), ("int8", "failed")]
    assert verdicts[1].lines == []  # why it is deferred is a note, not a failure
    assert verdicts[1].notes == ["m-onnx-cpu-fp16: deferred: no GPU",
                                 "m-onnx-cpu-fp16: new bundle, no baseline to compare"]
    assert verdicts[2].new is None and "missing" in verdicts[2].lines[0]


def test_summary_records_fill_in_conversion_failures():
    summary = {"bundles": [
        {"name": "m-onnx-cpu-fp32", "target": "onnx-cpu", "precision": "fp32",
         "status": "passed", "path": "m-onnx-cpu-fp32", "bytes": 10, "metrics": {},
         "seconds": 2.5},
        {"name": "m-onnx-cpu-int8", "target": "onnx-cpu", "precision": "int8",
         "status": "failed", "path": None, "reason": "conversion failed: x", "metrics": {},
         "bytes": None, "seconds": 0.1}]}
    records = gate.merge([_rec("fp32")], summary)
    assert records[("onnx-cpu", "fp32")].seconds == 2.5  # folder record, summary's seconds
    assert records[("onnx-cpu", "int8")].status == "failed"
    assert set(gate.merge([], summary)) == {("onnx-cpu", "fp32"), ("onnx-cpu", "int8")}
