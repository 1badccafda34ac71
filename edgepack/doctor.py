"""What this machine can build and run, and why not."""

from __future__ import annotations

import importlib.util
from importlib import metadata

# (what, python module, distribution, extra, used for)
CHECKS = [
    ("torch", "torch", "torch", "torch", "torch sources, reference runs"),
    ("onnx", "onnx", "onnx", "onnx", "ONNX sources and artifacts"),
    ("onnxruntime", "onnxruntime", "onnxruntime", "onnx", "runs onnx bundles on this host"),
    ("onnxscript", "onnxscript", "onnxscript", "onnx", "graph clean-up"),
    ("onnxconverter-common", "onnxconverter_common", "onnxconverter-common", "onnx",
     "fp16 conversion"),
]


def checks() -> list[tuple[str, bool, str]]:
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
