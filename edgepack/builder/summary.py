"""What a build returns and writes: one result per bundle, and OUT/summary.json."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepack.bundle import manifest as mf
from edgepack.errors import ConversionError, Status

SUMMARY = "summary.json"


@dataclass
class BundleResult:
    name: str
    target: str
    precision: str
    status: str  # a Status value
    reason: str | None = None
    path: Path | None = None
    bytes: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    conversion_failed: bool = False
    steps: dict[str, float] = field(default_factory=dict)  # seconds per step

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "target": self.target, "precision": self.precision,
            "status": self.status, "reason": self.reason,
            "path": self.path.name if self.path else None, "bytes": self.bytes,
            "metrics": self.metrics, "failures": self.failures,
            "seconds": round(self.seconds, 2), "steps": self.steps,
        }


@dataclass
class BuildSummary:
    model: str
    bundles: list[BundleResult]
    out: Path
    notes: list[str] = field(default_factory=list)  # what the user should know (sample size)

    @property
    def exit_code(self) -> int:
        if any(b.conversion_failed for b in self.bundles):
            return ConversionError.exit_code
        if any(b.status == Status.FAILED for b in self.bundles):
            return 1
        return 0

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": 1, "model": self.model, "exit_code": self.exit_code,
                "bundles": [b.to_dict() for b in self.bundles], "notes": list(self.notes)}


def artifact_bytes(bundle: Path) -> list[int]:
    manifest = mf.read(bundle)
    return [a["bytes"] for a in manifest["artifacts"] if a.get("role") == "model"]


def write_summary(summary: BuildSummary) -> Path:
    path = summary.out / SUMMARY
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary.to_dict(), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path
