"""``--precision auto``: build the profile's precisions smallest first while a smaller
artifact may still come, and keep the best that passes (build.selection says which)."""

from __future__ import annotations

import statistics
from collections.abc import Callable

from edgepack.backends import get_backend
from edgepack.builder.judge import Context, finish, judge
from edgepack.builder.selection import (
    Candidate,
    choose,
    contenders,
    not_worth_building,
    paired,
    race,
)
from edgepack.builder.summary import BundleResult
from edgepack.errors import Status, one_line
from edgepack.profiles import Profile


def run_auto(ctx: Context, profile: Profile, model_name: str, attempt: Callable,
          have_calib: bool, started: float) -> BundleResult:
    """--precision auto: build the profile's precisions in its order (smallest first)
    while a smaller artifact may still come, keep the best that passes or is deferred
    with passing proxy metrics (edgepack.builder.selection says which is best)."""
    order = list(profile.auto_order or reversed(profile.precisions))
    tried: list[Candidate] = []
    built: dict[str, tuple] = {}
    for precision in order:
        too_big = not_worth_building(precision, tried, ctx.source.parameter_count())
        if too_big:
            tried.append(Candidate(precision, "not built", too_big))
            continue
        if precision == "int8" and not have_calib:
            tried.append(Candidate(precision, "skipped", "no calibration data (--calib)"))
            continue
        name = f"{model_name}-{profile.name}-{precision}"
        spec, outcome = attempt(profile, precision, f"auto-{name}")
        result = judge(ctx, spec, outcome)
        size = None
        if outcome.artifact is not None:
            size = sum(p.stat().st_size for p in outcome.artifact.folder.rglob("*")
                       if p.is_file())
        tried.append(Candidate(precision, result.status, result.reason, size))
        built[precision] = (spec, outcome, result, name)
    if not built:
        return BundleResult(name=f"{model_name}-{profile.name}-auto", target=profile.name,
                            precision="auto", status=Status.FAILED,
                            reason="no precision could be tried", conversion_failed=True)
    near = contenders(tried)
    if profile.auto_host_latency and len(near) > 1:
        time_on_host(ctx, profile, near, built)
    winner, why = choose(tried)
    # with no winner the bundle is the last candidate built, failed, with its reasons
    spec, outcome, result, name = built[winner.precision if winner else next(reversed(built))]
    selection = {"mode": "auto", "order": order, "candidates": [c.to_dict() for c in tried],
                 "chosen": winner.precision if winner else None, "why": why}
    return finish(ctx, spec, outcome, result, name, started, selection)


def time_on_host(ctx: Context, profile: Profile, near: list[Candidate],
                  built: dict[str, tuple]) -> None:
    """Host latency of the near-smallest candidates, interleaved; fills their
    host_p50_ms and vs_preferred. Only for profiles whose runtime is the host's."""
    backend = get_backend(profile.backend)
    feeds = {k: v[: ctx.source.signature.batch] for k, v in ctx.evals.inputs.items()}
    ctx.say(f"{profile.name}/auto: {', '.join(c.precision for c in near)} are about the "
            "same size; timing them on this host")
    try:
        runners = {c.precision: backend.runner(built[c.precision][1].artifact) for c in near}
        rows = race(runners, feeds)
    except Exception as e:  # they ran in validation; if not here, the order decides
        ctx.say(f"{profile.name}/auto: timing failed ({one_line(e)}); the profile's "
                "order decides")
        return
    for c in near:
        c.host_p50_ms = statistics.median(rows[c.precision])
        c.vs_preferred = paired(rows, c.precision, near[0].precision)
