"""`edgepack report --html`: one self-contained page (inline CSS and SVG, no scripts,
no network) with the bundle table, size vs accuracy, and host/device latency."""

from __future__ import annotations

from html import escape

from edgepack.errors import Status
from edgepack.report import svg
from edgepack.report.cells import accuracy, agreement, human_bytes, ms, number, worst
from edgepack.report.collect import PERCENTILES, Report, Row, Run

CSS = """
:root { --ink:#1f2933; --muted:#616e7c; --line:#e4e7eb; --bg:#f5f7fa;
        --ok:#1b7a3d; --okbg:#e3f5e9; --warn:#8a5a00; --warnbg:#fff4d6;
        --bad:#b71c1c; --badbg:#fde8e8; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
       font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; }
main { max-width:1120px; margin:0 auto; padding:28px 24px 48px; }
h1 { font-size:24px; margin:0 0 4px; }
h2 { font-size:17px; margin:0 0 4px; }
.sub, .caption { color:var(--muted); margin:0 0 14px; }
.caption { font-size:13px; }
section { background:#fff; border:1px solid var(--line); border-radius:10px;
          padding:18px 20px; margin:18px 0; }
.cards { display:flex; gap:12px; flex-wrap:wrap; margin:18px 0 0; }
.card { background:#fff; border:1px solid var(--line); border-radius:10px;
        padding:10px 16px; min-width:130px; }
.card b { display:block; font-size:22px; }
.card span { color:var(--muted); font-size:12px; text-transform:uppercase;
             letter-spacing:.04em; }
table { border-collapse:collapse; width:100%; font-variant-numeric:tabular-nums; }
th, td { padding:7px 10px; border-bottom:1px solid var(--line); text-align:left;
         vertical-align:top; }
th { font-size:12px; color:var(--muted); text-transform:uppercase; letter-spacing:.03em;
     background:#fafbfc; }
td.num, th.num { text-align:right; white-space:nowrap; }
tr:last-child td { border-bottom:0; }
.badge { display:inline-block; padding:1px 9px; border-radius:999px; font-size:12px;
         font-weight:600; }
.passed { color:var(--ok); background:var(--okbg); }
.deferred { color:var(--warn); background:var(--warnbg); }
.failed { color:var(--bad); background:var(--badbg); }
.reason { color:var(--muted); font-size:12px; }
tr.has-why td { border-bottom:0; padding-bottom:2px; }
tr.why td { padding-top:0; }
details.reason summary { cursor:pointer; }
td.nowrap { white-space:nowrap; }
.empty { color:var(--muted); font-style:italic; }
code { background:#f0f2f5; padding:1px 5px; border-radius:4px; font-size:12.5px; }
footer { color:var(--muted); font-size:12px; margin-top:24px; }
ul { margin:6px 0 0; padding-left:20px; }
"""


def render(report: Report, title: str | None = None) -> str:
    title = title or f"edgepack report: {report.model}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body><main>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="sub">{escape(_subtitle(report))}</p>',
        _cards(report),
        _table(report),
        _size_accuracy(report),
        _latency(report),
        _devices(report),
        _notes(report),
        _footer(report),
        "</main></body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"


def _subtitle(report: Report) -> str:
    bits = [f"{len(report.rows)} bundles"]
    if report.source_sha256:
        bits.append(f"source sha256 {report.source_sha256[:12]}")
    if report.edgepack_version:
        bits.append(f"edgepack {report.edgepack_version}")
    return " · ".join(bits)


def _cards(report: Report) -> str:
    count = {s: sum(r.record.status == s for r in report.rows)
             for s in (Status.PASSED, Status.DEFERRED, Status.FAILED)}
    cards = [(str(count[s]), str(s)) for s in (Status.PASSED, Status.DEFERRED, Status.FAILED)]
    ok = [r for r in report.rows if r.record.status != Status.FAILED and r.record.bytes]
    if ok:
        small = min(ok, key=lambda r: r.record.bytes or 0)
        cards.append((human_bytes(small.record.bytes),
                      f"smallest: {small.record.target} {small.record.precision}"))
    timed = [r for r in report.rows if r.host and r.record.status != Status.FAILED]
    if timed:
        fast = min(timed, key=lambda r: r.host.latency_ms.get("p50", float("inf")))
        cards.append((f"{ms(fast.host.latency_ms.get('p50'))} ms",
                      f"fastest on host: {fast.record.target} {fast.record.precision}"))
    return '<div class="cards">' + "".join(
        f'<div class="card"><b>{escape(v)}</b><span>{escape(k)}</span></div>' for v, k in cards
    ) + "</div>"


def _badge(status: str) -> str:
    return f'<span class="badge {escape(status)}">{escape(status)}</span>'


def _device_p50(row: Row) -> str:
    if not row.devices:
        return "-"
    return "<br>".join(f"{ms(d.latency_ms.get('p50'))} <small>({escape(d.where)})</small>"
                       for d in row.devices)


def _reason(text: str | None) -> str:
    """The first clause visible; the rest one click away (<details>, no script)."""
    if not text:
        return ""
    short = text.split("; ")[0]
    if len(short) > 90:
        short = short[:87].rstrip() + "…"
    if short == text:
        return f'<div class="reason">{escape(text)}</div>'
    return (f'<details class="reason"><summary>{escape(short)}</summary>{escape(text)}'
            "</details>")


def _table(report: Report) -> str:
    head = ("target", "precision", "status", "size", "task acc (source)", "agree", "cos min",
            "build s", "host p50 ms", "device p50 ms")
    numeric = {"size", "task acc (source)", "agree", "cos min", "build s", "host p50 ms",
               "device p50 ms"}
    rows = []
    for row in report.rows:
        r, m = row.record, row.record.metrics
        acc, ref = accuracy(m)
        acc_text = "-" if acc is None else f"{acc:.2f} ({number(ref, '.2f')})"
        reason = _reason(r.reason)
        host = ms(row.host.latency_ms.get("p50")) if row.host else \
            f'<span class="reason" title="{escape(row.host_note or "")}">-</span>'
        cells = [escape(r.target), escape(r.precision), _badge(r.status),
                 human_bytes(r.bytes), acc_text, number(agreement(m), ".3f"),
                 number(worst(m, "cosine_min"), ".4f"), number(r.seconds, ".1f"), host,
                 _device_p50(row)]
        rows.append("<tr>" + "".join(
            f'<td class="num">{c}</td>' if h in numeric else
            f'<td class="nowrap">{c}</td>' if h in ("target", "precision") else f"<td>{c}</td>"
            for h, c in zip(head, cells, strict=True)) + "</tr>")
        if reason:
            rows[-1] = rows[-1].replace("<tr>", '<tr class="has-why">', 1)
            rows.append(f'<tr class="why"><td></td><td colspan="{len(head) - 1}">{reason}</td>'
                        "</tr>")
    header = "".join(f'<th class="num">{h}</th>' if h in numeric else f"<th>{h}</th>"
                     for h in head)
    return (f'<section id="bundles"><h2>Bundles</h2><p class="caption">Accuracy against the '
            "evaluation labels (the source model's in brackets); agreement (each output's "
            "task: top-1, whole sequences, nearest neighbours, detections, masks) and cosine "
            "against the source model's own outputs, worst output.</p>"
            f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
            "</section>")


def _accuracy_axis(report: Report) -> tuple[str, str, float | None]:
    """Which metric the scatter plots: task accuracy when labels existed, else agreement."""
    metrics = [r.record.metrics for r in report.rows]
    if any(worst(m, "task_accuracy") is not None for m in metrics):
        refs = {worst(m, "reference_task_accuracy") for m in metrics} - {None}
        return "task_accuracy", "task accuracy (%)", refs.pop() if len(refs) == 1 else None
    if any(worst(m, "top1_agreement") is not None for m in metrics):
        return "top1_agreement", "top-1 agreement with the source (%)", None
    return "cosine_min", "lowest cosine vs the source", None


def _points(report: Report, key: str, label: str) -> tuple[list[svg.Point], list[str]]:
    """One point per (size, accuracy, status): targets that ship the same artifact (the
    Jetsons' one ONNX) share a point. Colour = precision; the label names the targets
    when there are several."""
    scale = 100.0 if key == "top1_agreement" else 1.0
    groups: dict[tuple, list[Row]] = {}
    left_out = []
    for row in report.rows:
        r = row.record
        y = worst(r.metrics, key)
        if y is None or not r.bytes:
            left_out.append(f"{r.target}/{r.precision}")
            continue
        kb = round(r.bytes / 1024, 1)  # as the table shows it: a few bytes apart is the same
        groups.setdefault((r.precision, kb, round(y * scale, 4), r.status), []).append(row)
    several = len({row.record.target for row in report.rows}) > 1
    points = []
    for (precision, kb, y, status), rows in groups.items():
        targets = [row.record.target for row in rows]
        text = (targets[0] if len(targets) == 1 else f"{targets[0]} +{len(targets) - 1}") \
            if several else precision
        points.append(svg.Point(
            x=kb, y=y, label=text, series=precision, status=status,
            tooltip=f"{', '.join(targets)} {precision}: {kb} KB, {label} {y:.4g}, {status}"))
    return points, left_out


def _size_accuracy(report: Report) -> str:
    key, label, reference = _accuracy_axis(report)
    points, left_out = _points(report, key, label)
    if not points:
        body = '<p class="empty">No bundle has both a size and accuracy metrics.</p>'
    else:
        xs = [p.x for p in points]
        chart = svg.scatter(points, "model size (KB)", label,
                            x_log=max(xs) / min(xs) > 3,
                            reference=(reference, f"source model {reference:.2f}")
                            if reference is not None else None,
                            y_max=100.0 if key != "cosine_min" else 1.0)
        body = f'<figure id="size-accuracy" style="margin:0">{chart}</figure>'
    missing = (f'<p class="caption">Not plotted (no metrics or no artifact): '
               f'{escape(", ".join(left_out))}.</p>') if left_out else ""
    return ('<section><h2>Size vs accuracy</h2><p class="caption">One point per bundle '
            "(targets that ship the same artifact share one); up and to the left is better. "
            "Hover a point for its numbers.</p>"
            f"{body}{missing}</section>")


def _bars(row: Row) -> list[svg.Bar]:
    runs: list[Run] = ([row.host] if row.host else []) + row.devices
    group = f"{row.record.target} {row.record.precision}"
    return [svg.Bar(group=group, where=run.where, p50=run.latency_ms["p50"],
                    p90=run.latency_ms.get("p90"), p99=run.latency_ms.get("p99"),
                    series="host" if run.where == "host" else run.where)
            for run in runs if run.latency_ms.get("p50")]


def _latency(report: Report) -> str:
    bars = [b for row in report.rows for b in _bars(row)]
    has_devices = any(row.devices for row in report.rows)
    caption = "Bar: p50; tick: p90; whisker: to p99. Host numbers come from each bundle's " \
        "own bench.py run on this machine"
    if has_devices:
        caption += "; device rows from the harness results passed with --results."
    else:
        caption += (" (a proxy: the target device will differ). Add device numbers with "
                    "<code>python bench.py --json result.json</code> on the device and "
                    "<code>edgepack report DIST --results DIR</code>.")
    if not bars:
        body = '<p class="empty">No latency measured (see the notes below).</p>'
    else:
        body = f'<figure id="latency" style="margin:0">{svg.latency_chart(bars)}</figure>'
    title = "Latency: device vs host" if has_devices else "Host latency"
    return f'<section><h2>{title}</h2><p class="caption">{caption}</p>{body}</section>'


def _devices(report: Report) -> str:
    rows = [row for row in report.rows if row.devices]
    if not rows:
        return ""
    head = ("bundle", "where", "runtime", *PERCENTILES, "mean", "samples/s", "golden")
    out = []
    for row in rows:
        for run in ([row.host] if row.host else []) + row.devices:
            lat = run.latency_ms
            golden = _badge(run.golden) if run.golden else "-"
            where = escape(run.where) + (f'<div class="reason">{escape(run.file)}</div>'
                                         if run.file else "")
            cells = [escape(f"{row.record.target} {row.record.precision}"), where,
                     escape(run.runtime), *(ms(lat.get(p)) for p in PERCENTILES),
                     ms(lat.get("mean")), number(run.throughput_per_s, ",.0f"), golden]
            out.append("<tr>" + "".join(
                f'<td class="num">{c}</td>' if 3 <= i <= 7 else f"<td>{c}</td>"
                for i, c in enumerate(cells)) + "</tr>")
    header = "".join(f'<th class="num">{h}</th>' if 3 <= i <= 7 else f"<th>{h}</th>"
                     for i, h in enumerate(head))
    return ('<section id="devices"><h2>Device results</h2><p class="caption">Latency in ms, '
            "golden = the on-device check of the bundle's reference outputs.</p>"
            f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(out)}</tbody></table>"
            "</section>")


def _notes(report: Report) -> str:
    notes = [f"{r.record.target}/{r.record.precision}: no host latency: {r.host_note}"
             for r in report.rows if r.host is None and r.host_note] + report.notes
    if not notes:
        return ""
    items = "".join(f"<li>{escape(n)}</li>" for n in notes)
    return f'<section><h2>Notes</h2><ul class="caption">{items}</ul></section>'


def _footer(report: Report) -> str:
    tools = ", ".join(f"{k} {v}" for k, v in sorted(report.toolchain.items()))
    return f"<footer>Built with {escape(tools or 'edgepack')}.</footer>"
