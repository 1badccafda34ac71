"""Metrics and tolerance decisions: reference outputs vs an artifact's outputs.

The numbers come from ``edgepack/harness/edgepack_metrics.py``, the same file
every bundle carries, so the host's validation and a device's golden check
can never disagree on how a metric is computed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgepack.errors import Status, UsageError, ValidationFailed
from edgepack.harness import edgepack_metrics as metrics_core

TOLERANCE_KEYS: dict[str, str] = dict(metrics_core.TOLERANCE_KEYS)
GOLDEN_KEYS: tuple[str, ...] = tuple(metrics_core.GOLDEN_KEYS)
STATUSES = tuple(Status)

Arrays = Mapping[str, np.ndarray]


def check_tolerance_keys(tol: Mapping[str, float]) -> None:
    """UsageError naming any unknown key (and the valid ones) or a non-numeric bound."""
    unknown = metrics_core.unknown_tolerance_keys(tol)
    if unknown:
        raise UsageError(f"unknown tolerance {', '.join(unknown)}; "
                         f"valid: {', '.join(sorted(TOLERANCE_KEYS))}")
    for key, value in tol.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            raise UsageError(f"tolerance {key} must be a finite number, got {value!r}")


def parse_tolerance_option(text: str) -> tuple[str, float]:
    """``"cosine_min=0.999"`` -> ``("cosine_min", 0.999)``."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UsageError(f"--tolerance {text!r}: expected KEY=VALUE, e.g. cosine_min=0.999")
    try:
        number = float(value)
    except ValueError:
        raise UsageError(f"--tolerance {text!r}: {value.strip()!r} is not a number") from None
    check_tolerance_keys({key: number})
    return key, number


def golden_tolerances(tolerances: Mapping[str, float]) -> dict[str, float]:
    """The tolerances a device's golden check applies: the subset-monotone ones.

    Golden inputs are a small subset of the evaluation data. On a subset the
    lowest cosine can only rise and the largest error only fall, so
    ``cosine_min`` and ``max_abs_err`` stay valid; means, SNR and agreement
    rates can be worse on a subset of a healthy artifact and are not applied.
    """
    return metrics_core.golden_tolerances(tolerances)


#: What a task may be given as: one task for every output, or {output: task}.
TaskSpec = str | dict[str, str] | None
#: Labels: one array (bound to labels_for or the one classification output), or
#: {output: labels} ("" for unbound ones).
Labels = np.ndarray | dict[str, np.ndarray] | None


def compute_metrics(reference: Arrays, candidate: Arrays, labels: Labels = None,
                    task: TaskSpec = None, labels_for: str | None = None
                    ) -> dict[str, dict[str, Any]]:
    """Metrics per reference output. ValidationFailed when an output is missing, misshapen
    or plainly broken (constant, NaN, integer codes)."""
    try:
        metrics, problems = metrics_core.compute_metrics(reference, candidate, labels, task,
                                                         labels_for)
    except metrics_core.MetricError as e:
        raise UsageError(str(e)) from None
    if problems:
        raise ValidationFailed("; ".join(problems))
    return metrics


def output_tasks(reference: Arrays, task: TaskSpec = None, labels: Labels = None,
                 labels_for: str | None = None) -> dict[str, dict[str, Any]]:
    """{output: {task, inferred}} as validation will judge the outputs; a UsageError
    (before any conversion) when a given task is unknown, names no output, or the
    labels cannot be bound to one output."""
    given = task if isinstance(task, dict) else {}
    for name, t in ({**given, "": task} if isinstance(task, str) else given).items():
        if t not in metrics_core.TASKS:
            raise UsageError(f"task {t!r}: use one of {', '.join(metrics_core.TASKS)}")
        if name and name not in reference:
            raise UsageError(f"--task {name}={t}: the model has no output {name!r}; its "
                             f"outputs are {', '.join(reference)}")
    tasks = metrics_core.resolve_tasks(reference, task)
    try:
        metrics_core.bind_labels(labels, tasks, labels_for)
    except metrics_core.MetricError as e:
        raise UsageError(str(e)) from None
    return {n: {"task": t, "inferred": inferred} for n, (t, inferred) in tasks.items()}


#: A gate that a handful of samples decides is noted (the search aims a step past it).
FEW_FLIPS = 5


def sample_size_notes(tolerances: Mapping[str, float], samples: int,
                      tasks: Mapping[str, Mapping[str, Any]], labels: bool = False
                      ) -> list[str]:
    """Warnings where the evaluation set is too small for a proportion tolerance: with n
    samples an agreement rate moves in steps of 1/n (accuracy in 100/n points), and a
    tolerance that allows fewer than FEW_FLIPS disagreeing samples is decided by one."""
    if samples <= 0:
        return []
    kinds = {t["task"] for t in tasks.values()}
    rates = {"top1_agreement": "classification" in kinds,
             "retrieval_agreement": "embedding" in kinds,
             "sequence_agreement": bool(kinds & {"sequence", "ctc"})}
    notes = []
    for key, bound in sorted(tolerances.items()):
        if key == "task_accuracy_drop" and labels and "classification" in kinds:
            step, flips, unit = 100.0 / samples, int(math.floor(bound * samples / 100 + 1e-9)), \
                " points"
        elif rates.get(key) and 0.0 < bound < 1.0:
            step, flips, unit = 1.0 / samples, int(math.floor((1 - bound) * samples + 1e-9)), ""
        else:
            continue
        if flips < FEW_FLIPS:
            notes.append(f"{samples} samples: {key} moves in steps of {step:.3g}{unit}; the "
                         f"tolerance {bound:g} allows {flips} disagreeing sample"
                         f"{'' if flips == 1 else 's'}: add evaluation samples for a steadier "
                         "gate")
    return notes


@dataclass
class ValidationResult:
    status: Status
    metrics: dict[str, dict[str, Any]]  # per output
    tolerances: dict[str, float]
    samples: int
    failures: list[str] = field(default_factory=list)  # one line each
    reason: str | None = None  # why deferred / failed in a word
    proxy: bool = False  # metrics from a stand-in runtime, not the target's
    skipped: list[str] = field(default_factory=list)  # tolerances that did not apply
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)  # output -> task, inferred
    notes: list[str] = field(default_factory=list)  # e.g. the evaluation set is small

    @property
    def passed(self) -> bool:
        return self.status == Status.PASSED

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, fixed key order, for the manifest's ``validation``."""
        return {
            "status": self.status,
            "reason": self.reason,
            "proxy": self.proxy,
            "samples": int(self.samples),
            "tolerances": {k: float(self.tolerances[k]) for k in sorted(self.tolerances)},
            "metrics": {name: dict(m) for name, m in self.metrics.items()},
            "failures": list(self.failures),
            "skipped": list(self.skipped),
            "tasks": {name: dict(t) for name, t in sorted(self.tasks.items())},
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ValidationResult:
        status = str(d["status"])
        if status not in STATUSES:
            raise ValueError(f"validation status {status!r} is not one of {STATUSES}")
        return cls(
            status=Status(status),
            metrics={k: dict(v) for k, v in (d.get("metrics") or {}).items()},
            tolerances={k: float(v) for k, v in (d.get("tolerances") or {}).items()},
            samples=int(d.get("samples") or 0),
            failures=list(d.get("failures") or []),
            reason=d.get("reason"),
            proxy=bool(d.get("proxy", False)),
            skipped=list(d.get("skipped") or []),
            tasks={k: dict(v) for k, v in (d.get("tasks") or {}).items()},
            notes=list(d.get("notes") or []),
        )


def _samples(reference: Arrays) -> int:
    for value in reference.values():
        value = np.asarray(value)
        return int(len(value)) if value.ndim else 0
    return 0


def first_failure(failures: list[str]) -> str:
    """The reason line of a failed result: its first failure, and how many more."""
    more = len(failures) - 1
    return failures[0] + (f" (+{more} more)" if more else "")


def compare(reference: Arrays, candidate: Arrays, tolerances: Mapping[str, float],
            labels: Labels = None, task: TaskSpec = None,
            labels_for: str | None = None) -> ValidationResult:
    """Metrics of every output (by its task) + every tolerance; the worst output decides.

    A missing, misshapen or plainly broken output is a failure line, not an exception.
    """
    check_tolerance_keys(tolerances)
    try:
        out = metrics_core.evaluate(reference, candidate, tolerances, labels, task, labels_for)
    except metrics_core.MetricError as e:
        raise UsageError(str(e)) from None
    failed = out["status"] == Status.FAILED
    return ValidationResult(
        status=Status(out["status"]), metrics=out["metrics"], tolerances=out["tolerances"],
        samples=_samples(reference), failures=out["failures"], skipped=out["skipped"],
        reason=first_failure(out["failures"]) if failed else None, tasks=out["tasks"],
    )


def deferred(reason: str, tolerances: Mapping[str, float],
             metrics: Mapping[str, Mapping[str, Any]] | None = None, samples: int = 0,
             proxy: bool = True, tasks: Mapping[str, Mapping[str, Any]] | None = None
             ) -> ValidationResult:
    """A result that cannot be decided here (Core ML on Linux, TensorRT without a GPU).

    Never "passed". When proxy metrics are given, tolerance misses on them are
    listed in ``failures`` for the reader; the status stays "deferred".
    """
    check_tolerance_keys(tolerances)
    metrics = {k: dict(v) for k, v in (metrics or {}).items()}
    failures, skipped = metrics_core.check_tolerances(metrics, tolerances) if metrics \
        else ([], [])
    return ValidationResult(
        status=Status.DEFERRED, metrics=metrics,
        tolerances={k: float(tolerances[k]) for k in sorted(tolerances)}, samples=samples,
        failures=failures, reason=reason, proxy=proxy and bool(metrics), skipped=skipped,
        tasks={k: dict(v) for k, v in (tasks or {}).items()},
    )
