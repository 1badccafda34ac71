"""The validate summary as a GitHub-flavoured markdown table (PR comments, the
Actions job summary): one row per bundle, old -> new where a baseline exists,
then every failure line."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from edgepack.errors import Status
from edgepack.report.cells import accuracy, agreement, human_bytes, number, worst
from edgepack.report.gate import Record, Verdict

ICON = {Status.PASSED: "✅", Status.DEFERRED: "⏸️", Status.FAILED: "❌"}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _pair(v: Verdict, show: Callable[[Record], str]) -> str:
    new = show(v.new) if v.new is not None else "—"
    if v.old is None:
        return new
    old = show(v.old)
    return new if old == new else f"{old} → {new}"


def _acc(r: Record) -> str:
    return number(accuracy(r.metrics)[0], ".2f")


def summary_markdown(verdicts: Sequence[Verdict], baseline: str | None = None) -> str:
    count = {s: sum(v.status == s for v in verdicts)
             for s in (Status.PASSED, Status.DEFERRED, Status.FAILED)}
    title = ", ".join(f"{n} {s}" for s, n in count.items() if n) or "no bundles"
    against = f" against `{baseline}`" if baseline else ""
    lines = [f"### edgepack validate{against}: {title}", "",
             "| bundle | status | size | task acc | agree | cos min |",
             "|---|---|---:|---:|---:|---:|"]
    for v in verdicts:
        status = f"{ICON[v.status]} {v.status}"
        if v.new is None:
            status += " (missing)"
        lines.append("| " + " | ".join(_cell(c) for c in (
            v.name, status,
            _pair(v, lambda r: human_bytes(r.bytes)),
            _pair(v, _acc),
            _pair(v, lambda r: number(agreement(r.metrics), ".3f")),
            _pair(v, lambda r: number(worst(r.metrics, "cosine_min"), ".4f")),
        )) + " |")
    failing = [line for v in verdicts for line in v.lines if v.status == Status.FAILED]
    if failing:
        lines += ["", "**Failures**", ""]
        lines += [f"- `{line.replace(chr(10), ' ')}`" for line in failing]
    return "\n".join(lines) + "\n"
