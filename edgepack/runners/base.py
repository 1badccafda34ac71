"""The one interface every runtime is driven through (after Polygraphy's runners).

A runner executes one artifact: ``run(feeds) -> outputs`` for a single batch.
``run_samples`` feeds a whole sample set (first axis = samples) batch by batch.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

Arrays = dict[str, np.ndarray]


class Runner(Protocol):
    """Runs one batch: feeds keyed by input name -> outputs keyed by output name."""

    name: str

    def run(self, feeds: Arrays) -> Arrays: ...


def run_samples(runner: Runner, samples: Arrays, batch: int = 1) -> Arrays:
    """Run every sample (first axis) in batches of ``batch``; concatenate outputs.

    The first axis of each input is the model's batch axis, so a sample set of
    N items is fed as N/batch calls.
    """
    counts = {len(v) for v in samples.values()}
    if len(counts) != 1:
        raise ValueError(f"inputs disagree on the number of samples: {sorted(counts)}")
    (n,) = counts
    if n % batch:
        raise ValueError(f"{n} samples do not split into batches of {batch}")
    chunks: dict[str, list[np.ndarray]] = {}
    for start in range(0, n, batch):
        feeds = {k: v[start : start + batch] for k, v in samples.items()}
        for name, value in runner.run(feeds).items():
            chunks.setdefault(name, []).append(np.asarray(value))
    return {name: np.concatenate(parts, axis=0) for name, parts in chunks.items()}
