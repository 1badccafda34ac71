"""Each bundle's conversion and host validation run in a worker process.

Converters and interpreters crash (SIGABRT, SIGSEGV) or hang. The build
process only orchestrates: it sends one job at a time to a spawned worker and
waits with a timeout. A worker that dies or overruns is killed and replaced,
and that bundle fails with the signal or the timeout and the last lines the
tool printed; the other bundles go on. The worker keeps its loaded source and
cached fp32 graph between jobs, so isolation costs one interpreter start per
build, not one per bundle.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepack.backends.base import Artifact
from edgepack.errors import one_line
from edgepack.profiles import Profile
from edgepack.runners.base import Arrays
from edgepack.signature import TensorSpec

DEFAULT_TIMEOUT = 1800.0  # seconds per bundle: conversion + int8 search + validation


@dataclass
class JobSpec:
    """Everything a worker needs for one bundle; picklable."""

    model: str
    inputs: list[TensorSpec]
    outputs: list[str] | None
    profile: Profile
    precision: str
    workdir: Path
    cache_root: Path
    tolerances: dict[str, float]
    int8: dict[str, Any]
    task: str | dict[str, str] | None
    eval_inputs: Arrays
    calib_inputs: Arrays | None = None
    calib_reference: Arrays | None = None
    calib_origin: str = ""


@dataclass
class JobOutcome:
    artifact: Artifact | None = None
    candidate: Arrays | None = None  # host runner outputs on the evaluation inputs
    deferred: str | None = None  # reason the real runtime cannot run here
    proxy_name: str = ""
    conversion_error: str | None = None
    run_error: str | None = None
    nonfinite_at: str | None = None  # the first ONNX node whose output is NaN/Inf
    steps: dict[str, float] = field(default_factory=dict)  # seconds per step


def execute(spec: JobSpec, sources: dict, cache: dict, progress: Callable[[str], None],
            built: Callable[[Artifact], None] = lambda _a: None) -> JobOutcome:
    """Convert and run one job (in whatever process calls it).

    ``built`` hears of the artifact before validation starts, so that a crash
    while running it is blamed on the artifact (a failed validation), not on
    the conversion.
    """
    from edgepack.backends import get_backend
    from edgepack.backends.base import Deferred, Job
    from edgepack.data import SampleSet
    from edgepack.runners.base import run_samples
    from edgepack.sources import load_source

    outcome = JobOutcome()
    key = (spec.model, tuple(spec.inputs), tuple(spec.outputs or ()))
    if key not in sources:
        sources[key] = load_source(spec.model, inputs=spec.inputs, outputs=spec.outputs)
    source = sources[key]
    cache.setdefault("root", spec.cache_root)
    calib = (SampleSet(spec.calib_inputs, None, spec.calib_origin)
             if spec.calib_inputs is not None else None)
    job = Job(source=source, profile=spec.profile, precision=spec.precision,
              workdir=spec.workdir, tolerances=spec.tolerances, calib=calib,
              calib_reference=spec.calib_reference, int8=spec.int8, task=spec.task,
              cache=cache, progress=progress)
    backend = get_backend(spec.profile.backend)
    started = time.monotonic()
    try:
        outcome.artifact = backend.build(job)
    except Exception as e:  # one bundle's failure never stops the others
        outcome.conversion_error = one_line(e)
        return outcome
    finally:
        outcome.steps["convert"] = round(time.monotonic() - started, 2)
    built(outcome.artifact)
    progress("validating against the source outputs")
    started = time.monotonic()
    batch = source.signature.batch
    try:
        runner = backend.runner(outcome.artifact)
        outcome.candidate = run_samples(runner, spec.eval_inputs, batch)
    except Deferred as d:
        outcome.deferred, outcome.proxy_name = d.reason, d.proxy_name
        if d.proxy is not None:
            try:
                outcome.candidate = run_samples(d.proxy, spec.eval_inputs, batch)
            except Exception as e:
                outcome.run_error = f"the proxy failed to run: {one_line(e)}"
    except Exception as e:
        outcome.run_error = f"the artifact failed to run: {one_line(e)}"
    if outcome.candidate is not None:
        outcome.nonfinite_at = _nonfinite_origin(outcome.artifact, outcome.candidate,
                                                 spec.eval_inputs, batch)
    outcome.steps["validate"] = round(time.monotonic() - started, 2)
    return outcome


def _nonfinite_origin(artifact: Artifact, candidate: Arrays, inputs: Arrays,
                      batch: int) -> str | None:
    """For an ONNX artifact whose outputs hold NaN/Inf: the first node producing them, on
    the first batch that has them (other formats: None)."""
    import numpy as np

    if artifact.main.suffix != ".onnx":
        return None
    bad = np.zeros(len(next(iter(inputs.values()))), dtype=bool)
    for value in candidate.values():
        value = np.asarray(value)
        if np.issubdtype(value.dtype, np.floating) and value.ndim:
            bad |= ~np.isfinite(value.reshape(len(value), -1)).all(axis=1)
    if not bad.any():
        return None
    from edgepack.runners.onnxruntime import first_nonfinite_node

    start = int(np.argmax(bad)) // batch * batch
    feeds = {k: v[start:start + batch] for k, v in inputs.items()}
    disabled = artifact.runtime_options.get("disabled_optimizers", ())
    return first_nonfinite_node(artifact.main, feeds, disabled)


def _die_with_parent() -> None:
    """On Linux, have the kernel kill the worker if the build process is killed."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _worker_main(conn: Any, log_path: str) -> None:
    """Worker loop: jobs in, progress and outcomes out. Its own output goes to a log."""
    _die_with_parent()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    import warnings

    warnings.filterwarnings("ignore")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    sources: dict = {}
    cache: dict = {}
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        outcome = execute(msg, sources, cache, lambda m: conn.send(("progress", m)),
                          lambda a: conn.send(("built", a)))
        conn.send(("done", outcome))


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    tail = [ln.strip() for ln in text if ln.strip()][-lines:]
    return " | ".join(tail)[-400:]


class Worker:
    """One spawned worker process, restarted after a crash or a timeout."""

    def __init__(self, log_dir: Path) -> None:
        self._ctx = mp.get_context("spawn")
        self._log_dir = log_dir
        self._proc: Any = None
        self._conn: Any = None
        self._count = 0

    def _start(self) -> None:
        self._count += 1
        self._log = self._log_dir / f"worker-{self._count}.log"
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=_worker_main, args=(child, str(self._log)),
                                       daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent

    def run(self, spec: JobSpec, timeout: float, progress: Callable[[str], None]
            ) -> JobOutcome:
        if self._proc is None or not self._proc.is_alive():
            self._start()
        log_start = self._log.stat().st_size if self._log.exists() else 0
        deadline = time.monotonic() + timeout
        artifact = None
        try:
            self._conn.send(spec)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.stop(kill=True)
                    return self._failed(artifact, f"timed out after {timeout:.0f} s "
                                        "(raise it with --timeout)")
                if self._conn.poll(min(left, 0.5)):
                    kind, payload = self._conn.recv()
                    if kind == "progress":
                        progress(payload)
                    elif kind == "built":
                        artifact = payload
                    else:
                        return payload
                elif not self._proc.is_alive():
                    raise EOFError
        except (EOFError, BrokenPipeError, ConnectionResetError):
            self._proc.join(5)
            code = self._proc.exitcode
            why = _signal_name(code) if code is not None and code < 0 else f"exit {code}"
            tail = self._tail_since(log_start)
            self._proc = None
            return self._failed(artifact, f"crashed ({why})"
                                + (f"; last output: {tail}" if tail else ""))

    @staticmethod
    def _failed(artifact: Artifact | None, why: str) -> JobOutcome:
        """Before the artifact existed, the conversion failed; after, running it did."""
        if artifact is None:
            return JobOutcome(conversion_error=f"the conversion process {why}")
        return JobOutcome(artifact=artifact, run_error=f"running the artifact {why}")

    def _tail_since(self, offset: int) -> str:
        try:
            with open(self._log, "rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        tmp = self._log.with_suffix(".tail")
        tmp.write_text(text)
        return _tail(tmp)

    def stop(self, kill: bool = False) -> None:
        if self._proc is None:
            return
        if not kill and self._proc.is_alive():
            try:
                self._conn.send(None)
                self._proc.join(10)
            except (BrokenPipeError, OSError):
                pass
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        self._proc = None


def in_process() -> bool:
    """EDGEPACK_IN_PROCESS=1 runs jobs in the build process (debugging with pdb)."""
    return os.environ.get("EDGEPACK_IN_PROCESS") == "1" or sys.platform == "emscripten"
