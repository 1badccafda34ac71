"""Reproducibly train DigitsCNN on scikit-learn's load_digits and write the sample artifacts.

Usage: python sample_models/digits/train.py

Writes next to this file:
  weights.pt  - state_dict (loadable with torch.load(..., weights_only=True))
  calib.npz   - input: float32 (200, 1, 8, 8), first 200 samples of the training split
  eval.npz    - input: float32 (N_eval, 1, 8, 8), labels: int64 (N_eval,), the held-out split
Preprocessing is only pixels / 16 (raw digits pixels are 0..16).
"""
import os
import random
import sys

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from model import DigitsCNN  # noqa: E402

SEED = 0
EPOCHS = 40
BATCH = 64
LR = 3e-3
N_CALIB = 200


def set_seeds(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)


def load_data():
    digits = load_digits()
    x = (digits.images.astype(np.float32) / np.float32(16.0))[:, None, :, :]  # (N,1,8,8)
    y = digits.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)


def random_shift(xb: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by up to 1 pixel in each direction (zero fill)."""
    n = xb.shape[0]
    padded = nn.functional.pad(xb, (1, 1, 1, 1))
    dy = torch.randint(0, 3, (n,), generator=gen)
    dx = torch.randint(0, 3, (n,), generator=gen)
    out = torch.empty_like(xb)
    for i in range(n):
        out[i] = padded[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8]
    return out


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    pred = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == y).mean())


def main() -> None:
    set_seeds(SEED)
    x_tr, x_te, y_tr, y_te = load_data()

    gen = torch.Generator().manual_seed(SEED)
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=EPOCHS)
    loss_fn = nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)

    for epoch in range(EPOCHS):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for i in range(0, len(xt), BATCH):
            idx = perm[i:i + BATCH]
            xb = random_shift(xt[idx], gen)
            loss = loss_fn(model(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        if (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1:3d}  loss {total / len(xt):.4f}  "
                  f"test acc {accuracy(model, x_te, y_te):.4f}")

    model.eval()
    train_acc = accuracy(model, x_tr, y_tr)
    test_acc = accuracy(model, x_te, y_te)

    torch.save(model.state_dict(), os.path.join(HERE, "weights.pt"))
    np.savez_compressed(os.path.join(HERE, "calib.npz"),
                        input=np.ascontiguousarray(x_tr[:N_CALIB], dtype=np.float32))
    np.savez_compressed(os.path.join(HERE, "eval.npz"),
                        input=np.ascontiguousarray(x_te, dtype=np.float32),
                        labels=np.ascontiguousarray(y_te, dtype=np.int64))

    n_params = sum(p.numel() for p in model.parameters())
    print(f"params: {n_params}")
    print(f"train accuracy: {train_acc:.4f} ({len(y_tr)} samples)")
    print(f"test accuracy:  {test_acc:.4f} ({len(y_te)} samples)")


if __name__ == "__main__":
    main()
