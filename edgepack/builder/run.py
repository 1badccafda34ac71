"""Run a build: load the source once, then convert, validate and bundle every planned
(target, precision) unit, each in the isolated worker. One failing bundle never stops
the others; the output folder is committed bundle by bundle (bundle.folder)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from functools import partial

from edgepack.backends import check_profile
from edgepack.builder import plan as pl
from edgepack.builder.auto import run_auto
from edgepack.builder.judge import Context, finish, judge
from edgepack.builder.summary import BuildSummary, write_summary
from edgepack.builder.worker import JobOutcome, JobSpec, Worker, execute, in_process
from edgepack.bundle import folder as bd
from edgepack.compare import check_tolerance_keys, output_tasks, sample_size_notes
from edgepack.config import BuildConfig
from edgepack.errors import EdgepackError, InputError, one_line
from edgepack.profiles import Profile, resolve_targets
from edgepack.runners.base import run_samples
from edgepack.sources import load_source

Progress = Callable[[str], None]


def build(cfg: BuildConfig, progress: Progress | None = None) -> BuildSummary:
    """Convert, validate and bundle the model for every (target, precision)."""
    say = progress or (lambda _m: None)
    check_tolerance_keys(cfg.tolerances)
    profiles = resolve_targets(cfg.targets)
    plan = pl.plan(cfg, profiles)
    for profile, precision in plan:  # bad options -> usage error before any work
        for p in pl.candidates(profile, precision):
            check_profile(profile, p)
    say("loading the source model")
    source = load_source(cfg.model, inputs=cfg.inputs, outputs=cfg.outputs)
    sig = source.signature
    model_name = cfg.name or source.name
    evals = pl.eval_set(cfg, sig)
    # auto tries int8 only when calibration data is given; explicit int8 requires it
    calib = pl.calib_set(cfg, sig, needed=any(p == "int8" for _, p in plan))
    bd.prepare_out(cfg.out)
    say("reference outputs from the source model")
    reference_runner = source.runner()
    try:
        eval_ref = run_samples(reference_runner, evals.inputs, sig.batch)
        calib_ref = run_samples(reference_runner, calib.inputs, sig.batch) if calib else None
    except EdgepackError:
        raise
    except Exception as e:
        raise InputError(f"the source model failed on the sample inputs: {one_line(e)}") \
            from None
    # what each output is (given or inferred): bad tasks and unbindable labels are usage
    # errors here, before any conversion
    tasks = output_tasks(eval_ref, cfg.task, evals.labels, cfg.labels_for)
    say("outputs: " + ", ".join(f"{n} {t['task']}" + (" (inferred)" if t["inferred"] else "")
                                for n, t in tasks.items()))
    notes = sorted({note for profile, precision in plan
                    for p in pl.candidates(profile, precision)
                    for note in sample_size_notes(pl.tolerances(cfg, profile, p),
                                                  evals.count, tasks, bool(evals.labels))})
    for note in notes:
        say(f"note: {note}")
    golden = pl.golden(cfg, evals, eval_ref, sig.batch)
    work_root = bd.staging(cfg.out, "work")
    worker = None if in_process() else Worker(work_root)
    local: tuple[dict, dict] = ({}, {})  # sources, cache for in-process runs

    def attempt(profile: Profile, precision: str, name: str) -> tuple[JobSpec, JobOutcome]:
        spec = JobSpec(
            model=cfg.model, inputs=list(cfg.inputs), outputs=cfg.outputs,
            profile=profile, precision=precision, workdir=work_root / name,
            cache_root=work_root, tolerances=pl.tolerances(cfg, profile, precision),
            int8=cfg.int8, task=cfg.task, eval_inputs=evals.inputs,
            calib_inputs=calib.inputs if calib and precision == "int8" else None,
            calib_reference=calib_ref if precision == "int8" else None,
            calib_origin=calib.origin if calib else "",
        )
        spec.workdir.mkdir(parents=True)
        report = partial(_tagged, say, f"{profile.name}/{precision}")
        if worker is None:
            return spec, execute(spec, *local, report)
        return spec, worker.run(spec, cfg.timeout, report)

    ctx = Context(cfg, source, evals, eval_ref, golden, say, tasks)
    results = []
    try:
        for profile, precision in plan:
            started = time.monotonic()
            if precision == "auto":
                results.append(run_auto(ctx, profile, model_name, attempt, calib is not None,
                                     started))
                continue
            name = f"{model_name}-{profile.name}-{precision}"
            spec, outcome = attempt(profile, precision, name)
            result = judge(ctx, spec, outcome)
            results.append(finish(ctx, spec, outcome, result, name, started))
    finally:
        if worker is not None:
            worker.stop()
        shutil.rmtree(work_root, ignore_errors=True)
        bd.finish_out(cfg.out)
    summary = BuildSummary(model=model_name, bundles=results, out=cfg.out, notes=notes)
    write_summary(summary)
    return summary


def _tagged(say: Progress, tag: str, msg: str) -> None:
    say(f"{tag}: {msg}")
