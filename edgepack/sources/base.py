"""SourceModel: what every loader returns, plus helpers the loaders share.

A loader module defines ``load(spec, path, inputs, outputs) -> SourceModel``;
``edgepack.sources.REGISTRY`` maps file suffixes (or folder markers) to it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepack.errors import EdgepackError, InputError, UsageError, one_line
from edgepack.runners.base import Runner
from edgepack.signature import Signature, TensorSpec

_CHUNK = 1 << 20


@dataclass
class SourceModel:
    """The user's model, loaded: its signature, content hash and a reference runner."""

    format: str  # "onnx" | "torchscript" | "torch.export" | "python" | ...
    location: str  # the spec as given; for messages only, never hashed
    sha256: str
    signature: Signature
    name: str
    onnx_path: Path | None = None
    torch_model: Any | None = None
    # Loaders for frameworks this class does not know (Keras, ...) pass their own.
    runner_factory: Callable[[], Runner] | None = field(default=None, repr=False)
    parameters: int | None = None
    _runner: Runner | None = field(default=None, init=False, repr=False, compare=False)

    def runner(self) -> Runner:
        """Reference runner in the source framework (created once, then reused)."""
        if self._runner is None:
            self._runner = self._make_runner()
        return self._runner

    def _make_runner(self) -> Runner:
        if self.runner_factory is not None:
            return self.runner_factory()
        if self.torch_model is not None:
            from edgepack.runners.torch import TorchRunner

            return TorchRunner(self.torch_model, self.signature.input_names,
                               self.signature.output_names)
        if self.onnx_path is not None:
            from edgepack.runners.onnxruntime import OnnxRuntimeRunner

            return OnnxRuntimeRunner(self.onnx_path)
        raise NotImplementedError(f"no reference runner for {self.format} sources")

    def parameter_count(self) -> int | None:
        return self.parameters


@dataclass(frozen=True)
class LoaderEntry:
    """One registry line: which specs a loader claims and where it lives."""

    format: str
    label: str  # how the "accepted formats" message names it
    module: str  # imported only when used; defines load(spec, path, inputs, outputs)
    suffixes: tuple[str, ...] = ()
    folder_marker: str | None = None  # a folder holding this file (SavedModel: saved_model.pb)

    def claims(self, path: Path) -> bool:
        if path.is_dir():
            return self.folder_marker is not None and (path / self.folder_marker).is_file()
        return path.suffix.lower() in self.suffixes


def file_sha256(path: Path, extra: Iterable[Path] = ()) -> str:
    """sha256 of a file's bytes; files in ``extra`` (external data) add name + bytes."""
    h = hashlib.sha256()
    _update_file(h, path)
    for p in extra:
        h.update(b"\0" + p.name.encode() + b"\0")
        _update_file(h, p)
    return h.hexdigest()


def _update_file(h: Any, path: Path) -> None:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)


def check_file(path: Path) -> None:
    """A user file must exist, be a file and not be empty."""
    if not path.exists():
        raise InputError(f"no such file: {path} (check the path; relative paths start at "
                         "the current folder)")
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(f"{path} is empty (0 bytes): re-export or re-download the model")


def check_zip(spec: str, path: Path, what: str, fix: str) -> None:
    """Formats that are zip archives (TorchScript, .pt2, .keras): refuse anything else
    before importing a framework, with a clear message instead of its parser's."""
    import zipfile

    if not zipfile.is_zipfile(path):
        raise InputError(f"{spec} is not {what} (not a zip archive: corrupt, truncated or "
                         f"another format); {fix}")


def guess_layout(shape: Sequence[Any], dtype: str) -> str | None:
    """NCHW for 4-D float tensors with 1 or 3 channels at dim 1; otherwise unknown."""
    if len(shape) == 4 and dtype.startswith("float") and shape[1] in (1, 3):
        return "NCHW"
    return None


def with_layout(spec: TensorSpec) -> TensorSpec:
    if spec.layout is not None:
        return spec
    layout = guess_layout(spec.shape, spec.dtype)
    return TensorSpec(spec.name, tuple(spec.shape), spec.dtype, layout)


def safe_name(text: str) -> str:
    """A short model name usable in folder names."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("._-")
    return cleaned or "model"


NEED_INPUTS = ("torch sources need their input shapes: --input NAME:SHAPE[:DTYPE], "
               "e.g. --input input:1x3x224x224")


def torch_signature(model: Any, inputs: Sequence[TensorSpec],
                    outputs: Sequence[str] | None) -> Signature:
    """Signature of a torch model: inputs as given; outputs found by one run on zeros.

    The run also proves the input shapes fit. With a symbolic first input dim the
    model runs at batch 1 and 2, and output dims that follow it become symbolic.
    """
    import numpy as np

    from edgepack.runners.torch import TorchRunner

    if not inputs:
        raise UsageError(NEED_INPUTS)
    check_input_names(inputs)
    specs = tuple(with_layout(s) for s in inputs)
    runner = TorchRunner(model, [s.name for s in specs])

    def run(batch: int) -> list[Any]:
        feeds = {}
        for s in specs:
            shape = list(s.concrete_shape())
            if shape and not isinstance(s.shape[0], int):
                shape[0] = batch
            feeds[s.name] = np.zeros(shape, dtype=s.dtype)
        try:
            return runner.run_list(feeds)
        except EdgepackError:
            raise
        except Exception as e:
            shapes = ", ".join(f"{s.name}:{'x'.join(map(str, s.shape))}" for s in specs)
            raise InputError(f"input shape {shapes} does not fit the model: {one_line(e)}") from e

    first = run(1)
    symbol = next((s.shape[0] for s in specs if s.shape and not isinstance(s.shape[0], int)), None)
    second = run(2) if symbol is not None else first
    names = list(outputs) if outputs else [f"output{i}" for i in range(len(first))]
    if len(names) != len(first):
        raise UsageError(f"the model returns {len(first)} outputs but {len(names)} output "
                         f"names were given ({', '.join(names)})")
    outs = []
    for name, a, b in zip(names, first, second, strict=True):
        shape = tuple(symbol if x != y else x for x, y in zip(a.shape, b.shape, strict=False))
        outs.append(TensorSpec(name, shape, a.dtype.name, guess_layout(shape, a.dtype.name)))
    return Signature(inputs=specs, outputs=tuple(outs))


def check_input_names(inputs: Sequence[TensorSpec]) -> None:
    names = [s.name for s in inputs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UsageError(f"--input names must be unique; repeated: {', '.join(dupes)}")
