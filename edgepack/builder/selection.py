"""How ``--precision auto`` chooses among the candidates it built for one target.

Size first: the profile's order lists precisions smallest first, and once one
passes, only the candidates that can be about as small are still built (int8
and int8-dynamic are both one byte per weight; fp16 two, which beats an int8 form
only when that one left much in float). The contenders
are the passing candidates within SIZE_SLACK of the smallest. Among them
the profile's order decides (full-integer int8 first: faster on devices and the
only form NPUs take), unless the profile says the build host runs the target's
runtime (``auto_host_latency``, e.g. onnx-cpu): then a contender measured
faster here than the order's pick wins. Static int8 of a transformer on x86
ONNX Runtime is such a case: dynamic int8 is as small and faster.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

from edgepack.errors import Status
from edgepack.harness.edgepack_harness import time_calls
from edgepack.runners.base import Arrays, Runner

# Bits per weight a precision stores: a candidate after a passing one is built
# only if the parameters at these bits could be about as small as that one.
NOMINAL_BITS = {"int8": 8, "int8-dynamic": 8, "fp16": 16, "fp32": 32}
SIZE_SLACK = 0.10  # "about as small": at most 10 % more bytes than the smallest
# Faster means at least 5 % faster, paired by round. Interleaved rounds on a shared
# host still move a ratio by several %: digits' two int8 forms measured 0.92-0.98 in
# different runs (so the choice between them can differ from build to build), MiniLM's
# 0.89-0.93. A 3 % margin flipped digits more often; no margin makes a timed choice
# reproducible, which is why README says to pin --precision for that.
LATENCY_MARGIN = 0.05
ROUNDS = 7
RACE_SECONDS = 3.0  # timed budget of one race, all candidates together


@dataclass
class Candidate:
    """One precision auto tried (or skipped) and what came of it."""

    precision: str
    status: str  # passed | deferred | failed | skipped | not built
    reason: str | None = None
    bytes: int | None = None
    host_p50_ms: float | None = None
    vs_preferred: float | None = None  # paired host-latency ratio to the order's pick

    @property
    def usable(self) -> bool:
        return self.status in (Status.PASSED, Status.DEFERRED) and self.bytes is not None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"precision": self.precision, "status": self.status,
                               "reason": self.reason, "bytes": self.bytes}
        if self.host_p50_ms is not None:
            out["host_p50_ms"] = round(self.host_p50_ms, 4)
            out["host_latency_vs_preferred"] = round(self.vs_preferred or 1.0, 3)
        return out


def not_worth_building(precision: str, tried: list[Candidate], parameters: int | None
                       ) -> str | None:
    """Why a candidate cannot come out about as small as the best that passed (None:
    build it).

    Its expected size is one weight per parameter at the precision's bits; the
    passing ones are measured (a form that left much in float is bigger than its
    bits say, and fp16 may then beat it). Without a parameter count: only forms
    storing as few bits per weight as the first pass are built.
    """
    usable = [c for c in tried if c.usable]
    if not usable:
        return None
    bits = NOMINAL_BITS[precision]
    best = min(usable, key=lambda c: c.bytes or 0)
    if not parameters:
        first = usable[0]
        if bits <= NOMINAL_BITS[first.precision]:
            return None
        return f"{bits} bits per weight; {first.precision} ({NOMINAL_BITS[first.precision]}) " \
               "already met the tolerances"
    expected = parameters * bits / 8
    if expected <= (best.bytes or 0) * (1 + SIZE_SLACK):
        return None
    return (f"~{_kb(expected)} at {bits} bits per parameter; {best.precision} met the "
            f"tolerances at {_kb(best.bytes or 0)}")


def _kb(n: float) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def contenders(tried: list[Candidate]) -> list[Candidate]:
    """The passing candidates within SIZE_SLACK of the smallest, in the order tried."""
    usable = [c for c in tried if c.usable]
    if not usable:
        return []
    limit = min(c.bytes or 0 for c in usable) * (1 + SIZE_SLACK)
    return [c for c in usable if (c.bytes or 0) <= limit]


def choose(tried: list[Candidate]) -> tuple[Candidate | None, str]:
    """The winner and why, from candidates whose host latency was measured (or not)."""
    near = contenders(tried)
    if not near:
        return None, "no candidate met the tolerances"
    preferred = near[0]
    smallest = min(near, key=lambda c: c.bytes or 0)
    why = f"{preferred.precision}: "
    why += ("the smallest artifact that met the tolerances" if preferred is smallest else
            f"first in the profile's order among those that met the tolerances within "
            f"{SIZE_SLACK:.0%} of the smallest ({smallest.precision}, "
            f"{(preferred.bytes or 0) / (smallest.bytes or 1) - 1:+.1%} bytes)")
    timed = [c for c in near[1:] if c.vs_preferred is not None]
    faster = [c for c in timed if (c.vs_preferred or 1.0) < 1 - LATENCY_MARGIN]
    if not faster:
        if timed:
            names = ", ".join(c.precision for c in timed)
            ratios = ", ".join(f"{c.vs_preferred:.2f}" for c in timed)
            why += f"; {names} not {LATENCY_MARGIN:.0%} faster here (paired p50 ratio {ratios})"
        return preferred, why
    best = min(faster, key=lambda c: c.vs_preferred or 1.0)
    extra = (best.bytes or 0) / (preferred.bytes or 1) - 1
    return best, (f"{best.precision}: {best.vs_preferred:.2f}x the host latency of "
                  f"{preferred.precision} (first in the profile's order) at {extra:+.1%} "
                  "bytes, both met the tolerances")


def race(runners: dict[str, Runner], feeds: Arrays, rounds: int = ROUNDS,
         seconds: float = RACE_SECONDS) -> dict[str, list[float]]:
    """Per-round p50 (ms) of each runner on one batch, the runners interleaved.

    Rounds alternate the runners' order so that a slow phase of a shared host
    lands on all of them; ratios should be taken round by round (``paired``).
    """
    names = list(runners)
    for name in names:  # warm-up: first calls allocate and pick kernels
        for _ in range(3):
            runners[name].run(feeds)
    t0 = time.perf_counter()
    for name in names:
        runners[name].run(feeds)
    per_call = max((time.perf_counter() - t0) / len(names), 1e-6)
    calls = int(min(200, max(5, seconds / (rounds * len(names) * per_call))))
    rows: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            run = runners[name].run
            # the bundle harness's own timing loop (no allocation, GC paused)
            times = time_calls(lambda run=run: run(feeds), calls, 0)
            rows[name].append(statistics.median(times) / 1e6)
    return rows


def paired(rows: dict[str, list[float]], name: str, base: str) -> float:
    """Median over rounds of name's p50 / base's p50 in the same round."""
    return statistics.median(a / b for a, b in zip(rows[name], rows[base], strict=True))
