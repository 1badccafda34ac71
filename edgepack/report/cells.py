"""Cell values shared by the terminal, markdown and HTML tables, so all three agree."""

from __future__ import annotations

from typing import Any

from edgepack.report.build_table import agreement, human_bytes, worst

__all__ = ["accuracy", "agreement", "human_bytes", "ms", "number", "worst"]


def accuracy(metrics: dict[str, dict[str, Any]]) -> tuple[float | None, float | None]:
    """(artifact, source) task accuracy in %, the worst output's."""
    return worst(metrics, "task_accuracy"), worst(metrics, "reference_task_accuracy")


def number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def ms(value: float | None) -> str:
    """Latency in ms with 3 significant digits (0.0199, 1.23, 45.6)."""
    return "-" if value is None else f"{value:.3g}"
