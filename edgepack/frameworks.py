"""Optional heavy frameworks, imported lazily, and one way to keep their chatter quiet.

torch, tensorflow and coremltools are imported only inside the converter, quantizer
or runner that needs them (never at package import); a missing one is a one-line
error naming the extra to install. Passes never print; converters do, and
``--json`` owns stdout, so every noisy call runs inside ``quiet()``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any

from edgepack.errors import MissingExtraError

# Loggers the converters and quantizers log through ("" is the root logger, which
# ONNX Runtime's quantization tools log to).
_QUIET_LOGGERS = ("", "tensorflow", "absl", "jax", "torch", "torch.onnx", "torch.export",
                  "torch._dynamo", "torch._export", "torch.fx", "torchao", "litert_torch",
                  "ai_edge_quantizer", "h5py", "keras", "onnxscript", "onnx_ir")


@contextlib.contextmanager
def quiet(tail: list[str] | None = None) -> Iterator[None]:
    """Silence a tool: warnings, log records below ERROR, Python-level prints, and
    file descriptors 1 and 2 (C++ logs, progress bars, graphs printed on failure).

    What it printed is kept: on return ``tail`` (if given) holds its last 20 non-empty
    lines, for error messages.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    loggers = [logging.getLogger(n) for n in _QUIET_LOGGERS]
    levels = [lg.level for lg in loggers]
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved: list[tuple[int, int]] = []
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings(), \
            open(os.dup(sink.fileno()), "w", buffering=1, errors="replace") as python_out:
        # Python-level writers (sys.stdout replaced, e.g. under pytest) land in the same
        # file, line by line, so the tail keeps the order things were printed in
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        for fd in (1, 2):
            try:
                saved.append((fd, os.dup(fd)))
                os.dup2(sink.fileno(), fd)
            except OSError:  # no such descriptor (embedded interpreters)
                continue
        try:
            with contextlib.redirect_stdout(python_out), contextlib.redirect_stderr(python_out):
                yield
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)
            if tail is not None:
                python_out.flush()
                sink.seek(0)
                lines = [ln.strip() for ln in sink.read().decode(errors="replace").splitlines()]
                tail[:] = [ln for ln in lines if ln][-20:]


def import_torch() -> Any:
    try:
        import torch
    except ImportError as e:
        raise MissingExtraError("torch", "torch", "needed to load PyTorch models") from e
    return torch


def import_tensorflow() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        with quiet():
            import tensorflow as tf
    except ImportError as e:
        raise MissingExtraError("tensorflow", "tflite",
                                "needed for Keras/SavedModel sources and the TFLite converter"
                                ) from e
    return tf


# Frameworks coremltools imports at import time only to offer their converters:
# TensorFlow alone costs tens of seconds. Hidden while coremltools loads (when not
# already loaded), so Core ML builds do not pay for them.
_OPTIONAL_FRAMEWORKS = ("tensorflow", "torchao", "transformers", "executorch", "torchaudio")


def _tf_convertible() -> bool:
    """An installed TensorFlow that coremltools 9.0 converts from (2.1-2.12): keep it."""
    from importlib import metadata

    from packaging.version import Version

    try:
        tf = Version(metadata.version("tensorflow"))
    except Exception:
        return False
    return Version("2.1.0") <= tf <= Version("2.12.99")


def import_coremltools() -> Any:
    """coremltools, imported quietly (on Linux it logs that its runtime is missing)."""
    if "coremltools" in sys.modules:
        return sys.modules["coremltools"]
    hidden = [n for n in _OPTIONAL_FRAMEWORKS if n not in sys.modules
              and not (n == "tensorflow" and _tf_convertible())]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # import raises ImportError
    try:
        with quiet():
            import coremltools
    except ImportError as e:
        raise MissingExtraError("coremltools", "coreml", "needed for Core ML targets") from e
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
    return coremltools
