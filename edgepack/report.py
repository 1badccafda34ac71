"""Renderings of build and validate results: terminal tables (rich)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

STATUS_STYLE = {"passed": "green", "failed": "bold red", "deferred": "yellow"}
KEY_METRICS = ("task_accuracy", "reference_task_accuracy", "top1_agreement", "cosine_min",
               "cosine_mean", "snr_db")


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def key_metrics(metrics: dict[str, dict[str, Any]]) -> str:
    """The worst value per key metric across outputs, compactly."""
    worst: dict[str, float] = {}
    for per_output in metrics.values():
        for k in KEY_METRICS:
            if k in per_output:
                worst[k] = min(worst.get(k, per_output[k]), per_output[k])
    parts = []
    for k in KEY_METRICS:
        if k in worst:
            v = worst[k]
            parts.append(f"{k}={v:.2f}" if "accuracy" in k or k == "snr_db" else f"{k}={v:.4f}")
    return " ".join(parts)


def build_table(summary_dict: dict[str, Any]) -> Table:
    table = Table(title=f"edgepack build: {summary_dict['model']}")
    for col in ("target", "precision", "size", "status", "metrics", "seconds"):
        table.add_column(col, justify="right" if col in ("size", "seconds") else "left")
    for b in summary_dict["bundles"]:
        status = b["status"]
        detail = key_metrics(b["metrics"])
        if b.get("reason") and status != "passed":
            detail = f"{detail}\n{b['reason']}".strip()
        table.add_row(b["target"], b["precision"], human_bytes(b["bytes"]),
                      f"[{STATUS_STYLE[status]}]{status}[/]", detail, f"{b['seconds']:.1f}")
    return table


def print_build(summary_dict: dict[str, Any], console: Console) -> None:
    console.print(build_table(summary_dict))
