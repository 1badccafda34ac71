"""edgepack's metrics and tolerance decisions: reference vs candidate outputs.

Copied verbatim into every bundle as ``edgepack_metrics.py``, beside
``edgepack_harness.py`` (which imports it for the device golden check). It
needs only the standard library and numpy, and keeps to Python 3.8 syntax, so
it runs on the device as-is. The host's validation (``edgepack.compare``)
imports this same file, so a device's golden check and the host's validation
compute exactly the same numbers.

Every output has a task, given or inferred, and its metrics follow the task:
classification (top-1/top-5 agreement, accuracy with labels), regression (errors,
cosine), embedding (+ nearest-neighbour retrieval agreement), sequence and ctc
(per-step and whole-sequence agreement; ctc compares greedy-decoded sequences),
detection (detected-anchor agreement, matched-box IoU), segmentation (mask IoU).
"""

from __future__ import annotations

import math

import numpy as np

if __package__:  # the host: edgepack.harness.edgepack_metrics
    from .edgepack_tasks import (
        TASKS,
        MetricError,
        bind_labels,
        detection,
        resolve_tasks,
        retrieval,
        segmentation,
        sequence,
    )
else:  # a bundle: bench.py put this folder on sys.path
    from edgepack_tasks import (
        TASKS,
        MetricError,
        bind_labels,
        detection,
        resolve_tasks,
        retrieval,
        segmentation,
        sequence,
    )

__all__ = ["TASKS", "MetricError", "bind_labels", "resolve_tasks", "evaluate",
           "compute_metrics", "output_metrics", "check_tolerances", "golden_tolerances"]

SNR_CAP_DB = 200.0  # SNR of identical outputs: finite, so manifests stay JSON
DIGITS = 6  # significant digits of every reported float: byte-stable manifests

# Tolerance key -> "min" (metric must be >= bound) or "max" (metric must be <= bound).
TOLERANCE_KEYS = {
    "cosine_min": "min",
    "cosine_mean": "min",
    "snr_db": "min",
    "top1_agreement": "min",
    "max_abs_err": "max",
    "mean_abs_err": "max",
    "task_accuracy_drop": "max",
    "retrieval_agreement": "min",
    "step_agreement": "min",
    "sequence_agreement": "min",
    "detection_agreement": "min",
    "box_iou_mean": "min",
    "mask_iou": "min",
}

# Tolerances that only mean something for some tasks: listed as skipped (not applied)
# only when an output has one of those tasks.
TASK_KEYS = {
    "top1_agreement": ("classification",), "task_accuracy_drop": ("classification",),
    "retrieval_agreement": ("embedding",), "step_agreement": ("sequence", "ctc"),
    "sequence_agreement": ("sequence", "ctc"), "detection_agreement": ("detection",),
    "box_iou_mean": ("detection",), "mask_iou": ("segmentation",),
}

# Tolerances the device golden check applies. The golden inputs are a subset of
# the evaluation data: on a subset the lowest cosine can only rise and the
# largest error only fall, while means and agreement rates can move either way.
GOLDEN_KEYS = ("cosine_min", "max_abs_err")

# Proportions over samples: reported with a 95 % Wilson interval (``<key>_ci95``).
PROPORTIONS = ("top1_agreement", "top5_agreement", "retrieval_agreement",
               "sequence_agreement", "task_accuracy", "reference_task_accuracy")

# Order of metric keys in reports and manifests.
METRIC_ORDER = (
    "max_abs_err", "mean_abs_err", "cosine_min", "cosine_mean", "snr_db",
    "top1_agreement", "top5_agreement", "task_accuracy", "reference_task_accuracy",
    "retrieval_agreement", "step_agreement", "sequence_agreement",
    "detection_agreement", "box_iou_mean", "mask_iou",
)

# ---------------------------------------------------------------- metrics


def rounded(x: float) -> float | None:
    """``x`` to DIGITS significant digits; None for NaN/Inf (JSON has neither)."""
    x = float(x)
    if not math.isfinite(x):
        return None
    return float(f"{x:.{DIGITS}g}") + 0.0  # + 0.0 turns -0.0 into 0.0


def wilson(p, n, z=1.96):
    """95 % Wilson score interval of a proportion ``p`` observed on ``n`` samples."""
    if n <= 0 or p is None or not math.isfinite(p):
        return None
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [rounded(max(0.0, centre - half)), rounded(min(1.0, centre + half))]


def _per_sample(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    return a.astype(np.float64).reshape(len(a), -1)


def cosine_per_sample(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Cosine similarity of each sample (flattened); both zero -> 1, one zero -> 0."""
    a, b = _per_sample(ref), _per_sample(cand)
    dot = np.einsum("ij,ij->i", a, b)
    na = np.sqrt(np.einsum("ij,ij->i", a, a))
    nb = np.sqrt(np.einsum("ij,ij->i", b, b))
    denom = na * nb
    with np.errstate(divide="ignore", invalid="ignore"):  # NaN in -> NaN out
        cos = np.where(denom == 0, 0.0, dot / np.where(denom == 0, 1.0, denom))
    cos = np.where((na == 0) & (nb == 0), 1.0, cos)
    return np.clip(cos, -1.0, 1.0)


def snr_db(ref: np.ndarray, cand: np.ndarray) -> float:
    """10*log10(signal / noise energy), clamped to +-SNR_CAP_DB (0 error -> cap)."""
    a, b = _per_sample(ref), _per_sample(cand)
    signal = float(np.sum(a * a))
    noise = float(np.sum((a - b) ** 2))
    if not (math.isfinite(signal) and math.isfinite(noise)):
        return float("nan")
    if noise == 0.0:
        return SNR_CAP_DB
    if signal == 0.0:
        return -SNR_CAP_DB
    return max(-SNR_CAP_DB, min(SNR_CAP_DB, 10.0 * math.log10(signal / noise)))


def _classification(a, b, labels, m):
    top_ref = np.argmax(a, axis=1)
    m["top1_agreement"] = np.mean(top_ref == np.argmax(b, axis=1))
    if a.shape[1] >= 5:
        # the reference's top-1 class is among the candidate's top 5
        top5 = np.argsort(-b, axis=1, kind="stable")[:, :5]
        m["top5_agreement"] = np.mean(np.any(top5 == top_ref[:, None], axis=1))
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != len(a):
            raise MetricError(f"{len(labels)} labels for {len(a)} samples")
        m["task_accuracy"] = 100.0 * np.mean(np.argmax(b, axis=1) == labels)
        m["reference_task_accuracy"] = 100.0 * np.mean(top_ref == labels)


def output_metrics(ref: np.ndarray, cand: np.ndarray, labels: np.ndarray | None = None,
                   task: str | None = None) -> dict:
    """Metrics of one output: reference vs candidate, first axis = samples.

    ``task``: the output's task (None: regression metrics only). Floats are rounded to
    DIGITS significant digits; a metric that is not finite (NaN in an output) is None,
    which fails any tolerance on it. Proportions carry a 95 % Wilson interval.
    """
    ref, cand = np.asarray(ref), np.asarray(cand)
    if ref.shape != cand.shape:
        if sorted(ref.shape) == sorted(cand.shape) and len(ref) == len(cand):
            raise MetricError(f"shape {list(cand.shape)} is the reference's {list(ref.shape)} "
                              "in another order: the artifact returns another layout")
        raise MetricError(f"shape {list(cand.shape)} differs from reference {list(ref.shape)}")
    if ref.ndim == 0 or len(ref) == 0:
        raise MetricError(f"has no samples (shape {list(ref.shape)})")
    a, b = _per_sample(ref), _per_sample(cand)
    diff = np.abs(a - b)
    cos = cosine_per_sample(a, b)
    m = {
        "max_abs_err": np.max(diff) if diff.size else 0.0,
        "mean_abs_err": np.mean(diff) if diff.size else 0.0,
        "cosine_min": np.min(cos),
        "cosine_mean": np.mean(cos),
        "snr_db": snr_db(a, b),
    }
    if task == "classification" and a.shape[1] >= 2:
        _classification(a, b, labels, m)
    elif task == "embedding":
        retrieval(a, b, m)
    elif task in ("sequence", "ctc") and ref.ndim >= 3:
        sequence(ref.astype(np.float64), cand.astype(np.float64), task == "ctc", m)
    elif task == "detection":
        detection(ref, cand, m)
    elif task == "segmentation" and ref.ndim >= 3:
        segmentation(ref, cand, m)
    out = {k: rounded(m[k]) for k in METRIC_ORDER if k in m}
    for k in PROPORTIONS:
        if k in m:
            share = m[k] / 100.0 if k.endswith("task_accuracy") else m[k]
            ci = wilson(share, len(a))
            out[k + "_ci95"] = ci if not k.endswith("task_accuracy") or ci is None \
                else [rounded(100.0 * x) for x in ci]
    return out


def diagnose(name, ref, cand):
    """What is plainly wrong with a candidate output, beyond its numbers (or None):
    non-finite values, integer codes where floats were promised, an output that does
    not depend on the input."""
    ref, cand = np.asarray(ref), np.asarray(cand)
    if not ref.ndim or not len(ref):
        return None
    if np.issubdtype(cand.dtype, np.floating):
        finite = np.isfinite(cand.reshape(len(cand), -1)).all(axis=1)
        if not finite.all() and np.isfinite(ref).all():
            return (f"{name}: NaN or Inf in {int((~finite).sum())} of {len(cand)} samples "
                    "(the source's outputs are finite)")
    elif np.issubdtype(ref.dtype, np.floating):
        return (f"{name}: the artifact returns {cand.dtype} where the source returns "
                f"{ref.dtype} (raw quantized codes?)")
    if len(ref) >= 2 and ref.shape == cand.shape:
        flat_c, flat_r = _per_sample(cand), _per_sample(ref)
        if np.all(flat_c == flat_c[0]) and not np.all(flat_r == flat_r[0]):
            return (f"{name}: the artifact's output does not depend on its input (the same "
                    f"for all {len(cand)} samples; the source's differ)")
    return None


def compute_metrics(reference: dict, candidate: dict, labels=None, task=None,
                    labels_for=None) -> tuple[dict, list]:
    """Metrics per reference output -> (metrics, problems).

    ``problems`` has one line per output that could not be compared (missing from the
    candidate, wrong shape) or is plainly broken (``diagnose``); outputs that could not
    be compared have no metrics entry.
    """
    tasks = resolve_tasks(reference, task)
    bound = bind_labels(labels, tasks, labels_for)
    metrics, problems = {}, []
    for name, ref in reference.items():
        if name not in candidate:
            problems.append(f"{name}: missing from the candidate outputs")
            continue
        try:
            metrics[name] = output_metrics(ref, candidate[name], bound.get(name),
                                           tasks[name][0])
        except MetricError as e:
            problems.append(f"{name}: {e}")
            continue
        why = diagnose(name, ref, candidate[name])
        if why:
            problems.append(why)
    return metrics, problems


# ---------------------------------------------------------------- tolerances


def unknown_tolerance_keys(tolerances: dict) -> list:
    return sorted(k for k in tolerances if k not in TOLERANCE_KEYS)


def golden_tolerances(tolerances: dict) -> dict:
    """The subset-monotone tolerances the device golden check applies."""
    return {k: float(tolerances[k]) for k in GOLDEN_KEYS if k in tolerances}


def _metric_for(key, m):
    """(value, detail) of tolerance ``key`` on one output's metrics; key absent -> KeyError."""
    if key == "task_accuracy_drop":
        acc, ref_acc = m["task_accuracy"], m["reference_task_accuracy"]
        if acc is None or ref_acc is None:
            return None, ""
        return rounded(ref_acc - acc), f" (reference {ref_acc:g}%, artifact {acc:g}%)"
    return m[key], ""


def check_tolerances(metrics: dict, tolerances: dict) -> tuple[list, list]:
    """Apply every tolerance to every output -> (failures, skipped).

    A tolerance whose metric no output has (top-1 on a regression output, an
    accuracy drop without labels) is skipped, not failed.
    """
    failures, skipped = [], []
    for key in sorted(tolerances):
        bound = float(tolerances[key])
        direction = TOLERANCE_KEYS[key]
        applied = False
        for name, m in metrics.items():
            try:
                value, detail = _metric_for(key, m)
            except KeyError:
                continue
            applied = True
            if value is None:
                failures.append(f"{name}: {key} is not finite (NaN or Inf in the outputs)")
            elif direction == "min" and value < bound:
                failures.append(f"{name}: {key} {value:g} < {bound:g}{detail}")
            elif direction == "max" and value > bound:
                failures.append(f"{name}: {key} {value:g} > {bound:g}{detail}")
        if not applied:
            skipped.append(key)
    return failures, skipped


def evaluate(reference: dict, candidate: dict, tolerances: dict, labels=None, task=None,
             labels_for=None) -> dict:
    """Metrics + tolerance decision: {status, metrics, tolerances, failures, skipped, tasks}.

    Diagnoses (an output that does not depend on the input, NaN, integer codes) come
    first among the failures: they are the reason, the tolerance misses follow from them.
    """
    unknown = unknown_tolerance_keys(tolerances)
    if unknown:
        raise ValueError(f"unknown tolerance keys {unknown}; valid: {sorted(TOLERANCE_KEYS)}")
    tasks = resolve_tasks(reference, task)
    metrics, problems = compute_metrics(reference, candidate, labels, task, labels_for)
    failures, skipped = check_tolerances(metrics, tolerances)
    failures = problems + failures
    present = {t for t, _ in tasks.values()}
    skipped = [k for k in skipped if k not in TASK_KEYS or present & set(TASK_KEYS[k])]
    return {
        "status": "failed" if failures else "passed",
        "metrics": metrics,
        "tolerances": {k: float(tolerances[k]) for k in sorted(tolerances)},
        "failures": failures,
        "skipped": skipped,
        "tasks": {n: {"task": t, "inferred": inferred} for n, (t, inferred) in tasks.items()},
    }
