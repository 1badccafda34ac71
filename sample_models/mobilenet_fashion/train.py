"""Reproducibly train FashionMobileNet on Fashion-MNIST and write the sample artifacts.

Usage: python sample_models/mobilenet_fashion/train.py [--data DIR]

Data: the Debian package ``dataset-fashion-mnist`` (apt-get install dataset-fashion-mnist)
puts the original IDX files under /usr/share/datasets/fashion-mnist/.

Writes next to this file:
  weights.pt  - state_dict (loadable with torch.load(..., weights_only=True))
  calib.npz   - input: float32 (200, 1, 28, 28), 200 training images (20 per class)
  eval.npz    - input: float32 (1000, 1, 28, 28), labels: int64 (1000,), the first
                1000 images of the official test split (never trained on)
Preprocessing is only pixels / 255.
"""

import argparse
import gzip
import os
import random
import sys
import time

import numpy as np
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from model import FashionMobileNet  # noqa: E402

DATA = "/usr/share/datasets/fashion-mnist"
SEED = 0
EPOCHS = 3
BATCH = 128
LR = 4e-3
N_CALIB_PER_CLASS = 20
N_EVAL = 1000


def set_seeds(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)  # one thread: the same floating-point sums every run


def read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(folder: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(os.path.join(folder, f"{split}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(folder, f"{split}-labels-idx1-ubyte.gz"))
    x = (images.astype(np.float32) / np.float32(255.0))[:, None, :, :]
    return np.ascontiguousarray(x), labels.astype(np.int64)


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    preds = [model(torch.from_numpy(x[i:i + 500])).argmax(1).numpy()
             for i in range(0, len(x), 500)]
    return float((np.concatenate(preds) == y).mean())


def calibration_indices(y: np.ndarray) -> np.ndarray:
    """The first N_CALIB_PER_CLASS training images of each class, in dataset order."""
    picked = np.concatenate([np.flatnonzero(y == c)[:N_CALIB_PER_CLASS] for c in range(10)])
    return np.sort(picked)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=DATA)
    args = p.parse_args()
    set_seeds(SEED)
    x_tr, y_tr = load(args.data, "train")
    x_te, y_te = load(args.data, "t10k")

    gen = torch.Generator().manual_seed(SEED)
    model = FashionMobileNet()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
    steps = EPOCHS * ((len(x_tr) + BATCH - 1) // BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)

    started = time.monotonic()
    for epoch in range(EPOCHS):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for i in range(0, len(xt), BATCH):
            idx = perm[i:i + BATCH]
            xb = xt[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5  # clothes are left-right symmetric
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            loss = loss_fn(model(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1}  loss {total / len(xt):.4f}  "
              f"eval acc {accuracy(model, x_te[:N_EVAL], y_te[:N_EVAL]):.4f}  "
              f"{time.monotonic() - started:.0f} s", flush=True)

    model.eval()
    torch.save(model.state_dict(), os.path.join(HERE, "weights.pt"))
    calib = calibration_indices(y_tr)
    np.savez_compressed(os.path.join(HERE, "calib.npz"), input=x_tr[calib])
    np.savez_compressed(os.path.join(HERE, "eval.npz"), input=x_te[:N_EVAL],
                        labels=y_te[:N_EVAL])

    n_params = sum(p.numel() for p in model.parameters())
    print(f"params: {n_params}")
    print(f"eval accuracy: {accuracy(model, x_te[:N_EVAL], y_te[:N_EVAL]):.4f} ({N_EVAL} samples)")
    print(f"full test accuracy: {accuracy(model, x_te, y_te):.4f} ({len(y_te)} samples)")


if __name__ == "__main__":
    main()
