"""Runners for the tensorrt backend.

TensorRT engines run on the Jetson (the bundle's bench.py). On a build host:
``EngineRunner`` when TensorRT and a CUDA GPU are present (an engine built here
from the shipped ONNX, through the same harness code the device runs), otherwise
``ProxyRunner``: ONNX Runtime on the exact shipped ONNX, for proxy metrics.
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgepack.runners.base import Arrays

ENGINE_MODULE = Path(__file__).resolve().parent.parent / "harness" / "tensorrt_engine.py"


class ProxyRunner:
    """ONNX Runtime on the shipped ONNX, session made on first use.

    ``numerics(src, dst) -> dst`` first writes a copy with the engine's numerics (fp16
    engines: an fp16 copy); the backend hands it in, runners convert nothing themselves.
    """

    def __init__(self, path: Path, disabled_optimizers: tuple[str, ...],
                 numerics: Callable[[Path, Path], Path] | None = None) -> None:
        self.path, self.disabled, self.numerics = Path(path), disabled_optimizers, numerics
        self.name = "onnxruntime-proxy"
        self._runner: Any = None

    def _load(self) -> Any:
        from edgepack.runners.onnxruntime import OnnxRuntimeRunner

        if self.numerics is None:
            return OnnxRuntimeRunner(self.path, disabled_optimizers=self.disabled)
        with tempfile.TemporaryDirectory(prefix="edgepack-trt-proxy-") as tmp:
            copy = self.numerics(self.path, Path(tmp) / "model.proxy.onnx")
            return OnnxRuntimeRunner(copy)  # the session holds the model; the file can go

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
    """The bundle's tensorrt_engine.py (what its bench.py builds and runs engines with),
    shared so host and device build and run engines the same way."""
    spec = importlib.util.spec_from_file_location("edgepack_tensorrt_engine", ENGINE_MODULE)
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
