"""Judge one unit's outcome against the source outputs, and write its bundle."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgepack.backends import get_backend
from edgepack.builder.summary import BundleResult, artifact_bytes
from edgepack.builder.worker import JobOutcome, JobSpec
from edgepack.bundle.writer import write_bundle
from edgepack.compare import (
    ValidationResult,
    compare,
    deferred,
    first_failure,
    sample_size_notes,
)
from edgepack.config import BuildConfig
from edgepack.data import SampleSet
from edgepack.errors import Status
from edgepack.runners.base import Arrays
from edgepack.sources.base import SourceModel

Progress = Callable[[str], None]


@dataclass
class Context:
    """What every bundle of one build is judged and written with."""

    cfg: BuildConfig
    source: SourceModel
    evals: SampleSet
    eval_ref: Arrays
    golden: tuple[Arrays, Arrays]
    say: Progress = lambda _m: None
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)  # output -> task, inferred


def judge(ctx: Context, spec: JobSpec, outcome: JobOutcome) -> ValidationResult:
    """The artifact's outputs against the source model's, under the bundle's tolerances."""
    result = _judge(ctx, spec, outcome)
    result.tasks = result.tasks or dict(ctx.tasks)
    result.notes = sample_size_notes(spec.tolerances, ctx.evals.count, result.tasks,
                                     bool(ctx.evals.labels))
    return result


def _judge(ctx: Context, spec: JobSpec, outcome: JobOutcome) -> ValidationResult:
    tol = spec.tolerances
    if outcome.artifact is None:
        return ValidationResult(status=Status.FAILED, metrics={}, tolerances=tol, samples=0,
                                reason=f"conversion failed: {outcome.conversion_error}")
    if outcome.run_error is not None:
        return ValidationResult(status=Status.FAILED, metrics={}, tolerances=tol,
                                samples=ctx.evals.count, reason=outcome.run_error)
    if outcome.deferred is not None and outcome.candidate is None:
        return deferred(outcome.deferred, tol)
    result = compare(ctx.eval_ref, outcome.candidate, tol, labels=ctx.evals.labels,
                     task=ctx.cfg.task, labels_for=ctx.cfg.labels_for)
    if outcome.nonfinite_at:  # name the node on the line that reports the NaN
        result.failures = [f"{f}; first produced by {outcome.nonfinite_at}"
                           if "NaN or Inf in" in f else f for f in result.failures]
        result.reason = first_failure(result.failures)
    if outcome.deferred is not None:
        proxy = f"proxy metrics from {outcome.proxy_name}"
        if result.passed:
            return deferred(f"{outcome.deferred}; {proxy}", tol, metrics=result.metrics,
                            samples=result.samples, tasks=result.tasks)
        result.proxy = True
        result.reason = f"{proxy} miss the tolerance: {result.reason}"
    return result


def finish(ctx: Context, spec: JobSpec, outcome: JobOutcome, result: ValidationResult,
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
