"""edgepack's on-device harness core: metrics, tolerances, golden check, timing.

Copied verbatim into every bundle as ``edgepack_harness.py`` next to the
runtime-specific ``bench.py``. It needs only the standard library and numpy,
and keeps to Python 3.8 syntax, so it runs on the device as-is. The host's
validation (``edgepack.compare``) imports the metric and tolerance code from
this same file, so a device's golden check and the host's validation compute
exactly the same numbers.

A runtime script supplies one function, ``open_runtime(model_path, manifest,
threads) -> Runtime``, and calls ``main(open_runtime, bundle_dir)``.
Exit codes: 0 golden passed, 1 golden failed, 2 runtime missing, model
unloadable or bundle unreadable (one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import time

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


class HarnessError(Exception):
    """A problem the harness reports in one line and exits 2 for."""


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


# ---------------------------------------------------------------- timing


def latency_stats(times_ns) -> dict:
    """Latency percentiles and extremes in milliseconds."""
    ms = np.asarray(times_ns, dtype=np.float64) / 1e6
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "p50": rounded(p50), "p90": rounded(p90), "p99": rounded(p99),
        "mean": rounded(np.mean(ms)), "min": rounded(np.min(ms)), "max": rounded(np.max(ms)),
    }


def time_calls(call, runs: int, warmup: int) -> list:
    """Nanoseconds of each of ``runs`` calls of ``call()`` after ``warmup`` calls.

    The loop does nothing but read the clock, call and store: no allocation,
    and the garbage collector is paused so it cannot land inside a sample.
    """
    for _ in range(warmup):
        call()
    times = [0] * runs
    clock = time.perf_counter_ns
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(runs):
            t0 = clock()
            call()
            times[i] = clock() - t0
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


# ---------------------------------------------------------------- runtime side


class Runtime:
    """What a runtime script hands the harness.

    ``run(feeds) -> {output name: array}`` runs one batch (golden check).
    ``prepare(feeds) -> call`` returns a no-argument callable that runs the
    model once on those feeds, doing as little as possible besides (timing);
    by default it calls ``run``.
    """

    def __init__(self, name, version, run, prepare=None, detail=""):
        self.name = name
        self.version = version
        self.run = run
        self.prepare = prepare or (lambda feeds: lambda: run(feeds))
        self.detail = detail  # e.g. the execution providers, for the summary


def one_line(exc: BaseException) -> str:
    """An exception as one short line (runtimes raise multi-line messages)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def device_info() -> dict:
    processor = platform.processor()
    if not processor and os.path.exists("/proc/cpuinfo"):
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.lower().startswith(("model name", "hardware", "cpu model")):
                        processor = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
    return {
        "platform": platform.platform(),
        "processor": processor or platform.machine(),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }


def load_manifest(bundle_dir: str) -> dict:
    path = os.path.join(bundle_dir, "manifest.json")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
        manifest["artifacts"][0]["path"]
    except FileNotFoundError:
        raise HarnessError(
            f"no manifest.json in {bundle_dir}: run bench.py from its bundle") from None
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise HarnessError(
            f"manifest.json is unreadable ({one_line(e)}): rebuild the bundle") from e
    return manifest


def load_npz(path: str) -> dict:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: np.ascontiguousarray(data[k]) for k in data.files}
    except FileNotFoundError:
        raise HarnessError(f"missing golden file {path}: rebuild the bundle") from None
    except Exception as e:  # corrupt zip, pickled arrays, ...
        raise HarnessError(
            f"cannot read golden file {path} ({one_line(e)}): rebuild the bundle") from e


def batch_size(manifest: dict) -> int:
    harness = manifest.get("harness") or {}
    try:
        batch = int(harness.get("batch") or 1)
    except (TypeError, ValueError):
        batch = 0
    if batch < 1:
        raise HarnessError(f"manifest harness.batch must be a positive integer, got {batch!r}")
    return batch


def run_golden(run, inputs: dict, batch: int) -> dict:
    """Run the golden inputs in batches; concatenate each output along axis 0."""
    counts = sorted({len(v) for v in inputs.values()})
    if len(counts) != 1 or counts[0] == 0 or counts[0] % batch:
        raise HarnessError(f"golden inputs hold {counts} samples; need one count, "
                           f"a multiple of batch {batch}: rebuild the bundle")
    parts = {}
    for start in range(0, counts[0], batch):
        feeds = {k: v[start:start + batch] for k, v in inputs.items()}
        for name, value in run(feeds).items():
            parts.setdefault(name, []).append(np.asarray(value))
    return {k: np.concatenate(v, axis=0) for k, v in parts.items()}


def parse_args(argv: list | None, runs: int, warmup: int) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench.py",
        description="Check this bundle's golden outputs and time the model on this device.")
    p.add_argument("--runs", type=int, default=runs, help=f"timed runs (default {runs})")
    p.add_argument("--warmup", type=int, default=warmup,
                   help=f"untimed runs first (default {warmup})")
    p.add_argument("--threads", type=int, default=None,
                   help="runtime threads (default: the runtime's own choice)")
    p.add_argument("--json", metavar="FILE", default=None, help="write the results as JSON")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or (args.threads is not None and args.threads < 1):
        p.error("--runs and --threads must be >= 1, --warmup >= 0")
    return args


def summary_lines(result: dict) -> list:
    """The short human summary printed after a run."""
    b, rt, lat, g = result["bundle"], result["runtime"], result["latency_ms"], result["golden"]
    threads = result["threads"] if result["threads"] is not None else "default"
    bounds = "  ".join(f"{k} {'>=' if TOLERANCE_KEYS[k] == 'min' else '<='} {v:g}"
                       for k, v in g["tolerances"].items()) or "no golden tolerances"
    lines = [
        f"bundle   {b['target']} / {b['precision']}   runtime {rt['name']} {rt['version']}"
        + (f" ({rt['detail']})" if rt.get("detail") else ""),
        f"device   {result['device']['processor']} ({result['device']['machine']})",
        f"golden   {g['status'].upper()} on {g['samples']} samples ({bounds})",
    ]
    shown = ("cosine_min", "max_abs_err", "snr_db", "top1_agreement")
    for name, m in g["metrics"].items():
        values = "  ".join(f"{k} {m[k]:g}" for k in shown if m.get(k) is not None)
        lines.append(f"  {name}: {values}")
    lines += [f"  FAIL {f}" for f in g["failures"]]
    lines += [
        "latency  p50 {p50:.4g} ms  p90 {p90:.4g}  p99 {p99:.4g}  mean {mean:.4g}  "
        "min {min:.4g}  max {max:.4g}".format(**lat),
        f"         {result['runs']} runs after {result['warmup']} warm-up, batch "
        f"{result['batch']}, threads {threads}: {result['throughput_per_s'] or 'n/a'} samples/s",
    ]
    return lines


def bench(open_runtime, bundle_dir: str, args: argparse.Namespace) -> dict:
    """Golden check + timing -> the result dict written as JSON (raises HarnessError)."""
    manifest = load_manifest(bundle_dir)
    batch = batch_size(manifest)
    model_path = os.path.join(bundle_dir, manifest["artifacts"][0]["path"])
    if not os.path.exists(model_path):
        raise HarnessError(f"model file {model_path} is missing: rebuild the bundle")
    runtime = open_runtime(model_path, manifest, args.threads)

    inputs = load_npz(os.path.join(bundle_dir, "reference", "inputs.npz"))
    reference = load_npz(os.path.join(bundle_dir, "reference", "outputs.npz"))
    expected = [t["name"] for t in (manifest.get("signature") or {}).get("inputs", [])]
    if expected and sorted(expected) != sorted(inputs):
        raise HarnessError(f"golden inputs {sorted(inputs)} do not match the model inputs "
                           f"{sorted(expected)}: rebuild the bundle")
    tolerances = (manifest.get("validation") or {}).get("tolerances") or {}
    gold_tol = golden_tolerances(tolerances)
    try:
        candidate = run_golden(runtime.run, inputs, batch)
    except HarnessError:
        raise
    except Exception as e:
        raise HarnessError(f"the model failed to run on the golden inputs: {one_line(e)}") from e
    golden = evaluate(reference, candidate, gold_tol)
    golden["samples"] = len(next(iter(inputs.values())))

    # Timing feeds: golden sample 0 (one batch), contiguous, made once before the loop.
    feeds = {k: np.ascontiguousarray(v[:batch]) for k, v in inputs.items()}
    try:
        call = runtime.prepare(feeds)
        times = time_calls(call, args.runs, args.warmup)
    except Exception as e:
        raise HarnessError(f"the model failed during timing: {one_line(e)}") from e
    latency = latency_stats(times)
    mean = latency["mean"]
    target = manifest.get("target") or {}
    return {
        "runtime": {"name": runtime.name, "version": runtime.version, "detail": runtime.detail},
        "device": device_info(),
        "bundle": {"target": target.get("name") if isinstance(target, dict) else target,
                   "precision": manifest.get("precision")},
        "batch": batch,
        "runs": args.runs,
        "warmup": args.warmup,
        "threads": args.threads,
        "latency_ms": latency,
        "throughput_per_s": rounded(batch * 1000.0 / mean) if mean else None,
        "golden": {
            "status": golden["status"],
            "samples": golden["samples"],
            "metrics": golden["metrics"],
            "tolerances": golden["tolerances"],
            "failures": golden["failures"],
        },
    }


def main(open_runtime, bundle_dir: str, argv: list | None = None, runs: int = 200,
         warmup: int = 20) -> int:
    """The whole harness; returns the exit code (0 passed, 1 golden failed, 2 error).

    ``open_runtime(model_path, manifest, threads) -> Runtime`` raises
    HarnessError (or anything else) when the runtime or model cannot load.
    """
    args = parse_args(argv, runs, warmup)
    result = run_and_save(lambda: bench(open_runtime, os.path.abspath(bundle_dir), args), args)
    if result is None:
        return 2
    print("\n".join(summary_lines(result)))
    return 0 if result["golden"]["status"] == "passed" else 1


def run_and_save(run, args):
    """Run the benchmark, write --json; on any error print one line and return None
    (exit 2: runtime missing or model unloadable). Shared by every bench.py."""
    try:
        result = run()
        if args.json:
            if os.path.dirname(args.json):
                os.makedirs(os.path.dirname(args.json), exist_ok=True)
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(result, f, indent=2, allow_nan=False)
                f.write("\n")
    except Exception as e:
        if args.debug:
            raise
        prefix = "" if isinstance(e, HarnessError) else f"{type(e).__name__}: "
        print(f"error: {prefix}{one_line(e)}", file=sys.stderr)
        return None
    return result
