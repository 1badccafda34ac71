"""What the CLI and users' Python call: build(), validate(), bench(), inspect().

The flow runs one way: load source -> sample inputs -> reference outputs (source
framework) -> per (target, precision): backend passes -> artifact -> host runner
-> compare -> atomic bundle. One failing bundle never stops the others.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from edgepack import bundle as bd
from edgepack import manifest as mf
from edgepack.backends import check_profile, get_backend
from edgepack.backends.base import Artifact, Deferred
from edgepack.bundle_writer import write_bundle
from edgepack.compare import ValidationResult, check_tolerance_keys, compare, deferred
from edgepack.config import BuildConfig
from edgepack.data import SampleSet, load_npz, seeded_inputs
from edgepack.errors import ConversionError, EdgepackError, InputError, UsageError
from edgepack.isolation import JobOutcome, JobSpec, Worker, execute, in_process
from edgepack.profiles import PRECISIONS, Profile, resolve_targets
from edgepack.runners.base import Arrays, run_samples
from edgepack.selection import Candidate, choose, contenders, not_worth_building, paired, race
from edgepack.signature import Signature
from edgepack.sources import load_source
from edgepack.sources.base import SourceModel

Progress = Callable[[str], None]
SUMMARY = "summary.json"


@dataclass
class BundleResult:
    name: str
    target: str
    precision: str
    status: str  # passed | failed | deferred
    reason: str | None = None
    path: Path | None = None
    bytes: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    conversion_failed: bool = False
    steps: dict[str, float] = field(default_factory=dict)  # seconds per step

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "target": self.target, "precision": self.precision,
            "status": self.status, "reason": self.reason,
            "path": self.path.name if self.path else None, "bytes": self.bytes,
            "metrics": self.metrics, "failures": self.failures,
            "seconds": round(self.seconds, 2), "steps": self.steps,
        }


@dataclass
class BuildSummary:
    model: str
    bundles: list[BundleResult]
    out: Path

    @property
    def exit_code(self) -> int:
        if any(b.conversion_failed for b in self.bundles):
            return ConversionError.exit_code
        if any(b.status == "failed" for b in self.bundles):
            return 1
        return 0

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": 1, "model": self.model, "exit_code": self.exit_code,
                "bundles": [b.to_dict() for b in self.bundles]}


def _plan(cfg: BuildConfig, profiles: list[Profile]) -> list[tuple[Profile, str]]:
    plan = []
    for profile in profiles:
        wanted = cfg.precisions or [profile.default_precision]
        if "all" in wanted:
            wanted = list(profile.precisions)
        for precision in wanted:
            if precision == "auto":
                plan.append((profile, precision))
                continue
            if precision not in PRECISIONS:
                raise UsageError(f"unknown precision {precision!r}; use one of "
                                 f"{', '.join(PRECISIONS)}, all or auto")
            if precision not in profile.precisions:
                raise UsageError(f"target {profile.name} does not support {precision}; it "
                                 f"supports {', '.join(profile.precisions)}")
            plan.append((profile, precision))
    return plan


def _candidates(profile: Profile, precision: str) -> list[str]:
    """The precisions a plan entry may build: ``auto`` tries the profile's order."""
    if precision != "auto":
        return [precision]
    return list(profile.auto_order or reversed(profile.precisions))


def _tolerances(cfg: BuildConfig, profile: Profile, precision: str) -> dict[str, float]:
    return {**profile.tolerances_for(precision), **cfg.tolerances}


def _eval_set(cfg: BuildConfig, sig: Signature) -> SampleSet:
    if cfg.eval is not None:
        return load_npz(cfg.eval, sig, "evaluation")
    return seeded_inputs(sig, cfg.samples, cfg.seed)


def _calib_set(cfg: BuildConfig, sig: Signature, needed: bool) -> SampleSet | None:
    if cfg.calib is not None:
        return load_npz(cfg.calib, sig, "calibration")
    if not needed:
        return None
    if not cfg.allow_random_calibration:
        raise UsageError(
            "static int8 needs real calibration data: --calib data.npz (keyed by input name); "
            "random calibration gives misleading int8 accuracy, pass "
            "--allow-random-calibration to accept that"
        )
    return seeded_inputs(sig, max(cfg.samples, 64), cfg.seed + 1)


def _golden(cfg: BuildConfig, evals: SampleSet, reference: Arrays, batch: int
            ) -> tuple[Arrays, Arrays]:
    k = min(cfg.golden_samples, evals.count)
    k = max(batch, k - k % batch)
    return ({n: v[:k] for n, v in evals.inputs.items()},
            {n: v[:k] for n, v in reference.items()})


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip()


def build(cfg: BuildConfig, progress: Progress | None = None) -> BuildSummary:
    """Convert, validate and bundle the model for every (target, precision)."""
    say = progress or (lambda _m: None)
    check_tolerance_keys(cfg.tolerances)
    profiles = resolve_targets(cfg.targets)
    plan = _plan(cfg, profiles)
    for profile, precision in plan:  # bad options -> usage error before any work
        for p in _candidates(profile, precision):
            check_profile(profile, p)
    say("loading the source model")
    source = load_source(cfg.model, inputs=cfg.inputs, outputs=cfg.outputs)
    sig = source.signature
    model_name = cfg.name or source.name
    evals = _eval_set(cfg, sig)
    # auto tries int8 only when calibration data is given; explicit int8 requires it
    calib = _calib_set(cfg, sig, needed=any(p == "int8" for _, p in plan))
    bd.prepare_out(cfg.out)
    say("reference outputs from the source model")
    reference_runner = source.runner()
    try:
        eval_ref = run_samples(reference_runner, evals.inputs, sig.batch)
        calib_ref = run_samples(reference_runner, calib.inputs, sig.batch) if calib else None
    except EdgepackError:
        raise
    except Exception as e:
        raise InputError(f"the source model failed on the sample inputs: {_one_line(e)}") \
            from None
    golden = _golden(cfg, evals, eval_ref, sig.batch)
    work_root = bd.staging(cfg.out, "work")
    worker = None if in_process() else Worker(work_root)
    local: tuple[dict, dict] = ({}, {})  # sources, cache for in-process runs

    def attempt(profile: Profile, precision: str, name: str) -> tuple[JobSpec, JobOutcome]:
        spec = JobSpec(
            model=cfg.model, inputs=list(cfg.inputs), outputs=cfg.outputs,
            profile=profile, precision=precision, workdir=work_root / name,
            cache_root=work_root, tolerances=_tolerances(cfg, profile, precision),
            int8=cfg.int8, task=cfg.task, eval_inputs=evals.inputs,
            calib_inputs=calib.inputs if calib and precision == "int8" else None,
            calib_reference=calib_ref if precision == "int8" else None,
            calib_origin=calib.origin if calib else "",
        )
        spec.workdir.mkdir(parents=True)
        report = partial(_tagged, say, f"{profile.name}/{precision}")
        if worker is None:
            return spec, execute(spec, *local, report)
        return spec, worker.run(spec, cfg.timeout, report)

    ctx = _Context(cfg, source, evals, eval_ref, golden, say)
    results = []
    try:
        for profile, precision in plan:
            started = time.monotonic()
            if precision == "auto":
                results.append(_auto(ctx, profile, model_name, attempt, calib is not None,
                                     started))
                continue
            name = f"{model_name}-{profile.name}-{precision}"
            spec, outcome = attempt(profile, precision, name)
            result = _judge(ctx, spec, outcome)
            results.append(_finish(ctx, spec, outcome, result, name, started))
    finally:
        if worker is not None:
            worker.stop()
        shutil.rmtree(work_root, ignore_errors=True)
        bd.finish_out(cfg.out)
    summary = BuildSummary(model=model_name, bundles=results, out=cfg.out)
    write_summary(summary)
    return summary


@dataclass
class _Context:
    """What every bundle of one build is judged and written with."""

    cfg: BuildConfig
    source: SourceModel
    evals: SampleSet
    eval_ref: Arrays
    golden: tuple[Arrays, Arrays]
    say: Progress = lambda _m: None


def _auto(ctx: _Context, profile: Profile, model_name: str, attempt: Callable,
          have_calib: bool, started: float) -> BundleResult:
    """--precision auto: build the profile's precisions in its order (smallest first)
    while a smaller artifact may still come, keep the best that passes or is deferred
    with passing proxy metrics (edgepack.selection says which is best)."""
    order = list(profile.auto_order or reversed(profile.precisions))
    tried: list[Candidate] = []
    built: dict[str, tuple] = {}
    for precision in order:
        too_big = not_worth_building(precision, tried, ctx.source.parameter_count())
        if too_big:
            tried.append(Candidate(precision, "not built", too_big))
            continue
        if precision == "int8" and not have_calib:
            tried.append(Candidate(precision, "skipped", "no calibration data (--calib)"))
            continue
        name = f"{model_name}-{profile.name}-{precision}"
        spec, outcome = attempt(profile, precision, f"auto-{name}")
        result = _judge(ctx, spec, outcome)
        size = None
        if outcome.artifact is not None:
            size = sum(p.stat().st_size for p in outcome.artifact.folder.rglob("*")
                       if p.is_file())
        tried.append(Candidate(precision, result.status, result.reason, size))
        built[precision] = (spec, outcome, result, name)
    if not built:
        return BundleResult(name=f"{model_name}-{profile.name}-auto", target=profile.name,
                            precision="auto", status="failed",
                            reason="no precision could be tried", conversion_failed=True)
    near = contenders(tried)
    if profile.auto_host_latency and len(near) > 1:
        _time_on_host(ctx, profile, near, built)
    winner, why = choose(tried)
    # with no winner the bundle is the last candidate built, failed, with its reasons
    spec, outcome, result, name = built[winner.precision if winner else next(reversed(built))]
    selection = {"mode": "auto", "order": order, "candidates": [c.to_dict() for c in tried],
                 "chosen": winner.precision if winner else None, "why": why}
    return _finish(ctx, spec, outcome, result, name, started, selection)


def _time_on_host(ctx: _Context, profile: Profile, near: list[Candidate],
                  built: dict[str, tuple]) -> None:
    """Host latency of the near-smallest candidates, interleaved; fills their
    host_p50_ms and vs_preferred. Only for profiles whose runtime is the host's."""
    backend = get_backend(profile.backend)
    feeds = {k: v[: ctx.source.signature.batch] for k, v in ctx.evals.inputs.items()}
    ctx.say(f"{profile.name}/auto: {', '.join(c.precision for c in near)} are about the "
            "same size; timing them on this host")
    try:
        runners = {c.precision: backend.runner(built[c.precision][1].artifact) for c in near}
        rows = race(runners, feeds)
    except Exception as e:  # they ran in validation; if not here, the order decides
        ctx.say(f"{profile.name}/auto: timing failed ({_one_line(e)}); the profile's "
                "order decides")
        return
    for c in near:
        c.host_p50_ms = statistics.median(rows[c.precision])
        c.vs_preferred = paired(rows, c.precision, near[0].precision)


def _judge(ctx: _Context, spec: JobSpec, outcome: JobOutcome) -> ValidationResult:
    """The artifact's outputs against the source model's, under the bundle's tolerances."""
    tol = spec.tolerances
    if outcome.artifact is None:
        return ValidationResult(status="failed", metrics={}, tolerances=tol, samples=0,
                                reason=f"conversion failed: {outcome.conversion_error}")
    if outcome.run_error is not None:
        return ValidationResult(status="failed", metrics={}, tolerances=tol,
                                samples=ctx.evals.count, reason=outcome.run_error)
    if outcome.deferred is not None and outcome.candidate is None:
        return deferred(outcome.deferred, tol)
    result = compare(ctx.eval_ref, outcome.candidate, tol, labels=ctx.evals.labels,
                     task=ctx.cfg.task)
    if outcome.deferred is not None:
        proxy = f"proxy metrics from {outcome.proxy_name}"
        if result.passed:
            return deferred(f"{outcome.deferred}; {proxy}", tol, metrics=result.metrics,
                            samples=result.samples)
        result.proxy = True
        result.reason = f"{proxy} miss the tolerance: {result.reason}"
    return result


def _tagged(say: Progress, tag: str, msg: str) -> None:
    say(f"{tag}: {msg}")


def _finish(ctx: _Context, spec: JobSpec, outcome: JobOutcome, result: ValidationResult,
            name: str, started: float, selection: dict[str, Any] | None = None
            ) -> BundleResult:
    """Write the bundle (when there is an artifact) and summarize it."""
    profile, precision = spec.profile, spec.precision
    res = BundleResult(name=name, target=profile.name, precision=precision,
                       status=result.status, steps=dict(outcome.steps))
    res.reason = result.reason or ("; ".join(result.failures) if result.failures else None)
    if outcome.artifact is None:
        res.conversion_failed = True
        res.seconds = time.monotonic() - started
        return res
    backend = get_backend(profile.backend)
    path = write_bundle(ctx.cfg.out, name, ctx.source, profile, precision, backend,
                         outcome.artifact, result, ctx.golden, ctx.cfg, ctx.evals.origin,
                         selection)
    res.failures = list(result.failures)
    res.metrics = result.metrics
    res.path = path
    res.bytes = sum(artifact_bytes(path))
    res.seconds = time.monotonic() - started
    return res


def artifact_bytes(bundle: Path) -> list[int]:
    manifest = mf.read(bundle)
    return [a["bytes"] for a in manifest["artifacts"] if a.get("role") == "model"]


def write_summary(summary: BuildSummary) -> Path:
    path = summary.out / SUMMARY
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary.to_dict(), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------- validate

@dataclass
class BundleCheck:
    bundle: Path
    status: str  # passed | failed | deferred
    lines: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


def _host_artifact(folder: Path, manifest: dict[str, Any]) -> Artifact:
    model = [a["path"] for a in manifest["artifacts"] if a.get("role") == "model"]
    return Artifact(folder=folder, files=model[:1],
                    signature=Signature.from_dict(manifest["signature"]),
                    runtime_options=manifest["harness"].get("runtime_options", {}))


def check_bundle(folder: Path) -> BundleCheck:
    """Hashes, recorded status, and a golden re-run on the host runner where one exists."""
    import numpy as np

    manifest = mf.read(folder)
    problems = bd.verify(folder)
    if problems:
        return BundleCheck(folder, "failed", [f"{folder.name}: {p}" for p in problems])
    recorded = manifest["validation"]
    if recorded["status"] == "failed":
        why = recorded.get("reason") or "; ".join(recorded.get("failures", []))
        return BundleCheck(folder, "failed", [f"{folder.name}: build validation failed: {why}"])
    backend = get_backend(manifest["target"]["backend"])
    artifact = _host_artifact(folder, manifest)
    tolerances = manifest["harness"].get("golden", {}).get("tolerances", {})
    with np.load(folder / "reference" / "inputs.npz", allow_pickle=False) as f:
        inputs = {k: f[k] for k in f.files}
    with np.load(folder / "reference" / "outputs.npz", allow_pickle=False) as f:
        reference = {k: f[k] for k in f.files}
    try:
        runner = backend.runner(artifact)
    except Deferred as d:
        return BundleCheck(folder, "deferred", [f"{folder.name}: deferred: {d}"])
    try:
        candidate = run_samples(runner, inputs, manifest["harness"].get("batch", 1))
    except EdgepackError as e:
        return BundleCheck(folder, "failed", [f"{folder.name}: {e}"])
    result = compare(reference, candidate, tolerances)
    lines = [f"{folder.name}: {f}" for f in result.failures]
    return BundleCheck(folder, result.status, lines, result.metrics)


def validate(paths: list[Path]) -> list[BundleCheck]:
    return [check_bundle(b) for b in bd.find_bundles(paths)]


# ---------------------------------------------------------------- bench

def bench(folder: Path, runs: int | None = None, warmup: int | None = None,
          threads: int | None = None, json_path: Path | None = None) -> int:
    """Run the bundle's own harness with this interpreter; returns its exit code."""
    if not (folder / "bench.py").is_file():
        raise InputError(f"{folder} is not a bundle: no bench.py")
    cmd = [sys.executable, str(folder / "bench.py")]
    for flag, value in (("--runs", runs), ("--warmup", warmup), ("--threads", threads),
                        ("--json", json_path)):
        if value is not None:
            cmd += [flag, str(Path(value).resolve()) if flag == "--json" else str(value)]
    return subprocess.call(cmd, cwd=folder)


# ---------------------------------------------------------------- inspect

def inspect(target: str, inputs: list | None = None) -> dict[str, Any]:
    """Signature, parameters, size, ops and precision of a model or a bundle."""
    path = Path(target)
    if path.is_dir() and (path / mf.MANIFEST).is_file():
        m = mf.read(path)
        return {"kind": "bundle", "name": m.get("name"), "target": m["target"],
                "precision": m["precision"], "signature": m["signature"],
                "artifacts": m["artifacts"], "validation": m["validation"]["status"],
                "quantization": m["quantization"]}
    source = load_source(target, inputs=inputs or [])
    info: dict[str, Any] = {"kind": "model", "format": source.format, "name": source.name,
                            "sha256": source.sha256, "signature": source.signature.to_dict(),
                            "parameters": source.parameter_count()}
    if path.is_file():
        info["bytes"] = path.stat().st_size
    if source.onnx_path is not None:
        import onnx

        model = onnx.load(str(source.onnx_path), load_external_data=False)
        ops: dict[str, int] = {}
        for node in model.graph.node:
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
        info["ops"] = dict(sorted(ops.items()))
        info["opset"] = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                            default=None)
        dtypes = sorted({onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name
                         for t in model.graph.initializer})
        info["weight_dtypes"] = dtypes
    return info


# ---------------------------------------------------------------- CI gate and report

# Imported here, not at the top, to keep this CI section in one place.
from edgepack import gate as gate_rules  # noqa: E402
from edgepack import report_data  # noqa: E402


def gate(paths: list[Path], baseline: Path | None = None,
         limits: gate_rules.Limits | None = None) -> list[gate_rules.Verdict]:
    """`validate` with verdicts: the host checks, then (with a baseline) the regression
    rules of edgepack.gate. Returns one gate.Verdict per bundle, missing ones included."""
    checks = validate(paths)
    new = [(gate_rules.record_from_manifest(mf.read(c.bundle), c.bundle), c.status, c.lines)
           for c in checks]
    old = None
    if baseline is not None:
        old = gate_rules.load_records(baseline)
        for p in paths:  # conversions that failed left no folder, only a summary entry
            if not (p / mf.MANIFEST).is_file() and (p / SUMMARY).is_file():
                failed = gate_rules.load_records(p).values()
                new += [(r, r.status, [f"{r.name}: {r.reason or 'failed'}"])
                        for r in failed if r.folder is None and r.status == "failed"]
    return gate_rules.judge(new, old, limits)


def report(dist: Path, results: Path | None = None, host_runs: int = 100
           ) -> report_data.Report:
    """Everything the report shows: bundles, host latency measured here with each
    bundle's own harness, and device results (harness JSON files) from RESULTS."""
    return report_data.collect(dist, results, host_runs)
