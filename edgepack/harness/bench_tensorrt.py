"""Benchmark harness of an edgepack TensorRT bundle (copied in as ``bench.py``).

    python bench.py [--runs N] [--warmup N] [--json FILE] [--engine FILE] [--rebuild]

Run from inside the bundle on the Jetson. Builds ``model.engine`` from
``model.onnx`` with ``build_engine.sh`` (trtexec) when there is none (or uses
the engine given), runs it on the golden inputs in reference/ (TensorRT Python
API when importable, else ``trtexec --loadInputs ... --exportOutput ...``),
compares with the golden outputs under the bundle's tolerances, and reports
latency percentiles from trtexec's per-inference timing export (``--exportTimes``;
Python API timing when trtexec is absent). Refuses an engine built by another
TensorRT version. Needs numpy and TensorRT (JetPack) only; the engine code is in
the sibling ``tensorrt_engine.py``.

Exit 0 golden passed, 1 golden failed, 2 TensorRT missing, engine not buildable
or loadable, or built by another TensorRT version (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # the sibling edgepack_harness.py, whatever the cwd

try:
    import edgepack_harness as harness
    import edgepack_metrics as metrics
    import numpy as np
    from tensorrt_engine import (
        ENGINE,
        NO_TENSORRT,
        PythonEngine,
        Toolkit,
        ensure_engine,
        find_trtexec,
        import_tensorrt,
    )
except ImportError as e:  # numpy missing, or the bundle lost a file
    print(f"error: {e}: pip install -r requirements.txt", file=sys.stderr)
    sys.exit(2)

HarnessError = harness.HarnessError


# ---------------------------------------------------------------- trtexec inference


def _quoted(name: str) -> str:
    return f"'{name}'" if ":" in name else name


def _trtexec_common(tk: Toolkit, engine: str, options: dict, feeds: dict, tmp: str) -> list:
    args = [tk.trtexec, f"--loadEngine={engine}"]
    specs = []
    for i, (name, arr) in enumerate(sorted(feeds.items())):
        path = os.path.join(tmp, f"input{i}.bin")
        np.ascontiguousarray(arr).tofile(path)
        specs.append(f"{_quoted(name)}:{path}")
    args.append("--loadInputs=" + ",".join(specs))
    dynamic = options.get("dynamic_inputs") or []
    if dynamic:
        args.append("--shapes=" + ",".join(
            f"{_quoted(n)}:{'x'.join(str(d) for d in feeds[n].shape)}" for n in dynamic))
    if options.get("dla_core") is not None:
        args.append(f"--useDLACore={int(options['dla_core'])}")
        if options.get("gpu_fallback", True):
            args.append("--allowGPUFallback")
    return args


def _run_trtexec(args: list, what: str) -> None:
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "[E]" in ln]
        why = lines[-1].strip() if lines else f"exit code {proc.returncode}"
        raise HarnessError(f"trtexec failed {what}: {why}")


_NONFINITE = re.compile(r"(?<![\w\"])(-?)(nan|inf)(?![\w\"])", re.IGNORECASE)


def parse_exported_outputs(text: str) -> dict:
    """trtexec --exportOutput JSON -> {name: flat float64 array} (nan/inf made JSON)."""
    fixed = _NONFINITE.sub(lambda m: "NaN" if m.group(2).lower() == "nan"
                           else f"{m.group(1)}Infinity", text)
    return {e["name"]: np.asarray(e["values"], dtype=np.float64) for e in json.loads(fixed)}


def trtexec_runtime(tk: Toolkit, engine: str, options: dict, reference: dict,
                    batch: int, tmp: str):
    """run(feeds) for the golden check: one trtexec call per batch (reloads the engine)."""
    shapes = {k: (batch,) + tuple(v.shape[1:]) for k, v in reference.items()}
    dtypes = {k: v.dtype for k, v in reference.items()}

    def run(feeds: dict) -> dict:
        out = os.path.join(tmp, "outputs.json")
        args = _trtexec_common(tk, engine, options, feeds, tmp)
        args += [f"--exportOutput={out}", "--iterations=1", "--warmUp=0", "--duration=0"]
        _run_trtexec(args, "on the golden inputs")
        with open(out, encoding="utf-8") as f:
            flat = parse_exported_outputs(f.read())
        result = {}
        for name, values in flat.items():
            shape = shapes.get(name)
            result[name] = (values.reshape(shape).astype(dtypes[name]) if shape is not None
                            and values.size == int(np.prod(shape)) else values)
        return result

    return run


def trtexec_times(tk: Toolkit, engine: str, options: dict, feeds: dict, runs: int,
                  warmup: int, tmp: str) -> tuple:
    """Per-inference latency and GPU compute times (ms) from trtexec --exportTimes."""
    path = os.path.join(tmp, "times.json")
    args = _trtexec_common(tk, engine, options, feeds, tmp)
    args += [f"--iterations={runs + warmup}", "--warmUp=0", "--duration=0", "--useSpinWait",
             f"--exportTimes={path}"]
    _run_trtexec(args, "while timing")
    with open(path, encoding="utf-8") as f:
        trace = json.load(f)
    trace = trace[warmup:][:runs] if len(trace) > warmup else trace
    if not trace:
        raise HarnessError("trtexec exported no timings")
    latency = [float(t["latencyMs"]) for t in trace]
    compute = [float(t["computeMs"]) for t in trace]
    return latency, compute


# ---------------------------------------------------------------- the run


def parse_args(argv: list | None, runs: int = 200, warmup: int = 20) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench.py",
        description="Build (once) and check this bundle's TensorRT engine, then time it.")
    p.add_argument("--runs", type=int, default=runs, help=f"timed runs (default {runs})")
    p.add_argument("--warmup", type=int, default=warmup,
                   help=f"untimed runs first (default {warmup})")
    p.add_argument("--threads", type=int, default=None, help="ignored (TensorRT runs on the GPU)")
    p.add_argument("--json", metavar="FILE", default=None, help="write the results as JSON")
    p.add_argument("--engine", default=None, help=f"run this engine (default: {ENGINE}, "
                   "built here when absent)")
    p.add_argument("--rebuild", action="store_true", help="build the engine again first")
    p.add_argument("--trtexec", default=None, help="path to trtexec (default: PATH, "
                   "/usr/src/tensorrt/bin)")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        p.error("--runs must be >= 1, --warmup >= 0")
    return args


def bench(bundle: str, args: argparse.Namespace) -> dict:
    trtexec, trt = find_trtexec(args.trtexec), import_tensorrt()
    if trtexec is None and trt is None:
        raise HarnessError(NO_TENSORRT)
    tk = Toolkit(trtexec, trt)
    manifest = harness.load_manifest(bundle)
    options = (manifest.get("harness") or {}).get("runtime_options") or {}
    batch = harness.batch_size(manifest)
    engine = ensure_engine(bundle, options, tk, args.engine, args.rebuild)

    inputs = harness.load_npz(os.path.join(bundle, "reference", "inputs.npz"))
    reference = harness.load_npz(os.path.join(bundle, "reference", "outputs.npz"))
    tolerances = (manifest.get("validation") or {}).get("tolerances") or {}
    gold_tol = metrics.golden_tolerances(tolerances)
    feeds = {k: np.ascontiguousarray(v[:batch]) for k, v in inputs.items()}
    with tempfile.TemporaryDirectory(prefix="edgepack-trt-") as tmp:
        python = None
        if trt is not None:
            python = PythonEngine(trt, engine["path"], options.get("dla_core"))
            run, how = python.run, f"tensorrt {tk.version} python API"
        else:
            run = trtexec_runtime(tk, engine["path"], options, reference, batch, tmp)
            how = f"trtexec {tk.version}"
        try:
            candidate = harness.run_golden(run, inputs, batch)
        except HarnessError:
            raise
        except Exception as e:
            raise HarnessError(
                f"the engine failed on the golden inputs: {harness.one_line(e)}") from e
        golden = metrics.evaluate(reference, candidate, gold_tol,
                                  task=harness.golden_tasks(manifest))
        golden["samples"] = len(next(iter(inputs.values())))

        compute = None
        if tk.trtexec:
            latency, compute = trtexec_times(tk, engine["path"], options, feeds, args.runs,
                                             args.warmup, tmp)
            times_ns = [ms * 1e6 for ms in latency]
            timing = "trtexec --exportTimes (latency = H2D + GPU compute + D2H)"
        else:
            times_ns = harness.time_calls(python.prepare(feeds), args.runs, args.warmup)
            timing = "tensorrt python API (copy in, execute_v2, copy out)"
    lat = harness.latency_stats(times_ns)
    target = manifest.get("target") or {}
    engine_info = dict(engine, path=os.path.relpath(engine["path"], bundle))
    return {
        "runtime": {"name": "tensorrt", "version": tk.version,
                    "detail": f"golden via {how}; timing via {timing.split(' (')[0]}"},
        "device": harness.device_info(),
        "bundle": {"target": target.get("name") if isinstance(target, dict) else target,
                   "precision": manifest.get("precision")},
        "batch": batch,
        "runs": args.runs,
        "warmup": args.warmup,
        "threads": None,
        "latency_ms": lat,
        "gpu_compute_ms": (harness.latency_stats([ms * 1e6 for ms in compute])
                           if compute else None),
        "timing": timing,
        "throughput_per_s": metrics.rounded(batch * 1000.0 / lat["mean"]) if lat["mean"] else None,
        "engine": engine_info,
        "golden": {
            "status": golden["status"],
            "samples": golden["samples"],
            "metrics": golden["metrics"],
            "tolerances": golden["tolerances"],
            "failures": golden["failures"],
        },
    }


def main(argv: list | None = None) -> int:
    args = parse_args(argv)
    result = harness.run_and_save(lambda: bench(HERE, args), args)
    if result is None:
        return 2
    lines = harness.summary_lines(result)
    engine = result["engine"]
    lines.insert(1, f"engine   {engine['path']} (built by TensorRT {engine['built_by']}"
                    f"{', now' if engine['built_here'] else ''})")
    print("\n".join(lines))
    return 0 if result["golden"]["status"] == "passed" else 1


if __name__ == "__main__":
    sys.exit(main())
