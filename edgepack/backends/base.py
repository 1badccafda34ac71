"""What every backend provides, and the job it is handed.

A backend is a recipe of small passes per precision (``build``), the runner that
validates its artifact on this host (``runner``), and the harness file copied
into its bundles. Backends never print; they report through ``job.progress``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepack.backends.options import Option, read_options
from edgepack.data import SampleSet
from edgepack.errors import UsageError
from edgepack.profiles import Profile
from edgepack.runners.base import Arrays, Runner
from edgepack.signature import Signature
from edgepack.sources.base import SourceModel


class Deferred(Exception):
    """This host cannot execute the artifact; the device harness will check it.

    ``proxy`` optionally runs a stand-in with the artifact's numerics (the exact
    ONNX a TensorRT engine is built from, in ONNX Runtime; the torch model with
    Core ML's compressed weights). Its metrics are recorded as proxy metrics;
    a proxy that misses the tolerance fails the bundle, since the device would too.
    """

    def __init__(self, reason: str, proxy: Runner | None = None, proxy_name: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.proxy = proxy
        self.proxy_name = proxy_name


@dataclass
class Artifact:
    folder: Path                 # work folder holding the files
    files: list[str]             # paths relative to folder; the first is the model
    signature: Signature         # the artifact's own I/O (names, dtypes, layouts)
    quantization: dict[str, Any] | None = None
    runtime_options: dict[str, Any] = field(default_factory=dict)
    toolchain: list[str] = field(default_factory=list)  # packages whose versions shaped it

    @property
    def main(self) -> Path:
        return self.folder / self.files[0]


@dataclass
class Job:
    source: SourceModel
    profile: Profile
    precision: str
    workdir: Path
    tolerances: dict[str, float]
    calib: SampleSet | None = None
    calib_reference: Arrays | None = None
    int8: dict[str, Any] = field(default_factory=dict)
    task: str | dict[str, str] | None = None  # one task, or {output: task}
    cache: dict[str, Any] = field(default_factory=dict)  # shared by the jobs of one build
    progress: Callable[[str], None] = lambda _msg: None

    @property
    def int8_settings(self) -> dict[str, Any]:
        """The int8 settings of this unit: the profile's, overridden by the build's."""
        return {**self.profile.int8, **self.int8}


class Backend:
    """What every backend is: a recipe per precision (``build``), the runner that
    validates its artifact on this host (``runner``), and its device harness.

    Subclasses set the class attributes and implement ``build`` and ``runner``; the
    hooks below have defaults a backend overrides only when it needs to.
    """

    name: str
    runtime: str
    harness: str  # file in edgepack/harness/, copied into bundles as bench.py
    harness_extra: tuple[str, ...] = ()  # modules in edgepack/harness/ that bench.py imports
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8-dynamic", "int8")
    options: tuple[Option, ...] = ()  # the profile ``options:`` keys it takes

    def build(self, job: Job) -> Artifact:
        raise NotImplementedError

    def runner(self, artifact: Artifact) -> Runner:
        """A host runner for the artifact, or raise Deferred(reason)."""
        raise NotImplementedError

    def check(self, profile: Profile, precision: str) -> dict[str, Any]:
        """The profile's options for ``precision``, checked, with defaults: a UsageError
        for a bad option or an unsupported precision, before any work starts."""
        if precision not in self.precisions:
            raise UsageError(f"the {self.name} backend does not build {precision!r}; it "
                             f"builds {', '.join(self.precisions)}; pick one of those or "
                             "another target")
        return read_options(profile, self.options, self.name)

    def golden_io(self, artifact: Artifact, inputs: Arrays, outputs: Arrays
                  ) -> tuple[Arrays, Arrays]:
        """Golden arrays (source layout) -> the artifact's own layout and dtypes."""
        return inputs, outputs
