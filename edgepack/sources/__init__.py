"""Load a source model from what the user named: a file, a folder or a Python entry.

Adding a format is one new module in this package (defining
``load(spec, path, inputs, outputs) -> SourceModel``) plus one line in
``REGISTRY``. Loaders import their framework lazily, so importing this package
needs neither torch nor onnx.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from pathlib import Path

from edgepack.errors import UsageError
from edgepack.signature import TensorSpec
from edgepack.sources.base import LoaderEntry, SourceModel, check_file

__all__ = ["REGISTRY", "LoaderEntry", "SourceModel", "load_source", "accepted_formats"]

REGISTRY: tuple[LoaderEntry, ...] = (
    LoaderEntry("onnx", ".onnx", "edgepack.sources.onnx_file", suffixes=(".onnx",)),
    LoaderEntry("torchscript", ".pt (TorchScript)", "edgepack.sources.torchscript",
                suffixes=(".pt", ".pth")),
    LoaderEntry("torch.export", ".pt2 (torch.export)", "edgepack.sources.torch_export",
                suffixes=(".pt2",)),
    LoaderEntry("keras", ".keras/.h5 (Keras)", "edgepack.sources.keras",
                suffixes=(".keras", ".h5")),
    LoaderEntry("savedmodel", "SavedModel folder", "edgepack.sources.savedmodel",
                folder_marker="saved_model.pb"),
)

PYTHON_ENTRY_LABEL = "file.py:callable, pkg.module:callable"

# "path/to/file.py:factory" or "pkg.module:factory" (attribute paths allowed: "mod:Cls.build")
_ENTRY_RE = re.compile(
    r"^(?P<target>.+\.py|[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):"
    r"(?P<attr>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)$"
)


def accepted_formats() -> str:
    return ", ".join([e.label for e in REGISTRY] + [PYTHON_ENTRY_LABEL])


def load_source(spec: str | Path, inputs: Sequence[TensorSpec] = (),
                outputs: Sequence[str] | None = None) -> SourceModel:
    """Load the model ``spec`` names; ``inputs``/``outputs`` come from --input / config.

    Raises InputError / UsageError / MissingExtraError with a one-line message.
    """
    text = str(spec)
    inputs = list(inputs or ())
    outputs = list(outputs) if outputs else None
    m = _ENTRY_RE.match(text)
    if m and not Path(text).exists():
        from edgepack.sources import python_entry

        return python_entry.load(text, m["target"], m["attr"], inputs, outputs)
    path = Path(text)
    check_file(path)
    for entry in REGISTRY:
        if entry.claims(path):
            module = importlib.import_module(entry.module)
            return module.load(text, path, inputs, outputs)
    kind = "folder" if path.is_dir() else f"file type {path.suffix or '(no extension)'!r}"
    raise UsageError(f"{text}: unsupported {kind}; edgepack loads {accepted_formats()}")
