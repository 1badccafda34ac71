"""silero-vad: voice activity detector (LSTM), stateful. Two of the wheel's exports:

- `silero_vad` (this entry): `silero_vad_16k_sequence.onnx` (opset 16, 63 nodes, LSTM):
  `input` [seq, 576] (64 samples of context + a 512-sample chunk at 16 kHz), `h`, `c`
  [1, 1, 128] -> `speech_probs` [seq], `hn`, `cn`. The zoo pins seq = 1 (one chunk a run).
- `silero_vad_if` (zoo/models/silero_vad_if.py): `silero_vad.onnx`, the file the package
  itself loads: `If` on the scalar `sr` input, `state` [2, batch, 128].

Inputs prepared as silero_vad/utils_vad.py `OnnxWrapper.__call__` does: the audio is cut
into 512-sample chunks, each prefixed by the last 64 samples of the previous input, and the
model runs chunk after chunk with the state it returned. The zoo runs the shipped model
over espeak-ng speech (with sox-made silence around each sentence) and keeps every 3rd
(chunk, state) pair: real audio with the real recurrent state at that point.
"""

from pathlib import Path

import numpy as np

from zoo.common import SENTENCES_CALIB, SENTENCES_EVAL, VOICES, copy_from_wheel, save_npz, speak

NAME = "silero_vad"
PACKAGE, VERSION = "silero-vad", "6.2.3"
WHEEL_FILE = "silero_vad/data/silero_vad_16k_sequence.onnx"
KIND = "stateful VAD (LSTM, h/c in and out), ONNX opset 16"
TASK = "regression"
MEASURE = "cosine / max abs error of speech probability and LSTM state"
INPUTS = [
    {"name": "input", "shape": [1, 576], "dtype": "float32"},
    {"name": "h", "shape": [1, 1, 128], "dtype": "float32"},
    {"name": "c", "shape": [1, 1, 128], "dtype": "float32"},
]


def stream(sentences, step, keep_every=3, limit=64):
    """[(chunk [576], state)] over the sentences; `step(x, state) -> state` runs the model."""
    xs, states = [], []
    for i, s in enumerate(sentences):
        wav = speak(s, VOICES[i % len(VOICES)], ("pad", "0.4", "0.6"))
        state = None
        ctx = np.zeros((1, 64), np.float32)
        for j in range(0, len(wav) - 512 + 1, 512):
            x = np.concatenate([ctx, wav[None, j:j + 512]], axis=1).astype(np.float32)
            new = step(x, state)
            if j // 512 % keep_every == 0:
                xs.append(x[0])
                states.append(state if state is not None else new[1])
            state = new[0]
            ctx = x[:, -64:]
    idx = np.linspace(0, len(xs) - 1, min(limit, len(xs))).round().astype(int)
    return [xs[k] for k in idx], [states[k] for k in idx]


def prepare(out: Path) -> str:
    import onnxruntime as ort

    model = copy_from_wheel(PACKAGE, VERSION, WHEEL_FILE, out / "model.onnx")
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    zero = (np.zeros((1, 1, 128), np.float32), np.zeros((1, 1, 128), np.float32))

    def step(x, state):
        h, c = state if state is not None else zero
        _, hn, cn = sess.run(None, {"input": x, "h": h, "c": c})
        return (hn, cn), zero

    for name, sents in (("calib", SENTENCES_CALIB), ("eval", SENTENCES_EVAL)):
        xs, states = stream(sents, step)
        save_npz(out / f"{name}.npz", input=np.stack(xs),
                 h=np.concatenate([s[0] for s in states]),
                 c=np.concatenate([s[1] for s in states]))
    return "model.onnx"
