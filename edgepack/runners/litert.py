"""Runner for .tflite artifacts on the LiteRT interpreter, in a child process.

The interpreter lives in ``edgepack.runners.litert_worker`` (one long-lived
child per runner): a model that aborts the interpreter (SIGABRT, seen with some
int16-activation models) kills only the child, and the runner raises
``InterpreterCrashed`` naming the signal, so the build marks that bundle failed
and carries on.

Integer I/O (full-int8 models for MCUs/NPUs) is handled here: float feeds are
quantized with each input's scale and zero point, integer outputs dequantized,
so validation always compares real values. ``LayoutMappedRunner`` adds the
source <-> artifact layout mapping (NCHW feeds -> NHWC model and back).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.errors import ConversionError, InputError, ValidationFailed
from edgepack.runners.litert_worker import HEADER, pack_arrays, unpack_arrays

Arrays = dict[str, np.ndarray]

# One thread: results do not depend on the host's core count (see onnxruntime.py).
DEFAULT_THREADS = 1
CALL_TIMEOUT_S = 900.0
_INTEGER = ("int8", "uint8", "int16")


class InterpreterCrashed(ValidationFailed):
    """The LiteRT interpreter process died (signal or exit) while loading or running."""


def quantize(x: np.ndarray, dtype: str, scale: float, zero_point: int) -> np.ndarray:
    """Real values -> the integer tensor a quantized input takes (round, then clip)."""
    info = np.iinfo(dtype)
    q = np.round(np.asarray(x, dtype=np.float64) / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return ((np.asarray(q, dtype=np.float32) - np.float32(zero_point)) *
            np.float32(scale)).astype(np.float32)


def _signal_name(returncode: int) -> str:
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


class LiteRTRunner:
    """Runs one batch of a .tflite model in a LiteRT worker process.

    ``names`` maps this runner's tensor names (the source's) to the model's
    signature names; without it the model's own names are used.
    """

    name = "litert"

    def __init__(self, path: str | Path, names: Mapping[str, str] | None = None,
                 threads: int | None = None, timeout: float = CALL_TIMEOUT_S) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"no such file: {self.path}")
        self.threads = threads or DEFAULT_THREADS
        self.timeout = timeout
        self._names = dict(names or {})
        self._proc: subprocess.Popen | None = None
        self._stderr: Any = None
        self._info: dict[str, Any] | None = None
        self._finalizer: Any = None

    # ------------------------------------------------------------ process

    def _start(self) -> None:
        self._stderr = tempfile.TemporaryFile()
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore"}
        # EDGEPACK_LITERT_WORKER names another worker module (tests use a crashing stand-in)
        module = os.environ.get("EDGEPACK_LITERT_WORKER", "edgepack.runners.litert_worker")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", module, str(self.path),
             str(self.threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env,
        )
        self._finalizer = weakref.finalize(self, _stop, self._proc, self._stderr)
        kind, payload = self._receive("loading")
        info = json.loads(payload)
        if "error" in info:
            self.close()
            raise ConversionError(f"LiteRT cannot load {self.path.name}: {info['error']}")
        self._info = info

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._proc = None
        self._info = None

    def _crashed(self, when: str) -> InterpreterCrashed:
        proc = self._proc
        assert proc is not None
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        how = _signal_name(proc.returncode)
        last = ""
        if self._stderr is not None:
            self._stderr.seek(0)
            lines = [ln.strip() for ln in self._stderr.read().decode(errors="replace")
                     .splitlines() if ln.strip()]
            last = f" ({lines[-1][:200]})" if lines else ""
        self.close()
        return InterpreterCrashed(f"interpreter crashed: {how} while {when} "
                                  f"{self.path.name}{last}")

    def _receive(self, when: str) -> tuple[bytes, bytes]:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        head = self._read(fd, HEADER.size, when)
        kind, size = HEADER.unpack(head)
        return kind, self._read(fd, size, when)

    def _read(self, fd: int, n: int, when: str) -> bytes:
        parts, left = [], n
        while left:
            ready, _, _ = select.select([fd], [], [], self.timeout)
            if not ready:
                assert self._proc is not None
                self._proc.kill()
                raise ConversionError(f"LiteRT timed out ({self.timeout:g} s) while {when} "
                                      f"{self.path.name}")
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                raise self._crashed(when)
            parts.append(chunk)
            left -= len(chunk)
        return b"".join(parts)

    # ------------------------------------------------------------ model

    def describe(self) -> dict[str, Any]:
        """The model's I/O as the interpreter sees it: names, shapes, dtypes, quantization."""
        if self._info is None:
            self._start()
        assert self._info is not None
        return self._info

    def run(self, feeds: Arrays) -> Arrays:
        info = self.describe()
        model_feeds = {}
        for d in info["inputs"]:
            ours = next((k for k, v in self._names.items() if v == d["name"]), d["name"])
            if ours not in feeds:
                raise InputError(f"missing input {ours!r} for {self.path.name}")
            x = np.asarray(feeds[ours])
            if d["dtype"] in _INTEGER and d["scale"] > 0 and np.issubdtype(x.dtype, np.floating):
                x = quantize(x, d["dtype"], d["scale"], d["zero_point"])
            model_feeds[d["name"]] = np.ascontiguousarray(x, dtype=d["dtype"])
        assert self._proc is not None and self._proc.stdin is not None
        try:
            payload = pack_arrays(model_feeds)
            self._proc.stdin.write(HEADER.pack(b"N", len(payload)))
            self._proc.stdin.write(payload)
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._crashed("running") from None
        kind, payload = self._receive("running")
        if kind == b"J":
            raise ConversionError(f"LiteRT failed to run {self.path.name}: "
                                  f"{json.loads(payload)['error']}")
        raw = unpack_arrays(payload)
        back = {v: k for k, v in self._names.items()}
        out = {}
        for d in info["outputs"]:
            y = raw[d["name"]]
            if d["dtype"] in _INTEGER and d["scale"] > 0:
                y = dequantize(y, d["scale"], d["zero_point"])
            out[back.get(d["name"], d["name"])] = y
        return out


def _stop(proc: subprocess.Popen, stderr: Any) -> None:
    try:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait()
    finally:
        if proc.stdout is not None:
            proc.stdout.close()
        if stderr is not None:
            stderr.close()


class LayoutMappedRunner:
    """Takes feeds in the source's layout, runs the artifact in its own, maps outputs back.

    ``inputs`` / ``outputs``: tensor name -> permutation from the source layout to
    the artifact's (e.g. NCHW -> NHWC is (0, 2, 3, 1)); names not listed pass as is.
    """

    def __init__(self, inner: Any, inputs: Mapping[str, tuple[int, ...]],
                 outputs: Mapping[str, tuple[int, ...]]) -> None:
        self.inner = inner
        self.name = inner.name
        self.inputs = dict(inputs)
        self.outputs = {k: tuple(int(i) for i in np.argsort(p)) for k, p in outputs.items()}

    def run(self, feeds: Arrays) -> Arrays:
        mapped = {k: np.transpose(v, self.inputs[k]) if k in self.inputs else v
                  for k, v in feeds.items()}
        out = self.inner.run(mapped)
        return {k: np.ascontiguousarray(np.transpose(v, self.outputs[k]))
                if k in self.outputs else v for k, v in out.items()}
