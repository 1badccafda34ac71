"""Backends by name. A new backend is one module here plus one line below."""

from __future__ import annotations

from importlib import import_module

from edgepack.backends.base import Backend
from edgepack.errors import UsageError

_MODULES = {
    "onnx": "edgepack.backends.onnx",
    "tflite": "edgepack.backends.tflite",
    "coreml": "edgepack.backends.coreml",
    "tensorrt": "edgepack.backends.tensorrt",
}


def get_backend(name: str) -> Backend:
    if name not in _MODULES:
        raise UsageError(f"unknown backend {name!r}; available: {', '.join(sorted(_MODULES))}")
    try:
        module = import_module(_MODULES[name])
    except ModuleNotFoundError as e:
        if e.name == _MODULES[name]:
            raise UsageError(f"backend {name!r} is not part of this edgepack version") from None
        raise
    return module.BACKEND


def backend_names() -> list[str]:
    return sorted(_MODULES)
