"""Markdown tables of one benchmark run (results/<date>.json -> results/<date>.md).

    python benchmarks/report.py results/2026-11-27.json     # re-render a stored run

Ratios are edgepack / baseline, both measured in the same process and rounds
(benchmarks/measure.py): size < 1 and latency < 1 mean edgepack is smaller / faster.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

#: baseline -> (edgepack target alias profile, precision) it is compared with
COUNTERPARTS = {
    "torch-eager": [("onnx-cpu", "fp32")],
    "onnx-export": [("onnx-cpu", "fp32")],
    "ort-quantize-dynamic": [("onnx-cpu", "int8"), ("onnx-cpu", "int8-dynamic")],
    "litert-torch": [("android-arm64", "fp32")],
    "onnx2tf-fp32": [("android-arm64", "fp32")],
    "onnx2tf-fp16": [("android-arm64", "fp16")],
}
SIZE_GOAL = 3.5  # int8 must be at least this many times smaller than fp32
OVERHEAD_GOAL_PCT = 3.0
BUDGET_S = 15 * 60


# ---------------------------------------------------------------- small helpers


def first_metrics(metrics: dict | None) -> dict:
    return next(iter((metrics or {}).values()), {}) if metrics else {}


def acc_text(m: dict) -> str:
    if not m:
        return "—"
    parts = []
    if m.get("task_accuracy") is not None:
        parts.append(f"acc {m['task_accuracy']:.1f}% (ref {m['reference_task_accuracy']:.1f})")
    if m.get("top1_agreement") is not None:
        parts.append(f"top1 {m['top1_agreement']:.3f}")
    if m.get("cosine_min") is not None:
        parts.append(f"cos min/mean {m['cosine_min']:.4f}/{m['cosine_mean']:.4f}")
    return ", ".join(parts)


def quality(m: dict) -> float | None:
    """One number to compare accuracies: task accuracy when labelled, else mean cosine."""
    if not m:
        return None
    if m.get("task_accuracy") is not None:
        return m["task_accuracy"]
    return m.get("cosine_mean")


def num(x: float | None, fmt: str = "{:.3g}") -> str:
    return "—" if x is None else fmt.format(x)


def kb(n: int | None) -> str:
    if n is None:
        return "—"
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else a / b


def model_bytes(b: dict | None) -> int | None:
    """The model file(s) of a bundle (no build script); older results: all artifacts."""
    return None if b is None else (b.get("model_bytes") or b.get("bytes"))


def latency(model: dict, name: str) -> dict:
    cand = (model.get("measure") or {}).get("candidates", {}).get(name) or {}
    return cand.get("latency_ms") or {}


def paired_ratio(model: dict, a: str, b: str) -> float | None:
    """Median over the interleaved rounds of a's p50 / b's p50 in the same round: the
    two ran seconds apart, so load from other jobs mostly cancels (whole-run p50s of
    the same MiniLM files gave 0.92x one day and 1.11x the next on this machine)."""
    cands = (model.get("measure") or {}).get("candidates", {})
    ra = (cands.get(a) or {}).get("round_p50_ms") or []
    rb = (cands.get(b) or {}).get("round_p50_ms") or []
    if not ra or len(ra) != len(rb):
        return None
    return statistics.median(x / y for x, y in zip(ra, rb, strict=True))


def speed_ratio(model: dict, a: str, b: str) -> float | None:
    """a's latency over b's: paired by round when measured so, else whole-run p50s."""
    paired = paired_ratio(model, a, b)
    if paired is not None:
        return paired
    la, lb = latency(model, a), latency(model, b)
    return la["p50"] / lb["p50"] if la and lb else None


def bundles(model: dict) -> list[dict]:
    return (model.get("build") or {}).get("summary", {}).get("bundles", [])


def find_bundle(model: dict, target: str, precision: str) -> dict | None:
    return next((b for b in bundles(model)
                 if b["target"] == target and b["precision"] == precision), None)


def status_text(b: dict) -> str:
    s = b["status"]
    if s == "deferred":
        proxy = bool(first_metrics(b.get("metrics")))
        return "deferred (proxy passed)" if proxy else "deferred"
    return s


def accurate(b: dict | None) -> bool:
    """Met its target's bars: passed, or deferred with passing proxy metrics."""
    return b is not None and b["status"] in ("passed", "deferred")


def size_note(b: dict, fp32: dict | None) -> str:
    """Why an int8 file misses the size bar: the ratio the fp32 file would reach if
    only its weights became int8 (its graph, biases and I/O unchanged, no
    quantization parameters), and the int8 weights' share of this file."""
    mine, ref = b.get("composition"), (fp32 or {}).get("composition")
    if not mine or not ref or not ref.get("float") or not mine.get("file"):
        return ""
    ceiling = ref["file"] / (ref["file"] - ref["float"] * 3 / 4)
    return (f" (weights-only ceiling {ceiling:.2f}×; int8 weights "
            f"{100 * mine['int8'] / mine['file']:.0f} % of this file)")


# ---------------------------------------------------------------- checks


def checks(results: dict) -> list[tuple[str, str, str]]:
    rows = []
    total = results.get("total_seconds") or 0
    rows.append(("`make bench` under 15 min on this machine",
                 "yes" if total < BUDGET_S else "NO", f"{total / 60:.1f} min"))
    for key, model in results["models"].items():
        details, ok = [], True
        for b in bundles(model):
            if not b["precision"].startswith("int8"):
                continue
            fp32 = find_bundle(model, b["target"], "fp32")
            r = ratio(model_bytes(fp32), model_bytes(b))
            good = r is not None and r >= SIZE_GOAL and accurate(b)
            ok &= good
            details.append(f"{b['target']} {b['precision']} {num(r, '{:.2f}')}× "
                           f"{status_text(b)}{size_note(b, fp32) if not good else ''}")
        if details:
            rows.append((f"{key}: int8 ≥ {SIZE_GOAL}× smaller than fp32, bars met",
                         "yes" if ok else "NO", "; ".join(details)))
    for key, model, precision in [(k, m, p) for k, m in results["models"].items()
                                  for p in ("int8", "int8-dynamic")]:
        int8 = find_bundle(model, "onnx-cpu", precision)
        qd = latency(model, "ort-quantize-dynamic")
        mine = latency(model, int8["name"]) if int8 else {}
        qd_acc = (model.get("measure") or {}).get("candidates", {}).get(
            "ort-quantize-dynamic", {}).get("accuracy", {})
        q_mine = quality(first_metrics(int8 and int8.get("metrics")))
        q_base = quality(first_metrics(qd_acc.get("metrics")))
        title = (f"{key}: onnx {precision} at least as fast as quantize_dynamic, equal or "
                 "better accuracy")
        if int8 is not None and int8["status"] == "failed":
            rows.append((title, "NO", f"edgepack {precision} failed validation: "
                         f"{acc_text(first_metrics(int8.get('metrics'))) or int8.get('reason')}; "
                         f"quantize_dynamic: {acc_text(first_metrics(qd_acc.get('metrics')))}"))
            continue
        if not int8 or not qd or not mine:
            rows.append((title, "n/a", "not measured"))
            continue
        speed = speed_ratio(model, int8["name"], "ort-quantize-dynamic")
        faster = speed is not None and speed <= 1.0
        better = q_mine is not None and q_base is not None and q_mine >= q_base
        ok = faster and better and accurate(int8)
        m_mine = first_metrics(int8.get("metrics"))
        m_base = first_metrics(qd_acc.get("metrics"))
        rows.append((title, "yes" if ok else "NO",
                     f"p50 {mine['p50']:.3g} vs {qd['p50']:.3g} ms "
                     f"({num(speed, '{:.2f}')}× by round); {acc_text(m_mine) or '—'} vs "
                     f"{acc_text(m_base) or '—'}; edgepack {status_text(int8)}; quantize_dynamic "
                     f"{qd_acc.get('status', '?')} the {qd_acc.get('bar') or '?'} bars"))
    slower = []
    for key, model in results["models"].items():
        for b in bundles(model):
            if not b["precision"].startswith("int8"):
                continue
            fp32 = find_bundle(model, b["target"], "fp32")
            r = speed_ratio(model, b["name"], fp32["name"]) if fp32 else None
            if r is not None and r > 1.0:
                slower.append(f"{key} {b['target']} {b['precision']} "
                              f"{r:.2f}× fp32's p50")
    rows.append(("int8 slower than fp32 on this CPU (host runtimes)",
                 "see detail" if slower else "none", "; ".join(slower) or "—"))
    overheads = [o for m in results["models"].values()
                 for o in (m.get("measure") or {}).get("harness_overhead", [])]
    if overheads:
        worst = max(overheads, key=lambda o: o["overhead_p50_pct"])
        rows.append((f"harness overhead vs bare session.run ≤ {OVERHEAD_GOAL_PCT:g}% at p50",
                     "yes" if worst["overhead_p50_pct"] <= OVERHEAD_GOAL_PCT else "NO",
                     f"worst {worst['overhead_p50_pct']:+.2f}% ({worst['bundle']}); "
                     f"{len(overheads)} bundles"))
    auto = (results.get("auto") or {}).get("digits")
    if auto:
        picks = [f"{b['target']}: {((b.get('selection') or {}).get('chosen')) or 'none'}"
                 for b in auto["summary"]["bundles"]]
        ok = all((b.get("selection") or {}).get("chosen") and (b.get("selection") or {}).get("why")
                 for b in auto["summary"]["bundles"])
        rows.append(("--precision auto picks, records and explains (digits, every target)",
                     "yes" if ok and picks else "NO", "; ".join(picks) or "no bundles"))
    return rows


# ---------------------------------------------------------------- tables


def bundle_table(model: dict) -> list[str]:
    lines = ["| target | precision | status | build s (convert / validate) | artifact | B/param "
             "| fp32 size ÷ this | p50 ms | p99 ms | p50 vs fp32 | accuracy vs source | "
             "bench.py alone |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for b in bundles(model):
        fp32 = find_bundle(model, b["target"], "fp32")
        lat = latency(model, b["name"])
        lf = latency(model, fp32["name"]) if fp32 else {}
        speed = "—"
        if lat and lf and b["precision"] != "fp32":
            r = speed_ratio(model, b["name"], fp32["name"])
            speed = f"{r:.2f}× ({'slower' if r > 1 else 'faster'})"
        alone = (model.get("alone") or {}).get(b["name"])
        alone_text = "no host runtime"
        if alone:
            p50 = num((alone.get("latency_ms") or {}).get("p50"))
            alone_text = (f"golden {alone.get('golden', 'error')}, p50 {p50}"
                          if alone.get("latency_ms") else f"exit {alone['exit_code']}")
        steps = b.get("steps") or {}
        params = b.get("parameters")
        reason = ""
        if b["status"] == "failed":
            reason = f" — {(b.get('reason') or '')[:120]}"
        lines.append(
            f"| {b['target']} | {b['precision']} | {status_text(b)}{reason} | "
            f"{b['seconds']:.1f} ({num(steps.get('convert'), '{:.1f}')} / "
            f"{num(steps.get('validate'), '{:.1f}')}) | {kb(b.get('bytes'))} | "
            f"{num(ratio(model_bytes(b), params), '{:.2f}')} | "
            f"{num(ratio(model_bytes(fp32), model_bytes(b)), '{:.2f}×')} | "
            f"{num(lat.get('p50'))} | {num(lat.get('p99'))} | {speed} | "
            f"{acc_text(first_metrics(b.get('metrics')))} | {alone_text} |")
    return lines


def baseline_table(model: dict) -> list[str]:
    lines = ["| by hand (tool defaults) | build s | artifact | p50 ms | p99 ms | accuracy vs "
             "source (bar) | edgepack counterpart | size ratio | p50 ratio | accuracy Δ |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    measured = (model.get("measure") or {}).get("candidates", {})
    errors = (model.get("measure") or {}).get("errors", {})
    for bl in model.get("baselines", []):
        name = bl["name"]
        if bl.get("status") != "built":
            if bl.get("error") == "--skip":
                bl = dict(bl, error=(model.get("skipped") or {}).get(name, "skipped"))
            lines.append(f"| {name} | {num(bl.get('build_seconds'), '{:.1f}')} | — | — | — | "
                         f"{bl.get('status')}: {(bl.get('error') or '')[:140]} | | | | |")
            continue
        cand = measured.get(name, {})
        acc = cand.get("accuracy") or {}
        lat = cand.get("latency_ms") or {}
        bar = (f" ({acc['status']} {acc['bar']})" if acc.get("bar") else "") if acc else ""
        if name in errors:
            bar = f" run failed: {errors[name][:140]}"
        head = (f"| {name} | {num(bl.get('build_seconds'), '{:.1f}')} | {kb(bl.get('bytes'))} | "
                f"{num(lat.get('p50'))} | {num(lat.get('p99'))} | "
                f"{acc_text(first_metrics(acc.get('metrics')))}{bar} |")
        pairs = [find_bundle(model, t, p) for t, p in COUNTERPARTS.get(name, [])]
        pairs = [b for b in pairs if b]
        if not pairs:
            lines.append(head + " — | | | |")
            continue
        for i, b in enumerate(pairs):
            q_mine = quality(first_metrics(b.get("metrics")))
            q_base = quality(first_metrics(acc.get("metrics")))
            delta = "—" if q_mine is None or q_base is None else f"{q_mine - q_base:+.4g}"
            size = "—" if name == "torch-eager" else num(ratio(b.get("bytes"), bl.get("bytes")),
                                                         "{:.2f}")
            tail = (f" {b['target']} {b['precision']} ({status_text(b)}) | {size} | "
                    f"{num(speed_ratio(model, b['name'], name), '{:.2f}')} | {delta} |")
            lines.append((head if i == 0 else "| ↳ | | | | | |") + tail)
    return lines


def overhead_table(results: dict) -> list[str]:
    lines = ["| bundle | runs each | harness p50 ms | bare session.run p50 ms | overhead p50 "
             "(paired by block) | whole-run p50s | harness p99 | bare p99 |",
             "|---|---|---|---|---|---|---|---|"]
    for model in results["models"].values():
        for o in (model.get("measure") or {}).get("harness_overhead", []):
            whole = o.get("overhead_whole_run_p50_pct")
            lines.append(f"| {o['bundle']} | {o['runs']} | {o['harness_p50_ms']:.4g} | "
                         f"{o['bare_p50_ms']:.4g} | {o['overhead_p50_pct']:+.2f}% | "
                         f"{'—' if whole is None else f'{whole:+.2f}%'} | "
                         f"{o['harness_p99_ms']:.4g} | {o['bare_p99_ms']:.4g} |")
    return lines


def _candidate(c: dict) -> str:
    text = f"{c['precision']}: {c['status']}"
    if c.get("bytes"):
        text += f", {kb(c['bytes'])}"
    if c.get("host_p50_ms") is not None:
        text += f", host p50 {c['host_p50_ms']:.3g} ms"
    if c["status"] != "passed" and c.get("reason"):
        text += f" ({c['reason'][:100]})"
    return text


def auto_table(auto: dict[str, dict]) -> list[str]:
    lines = ["| model | target | chosen | bundle status | artifact | tried (in the profile's "
             "order) | why |", "|---|---|---|---|---|---|---|"]
    for model, build in auto.items():
        for b in build["summary"]["bundles"]:
            sel = b.get("selection") or {}
            tried = "; ".join(_candidate(c) for c in sel.get("candidates", []))
            lines.append(f"| {model} | {b['target']} | {sel.get('chosen') or '—'} | "
                         f"{status_text(b)} | {kb(b.get('bytes'))} | {tried or '—'} | "
                         f"{sel.get('why') or b.get('reason')} |")
    return lines


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    out = [f"# edgepack benchmarks, {results['date']}", ""]
    out.append(f"{m['cpu']}, {m['cores']} cores, {m['platform']}, Python {m['python']}, commit "
               f"`{m['commit']}`. Every runtime ran with {results['threads'] or 'default'} "
               f"thread(s). Load average (1/5/15 min) before {results.get('load_before')}, "
               f"after {results.get('load_after')}: other jobs shared this machine, so absolute "
               "times are noisy; the ratios come from one process that timed all candidates "
               f"of a model in interleaved rounds. Total run: "
               f"{(results.get('total_seconds') or 0) / 60:.1f} min (builds, two at a time: "
               f"{(results.get('build_phase_seconds') or 0) / 60:.1f} min).")
    out.append("")
    out.append("Versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()))
    skipped = results.get("skipped_targets") or {}
    if skipped:
        out += ["", "Skipped targets: " + "; ".join(f"{t}: {w}" for t, w in skipped.items())]
    for key, why in (results.get("skipped_models") or {}).items():
        out += ["", f"Skipped model {key}: {why}"]
    out += ["", "## Checks", "", "| check | result | detail |", "|---|---|---|"]
    out += [f"| {c} | {r} | {d} |" for c, r, d in checks(results)]
    for key, model in results["models"].items():
        meas = model.get("measure") or {}
        out += ["", f"## {key}: {model['description']}", ""]
        calls = []
        for r in model.get("builds", []):
            if r.get("skipped"):
                calls.append(f"`{r['what']}` skipped ({r['skipped']})")
            else:
                calls.append(f"`{r['what']}` {r['wall_seconds']:.0f} s (exit {r['exit_code']})")
        out.append("edgepack build calls: " + "; ".join(calls) + ". Latency: "
                   f"{meas.get('runs_per_candidate')} timed runs per candidate in "
                   f"{meas.get('rounds')} interleaved rounds, batch 1.")
        if meas.get("error"):
            out.append(f"\n**Latency phase failed:** {meas['error']}")
        if meas.get("crashed"):
            out.append(f"\nKilled the measuring process (excluded): {', '.join(meas['crashed'])}")
        out += ["", "### edgepack bundles", ""] + bundle_table(model)
        out += ["", "### Side by side with the by-hand paths", ""] + baseline_table(model)
        notes = dict(model.get("skipped") or {})
        for name, err in (meas.get("errors") or {}).items():
            if not any(b["name"] == name for b in model.get("baselines", [])):
                notes[name] = err
        if notes:
            out += [""] + [f"- {k}: {v}" for k, v in notes.items()]
    out += ["", "## Harness overhead (bundle's bench.py timing vs a bare session.run loop, "
            "same process, alternating blocks)", ""] + overhead_table(results)
    if results.get("auto"):
        out += ["", "## `--precision auto`", ""] + auto_table(results["auto"])
    out += ["", "## How to read", "",
            "- p50/p99: interleaved in-process timing through each bundle's own `bench.py` "
            "(`open_runtime` + `edgepack_harness.time_calls`); baselines are timed with the "
            "same loop. `bench.py alone` is the harness run as a device would (own process).",
            "- size ratio, p50 ratio: edgepack ÷ baseline (< 1: edgepack smaller / faster). "
            "Latency ratios (also `p50 vs fp32`) are the median over the rounds of the two "
            "candidates' p50s in the same round, seconds apart. "
            "`fp32 size ÷ this` and B/param: the model file(s) only (`model.onnx`, "
            "`model.tflite`, `model.mlpackage`; the `artifact` column also counts jetson's "
            "`build_engine.sh`, ~2.4 kB at every precision): how many times smaller than the "
            "same target's fp32 model. "
            "`p50 vs fp32` > 1 means slower than fp32 on this CPU.",
            "- accuracy Δ: edgepack minus baseline, in task-accuracy points for labelled "
            "classifiers, else in mean cosine to the source model's outputs.",
            "- int8 size floor of small models: every output channel of an int8 layer "
            "carries quantization parameters besides its weights: TFLite an int32 bias, the "
            "bias's and the weight's fp32 scale and int64 zero points (edgepack writes each "
            "distinct zero-point vector once), ONNX QDQ an int32 bias and two fp32 scales, "
            "Core ML fp16 scales in 64-byte aligned blobs; the graph costs the same at every "
            "precision. A size ratio under the bar therefore comes with the weights-only "
            "ceiling (the fp32 file with every weight tensor at one byte per element and "
            "nothing else changed) and the int8 weights' share of the int8 file: on the 19k- "
            "and 91k-parameter CNNs (depthwise convolutions have 9 weights per channel) the "
            "ceiling itself is 3.5-3.8x; on the encoder (22.6M parameters) the same formats "
            "reach 3.9x.",
            "- harness overhead: the bundle's timing loop and a bare `session.run` loop on the "
            "same session, alternating blocks of 10 calls with the GC paused in both.",
            "- deferred: no runtime here (Core ML needs macOS, TensorRT a GPU); the metrics "
            "are proxies (torch / onnxruntime simulation) and the bundle's bench.py checks "
            "the golden outputs on the device.", ""]
    return "\n".join(out)


if __name__ == "__main__":
    data = json.loads(Path(sys.argv[1]).read_text())
    sys.stdout.write(render(data))
