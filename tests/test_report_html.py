"""`edgepack report`: terminal table, and a self-contained HTML page that headless
Chromium renders offline with the table and the plots visible."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import run_cli

from edgepack.report import svg

PRECISIONS = ["fp32", "fp16", "int8-dynamic", "int8"]


@pytest.fixture(scope="module")
def report(digits_dist, tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """The digits dist, one real harness result filed as from a device, and the report."""
    out, build = digits_dist
    assert build.returncode == 0, build.stderr
    root = tmp_path_factory.mktemp("report")
    results = root / "results"
    (results / "bench-box").mkdir(parents=True)
    proc = run_cli("bench", out / "digits-onnx-cpu-int8", "--runs", "30", "--warmup", "3",
                   "--json", results / "bench-box" / "int8.json")
    assert proc.returncode == 0, proc.stderr
    (results / "notes.json").write_text('{"not": "a harness result"}')
    html = root / "report.html"
    proc = run_cli("report", out, "--results", results, "--html", html, "--host-runs", "20")
    return html, results, proc


def test_terminal_table_and_html_written(report):
    html, _, proc = report
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if "onnx-cpu" in line]
    assert [line.split()[1] for line in rows[:len(PRECISIONS)]] == PRECISIONS
    assert "bench-box" in proc.stdout  # the device column
    assert "notes.json: not a bench.py result" in proc.stderr
    assert html.is_file()


def test_html_is_self_contained(report):
    html, _, _ = report
    text = html.read_text()
    assert "<script" not in text.lower()
    assert not re.search(r"\b(src|href)\s*=", text, re.I)  # nothing to fetch
    assert not re.search(r"url\(", text, re.I)
    urls = set(re.findall(r"https?://[^\s\"'<>]+", text))
    assert urls <= {"http://www.w3.org/2000/svg"}  # the SVG namespace name, never fetched
    # the table: one row per bundle, device results next to the host's
    assert text.count('<span class="badge passed">passed</span>') >= len(PRECISIONS)
    assert text.count('<g class="point">') == len(PRECISIONS)
    assert text.count('<g class="latency">') == len(PRECISIONS) + 1  # 4 host + 1 device
    assert "Latency: device vs host" in text and "bench-box/int8.json" in text


def test_svg_scales():
    assert svg.nice_ticks(0, 1, 5) == [0, 0.25, 0.5, 0.75, 1.0]
    assert svg.nice_ticks(98.8, 100.05) == [99, 99.5, 100]
    assert svg.log_ticks(0.015, 0.3) == [0.02, 0.05, 0.1, 0.2]
    s = svg.Scale(1, 100, 0, 200, log=True)
    assert (s(1), s(10), s(100)) == (0, 100, 200)


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not on PATH (Debian: apt-get install -y chromium)")
    return exe


def test_renders_in_headless_chromium_offline(report, tmp_path):
    """Offline (every host name unresolvable), no console messages, plots painted."""
    image = pytest.importorskip("PIL.Image")
    exe = _chromium()
    html, _, _ = report
    png = tmp_path / "report.png"
    base = [exe, "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-first-run", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
            "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr", "--v=0",
            "--window-size=1200,1600"]
    shot = subprocess.run([*base, f"--screenshot={png}", html.as_uri()], capture_output=True,
                          text=True, timeout=120)
    assert shot.returncode == 0, shot.stderr[-2000:]
    dom = subprocess.run([*base, "--dump-dom", html.as_uri()], capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for log in (shot.stderr, dom.stderr):
        assert "Uncaught" not in log
        assert not re.search(r"CONSOLE|ERROR:.*console|Failed to load resource", log), log
    assert dom.stdout.count('<g class="point">') == len(PRECISIONS)
    assert 'id="size-accuracy"' in dom.stdout and 'id="latency"' in dom.stdout

    picture = image.open(png).convert("RGB")
    assert picture.size == (1200, 1600)
    colours = picture.getcolors(maxcolors=1 << 20)
    counts = {rgb: n for n, rgb in colours}

    def near(colour: str, tolerance: int) -> int:
        target = _hex(colour)
        return sum(n for rgb, n in counts.items()
                   if sum(abs(a - b) for a, b in zip(rgb, target, strict=True)) < tolerance)

    for i, precision in enumerate(PRECISIONS):  # scatter points: one colour per precision
        assert near(svg.PALETTE[i], 30) > 60, f"the {precision} point is not painted"
    assert near(svg.PALETTE[0], 80) > 1500, "the host latency bars are not painted"
    assert len(colours) > 50  # text, badges, charts: not a blank page


def _hex(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def test_targets_sharing_an_artifact_share_a_point():
    from edgepack.report.collect import Report, Row
    from edgepack.report.gate import Record
    from edgepack.report.html import render

    m = {"logits": {"task_accuracy": 99.5, "reference_task_accuracy": 99.7,
                    "top1_agreement": 1.0, "cosine_min": 0.9999}}
    rows = [Row(Record(f"d-{t}-fp16", t, "fp16", "deferred", "no GPU here", 81000 + i, m))
            for i, t in enumerate(("jetson-orin-nano", "jetson-agx-orin", "jetson-orin-nx"))]
    rows.append(Row(Record("d-onnx-cpu-fp32", "onnx-cpu", "fp32", "passed", None, 160000, m)))
    rows.append(Row(Record("d-tflite-int8", "android-arm64", "int8", "failed",
                           "conversion failed: boom", None, {}),
                    host_note="no bundle (conversion failed)"))
    text = render(Report(model="d", rows=rows))
    assert text.count('<g class="point">') == 2  # three Jetsons on one point, onnx-cpu
    assert ">jetson-orin-nano +2<" in text and "deferred (proxy metrics)" in text
    assert "Not plotted (no metrics or no artifact): android-arm64/int8" in text
    assert "android-arm64/int8: no host latency: no bundle (conversion failed)" in text
    assert '<span class="badge failed">failed</span>' in text and "conversion failed: boom" in text
