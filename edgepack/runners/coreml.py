"""Runner for Core ML packages: the real runtime, macOS only (coremltools' predict)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edgepack.errors import ConversionError, InputError, UsageError
from edgepack.signature import Signature

Arrays = dict[str, np.ndarray]


class CoreMLRunner:
    """Runs one batch through ``MLModel.predict`` with the chosen compute units.

    Feeds and outputs use the source's tensor names; ``feature_names`` maps the
    ones Core ML had to sanitize. Inputs are cast to the package's dtypes.
    """

    name = "coreml"

    def __init__(self, path: str | Path, signature: Signature, compute_units: str = "ALL",
                 feature_names: Mapping[str, str] | None = None) -> None:
        if sys.platform != "darwin":
            raise UsageError("Core ML runs only on macOS/iOS")
        from edgepack.errors import one_line
        from edgepack.frameworks import import_coremltools

        ct = import_coremltools()
        self.path = package_root(Path(path))
        try:
            self.model = ct.models.MLModel(str(self.path),
                                           compute_units=getattr(ct.ComputeUnit, compute_units))
        except Exception as e:
            raise ConversionError(f"Core ML cannot load {self.path.name}: {one_line(e)}") from e
        self.signature = signature
        self.names = dict(feature_names or {})
        self.compute_units = compute_units

    def run(self, feeds: Arrays) -> Arrays:
        from edgepack.errors import one_line

        missing = [s.name for s in self.signature.inputs if s.name not in feeds]
        if missing:
            raise InputError(f"missing inputs {missing}; the model takes "
                             f"{self.signature.input_names}")
        coreml_feeds = {self.names.get(s.name, s.name): np.ascontiguousarray(feeds[s.name],
                                                                             dtype=s.dtype)
                        for s in self.signature.inputs}
        try:
            out = self.model.predict(coreml_feeds)
        except Exception as e:
            raise ConversionError(f"Core ML failed to run {self.path.name}: {one_line(e)}") from e
        return {s.name: np.asarray(out[self.names.get(s.name, s.name)])
                for s in self.signature.outputs}


def package_root(path: Path) -> Path:
    """The .mlpackage folder of ``path`` (a bundle's manifest lists the files inside it)."""
    for p in (path, *path.parents):
        if p.suffix == ".mlpackage":
            return p
    return path
