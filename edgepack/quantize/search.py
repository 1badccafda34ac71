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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

#: Decimal places kept for scores in records: enough to compare, stable to print.
SCORE_DIGITS = 6


@dataclass
class Budget:
    """What the search may spend before it gives up (and reports failure).

    ``max_seconds`` depends on the machine: a search it cuts short keeps different
    layers in float on a faster or busier host. ``max_candidates`` (artifacts built
    and scored, ranking ones included) cuts it at the same step everywhere, so the
    same build gives the same artifact; the time budget stays as a safety net.
    """

    max_float_nodes: int = 16  # layers allowed to stay in float
    max_seconds: float = 600.0
    max_size_growth: float = 0.35  # artifact may grow at most this fraction over the all-int8 one
    max_candidates: int | None = None

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Budget:
        """The budget an edgepack.yaml / profile ``int8`` section asks for."""
        budget = cls()
        if "max_float_nodes" in settings:
            budget = replace(budget, max_float_nodes=int(settings["max_float_nodes"]))
        if "max_seconds" in settings:
            budget = replace(budget, max_seconds=float(settings["max_seconds"]))
        if settings.get("max_candidates") is not None:
            budget = replace(budget, max_candidates=int(settings["max_candidates"]))
        return budget

    def to_dict(self) -> dict:
        return {
            "max_float_nodes": self.max_float_nodes,
            "max_seconds": self.max_seconds,
            "max_size_growth": self.max_size_growth,
            "max_candidates": self.max_candidates,
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
    # all-int8 under the ranking score when leave-one-out used a cheaper one (else NaN)
    ranking_baseline: float = float("nan")
    group_scores: list[tuple[tuple[str, ...], float]] = field(default_factory=list)
    leave_one_out: str = ""  # "complete" or why it was cut

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
            "ranking_baseline_score": round_score(self.ranking_baseline),
            "groups": [{"nodes": list(g), "score": round_score(sc)} for g, sc in self.group_scores],
            "leave_one_out": self.leave_one_out,
            "steps": [s.to_record() for s in self.path],
            "candidates_tried": len(self.steps),
            "budget": self.budget.to_dict(),
        }


def ranks_on_subset(samples: int, subset: int) -> bool:
    """Whether leave-one-out should rank on ``subset`` of the ``samples`` calibration
    samples: only when there are over 1.25x as many (below that it saves little and
    costs two extra full evaluations: the all-int8 ranking and the best single)."""
    return samples * 4 > subset * 5


def round_score(x: float | None) -> float | None:
    """Scores as written to records: rounded; non-finite (a broken candidate) as null."""
    return None if x is None or not math.isfinite(x) else round(x, SCORE_DIGITS)


def search(
    quantize: Callable[[Sequence[str]], Path],
    evaluate: Callable[[Path], tuple[bool, float]],
    candidates: Sequence[str],
    budget: Budget,
    progress: Callable[[str], None] | None = None,
    rank: Callable[[Path], float] | None = None,
    groups: Sequence[Sequence[str]] | None = None,
) -> SearchResult:
    """Find a small set of nodes to keep in float so that ``evaluate`` passes.

    1. all-int8: if it passes, done;
    2. leave-one-out: score each candidate kept float alone; rank by score
       (higher = more harmful when quantized), ties by candidate order. With
       ``rank`` (a cheaper score, e.g. on part of the calibration data) the
       singles are ranked by it and only the best-ranked one is evaluated in full.
       ``groups`` (look-alike nodes) are first scored as a whole and only the
       members of groups that helped are then scored alone; when the most helpful
       group passes in full, only its members are (the greedy step then looks for
       fewer of them that pass; the whole group is the fallback). At most half
       the time (and candidate) budget goes to this step;
    3. greedy: add ranked nodes (only those whose exclusion helped) one at a
       time (a helpful group in one step, before its members) until the score
       passes or the budget (float nodes, size growth, time) is spent. A step is
       skipped when it would break the size budget or does not raise the score
       on top of the nodes already kept.

    Never claims a pass it did not measure: when the budget runs out the
    best-scoring candidate is returned with ``passed=False``.
    """
    say = progress or (lambda _msg: None)
    t0 = time.monotonic()
    steps: list[Step] = []
    cache: dict[frozenset[str], Step] = {}
    paths: dict[frozenset[str], Path] = {}

    def exhausted(share: float = 1.0) -> str:
        """Which budget ``share`` of it is spent ("" while neither is)."""
        if time.monotonic() - t0 > budget.max_seconds * share:
            return "time budget spent"
        if budget.max_candidates is not None and \
                len(steps) >= max(1, int(budget.max_candidates * share)):
            return "candidate budget spent"
        return ""

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
            ranking_baseline=base_rank if rank is not None else float("nan"),
            group_scores=group_scores,
            leave_one_out=(loo_cut or "complete") if ranking else "",
        )

    say("quantizing (all int8)")
    base_rank = float("nan")
    group_scores: list[tuple[tuple[str, ...], float]] = []
    loo_cut = ""
    base = trial((), "all-int8")
    path = [base]
    if base.passed:
        return result(base, [], "all-int8 passed")
    names = list(dict.fromkeys(candidates))  # de-duplicated, order kept
    if not names or budget.max_float_nodes < 1:
        return result(base, [], "no candidates to keep in float")
    max_bytes = base.size * (1.0 + budget.max_size_growth)

    def ranked(excluded: tuple[str, ...], note: str) -> float:
        """The cheap score; the artifact is kept for a later full evaluation."""
        t = time.monotonic()
        artifact = quantize(list(excluded))
        score = float(rank(artifact))
        if not math.isfinite(score):
            score = float("-inf")
        steps.append(Step(excluded, score, False, _size(artifact), time.monotonic() - t,
                          f"{note} (ranking score)"))
        return score

    def loo(excluded: tuple[str, ...], note: str) -> float:
        return trial(excluded, note).score if rank is None else ranked(excluded, note)

    # 2. leave-one-out sensitivity, in at most half the time budget (the greedy steps
    # need the rest). Look-alike nodes (``groups``: e.g. the same projection in every
    # transformer layer) are first kept float together; only the members of groups
    # that helped are then tried one by one, most helpful group first, so a cut
    # leaves the likeliest nodes ranked.
    base_rank = base.score if rank is None else ranked((), "all-int8")
    units = _units(names, groups)
    todo = sum(len(u) for u in units) + sum(len(u) > 1 for u in units)
    done = 0
    scores: dict[str, float] = {}
    for unit in units:
        if why := exhausted(0.5):
            loo_cut = f"{why} during leave-one-out"
            break
        done += 1
        say(f"leave-one-out {done}/{todo}")
        score = loo(unit, "leave-one-out" if len(unit) == 1 else "group leave-one-out")
        if len(unit) == 1:
            scores[unit[0]] = score
        else:
            group_scores.append((unit, score))
    # the most helpful group, in full: when it passes as a whole, only its members are
    # ranked alone (the greedy then looks for the fewest of them that pass, the group
    # being the fallback); on MiniLM ranking the members of every helpful group took
    # half of a 60 s budget, and the group of FFN output projections passed whole
    helpful_groups = sorted(((u, sc) for u, sc in group_scores if sc > base_rank),
                            key=lambda t: -t[1])  # stable: ties keep order
    whole: Step | None = None
    if helpful_groups and not loo_cut and not exhausted() and \
            len(helpful_groups[0][0]) <= budget.max_float_nodes:
        step = trial(helpful_groups[0][0], "group leave-one-out")
        if step.passed and step.size <= max_bytes:
            whole = step
            helpful_groups = helpful_groups[:1]
    for unit, _ in helpful_groups:
        if loo_cut:
            break
        for name in unit:
            if why := exhausted(0.5):
                loo_cut = f"{why} during leave-one-out"
                break
            done += 1
            say(f"leave-one-out {done}/{todo}")
            scores[name] = loo((name,), "leave-one-out")
    order = {n: i for i, n in enumerate(names)}
    ranking = sorted(scores.items(), key=lambda kv: (-kv[1], order[kv[0]]))

    def best_of(pool: list[Step]) -> Step:
        # highest score; ties: fewer float nodes, then first tried
        top = sorted(enumerate(pool), key=lambda t: (-t[1].score, len(t[1].excluded), t[0]))
        return top[0][1]

    if rank is not None and ranking and not exhausted():
        trial((ranking[0][0],), "leave-one-out")  # the best-ranked single, in full
    singles = [cache[frozenset((n,))] for n in scores if frozenset((n,)) in cache]
    passing = [s for s in singles if s.passed and s.size <= max_bytes]
    if passing:
        chosen = best_of(passing)
        path.append(replace(chosen, note="leave-one-out: passed"))
        return result(chosen, ranking, "passed with one node in float")

    # 3. greedy: only nodes (or look-alike groups, as one step) whose exclusion alone
    # improved on all-int8, most helpful first
    helpful = [n for n, s in ranking if s > base_rank]
    steps_in_order = sorted([(g, sc) for g, sc in group_scores if sc > base_rank]
                            + [((n,), sc) for n, sc in ranking if sc > base_rank],
                            key=lambda t: -t[1])  # stable: a group before its members
    if whole is not None:  # fewer of its members first; the whole group is the fallback
        steps_in_order = [(u, sc) for u, sc in steps_in_order
                          if len(u) == 1 and u[0] in whole.excluded]
    kept: list[str] = []
    current = base
    stopped = ""
    within = [base, *(s for s in singles if s.size <= max_bytes)]
    within += [cache[frozenset(u)] for u, _ in group_scores  # scored in full (no ``rank``)
               if frozenset(u) in cache and cache[frozenset(u)].size <= max_bytes]
    for unit, _ in steps_in_order:
        add = tuple(n for n in unit if n not in kept)
        if not add:
            continue
        if len(kept) + len(add) > budget.max_float_nodes:
            if len(add) > 1:
                continue  # a whole group does not fit: its members may, one by one
            stopped = "float-node budget spent"
            break
        if why := exhausted():
            stopped = why
            break
        say(f"keeping {len(kept) + len(add)} node(s) in float")
        step = replace(trial((*kept, *add), "greedy"), note="greedy")
        if step.size > max_bytes:
            path.append(replace(step, note="greedy: skipped, over size budget"))
            continue
        within.append(step)
        if step.passed:
            path.append(step)
            return result(step, ranking, f"passed with {len(step.excluded)} node(s) in float")
        if step.score <= current.score:
            # interactions: helped alone, not on top of the others
            path.append(replace(step, note="greedy: skipped, no gain"))
            continue
        path.append(step)
        kept.extend(add)
        current = step
    if whole is not None:
        path.append(replace(whole, note="group: passed"))
        return result(whole, ranking, f"passed with a group of {len(whole.excluded)} "
                      "look-alike node(s) in float")
    if not stopped:
        stopped = loo_cut or ("no more helpful nodes" if helpful
                              else "no node helped when kept in float")
    passed = [s for s in within if s.passed]  # e.g. a whole group kept float
    return result(best_of(passed or within), ranking, stopped)


def _units(names: list[str], groups: Sequence[Sequence[str]] | None) -> list[tuple[str, ...]]:
    """Leave-one-out units in candidate order: each group (restricted to the
    candidates) at its first member, every other candidate alone."""
    wanted = set(names)
    group_of: dict[str, tuple[str, ...]] = {}
    for g in groups or ():
        members = tuple(dict.fromkeys(n for n in g if n in wanted and n not in group_of))
        for n in members:
            group_of[n] = members
    units: list[tuple[str, ...]] = []
    seen: set[str] = set()
    for n in names:
        if n in seen:
            continue
        unit = group_of.get(n, (n,))
        seen.update(unit)
        units.append(unit)
    return units


def _size(path: Path) -> int:
    p = Path(path)
    if p.is_dir():
        return sum(f.stat().st_size for f in sorted(p.rglob("*")) if f.is_file())
    return p.stat().st_size
