"""What this machine can build and run, and why not."""

from __future__ import annotations

import importlib.util
import sys
from importlib import metadata

# (what, python module, distribution, extra, used for)
CHECKS = [
    ("torch", "torch", "torch", "torch", "torch sources, reference runs"),
    ("onnx", "onnx", "onnx", "onnx", "ONNX sources and artifacts"),
    ("onnxruntime", "onnxruntime", "onnxruntime", "onnx", "runs onnx bundles on this host"),
    ("onnxscript", "onnxscript", "onnxscript", "onnx", "graph clean-up"),
    ("onnxconverter-common", "onnxconverter_common", "onnxconverter-common", "onnx",
     "fp16 conversion"),
    ("litert-torch", "litert_torch", "litert-torch", "tflite", "torch sources -> TFLite"),
    ("ai-edge-litert", "ai_edge_litert", "ai-edge-litert", "tflite",
     "runs tflite bundles on this host"),
    ("tensorflow", "tensorflow", "tensorflow-cpu", "tflite",
     "Keras/SavedModel sources -> TFLite"),
    ("tf2onnx", "tf2onnx", "tf2onnx", "tflite",
     "Keras/SavedModel sources -> ONNX (onnx-cpu, TensorRT, Core ML)"),
    ("coremltools", "coremltools", "coremltools", "coreml",
     "Core ML packages (runs them on macOS only)"),
    ("onnx2torch", "onnx2torch", "onnx2torch", "coreml", "ONNX sources -> Core ML"),
]


def checks() -> list[tuple[str, bool, str]]:
    rows = _modules()
    rows.append(_onnx2tf())
    rows.append(("tensorrt", False, "engines are built and checked on the Jetson by the "
                 "bundle's bench.py; this host validates with an ONNX Runtime proxy")
                if importlib.util.find_spec("tensorrt") is None else
                ("tensorrt", True, "TensorRT found: jetson bundles can be validated here"))
    if sys.platform != "darwin":
        rows.append(("coreml runtime", False, "Core ML runs only on macOS: coreml bundles "
                     "are deferred here and checked by bench.py on a Mac"))
    return rows


def _onnx2tf() -> tuple[str, bool, str]:
    from edgepack.convert import onnx2tf_env

    python = onnx2tf_env.find_python()
    if python is None:
        return ("onnx2tf", False, "ONNX sources -> TFLite: bash scripts/setup_onnx2tf.sh")
    return ("onnx2tf", True, f"own environment: {python}")


def _modules() -> list[tuple[str, bool, str]]:
    rows = []
    for what, module, dist, extra, use in CHECKS:
        if importlib.util.find_spec(module) is None:
            rows.append((what, False, f"{use}: pip install 'edgepack[{extra}]'"))
            continue
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            version = "?"
        rows.append((what, True, f"{version}: {use}"))
    return rows
