"""Reference runner for TensorFlow sources (Keras models, SavedModel signatures)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edgepack.errors import InputError

Arrays = dict[str, np.ndarray]


def outputs_in_order(out: Any, names: Sequence[str], error: type[Exception] = InputError
                     ) -> list[Any]:
    """A TensorFlow call's result (tensor, list or dict) as a list in ``names``' order.

    A dict is taken by key, never by position: Keras returns it in insertion order and
    tf.function flattens it by sorted key, and neither is the signature's order.
    """
    if isinstance(out, dict):
        if set(out) != set(names):
            raise error(f"the TensorFlow model returns outputs {sorted(out)}, "
                        f"expected {list(names)}")
        return [out[n] for n in names]
    values = list(out) if isinstance(out, (list, tuple)) else [out]
    if len(values) != len(names):
        raise error(f"the TensorFlow model returns {len(values)} outputs, "
                    f"expected {len(names)} ({', '.join(names)})")
    return values


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
        values = outputs_in_order(self.call(*args), self.output_names)
        return {n: np.asarray(v) for n, v in zip(self.output_names, values, strict=True)}
