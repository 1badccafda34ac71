"""Reference runner for TensorFlow sources (Keras models, SavedModel signatures)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edgepack.errors import InputError

Arrays = dict[str, np.ndarray]


class TensorFlowRunner:
    """Runs one batch through ``call(*tensors) -> tensor | list | dict`` (eager, CPU)."""

    name = "tensorflow"

    def __init__(self, call: Callable[..., Any], input_names: Sequence[str],
                 output_names: Sequence[str], dtypes: Sequence[str] | None = None) -> None:
        self.call = call
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.dtypes = list(dtypes) if dtypes else None

    def run(self, feeds: Arrays) -> Arrays:
        import tensorflow as tf

        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise InputError(f"missing inputs {missing}; the model takes {self.input_names}")
        args = []
        for i, n in enumerate(self.input_names):
            x = np.asarray(feeds[n])
            if self.dtypes:
                x = x.astype(self.dtypes[i], copy=False)
            args.append(tf.convert_to_tensor(x))
        out = self.call(*args)
        if isinstance(out, dict):
            values = [out[k] for k in out]
        elif isinstance(out, (list, tuple)):
            values = list(out)
        else:
            values = [out]
        if len(values) != len(self.output_names):
            raise InputError(f"the model returns {len(values)} outputs but "
                             f"{len(self.output_names)} output names were given")
        return {n: np.asarray(v) for n, v in zip(self.output_names, values, strict=True)}
