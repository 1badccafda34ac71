"""What the CLI and users' Python call: build(), validate(), bench(), inspect(), gate(),
report().

The flow runs one way: load source -> sample inputs -> reference outputs (source
framework) -> per (target, precision): backend passes -> artifact -> host runner
-> compare -> atomic bundle (edgepack.builder). One failing bundle never stops the others.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepack.backends import get_backend
from edgepack.backends.base import Artifact, Deferred
from edgepack.builder.run import build
from edgepack.builder.summary import SUMMARY, BuildSummary, BundleResult
from edgepack.bundle import folder as bd
from edgepack.bundle import manifest as mf
from edgepack.compare import compare
from edgepack.errors import EdgepackError, InputError, Status
from edgepack.report import collect as report_data
from edgepack.report import gate as gate_rules
from edgepack.runners.base import run_samples
from edgepack.signature import Signature
from edgepack.sources import load_source

__all__ = ["BuildSummary", "BundleResult", "build", "validate", "check_bundle", "bench",
           "inspect", "gate", "report"]


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
        return BundleCheck(folder, Status.FAILED, [f"{folder.name}: {p}" for p in problems])
    recorded = manifest["validation"]
    if recorded["status"] == Status.FAILED:
        why = recorded.get("reason") or "; ".join(recorded.get("failures", []))
        return BundleCheck(folder, Status.FAILED,
                           [f"{folder.name}: build validation failed: {why}"])
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
        return BundleCheck(folder, Status.DEFERRED, [f"{folder.name}: deferred: {d}"])
    try:
        candidate = run_samples(runner, inputs, manifest["harness"].get("batch", 1))
    except EdgepackError as e:
        return BundleCheck(folder, Status.FAILED, [f"{folder.name}: {e}"])
    # each output judged by the task the build recorded (older manifests: inferred)
    tasks = {n: t["task"] for n, t in (recorded.get("tasks") or {}).items()} or None
    result = compare(reference, candidate, tolerances, task=tasks)
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

def gate(paths: list[Path], baseline: Path | None = None,
         limits: gate_rules.Limits | None = None) -> list[gate_rules.Verdict]:
    """`validate` with verdicts: the host checks, then (with a baseline) the regression
    rules of edgepack.report.gate. Returns one gate.Verdict per bundle, missing ones included."""
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
                        for r in failed if r.folder is None and r.status == Status.FAILED]
    return gate_rules.judge(new, old, limits)


def report(dist: Path, results: Path | None = None, host_runs: int = 100
           ) -> report_data.Report:
    """Everything the report shows: bundles, host latency measured here with each
    bundle's own harness, and device results (harness JSON files) from RESULTS."""
    return report_data.collect(dist, results, host_runs)
