"""Plan a build: the (target, precision) units, their tolerances, and the sample sets."""

from __future__ import annotations

from edgepack.config import BuildConfig
from edgepack.data import SampleSet, load_npz, seeded_inputs
from edgepack.errors import UsageError
from edgepack.profiles import PRECISIONS, Profile
from edgepack.runners.base import Arrays
from edgepack.signature import Signature


def plan(cfg: BuildConfig, profiles: list[Profile]) -> list[tuple[Profile, str]]:
    plan = []
    for profile in profiles:
        wanted = cfg.precisions or [profile.default_precision]
        if "all" in wanted:
            wanted = list(profile.precisions)
        for precision in wanted:
            if precision == "auto":
                plan.append((profile, precision))
                continue
            if precision not in PRECISIONS:
                raise UsageError(f"unknown precision {precision!r}; use one of "
                                 f"{', '.join(PRECISIONS)}, all or auto")
            if precision not in profile.precisions:
                raise UsageError(f"target {profile.name} does not support {precision}; it "
                                 f"supports {', '.join(profile.precisions)}")
            plan.append((profile, precision))
    return plan


def candidates(profile: Profile, precision: str) -> list[str]:
    """The precisions a plan entry may build: ``auto`` tries the profile's order."""
    if precision != "auto":
        return [precision]
    return list(profile.auto_order or reversed(profile.precisions))


def tolerances(cfg: BuildConfig, profile: Profile, precision: str) -> dict[str, float]:
    return {**profile.tolerances_for(precision), **cfg.tolerances}


def eval_set(cfg: BuildConfig, sig: Signature) -> SampleSet:
    if cfg.eval is not None:
        return load_npz(cfg.eval, sig, "evaluation")
    return seeded_inputs(sig, cfg.samples, cfg.seed)


def calib_set(cfg: BuildConfig, sig: Signature, needed: bool) -> SampleSet | None:
    if cfg.calib is not None:
        return load_npz(cfg.calib, sig, "calibration")
    if not needed:
        return None
    if not cfg.allow_random_calibration:
        raise UsageError(
            "static int8 needs real calibration data: --calib data.npz (keyed by input name); "
            "random calibration gives misleading int8 accuracy, pass "
            "--allow-random-calibration to accept that"
        )
    return seeded_inputs(sig, max(cfg.samples, 64), cfg.seed + 1)


def golden(cfg: BuildConfig, evals: SampleSet, reference: Arrays, batch: int
            ) -> tuple[Arrays, Arrays]:
    k = min(cfg.golden_samples, evals.count)
    k = max(batch, k - k % batch)
    return ({n: v[:k] for n, v in evals.inputs.items()},
            {n: v[:k] for n, v in reference.items()})
