"""Resemblyzer: GE2E speaker encoder (3-layer LSTM 40->256, Linear, ReLU, L2 norm), a
checkpoint (`pretrained.pt`, `model_state`) for resemblyzer.VoiceEncoder. The zoo writes
`voice_encoder.py:build` re-declaring VoiceEncoder's layers and forward exactly as the
package does (without its audio imports: librosa, webrtcvad).

Inputs as resemblyzer/audio.py: 16 kHz speech, volume normalised to -30 dBFS (increase
only), mel spectrogram (n_fft 400, hop 160, 40 mels, power 2; librosa's Slaney filters
reimplemented in numpy, zoo/common.py), partial utterances of 160 frames.
Not done: webrtcvad silence trimming (espeak-ng output has little silence).
"""

from pathlib import Path

import numpy as np

from zoo.common import (
    SENTENCES_CALIB,
    SENTENCES_EVAL,
    SOX_VARIANTS,
    VOICES,
    copy_from_wheel,
    melspectrogram,
    save_npz,
    speak,
)

NAME = "resemblyzer"
PACKAGE, VERSION = "Resemblyzer", "0.1.4"
WHEEL_FILE = "resemblyzer/pretrained.pt"
KIND = "GE2E speaker encoder, 3-layer LSTM, torch checkpoint + Python entry"
TASK = "regression"
MEASURE = "cosine of the L2-normalised 256-d embedding"
INPUTS = [{"name": "mels", "shape": [1, 160, 40], "dtype": "float32"}]

ENTRY = '''"""Python entry for edgepack: resemblyzer.VoiceEncoder's network with pretrained.pt."""
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent


class VoiceEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(40, 256, 3, batch_first=True)
        self.linear = nn.Linear(256, 256)
        self.relu = nn.ReLU()

    def forward(self, mels):
        _, (hidden, _) = self.lstm(mels)
        embeds_raw = self.relu(self.linear(hidden[-1]))
        return embeds_raw / torch.norm(embeds_raw, dim=1, keepdim=True)


def build():
    model = VoiceEncoder()
    ckpt = torch.load(HERE / "pretrained.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(ckpt["model_state"], strict=False)
    return model.eval()
'''


def partials(sentences, offset, limit=48):
    out = []
    for i, s in enumerate(sentences):
        for k, v in enumerate(VOICES):
            wav = speak(s, v, SOX_VARIANTS[(i + k + offset) % len(SOX_VARIANTS)])
            rms = np.sqrt(np.mean((wav * 32767) ** 2))
            change = -30 - 20 * np.log10(rms / 32767)
            if change > 0:
                wav = wav * 10 ** (change / 20)
            mel = melspectrogram(wav, 16000, 400, 160, 40).T  # [frames, 40]
            for j in range(0, max(1, mel.shape[0] - 160 + 1), 80):
                p = mel[j:j + 160]
                if p.shape[0] == 160:
                    out.append(p)
    idx = np.linspace(0, len(out) - 1, min(limit, len(out))).round().astype(int)
    return np.stack([out[k] for k in idx]).astype(np.float32)


def prepare(out: Path) -> str:
    copy_from_wheel(PACKAGE, VERSION, WHEEL_FILE, out / "pretrained.pt")
    (out / "voice_encoder.py").write_text(ENTRY)
    save_npz(out / "calib.npz", mels=partials(SENTENCES_CALIB, 0))
    save_npz(out / "eval.npz", mels=partials(SENTENCES_EVAL, 1))
    return "voice_encoder.py:build"
