"""Backends by name. A new backend is one module here plus one line below."""

from __future__ import annotations

import re
from importlib import import_module
from typing import Any

from edgepack.backends.base import Backend
from edgepack.errors import UsageError

_MODULES = {
    "onnx": "edgepack.backends.onnx",
    "tflite": "edgepack.backends.tflite",
    "coreml": "edgepack.backends.coreml",
    "tensorrt": "edgepack.backends.tensorrt",
}

_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def get_backend(name: str) -> Backend:
    """A built-in backend by name, or a user's own as a dotted module path defining
    ``BACKEND`` (named in their profile YAML: ``backend: mypkg.mybackend``)."""
    module_name = _MODULES.get(name, name)
    if not _DOTTED.match(module_name):  # "", ".rel", "a b": import_module would not say why
        raise UsageError(f"unknown backend {name!r}; available: {', '.join(sorted(_MODULES))} "
                         "or a module defining BACKEND")
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
    backend = getattr(module, "BACKEND", None)
    if not isinstance(backend, Backend):
        raise UsageError(f"backend module {module_name} defines no BACKEND, an instance of "
                         "edgepack.backends.base.Backend")
    return backend


def backend_names() -> list[str]:
    return sorted(_MODULES)


def check_profile(profile: Any, precision: str) -> None:
    """Usage errors in a profile's options or precision, raised before any work starts
    (the backend's ``check``): a bad option is a usage error (exit 2), not a failed
    conversion."""
    get_backend(profile.backend).check(profile, precision)
