"""The models the suite measures, and how many timed runs each gets.

Run counts are fixed per model (not adaptive) so two runs of the suite time the
same amount of work; they are sized so each model's interleaved latency phase
stays well under a minute on 2 cores.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class BuildJob:
    """One ``edgepack build`` call of the suite: targets (aliases; None = every selected
    target), precisions, and its rough cost here, so a late run can skip it (optional
    jobs only) instead of overrunning the time budget."""

    targets: tuple[str, ...] | None = None
    precisions: tuple[str, ...] = ("all",)
    est_seconds: int = 240
    optional: bool = False


@dataclass(frozen=True)
class ModelSpec:
    key: str
    config: Path  # the sample's edgepack.yaml
    description: str
    runs: int  # timed runs per candidate in the interleaved latency phase
    warmup: int
    overhead_runs: int = 4000  # per side, harness vs bare session.run
    eval_limit: int | None = None  # cap on eval samples for the baselines' accuracy
    builds: tuple[BuildJob, ...] = (BuildJob(),)

    @property
    def folder(self) -> Path:
        return self.config.parent

    def settings(self) -> dict:
        return yaml.safe_load(self.config.read_text())

    @property
    def entry(self) -> str:
        """file.py:callable, resolved against the sample folder."""
        file, func = self.settings()["model"].split(":")
        return f"{self.folder / file}:{func}"

    @property
    def eval_path(self) -> Path:
        return self.folder / self.settings()["eval"]

    @property
    def task(self) -> str | None:
        return self.settings().get("task")


MODELS: dict[str, ModelSpec] = {
    "digits": ModelSpec(
        "digits", REPO / "sample_models/digits/edgepack.yaml",
        "small CNN, 8x8 scikit-learn digits (19k params)", runs=2000, warmup=100),
    "mobilenet_fashion": ModelSpec(
        "mobilenet_fashion", REPO / "sample_models/mobilenet_fashion/edgepack.yaml",
        "MobileNetV3-style CNN (depthwise, SE, hardswish), Fashion-MNIST (91k params)",
        runs=1000, warmup=50),
    "text_encoder": ModelSpec(
        "text_encoder", REPO / "sample_models/text_encoder/edgepack.yaml",
        "all-MiniLM-L6-v2 sentence encoder, 1x32 tokens (22.6M params)",
        runs=500, warmup=20, overhead_runs=400,
        # one call per target: a failing target's slow int8 must not hold up the others;
        # litert-torch's PT2E int8 on the encoder takes ~5 min here, so it runs last
        builds=(BuildJob(("onnx",), ("all",), 180), BuildJob(("jetson",), ("all",), 150),
                BuildJob(("tflite",), ("fp32", "fp16", "int8-dynamic"), 150),
                BuildJob(("coreml",), ("all",), 40),
                BuildJob(("tflite",), ("int8",), 330, optional=True))),
}
