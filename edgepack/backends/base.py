"""What every backend provides, and the job it is handed.

A backend is a recipe of small passes per precision (``build``), the runner that
validates its artifact on this host (``runner``), and the harness file copied
into its bundles. Backends never print; they report through ``job.progress``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edgepack.data import SampleSet
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
    task: str | None = None
    cache: dict[str, Any] = field(default_factory=dict)  # shared by the jobs of one build
    progress: Callable[[str], None] = lambda _msg: None

    @property
    def int8_settings(self) -> dict[str, Any]:
        """The int8 settings of this unit: the profile's, overridden by the build's."""
        return {**self.profile.int8, **self.int8}


class Backend(Protocol):
    name: str
    runtime: str
    harness: str  # file in edgepack/harness/, copied into bundles as bench.py

    def build(self, job: Job) -> Artifact: ...

    def runner(self, artifact: Artifact) -> Runner:
        """A host runner for the artifact, or raise Deferred(reason)."""
        ...


# Optional hooks a backend may define (looked up with getattr):
#   check(profile, precision) -> None
#       raise UsageError for bad profile options or an unsupported precision before any
#       work starts (edgepack.backends.check_profile, called by api.build per bundle).
#   golden_io(artifact, inputs, outputs) -> (inputs, outputs)
#       golden arrays (source layout) -> the artifact's own layout/dtypes.
