"""What the TFLite passes share: silencing native chatter, importing TensorFlow lazily."""

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

_QUIET_LOGGERS = ("tensorflow", "absl", "jax", "torch", "torch._dynamo", "torch.export",
                  "torch.fx", "torchao", "litert_torch", "ai_edge_quantizer", "h5py", "keras")


@contextlib.contextmanager
def quiet(tail: list[str] | None = None) -> Iterator[None]:
    """Silence stdout/stderr at the file-descriptor level (C++ logs, rich progress bars).

    Passes never print; converters do, and ``--json`` owns stdout. What they
    printed is kept: on return ``tail`` (if given) holds the last lines, for
    error messages.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    levels = {n: logging.getLogger(n).level for n in _QUIET_LOGGERS}
    for n in _QUIET_LOGGERS:
        logging.getLogger(n).setLevel(logging.ERROR)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            for n, level in levels.items():
                logging.getLogger(n).setLevel(level)
            if tail is not None:
                sink.seek(0)
                lines = [ln.strip() for ln in sink.read().decode(errors="replace").splitlines()]
                tail[:] = [ln for ln in lines if ln][-20:]


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


def last_error_line(e: BaseException, tail: list[str] | None = None) -> str:
    """A one-line reason: the exception's first line, else the converter's last log line."""
    text = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    errors = [ln for ln in text if "error" in ln.lower()]
    line = (errors or text or [type(e).__name__])[0]
    if (not text) and tail:
        line = tail[-1]
    from edgepack.sources.base import origin

    return (line if len(line) <= 240 else line[:237] + "...") + origin(e)
