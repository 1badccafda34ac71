"""silero-vad `silero_vad.onnx`, the export the package itself loads (OnnxWrapper):
opset 16, an `If` on the sample rate around two subgraphs, inputs `input` [batch, 576],
`state` [2, batch, 128] (the batch is the second axis) and `sr` (int64 scalar).

Same real inputs as zoo/models/silero_vad.py (chunks of espeak-ng speech with the state the
model itself returned). edgepack's data files put the samples on the first axis of every
input, so `state` (batch on axis 1) is stored as [N, 2, 128] per sample, the layout closest
to edgepack's rule, and `sr` as [N]; the cells record what edgepack makes of it.
"""

from pathlib import Path

import numpy as np

from zoo.common import SENTENCES_CALIB, SENTENCES_EVAL, copy_from_wheel, save_npz
from zoo.models.silero_vad import stream

NAME = "silero_vad_if"
PACKAGE, VERSION = "silero-vad", "6.2.3"
WHEEL_FILE = "silero_vad/data/silero_vad.onnx"
KIND = "stateful VAD, `If` on scalar sr, state [2, batch, 128], ONNX opset 16"
TASK = "regression"
MEASURE = "cosine / max abs error of speech probability and state"
INPUTS = [
    {"name": "input", "shape": [1, 576], "dtype": "float32"},
    {"name": "state", "shape": [2, 1, 128], "dtype": "float32"},
]


def prepare(out: Path) -> str:
    import onnxruntime as ort

    model = copy_from_wheel(PACKAGE, VERSION, WHEEL_FILE, out / "model.onnx")
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    zero = np.zeros((2, 1, 128), np.float32)
    sr = np.array(16000, np.int64)

    def step(x, state):
        _, new = sess.run(None, {"input": x, "state": state if state is not None else zero,
                                 "sr": sr})
        return new, zero

    for name, sents in (("calib", SENTENCES_CALIB), ("eval", SENTENCES_EVAL)):
        xs, states = stream(sents, step)
        save_npz(out / f"{name}.npz", input=np.stack(xs),
                 state=np.stack([s[:, 0] for s in states]),
                 sr=np.full((len(xs),), 16000, np.int64))
    return "model.onnx"
