"""The CI accuracy-regression gate: pair bundles with a baseline's and apply the rules.

Bundles pair by (target, precision), not by name, so a renamed model still
compares. A pair fails when a metric dropped by more than its ``--max-drop``,
when the model grew by more than ``--max-size-growth``, when the status got
worse (passed > deferred > failed) or when a baseline bundle is missing.
Everything here works on plain manifest / summary.json dicts; only
``load_records`` touches the disk.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepack.bundle import manifest as mf
from edgepack.errors import InputError, Status, UsageError

Key = tuple[str, str]  # (target name, precision)

# Higher-is-better metrics a baseline can gate, with the unit a drop is counted in.
GATED: dict[str, str] = {
    "task_accuracy": "points",
    "top1_agreement": "",
    "top5_agreement": "",
    "cosine_min": "",
    "cosine_mean": "",
    "snr_db": "dB",
}
DEFAULT_MAX_DROP: dict[str, float] = {"task_accuracy": 0.5, "top1_agreement": 0.01,
                                      "cosine_min": 0.01}
DEFAULT_MAX_SIZE_GROWTH = 0.10
STATUS_RANK = {Status.FAILED: 0, Status.DEFERRED: 1, Status.PASSED: 2}
EPS = 1e-9  # manifests round metrics to 6 significant digits


@dataclass
class Record:
    """What the gate and the reports need from one bundle (manifest or summary entry)."""

    name: str
    target: str
    precision: str
    status: str
    reason: str | None = None
    bytes: int | None = None  # the model artifact(s), as in the build table
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float | None = None  # build time, known from summary.json only
    folder: Path | None = None

    @property
    def key(self) -> Key:
        return (self.target, self.precision)


@dataclass
class Limits:
    max_drop: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MAX_DROP))
    max_size_growth: float | None = DEFAULT_MAX_SIZE_GROWTH  # fraction; None = not gated


@dataclass
class Verdict:
    """One bundle's outcome in `edgepack validate`: host check plus baseline rules."""

    name: str
    target: str
    precision: str
    status: str  # passed | deferred | failed, after the gate
    lines: list[str] = field(default_factory=list)  # why it failed, one line each
    notes: list[str] = field(default_factory=list)  # worth saying, not failing
    new: Record | None = None
    old: Record | None = None

    @property
    def failed(self) -> bool:
        return self.status == Status.FAILED


# ---------------------------------------------------------------- options

def parse_max_drop(texts: Iterable[str]) -> dict[str, float]:
    """``["task_accuracy=1", "cosine_min=off"]`` over the defaults -> the limits in force."""
    out = dict(DEFAULT_MAX_DROP)
    for text in texts:
        key, sep, value = (s.strip() for s in text.partition("="))
        if not sep or not key:
            raise UsageError(f"--max-drop {text!r}: expected METRIC=VALUE, e.g. "
                             "task_accuracy=0.5")
        if key not in GATED:
            raise UsageError(f"--max-drop {text!r}: unknown metric {key!r}; "
                             f"valid: {', '.join(GATED)}")
        if value.lower() in ("off", "none"):
            out.pop(key, None)
            continue
        number = _number(value)
        if number is None or number < 0:
            raise UsageError(f"--max-drop {text!r}: {value!r} is not a number >= 0 (or off)")
        out[key] = number
    return out


def parse_size_growth(text: str | None) -> float | None:
    """``"10%"`` or ``"0.1"`` -> 0.1; ``"off"`` -> None (size not gated)."""
    if text is None:
        return DEFAULT_MAX_SIZE_GROWTH
    value = text.strip()
    if value.lower() in ("off", "none"):
        return None
    percent = value.endswith("%")
    number = _number(value.rstrip("%"))
    if number is None or number < 0:
        raise UsageError(f"--max-size-growth {text!r}: expected a fraction (0.1), a percentage "
                         "(10%) or off")
    return number / 100 if percent else number


def _number(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


# ---------------------------------------------------------------- records

def record_from_manifest(manifest: Mapping[str, Any], folder: Path | None = None) -> Record:
    validation = manifest["validation"]
    failures = validation.get("failures") or []
    model = [a["bytes"] for a in manifest["artifacts"] if a.get("role") == "model"]
    return Record(
        name=manifest.get("name") or (folder.name if folder else "?"),
        target=manifest["target"]["name"], precision=manifest["precision"],
        status=validation["status"],
        reason=validation.get("reason") or ("; ".join(failures) if failures else None),
        bytes=sum(model) if model else None, metrics=dict(validation.get("metrics") or {}),
        folder=folder,
    )


def record_from_summary(entry: Mapping[str, Any]) -> Record:
    return Record(name=entry["name"], target=entry["target"], precision=entry["precision"],
                  status=entry["status"], reason=entry.get("reason"), bytes=entry.get("bytes"),
                  metrics=dict(entry.get("metrics") or {}), seconds=entry.get("seconds"))


def merge(manifests: Iterable[Record], summary: Mapping[str, Any] | None) -> dict[Key, Record]:
    """Bundle folders are the truth. summary.json adds its build seconds, the bundles
    whose conversion failed (no folder), and everything when there are no folders
    (a baseline kept as summary.json alone)."""
    records = {r.key: r for r in manifests}
    only_summary = not records
    for raw in (summary or {}).get("bundles", []):
        entry = record_from_summary(raw)
        if entry.key in records:
            records[entry.key].seconds = entry.seconds
        elif only_summary or raw.get("path") is None:
            records[entry.key] = entry
    return records


def load_records(path: Path) -> dict[Key, Record]:
    """A dist folder (bundles and/or summary.json), one bundle, or a summary.json file."""
    if path.is_file():
        return merge([], _read_json(path))
    if not path.is_dir():
        raise InputError(f"no such baseline: {path}")
    if (path / mf.MANIFEST).is_file():
        return merge([record_from_manifest(mf.read(path), path)], None)
    folders = sorted(c for c in path.iterdir() if c.is_dir() and not c.name.startswith(".")
                     and (c / mf.MANIFEST).is_file())
    summary_path = path / "summary.json"
    summary = _read_json(summary_path) if summary_path.is_file() else None
    if not folders and summary is None:
        raise InputError(f"{path} holds no bundles and no summary.json")
    return merge([record_from_manifest(mf.read(f), f) for f in folders], summary)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path} is not readable JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("bundles"), list):
        raise InputError(f"{path} is not an edgepack summary.json (no 'bundles' list)")
    return data


# ---------------------------------------------------------------- rules

def _size(n: int) -> str:
    return f"{n:,} bytes"


def _value(v: float) -> str:
    return f"{v:.6g}"


def regressions(old: Record, new: Record, limits: Limits) -> list[str]:
    """The failure lines of one pair: status, metrics per output, size."""
    name, lines = new.name, []
    if STATUS_RANK[new.status] < STATUS_RANK[old.status]:
        why = f" ({new.reason})" if new.reason else ""
        lines.append(f"{name}: status {old.status} -> {new.status}{why}")
        if not new.metrics:  # nothing was measured (conversion failed): one line is enough
            return lines
    for output in sorted(old.metrics):
        before, after = old.metrics[output] or {}, new.metrics.get(output) or {}
        for metric, limit in limits.max_drop.items():
            was, now = before.get(metric), after.get(metric)
            if was is None:
                continue
            label = f"{metric} ({output})"
            if now is None:
                lines.append(f"{name}: {label} {_value(was)} -> not measured")
                continue
            drop = was - now
            if drop > limit + EPS:
                unit = f" {GATED[metric]}" if GATED[metric] else ""
                lines.append(f"{name}: {label} {_value(was)} -> {_value(now)}, dropped "
                             f"{drop:.4g}{unit} > max {limit:g}")
    growth = limits.max_size_growth
    if growth is not None and old.bytes and new.bytes is not None \
            and new.bytes > old.bytes * (1 + growth) + EPS:
        grew = new.bytes / old.bytes - 1
        lines.append(f"{name}: size {_size(old.bytes)} -> {_size(new.bytes)}, grew "
                     f"{grew:.1%} > max {growth:.0%}")
    return lines


def missing_line(old: Record) -> str:
    size = f", {_size(old.bytes)}" if old.bytes else ""
    return (f"{old.name}: missing: baseline has {old.target}/{old.precision} "
            f"(status {old.status}{size}), this build does not")


def judge(
    new: Sequence[tuple[Record, str, list[str]]],
    old: Mapping[Key, Record] | None = None,
    limits: Limits | None = None,
) -> list[Verdict]:
    """Verdicts for every new bundle, given as (record, host-check status, failure
    lines), then the baseline rules when there is a baseline; and one failed verdict
    for every baseline bundle that disappeared. Stable order: target, precision."""
    limits = limits or Limits()
    verdicts = []
    for rec, status, lines in new:
        v = Verdict(rec.name, rec.target, rec.precision, status, new=rec)
        # a check's lines explain a failure; for a deferred bundle they say why: a note
        (v.lines if status == Status.FAILED else v.notes).extend(lines)
        if old is not None:
            v.old = old.get(rec.key)
            if v.old is None:
                v.notes.append(f"{rec.name}: new bundle, no baseline to compare")
            else:
                v.lines += regressions(v.old, rec, limits)
        if v.lines:
            v.status = Status.FAILED
        verdicts.append(v)
    present = {rec.key for rec, _, _ in new}
    for key, rec in (old or {}).items():
        if key not in present:
            verdicts.append(Verdict(rec.name, rec.target, rec.precision, Status.FAILED,
                                    [missing_line(rec)], old=rec))
    return sorted(verdicts, key=lambda v: order(v.target, v.precision, v.name))


def order(target: str, precision: str, name: str = "") -> tuple[str, int, str]:
    """Sort key for tables: target, then precision from widest to narrowest."""
    ranks = ("fp32", "fp16", "int8-dynamic", "int8")
    return (target, ranks.index(precision) if precision in ranks else len(ranks), name)
