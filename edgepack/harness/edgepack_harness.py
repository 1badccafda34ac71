"""edgepack's on-device harness core: golden check, timing, device info, the run.

Copied verbatim into every bundle as ``edgepack_harness.py`` next to the
runtime-specific ``bench.py`` and ``edgepack_metrics.py`` (the metrics and
tolerance decisions it applies, the same file the host's validation imports).
It needs only the standard library and numpy, and keeps to Python 3.8 syntax,
so it runs on the device as-is.

A runtime script supplies one function, ``open_runtime(model_path, manifest,
threads) -> Runtime``, and calls ``main(open_runtime, bundle_dir)``.
Exit codes: 0 golden passed, 1 golden failed, 2 runtime missing, model
unloadable or bundle unreadable (one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time

import numpy as np

if __package__:  # the host: edgepack.harness.edgepack_harness
    from .edgepack_metrics import TOLERANCE_KEYS, evaluate, golden_tolerances, rounded
else:  # a bundle: bench.py put this folder (with edgepack_metrics.py) on sys.path
    from edgepack_metrics import TOLERANCE_KEYS, evaluate, golden_tolerances, rounded


class HarnessError(Exception):
    """A problem the harness reports in one line and exits 2 for."""


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


def golden_tasks(manifest: dict) -> dict:
    """{output: task} as the build judged them (metrics follow the task)."""
    tasks = (manifest.get("validation") or {}).get("tasks") or {}
    return {name: t["task"] for name, t in tasks.items()}


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
    golden = evaluate(reference, candidate, gold_tol, task=golden_tasks(manifest))
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
