"""Accuracy-aware int8: keep the most harmful layers in float until the score passes.

The loop is backend-agnostic: a backend supplies ``quantize(excluded) -> artifact``
(build an artifact with these nodes kept in float) and ``evaluate(artifact) ->
(passed, score)`` measured on CALIBRATION data only (scoring on the evaluation
data would tune the reported numbers to the test).

Ranking is by leave-one-out sensitivity: quantize everything except node k and
measure the score. It is the only ranking that worked on real models (proxy
metrics such as per-layer SQNR barely helped; see TOOLCHAIN.md).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

#: Decimal places kept for scores in records: enough to compare, stable to print.
SCORE_DIGITS = 6


@dataclass
class Budget:
    """What the search may spend before it gives up (and reports failure)."""

    max_float_nodes: int = 16  # layers allowed to stay in float
    max_seconds: float = 600.0
    max_size_growth: float = 0.35  # artifact may grow at most this fraction over the all-int8 one

    def to_dict(self) -> dict:
        return {
            "max_float_nodes": self.max_float_nodes,
            "max_seconds": self.max_seconds,
            "max_size_growth": self.max_size_growth,
        }


@dataclass
class Step:
    """One candidate artifact that was built and scored."""

    excluded: tuple[str, ...]
    score: float
    passed: bool
    size: int  # artifact bytes
    seconds: float  # quantize + evaluate wall time (never written to records)
    note: str  # "all-int8" | "leave-one-out" | "greedy" | "greedy: skipped, <why>" | ...

    def to_record(self) -> dict:
        return {
            "excluded": len(self.excluded),
            "added": self.excluded[-1] if self.excluded else None,
            "score": round_score(self.score),
            "passed": self.passed,
            "bytes": self.size,
            "note": self.note,
        }


@dataclass
class SearchResult:
    artifact: Path
    excluded: list[str]
    passed: bool
    score: float
    steps: list[Step]
    ranking: list[tuple[str, float]]  # leave-one-out score per candidate, most harmful first
    baseline_score: float = float("nan")
    path: list[Step] = field(default_factory=list)  # all-int8, then the greedy steps in order
    stopped: str = ""  # why the search ended
    budget: Budget = field(default_factory=Budget)

    def to_record(self) -> dict:
        """JSON-able and deterministic: no timings, no paths."""
        loo = {name: score for name, score in self.ranking}
        return {
            "passed": self.passed,
            "score": round_score(self.score),
            "baseline_score": round_score(self.baseline_score),
            "stopped": self.stopped,
            "excluded": [
                {"name": n, "leave_one_out_score": round_score(loo.get(n))} for n in self.excluded
            ],
            "ranking": [[n, round_score(s)] for n, s in self.ranking],
            "steps": [s.to_record() for s in self.path],
            "candidates_tried": len(self.steps),
            "budget": self.budget.to_dict(),
        }


def round_score(x: float | None) -> float | None:
    """Scores as written to records: rounded; non-finite (a broken candidate) as null."""
    return None if x is None or not math.isfinite(x) else round(x, SCORE_DIGITS)


def search(
    quantize: Callable[[Sequence[str]], Path],
    evaluate: Callable[[Path], tuple[bool, float]],
    candidates: Sequence[str],
    budget: Budget,
    progress: Callable[[str], None] | None = None,
) -> SearchResult:
    """Find a small set of nodes to keep in float so that ``evaluate`` passes.

    1. all-int8: if it passes, done;
    2. leave-one-out: score each candidate kept float alone; rank by score
       (higher = more harmful when quantized), ties by candidate order;
    3. greedy: add ranked nodes (only those whose exclusion helped) one at a
       time until the score passes or the budget (float nodes, size growth,
       time) is spent. A node is skipped when it would break the size budget
       or does not raise the score on top of the nodes already kept.

    Never claims a pass it did not measure: when the budget runs out the
    best-scoring candidate is returned with ``passed=False``.
    """
    say = progress or (lambda _msg: None)
    t0 = time.monotonic()
    steps: list[Step] = []
    cache: dict[frozenset[str], Step] = {}
    paths: dict[frozenset[str], Path] = {}

    def out_of_time() -> bool:
        return time.monotonic() - t0 > budget.max_seconds

    def trial(excluded: tuple[str, ...], note: str) -> Step:
        key = frozenset(excluded)
        if key in cache:
            return cache[key]
        t = time.monotonic()
        artifact = quantize(list(excluded))
        passed, score = evaluate(artifact)
        score = float(score)
        if not math.isfinite(score):  # NaN outputs etc.: worst, and comparable
            score, passed = float("-inf"), False
        seconds = time.monotonic() - t
        step = Step(excluded, score, bool(passed), _size(artifact), seconds, note)
        steps.append(step)
        cache[key] = step
        paths[key] = artifact
        return step

    def result(step: Step, ranking: list[tuple[str, float]], stopped: str) -> SearchResult:
        return SearchResult(
            artifact=paths[frozenset(step.excluded)],
            excluded=list(step.excluded),
            passed=step.passed,
            score=step.score,
            steps=steps,
            ranking=ranking,
            baseline_score=base.score,
            path=path,
            stopped=stopped,
            budget=budget,
        )

    say("quantizing (all int8)")
    base = trial((), "all-int8")
    path = [base]
    if base.passed:
        return result(base, [], "all-int8 passed")
    names = list(dict.fromkeys(candidates))  # de-duplicated, order kept
    if not names or budget.max_float_nodes < 1:
        return result(base, [], "no candidates to keep in float")
    max_bytes = base.size * (1.0 + budget.max_size_growth)

    # 2. leave-one-out sensitivity
    scores: dict[str, float] = {}
    stopped = ""
    for i, name in enumerate(names):
        if out_of_time():
            stopped = "time budget spent during leave-one-out"
            break
        say(f"leave-one-out {i + 1}/{len(names)}")
        scores[name] = trial((name,), "leave-one-out").score
    order = {n: i for i, n in enumerate(names)}
    ranking = sorted(scores.items(), key=lambda kv: (-kv[1], order[kv[0]]))

    def best_of(pool: list[Step]) -> Step:
        # highest score; ties: fewer float nodes, then first tried
        ranked = sorted(enumerate(pool), key=lambda t: (-t[1].score, len(t[1].excluded), t[0]))
        return ranked[0][1]

    singles = [cache[frozenset((n,))] for n in scores]
    passing = [s for s in singles if s.passed and s.size <= max_bytes]
    if passing:
        chosen = best_of(passing)
        path.append(replace(chosen, note="leave-one-out: passed"))
        return result(chosen, ranking, "passed with one node in float")

    # 3. greedy: only nodes whose exclusion alone improved on all-int8
    helpful = [n for n, s in ranking if s > base.score]
    kept: list[str] = []
    current = base
    within = [base, *(s for s in singles if s.size <= max_bytes)]
    for name in helpful:
        if stopped:
            break
        if len(kept) >= budget.max_float_nodes:
            stopped = "float-node budget spent"
            break
        if out_of_time():
            stopped = "time budget spent"
            break
        say(f"keeping {len(kept) + 1} node(s) in float")
        step = replace(trial((*kept, name), "greedy"), note="greedy")
        if step.size > max_bytes:
            path.append(replace(step, note="greedy: skipped, over size budget"))
            continue
        within.append(step)
        if step.passed:
            path.append(step)
            return result(step, ranking, f"passed with {len(kept) + 1} node(s) in float")
        if step.score <= current.score:
            # interactions: helped alone, not on top of the others
            path.append(replace(step, note="greedy: skipped, no gain"))
            continue
        path.append(step)
        kept.append(name)
        current = step
    if not stopped:
        stopped = "no more helpful nodes" if helpful else "no node helped when kept in float"
    return result(best_of(within), ranking, stopped)


def _size(path: Path) -> int:
    p = Path(path)
    if p.is_dir():
        return sum(f.stat().st_size for f in sorted(p.rglob("*")) if f.is_file())
    return p.stat().st_size
