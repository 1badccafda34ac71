"""Reference runner for PyTorch sources: nn.Module, ScriptModule or ExportedProgram."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgepack.errors import InputError

Arrays = dict[str, np.ndarray]


class TorchRunner:
    """Runs one batch in torch (CPU, no autograd); outputs flattened in order.

    Tuple / list / dict (insertion order) / nested outputs are flattened
    depth-first and matched to ``output_names`` by position; with no names the
    outputs are called ``output0``, ``output1``, ...
    """

    name = "torch"

    def __init__(self, model: Any, input_names: Sequence[str],
                 output_names: Sequence[str] | None = None) -> None:
        import torch

        self._torch = torch
        if isinstance(model, torch.export.ExportedProgram):
            model = model.module()  # a GraphModule with the program's calling convention
        elif hasattr(model, "eval"):
            model.eval()
        self.model = model
        self.input_names = list(input_names)
        self.output_names = list(output_names) if output_names else None

    def run_list(self, feeds: Arrays) -> list[np.ndarray]:
        """Outputs in the model's own order (no names)."""
        torch = self._torch
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise InputError(f"missing inputs {missing}; the model takes {self.input_names}")
        args = [torch.from_numpy(np.array(feeds[n], copy=True)) for n in self.input_names]
        with torch.no_grad():
            out = self.model(*args)
        return [_to_numpy(t) for t in _flatten(out)]

    def run(self, feeds: Arrays) -> Arrays:
        values = self.run_list(feeds)
        names = self.output_names or [f"output{i}" for i in range(len(values))]
        if len(names) != len(values):
            raise InputError(
                f"the model returns {len(values)} outputs but {len(names)} output names "
                f"were given ({', '.join(names)})"
            )
        return dict(zip(names, values, strict=True))


def _flatten(out: Any) -> list[Any]:
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flatten(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _flatten(v)]
    return [out]


def _to_numpy(t: Any) -> np.ndarray:
    import torch

    if not isinstance(t, torch.Tensor):
        raise InputError(
            f"the model returned a {type(t).__name__} where a tensor was expected; "
            "return tensors (or tuples/lists/dicts of tensors)"
        )
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16
        t = t.float()
    return t.contiguous().numpy()
