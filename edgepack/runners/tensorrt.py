"""Runners for the tensorrt backend.

TensorRT engines run on the Jetson (the bundle's bench.py). On a build host:
``EngineRunner`` when TensorRT and a CUDA GPU are present (an engine built here
from the shipped ONNX, through the same harness code the device runs), otherwise
``ProxyRunner``: ONNX Runtime on the exact shipped ONNX, for proxy metrics.
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path
from typing import Any

from edgepack.runners.base import Arrays

HARNESS = Path(__file__).resolve().parent.parent / "harness" / "bench_tensorrt.py"


class ProxyRunner:
    """ONNX Runtime on the shipped ONNX (fp16: an fp16 copy), session made on first use."""

    def __init__(self, path: Path, fp16: bool, disabled_optimizers: tuple[str, ...]) -> None:
        self.path, self.fp16, self.disabled = Path(path), fp16, disabled_optimizers
        self.name = "onnxruntime-proxy"
        self._runner: Any = None

    def _load(self) -> Any:
        from edgepack.runners.onnxruntime import OnnxRuntimeRunner

        if not self.fp16:
            return OnnxRuntimeRunner(self.path, disabled_optimizers=self.disabled)
        from edgepack.backends.passes.onnx_fp16 import to_fp16

        with tempfile.TemporaryDirectory(prefix="edgepack-trt-fp16-") as tmp:
            half = to_fp16(self.path, Path(tmp) / "model.fp16.onnx")
            return OnnxRuntimeRunner(half)  # the session holds the model; the file can go

    def run(self, feeds: Arrays) -> Arrays:
        if self._runner is None:
            self._runner = self._load()
        return self._runner.run(feeds)


class EngineRunner:
    """A TensorRT engine loaded by the harness (``PythonEngine``)."""

    name = "tensorrt"

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def run(self, feeds: Arrays) -> Arrays:
        return self.engine.run(feeds)


def harness_module() -> Any:
    """The bundle's bench.py code, shared so host and device run engines the same way."""
    spec = importlib.util.spec_from_file_location("edgepack_bench_tensorrt", HARNESS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def host_tensorrt() -> tuple[Any, Any] | None:
    """(tensorrt module, harness module) when TensorRT and a CUDA GPU are usable here."""
    try:
        import tensorrt as trt  # noqa: F401 - only on a user's GPU workstation

        bench = harness_module()
        if bench.Cuda().device_count() < 1:
            return None
        return trt, bench
    except Exception:
        return None
