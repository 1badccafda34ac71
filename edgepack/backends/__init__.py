"""Backends by name. A new backend is one module here plus one line below."""

from __future__ import annotations

from importlib import import_module

from edgepack.backends.base import Backend
from edgepack.errors import UsageError

_MODULES = {
    "onnx": "edgepack.backends.onnx",
}


def get_backend(name: str) -> Backend:
    if name not in _MODULES:
        raise UsageError(f"unknown backend {name!r}; available: {', '.join(sorted(_MODULES))}")
    return import_module(_MODULES[name]).BACKEND


def backend_names() -> list[str]:
    return sorted(_MODULES)
