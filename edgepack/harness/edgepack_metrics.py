"""edgepack's metrics and tolerance decisions: reference vs candidate outputs.

Copied verbatim into every bundle as ``edgepack_metrics.py``, beside
``edgepack_harness.py`` (which imports it for the device golden check). It
needs only the standard library and numpy, and keeps to Python 3.8 syntax, so
it runs on the device as-is. The host's validation (``edgepack.compare``)
imports this same file, so a device's golden check and the host's validation
compute exactly the same numbers.
"""

from __future__ import annotations

import math

import numpy as np

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
}

# Tolerances the device golden check applies. The golden inputs are a subset of
# the evaluation data: on a subset the lowest cosine can only rise and the
# largest error only fall, while means and agreement rates can move either way.
GOLDEN_KEYS = ("cosine_min", "max_abs_err")

# Order of metric keys in reports and manifests.
METRIC_ORDER = (
    "max_abs_err", "mean_abs_err", "cosine_min", "cosine_mean", "snr_db",
    "top1_agreement", "top5_agreement", "task_accuracy", "reference_task_accuracy",
)


class MetricError(ValueError):
    """Reference and candidate cannot be compared (missing output, shape mismatch)."""


# ---------------------------------------------------------------- metrics


def rounded(x: float) -> float | None:
    """``x`` to DIGITS significant digits; None for NaN/Inf (JSON has neither)."""
    x = float(x)
    if not math.isfinite(x):
        return None
    return float(f"{x:.{DIGITS}g}") + 0.0  # + 0.0 turns -0.0 into 0.0


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


def is_class_scores(ref: np.ndarray, task: str | None = None) -> bool:
    """Class scores: asked for (task="classification"), or a float (N, C>=2) output."""
    if task is not None:
        return task == "classification" and ref.ndim >= 2 and ref[0].size >= 2
    return ref.ndim == 2 and ref.shape[1] >= 2 and np.issubdtype(ref.dtype, np.floating)


def output_metrics(ref: np.ndarray, cand: np.ndarray, labels: np.ndarray | None = None,
                   task: str | None = None) -> dict:
    """Metrics of one output: reference vs candidate, first axis = samples.

    Floats are rounded to DIGITS significant digits; a metric that is not
    finite (NaN in an output) is None, which fails any tolerance on it.
    """
    ref, cand = np.asarray(ref), np.asarray(cand)
    if ref.shape != cand.shape:
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
    if is_class_scores(ref, task):
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
    return {k: rounded(m[k]) for k in METRIC_ORDER if k in m}


def compute_metrics(reference: dict, candidate: dict, labels: np.ndarray | None = None,
                    task: str | None = None) -> tuple[dict, list]:
    """Metrics per reference output -> (metrics, problems).

    ``problems`` has one line per output that could not be compared (missing
    from the candidate, wrong shape); those outputs have no metrics entry.
    """
    metrics, problems = {}, []
    for name, ref in reference.items():
        if name not in candidate:
            problems.append(f"{name}: missing from the candidate outputs")
            continue
        try:
            metrics[name] = output_metrics(ref, candidate[name], labels, task)
        except MetricError as e:
            problems.append(f"{name}: {e}")
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


def evaluate(reference: dict, candidate: dict, tolerances: dict,
             labels: np.ndarray | None = None, task: str | None = None) -> dict:
    """Metrics + tolerance decision: {status, metrics, tolerances, failures, skipped}."""
    unknown = unknown_tolerance_keys(tolerances)
    if unknown:
        raise ValueError(f"unknown tolerance keys {unknown}; valid: {sorted(TOLERANCE_KEYS)}")
    metrics, problems = compute_metrics(reference, candidate, labels, task)
    failures, skipped = check_tolerances(metrics, tolerances)
    failures = problems + failures
    return {
        "status": "failed" if failures else "passed",
        "metrics": metrics,
        "tolerances": {k: float(tolerances[k]) for k in sorted(tolerances)},
        "failures": failures,
        "skipped": skipped,
    }
