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
    """A built-in backend by name, or a user's own as a dotted module path defining
    ``BACKEND`` (named in their profile YAML: ``backend: mypkg.mybackend``)."""
    module_name = _MODULES.get(name, name)
    try:
        module = import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name and name not in _MODULES:
            raise UsageError(f"unknown backend {name!r}; available: "
                             f"{', '.join(sorted(_MODULES))} or a module defining BACKEND") \
                from None
        if e.name == module_name:
            raise UsageError(f"backend {name!r} is not part of this edgepack version") from None
        raise
    if not hasattr(module, "BACKEND"):
        raise UsageError(f"backend module {module_name} defines no BACKEND")
    return module.BACKEND


def backend_names() -> list[str]:
    return sorted(_MODULES)
