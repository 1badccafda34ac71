"""Accuracy and interleaved host latency of one model's edgepack bundles and baselines.

    python benchmarks/measure.py MODEL --dist DIR [DIR ...] --baselines FILE --out FILE
                                 [--threads 1] [--rounds 10] [--skip NAME ...]

Everything is timed in this ONE process, round-robin: each round gives every
candidate a few warm-up calls and then runs/rounds timed calls, so a load spike
on a shared machine hits all candidates alike and their RATIOS stay meaningful
even when absolute numbers drift. Every candidate is timed with the same loop,
the bundles' own ``edgepack_harness.time_calls`` (monotonic ns clock, GC paused,
no allocation or copying in the loop, inputs prepared once), and edgepack bundles
are opened through their own ``bench.py`` (``open_runtime``), exactly as on a device.

Then, per ONNX bundle, the harness's own overhead: the harness's call
(``Runtime.prepare``) against a bare ``session.run`` loop on the same session,
in alternating blocks.

Before loading a candidate its name is written to ``--progress``: if a runtime
aborts the process (LiteRT can), the caller reruns with ``--skip NAME``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from models import MODELS, ModelSpec  # noqa: E402

HOST_BACKENDS = ("onnx", "tflite")  # bundles whose runtime exists on this host
#: baseline -> (profile, precision) whose tolerances judge its accuracy
BASELINE_BARS = {
    "torch-eager": None,
    "onnx-export": ("onnx-cpu", "fp32"),
    "ort-quantize-dynamic": ("onnx-cpu", "int8-dynamic"),
    "litert-torch": ("android-arm64", "fp32"),
    "onnx2tf-fp32": ("android-arm64", "fp32"),
    "onnx2tf-fp16": ("android-arm64", "fp16"),
}


class Candidate:
    """Something to time: a name, a call on one prepared batch, and where it came from."""

    def __init__(self, name: str, group: str, call, run=None, info: dict | None = None):
        self.name, self.group, self.call, self.run = name, group, call, run
        self.info = info or {}
        self.times: list[int] = []
        self.round_p50: list[float] = []  # ms, one per interleaved round


# ---------------------------------------------------------------- helpers


def mark(progress: Path | None, name: str) -> None:
    if progress is not None:
        progress.write_text(name)


def load_bench_module(bundle: Path, index: int):
    """The bundle's own bench.py, imported as a module (its open_runtime + harness)."""
    spec = importlib.util.spec_from_file_location(f"_bench_{index}", bundle / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def first_batch(inputs: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(v[:batch]) for k, v in inputs.items()}


def to_layout(x: np.ndarray, want_shape: tuple) -> np.ndarray:
    """Source (NCHW) sample -> the artifact's shape (NHWC when the dims say so)."""
    if tuple(x.shape) == tuple(want_shape):
        return x
    if x.ndim == 4 and tuple(np.transpose(x, (0, 2, 3, 1)).shape) == tuple(want_shape):
        return np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)))
    raise ValueError(f"cannot map input {list(x.shape)} to the model's {list(want_shape)}")


# ---------------------------------------------------------------- candidates


def torch_candidate(model, feeds: dict[str, np.ndarray], names: list[str]) -> Candidate:
    import torch

    tensors = tuple(torch.from_numpy(feeds[n]) for n in names)

    def run(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            out = model(*(torch.from_numpy(batch[n]) for n in names))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return [o.numpy() for o in outs]

    def call():
        with torch.inference_mode():
            return model(*tensors)

    return Candidate("torch-eager", "baseline", call, run)


def onnx_candidate(name: str, path: str, feeds: dict, threads: int | None) -> Candidate:
    import onnxruntime as ort

    so = ort.SessionOptions()  # ORT defaults; only the thread count is made equal
    if threads:
        so.intra_op_num_threads = threads
    session = ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])
    in_names = [i.name for i in session.get_inputs()]
    ready = {n: feeds[n] for n in in_names}

    def run(batch):
        return session.run(None, {n: batch[n] for n in in_names})

    return Candidate(name, "baseline", lambda: session.run(None, ready), run)


def tflite_candidate(name: str, path: str, feeds: dict, source_names: list[str],
                     threads: int | None) -> Candidate:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=path, **({"num_threads": threads} if threads else {}))
    sigs = interp.get_signature_list()
    key = sorted(sigs)[0]
    runner = interp.get_signature_runner(key)
    details = runner.get_input_details()
    # litert-torch names inputs args_0.., onnx2tf keeps the ONNX names: map by name, else order
    model_names = sigs[key]["inputs"]
    mapping = {s: (s if s in details else model_names[i]) for i, s in enumerate(source_names)}

    def model_feeds(batch):
        return {m: np.ascontiguousarray(to_layout(batch[s], details[m]["shape"]),
                                        dtype=details[m]["dtype"]) for s, m in mapping.items()}

    ready = model_feeds(feeds)
    out_names = sigs[key]["outputs"]

    def run(batch):
        out = runner(**model_feeds(batch))
        return [np.array(out[n]) for n in out_names]

    return Candidate(name, "baseline", lambda: runner(**ready), run)


def bundle_candidate(bundle: Path, index: int, threads: int | None) -> Candidate:
    module = load_bench_module(bundle, index)
    harness = module.harness
    manifest = harness.load_manifest(str(bundle))
    model_path = str(bundle / manifest["artifacts"][0]["path"])
    runtime = module.open_runtime(model_path, manifest, threads)
    golden = harness.load_npz(str(bundle / "reference" / "inputs.npz"))
    feeds = first_batch(golden, harness.batch_size(manifest))  # as bench.py does
    info = {"target": manifest["target"]["name"], "precision": manifest["precision"],
            "runtime": f"{runtime.name} {runtime.version}", "harness": harness,
            "bundle": bundle, "runtime_obj": runtime, "feeds": feeds}
    return Candidate(bundle.name, "edgepack", runtime.prepare(feeds), info=info)


# ---------------------------------------------------------------- accuracy


def reference_outputs(model, evals: dict[str, np.ndarray], names: list[str],
                      out_names: list[str]) -> dict[str, np.ndarray]:
    import torch

    outs: list[list[np.ndarray]] = [[] for _ in out_names]
    n = len(next(iter(evals.values())))
    with torch.inference_mode():
        for i in range(n):
            out = model(*(torch.from_numpy(evals[k][i:i + 1]) for k in names))
            out = out if isinstance(out, (tuple, list)) else (out,)
            for j, o in enumerate(out):
                outs[j].append(o.numpy())
    return {k: np.concatenate(v) for k, v in zip(out_names, outs, strict=True)}


def accuracy(cand: Candidate, evals: dict, reference: dict, labels, task, bars) -> dict:
    from edgepack.compare import compare

    n = len(next(iter(evals.values())))
    outs: dict[str, list] = {k: [] for k in reference}
    for i in range(n):
        got = cand.run({k: v[i:i + 1] for k, v in evals.items()})
        for k, v in zip(reference, got, strict=True):
            outs[k].append(np.asarray(v, dtype=np.float32).reshape(reference[k][i:i + 1].shape))
    candidate = {k: np.concatenate(v) for k, v in outs.items()}
    tol = {}
    if bars is not None:
        from edgepack.profiles import resolve_targets

        tol = dict(resolve_targets([bars[0]])[0].tolerances_for(bars[1]))
    result = compare(reference, candidate, tol, labels=labels, task=task)
    return {"metrics": result.metrics, "status": result.status if bars else "reference",
            "bar": f"{bars[0]} {bars[1]}" if bars else None,
            "failures": list(result.failures), "samples": n}


# ---------------------------------------------------------------- timing


def interleaved(cands: list[Candidate], harness, runs: int, warmup: int, rounds: int) -> None:
    per_round = max(1, runs // rounds)
    warm = max(2, warmup // rounds)
    for c in cands:  # first warm-up, outside the rounds: caches, lazy init
        harness.time_calls(c.call, 1, warmup)
    rng = np.random.default_rng(0)
    for _ in range(rounds):
        for i in rng.permutation(len(cands)):  # seeded order: no fixed neighbour effects
            c = cands[i]
            times = harness.time_calls(c.call, per_round, warm)
            c.times += times
            c.round_p50.append(float(np.median(times)) / 1e6)


def session_of(runtime) -> Any:
    """The InferenceSession inside an onnxruntime bundle's Runtime (its bound run method)."""
    import onnxruntime as ort

    for fn in (runtime.run, runtime.prepare):
        for cell in fn.__closure__ or ():
            target = getattr(cell.cell_contents, "__self__", None)
            if isinstance(target, ort.InferenceSession):
                return target
    raise LookupError("no InferenceSession in the harness runtime")


#: Calls per block when the harness loop and the bare loop alternate. Small blocks
#: put both loops in the same machine state (load from other jobs changes within
#: seconds: 400-call blocks gave -31% .. +14% "overhead" for identical code).
OVERHEAD_BLOCK = 10
OVERHEAD_BLOCK_MS = 10.0  # fewer calls per block for slow models


def harness_overhead(bundle_cand: Candidate, runs: int) -> dict:
    """The harness's timed call vs a bare session.run loop on the SAME session (so only
    the harness's own code differs), alternating blocks of up to OVERHEAD_BLOCK calls in this
    process, with the garbage collector paused on both sides (as time_calls does)."""
    import gc

    harness = bundle_cand.info["harness"]
    session = session_of(bundle_cand.info["runtime_obj"])
    feeds = bundle_cand.info["feeds"]
    clock = time.perf_counter_ns

    def bare(n: int) -> list[int]:
        times = [0] * n
        was = gc.isenabled()
        gc.disable()
        try:
            for i in range(n):
                t0 = clock()
                session.run(None, feeds)
                times[i] = clock() - t0
        finally:
            if was:
                gc.enable()
        return times

    warm = bare(OVERHEAD_BLOCK * 5)
    harness.time_calls(bundle_cand.call, 1, OVERHEAD_BLOCK * 5)
    # blocks of about OVERHEAD_BLOCK_MS: a pair of blocks then runs within ~2x that, so
    # both see the same load (10-call blocks of MiniLM's 11 ms calls spanned 0.2 s)
    call_ms = float(np.median(warm)) / 1e6
    block = int(min(OVERHEAD_BLOCK, max(1, OVERHEAD_BLOCK_MS // max(call_ms, 1e-3))))
    h_times: list[int] = []
    b_times: list[int] = []
    pairs: list[float] = []  # per block pair: harness median / bare median
    for r in range(max(2, runs // block)):  # the same number of calls, more pairs
        if r % 2 == 0:
            h = harness.time_calls(bundle_cand.call, block, 0)
            b = bare(block)
        else:
            b = bare(block)
            h = harness.time_calls(bundle_cand.call, block, 0)
        h_times += h
        b_times += b
        pairs.append(float(np.median(h) / np.median(b)))
    h = harness.latency_stats(h_times)
    b = harness.latency_stats(b_times)
    # the overhead is paired: the median over block pairs (each two blocks ran back to
    # back), so a load burst from another job that lands on one block does not count
    # as the harness's (whole-run p50s of one MiniLM session gave -4 % .. +9 % here)
    return {"bundle": bundle_cand.name, "runs": len(h_times), "block": block,
            "harness_p50_ms": h["p50"], "bare_p50_ms": b["p50"],
            "harness_p99_ms": h["p99"], "bare_p99_ms": b["p99"],
            "overhead_p50_pct": round(100.0 * (float(np.median(pairs)) - 1.0), 2),
            "overhead_whole_run_p50_pct": round(100.0 * (h["p50"] / b["p50"] - 1.0), 2)}


# ---------------------------------------------------------------- main


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("model", choices=sorted(MODELS))
    p.add_argument("--dist", type=Path, nargs="+", required=True)
    p.add_argument("--baselines", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--runs-scale", type=float, default=1.0)
    p.add_argument("--skip", nargs="*", default=[])
    p.add_argument("--progress", type=Path, default=None)
    a = p.parse_args()
    warnings.filterwarnings("ignore")
    spec: ModelSpec = MODELS[a.model]
    threads = a.threads or None
    skip = set(a.skip)

    import torch

    if threads:
        torch.set_num_threads(threads)
    from baselines import load_model

    model, sig = load_model(spec)
    in_names, out_names = sig.input_names, sig.output_names
    with np.load(spec.eval_path) as f:
        evals = {k: np.ascontiguousarray(f[k]) for k in in_names}
        labels = f["labels"] if "labels" in f.files else None
    if spec.eval_limit:
        evals = {k: v[:spec.eval_limit] for k, v in evals.items()}
        labels = labels[:spec.eval_limit] if labels is not None else None
    reference = reference_outputs(model, evals, in_names, out_names)
    feeds = first_batch(evals, 1)  # eval sample 0 = golden sample 0 of every bundle

    result: dict[str, Any] = {"model": a.model, "threads": threads, "candidates": {},
                              "harness_overhead": [], "errors": {}, "skipped": sorted(skip)}
    cands: list[Candidate] = []
    cand = torch_candidate(model, feeds, in_names)
    cands.append(cand)
    result["candidates"]["torch-eager"] = {"group": "baseline", "accuracy": accuracy(
        cand, evals, reference, labels, spec.task, None)}

    for entry in json.loads(a.baselines.read_text()) if a.baselines.is_file() else []:
        name = entry["name"]
        if name == "torch-eager" or entry.get("status") != "built" or name in skip:
            continue
        mark(a.progress, name)
        try:
            if entry["kind"] == "onnx":
                cand = onnx_candidate(name, entry["model"], feeds, threads)
            else:
                cand = tflite_candidate(name, entry["model"], feeds, in_names, threads)
            cand.call()
            acc = accuracy(cand, evals, reference, labels, spec.task, BASELINE_BARS.get(name))
        except Exception as e:
            result["errors"][name] = f"{type(e).__name__}: {' '.join(str(e).split())}"[:300]
            continue
        cands.append(cand)
        result["candidates"][name] = {"group": "baseline", "accuracy": acc}

    bundles = sorted((b.parent for d in a.dist for b in d.glob("*/manifest.json")),
                     key=lambda b: b.name)
    harness = None
    for i, bundle in enumerate(bundles):
        manifest = json.loads((bundle / "manifest.json").read_text())
        if manifest["target"]["backend"] not in HOST_BACKENDS or bundle.name in skip:
            continue
        if manifest["validation"]["status"] == "failed":
            continue  # not deployable: its build failed validation (the table says why)
        mark(a.progress, bundle.name)
        try:
            cand = bundle_candidate(bundle, i, threads)
            cand.call()  # a model that loads but cannot run fails here, not mid-timing
        except BaseException as e:  # SystemExit from a harness that cannot load
            result["errors"][bundle.name] = f"{type(e).__name__}: {e}"[:300]
            continue
        harness = harness or cand.info["harness"]
        cands.append(cand)
        result["candidates"][bundle.name] = {"group": "edgepack",
                                             "runtime": cand.info["runtime"]}

    if harness is None:  # no host bundle: time with a copy of the harness core
        sys.path.insert(0, str(HERE.parent / "edgepack" / "harness"))
        import edgepack_harness as harness  # noqa: F811
    runs = max(20, int(spec.runs * a.runs_scale))
    mark(a.progress, "timing")
    started = time.monotonic()
    interleaved(cands, harness, runs, spec.warmup, a.rounds)
    result["timing_seconds"] = round(time.monotonic() - started, 1)
    for c in cands:
        entry = result["candidates"][c.name]
        entry["latency_ms"] = harness.latency_stats(c.times)
        # per round: two candidates are compared round by round (report.paired_ratio),
        # so a load spike that lands on one candidate's slice does not decide the ratio
        entry["round_p50_ms"] = [round(t, 5) for t in c.round_p50]
        entry["runs"] = len(c.times)
    result["runs_per_candidate"] = len(cands[0].times)
    result["rounds"] = a.rounds

    mark(a.progress, "overhead")
    for c in cands:
        if c.group == "edgepack" and c.info["runtime"].startswith("onnxruntime"):
            result["harness_overhead"].append(
                harness_overhead(c, max(200, int(spec.overhead_runs * a.runs_scale))))
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    mark(a.progress, "done")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main())
