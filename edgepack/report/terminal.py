"""`edgepack report` without --html: the report's table in the terminal (rich)."""

from __future__ import annotations

from rich import box
from rich.table import Table

from edgepack.report.build_table import STATUS_STYLE
from edgepack.report.cells import accuracy, agreement, human_bytes, ms, number, worst
from edgepack.report.collect import Report


def report_table(report: Report) -> Table:
    """Same columns as the HTML table; build seconds and device columns only when known."""
    seconds = any(r.record.seconds is not None for r in report.rows)
    devices = any(r.devices for r in report.rows)
    table = Table(title=f"edgepack report: {report.model}", box=box.SIMPLE_HEAD)
    for col, right, show in (("target", False, True), ("precision", False, True),
                             ("size", True, True), ("status", False, True),
                             ("acc (src)", True, True), ("agree", True, True),
                             ("cos min", True, True), ("build s", True, seconds),
                             ("host p50 ms", True, True), ("device p50 ms", True, devices)):
        if show:
            table.add_column(col, justify="right" if right else "left", no_wrap=True)
    for row in report.rows:
        r, m = row.record, row.record.metrics
        acc, ref = accuracy(m)
        cells = [
            r.target, r.precision, human_bytes(r.bytes),
            f"[{STATUS_STYLE.get(r.status, '')}]{r.status}[/]",
            "-" if acc is None else f"{acc:.1f} ({number(ref, '.1f')})",
            number(agreement(m), ".3f"), number(worst(m, "cosine_min"), ".4f"),
        ]
        if seconds:
            cells.append(number(r.seconds, ".1f"))
        cells.append("-" if row.host is None else ms(row.host.latency_ms.get("p50")))
        if devices:
            cells.append("\n".join(f"{ms(d.latency_ms.get('p50'))} {d.where[:24]}"
                                   for d in row.devices) or "-")
        table.add_row(*cells)
    return table
