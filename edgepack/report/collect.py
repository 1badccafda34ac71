"""What `edgepack report` shows, gathered once for every rendering (terminal, HTML).

Host latency is measured here by running each bundle's own ``bench.py`` (the
exact harness a device runs), so host and device numbers are comparable.
Device numbers come from the harness JSON files people collect from devices
(``python bench.py --json result.json``), matched to bundles by the
``bundle: {target, precision}`` the harness writes into them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepack.bundle import manifest as mf
from edgepack.errors import InputError, Status
from edgepack.report.gate import Key, Record, load_records, order

PERCENTILES = ("p50", "p90", "p99")
HOST_TIMEOUT_S = 300


@dataclass
class Run:
    """One harness result: where it ran and its latency in ms."""

    where: str  # "host" or a device label
    runtime: str
    latency_ms: dict[str, float]
    throughput_per_s: float | None = None
    golden: str | None = None  # passed | failed
    file: str | None = None  # the result file, relative to --results


@dataclass
class Row:
    record: Record
    host: Run | None = None
    host_note: str | None = None  # why there are no host numbers
    devices: list[Run] = field(default_factory=list)


@dataclass
class Report:
    model: str
    rows: list[Row]
    edgepack_version: str | None = None
    source_sha256: str | None = None
    toolchain: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # result files not used, and why


def run_from_result(data: dict[str, Any], where: str, file: str | None = None) -> Run:
    rt = data.get("runtime") or {}
    runtime = " ".join(str(x) for x in (rt.get("name"), rt.get("version")) if x)
    return Run(where=where, runtime=runtime or "?",
               latency_ms={k: float(v) for k, v in data["latency_ms"].items() if v is not None},
               throughput_per_s=data.get("throughput_per_s"),
               golden=(data.get("golden") or {}).get("status"), file=file)


def device_label(data: dict[str, Any], rel: Path) -> str:
    """The results sub-folder people sort files into (results/pixel8/...), else the
    processor the harness recorded, else the file name."""
    if len(rel.parts) > 1:
        return rel.parts[0]
    dev = data.get("device") or {}
    name = (dev.get("processor") or "").strip() or dev.get("machine") or ""
    return name or rel.stem


def host_run(folder: Path, runs: int) -> tuple[Run | None, str | None]:
    """Run the bundle's harness with this interpreter: (run, None) or (None, why not)."""
    if not (folder / "bench.py").is_file():
        return None, "no bench.py"
    with tempfile.TemporaryDirectory(prefix="edgepack-report-") as tmp:
        out = Path(tmp) / "host.json"
        cmd = [sys.executable, str(folder / "bench.py"), "--runs", str(runs),
               "--warmup", str(max(1, runs // 10)), "--json", str(out)]
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        try:
            proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, env=env,
                                  timeout=HOST_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return None, f"host harness took over {HOST_TIMEOUT_S} s"
        if not out.is_file():
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            why = lines[-1] if lines else f"harness exit {proc.returncode}"
            return None, why.removeprefix("error: ")
        return run_from_result(json.loads(out.read_text()), "host"), None


def device_runs(results: Path) -> tuple[dict[Key, list[Run]], list[str]]:
    """Harness JSON files under RESULTS, by (target, precision); plus notes on the rest."""
    if not results.is_dir():
        raise InputError(f"--results {results}: not a folder of harness JSON files")
    found: dict[Key, list[Run]] = {}
    notes = []
    for path in sorted(results.rglob("*.json")):
        rel = str(path.relative_to(results))
        try:
            data = json.loads(path.read_text())
            bundle = data["bundle"]
            key = (str(bundle["target"]), str(bundle["precision"]))
            run = run_from_result(data, device_label(data, path.relative_to(results)), rel)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            notes.append(f"{rel}: not a bench.py result (no bundle / latency_ms), skipped")
            continue
        runs = found.setdefault(key, [])
        if any(r.where == run.where for r in runs):  # same device twice: tell them apart
            run.where = f"{run.where} ({path.stem})"
        runs.append(run)
    return found, notes


def collect(dist: Path, results: Path | None = None, host_runs: int = 100) -> Report:
    records = load_records(dist)
    devices, notes = device_runs(results) if results is not None else ({}, [])
    rows = []
    for rec in sorted(records.values(), key=lambda r: order(r.target, r.precision, r.name)):
        row = Row(rec, devices=devices.pop(rec.key, []))
        if rec.folder is None:
            row.host_note = "no bundle (conversion failed)" if rec.status == Status.FAILED \
                else "no bundle folder"
        elif host_runs > 0:
            row.host, row.host_note = host_run(rec.folder, host_runs)
        else:
            row.host_note = "not measured (--host-runs 0)"
        rows.append(row)
    for (target, precision), runs in sorted(devices.items()):
        for run in runs:
            notes.append(f"{run.file}: {target}/{precision} is not in {dist}, skipped")
    report = Report(model=rows[0].record.name.split("-")[0] if rows else "?", rows=rows,
                    notes=notes)
    first = next((r.record.folder for r in rows if r.record.folder is not None), None)
    if first is not None:  # what built these bundles, from one manifest
        m = mf.read(first)
        report.model = m["source"].get("name") or report.model
        report.edgepack_version = m.get("edgepack_version")
        report.source_sha256 = m["source"]["sha256"]
        report.toolchain = dict(m.get("toolchain") or {})
    return report
