"""Renderings of build and validate results: terminal tables (rich)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from edgepack.errors import Status

STATUS_STYLE = {Status.PASSED: "green", Status.FAILED: "bold red", Status.DEFERRED: "yellow"}


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def worst(metrics: dict[str, dict[str, Any]], key: str) -> float | None:
    """The worst value of a higher-is-better metric across outputs."""
    values = [m[key] for m in metrics.values() if m.get(key) is not None]
    return min(values) if values else None


#: Each task's agreement with the source, in [0, 1]: the "agree" column.
AGREEMENT_KEYS = ("top1_agreement", "sequence_agreement", "retrieval_agreement",
                  "detection_agreement", "mask_iou")


def agreement(metrics: dict[str, dict[str, Any]]) -> float | None:
    """The worst task agreement across outputs (top-1 for class scores, whole sequences,
    nearest neighbours, detections, masks): what the outputs' tasks say matters."""
    values = [v for key in AGREEMENT_KEYS if (v := worst(metrics, key)) is not None]
    return min(values) if values else None


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def build_table(summary_dict: dict[str, Any]) -> Table:
    table = Table(title=f"edgepack build: {summary_dict['model']}")
    table.add_column("target", no_wrap=True)
    table.add_column("precision", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("acc (src)", justify="right")
    table.add_column("agree", justify="right")
    table.add_column("cos min", justify="right")
    table.add_column("s", justify="right")
    for b in summary_dict["bundles"]:
        m = b["metrics"]
        acc, ref = worst(m, "task_accuracy"), worst(m, "reference_task_accuracy")
        accuracy = "-" if acc is None else f"{acc:.1f} ({ref:.1f})"
        cos = _fmt(worst(m, "cosine_min"), ".4f")
        status = f"[{STATUS_STYLE[b['status']]}]{b['status']}[/]"
        table.add_row(b["target"], b["precision"], human_bytes(b["bytes"]), status, accuracy,
                      _fmt(agreement(m), ".3f"), cos, f"{b['seconds']:.1f}")
    return table


def print_build(summary_dict: dict[str, Any], console: Console) -> None:
    console.print(build_table(summary_dict))
