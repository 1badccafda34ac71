"""How the int8 (and fp16) searches judge a candidate: on calibration data only, against
tolerances stricter than the bundle's (the reported numbers are never tuned to the test)."""

from __future__ import annotations

from collections.abc import Callable

from edgepack.compare import TOLERANCE_KEYS, TaskSpec, compare
from edgepack.harness.edgepack_metrics import PROPORTIONS
from edgepack.runners.base import Arrays

# Scores on the calibration set overestimate held-out ones (the search tunes on
# them), so the search aims past the tolerance: lower bounds in [0, 1] close
# half the remaining gap to 1, upper bounds are halved.
HEADROOM = 0.5


def search_tolerances(tolerances: dict[str, float], samples: int = 0) -> dict[str, float]:
    """The stricter tolerances the int8 search must meet on calibration data.

    A proportion (agreement rate) on ``samples`` calibration samples moves in steps of
    1/samples: its target is also at least one step past the bound, so a pass is never
    decided by a single sample.
    """
    out = {}
    for key, value in tolerances.items():
        if TOLERANCE_KEYS[key] == "max":
            out[key] = value * (1 - HEADROOM)
        elif 0.0 <= value <= 1.0:
            out[key] = value + (1.0 - value) * HEADROOM
            if key in PROPORTIONS and samples > 0:
                out[key] = min(1.0, max(out[key], value + 1.0 / samples))
        else:
            out[key] = value
    return {k: round(v, 6) for k, v in out.items()}


def calibration_judge(reference: Arrays, tolerances: dict[str, float], task: TaskSpec = None
                      ) -> Callable[[Arrays], tuple[bool, float]]:
    """accept(candidate outputs on calib) -> (meets tolerances, score): calibration data only.

    The score is the worst output's mean cosine: steadier than top-1 agreement
    on a few hundred samples. A cosine compare() could not compute (None: NaN
    outputs) is the worst score there is. A candidate run on the first n calibration
    samples only is compared with the first n reference outputs.
    """
    def accept(candidate: Arrays) -> tuple[bool, float]:
        n = min(len(v) for v in candidate.values())
        result = compare({k: v[:n] for k, v in reference.items()}, candidate, tolerances,
                         task=task)
        cosines = [m.get("cosine_mean", 0.0) for m in result.metrics.values()]
        cosines = [float("-inf") if c is None else float(c) for c in cosines]
        return result.passed, min(cosines) if cosines else 0.0

    return accept
