"""torch.export sources (.pt2): an ExportedProgram saved with torch.export.save."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.errors import EdgepackError, InputError, UsageError, one_line
from edgepack.frameworks import import_torch
from edgepack.signature import Signature, TensorSpec
from edgepack.sources.base import (
    SourceModel,
    check_zip,
    file_sha256,
    guess_layout,
    safe_name,
    torch_signature,
)


def load(spec: str, path: Path, inputs: list[TensorSpec],
         outputs: list[str] | None) -> SourceModel:
    check_zip(spec, path, "a torch.export program", "save it with torch.export.save")
    torch = import_torch()
    log = logging.getLogger("torch.export")
    level = log.level
    log.setLevel(logging.CRITICAL)  # it logs a full traceback before its fallback reader
    try:
        ep = torch.export.load(str(path))
    except Exception as e:
        raise InputError(f"{spec} is not a torch.export program ({one_line(e, 120)}); "
                         "save it with torch.export.save") from e
    finally:
        log.setLevel(level)
    placeholders = _user_placeholders(ep)
    if inputs:
        if len(inputs) != len(placeholders):
            raise UsageError(
                f"{spec} takes {len(placeholders)} inputs ({', '.join(placeholders)}) "
                f"but {len(inputs)} --input were given"
            )
        signature = torch_signature(ep, inputs, outputs)
    else:
        signature = _program_signature(ep, placeholders, outputs)
        _check_runs(ep, signature, spec)
    params = ep.graph_signature.parameters
    return SourceModel(
        format="torch.export", location=spec, sha256=file_sha256(path), signature=signature,
        name=safe_name(path.stem), torch_model=ep,
        parameters=sum(ep.state_dict[p].numel() for p in params if p in ep.state_dict),
    )


def _user_placeholders(ep: Any) -> dict[str, Any]:
    """The program's user inputs (not parameters/buffers) -> their fake tensor."""
    user = set(ep.graph_signature.user_inputs)
    return {n.name: n.meta.get("val") for n in ep.graph.nodes
            if n.op == "placeholder" and n.name in user}


def _program_signature(ep: Any, placeholders: dict[str, Any],
                       outputs: list[str] | None) -> Signature:
    ins = tuple(_spec(name, val) for name, val in placeholders.items())
    out_node = next(n for n in ep.graph.nodes if n.op == "output")
    vals = [a.meta.get("val") if hasattr(a, "meta") else a for a in out_node.args[0]]
    names = list(outputs) if outputs else [f"output{i}" for i in range(len(vals))]
    if len(names) != len(vals):
        raise UsageError(f"the model returns {len(vals)} outputs but {len(names)} output "
                         f"names were given ({', '.join(names)})")
    outs = tuple(_spec(n, v) for n, v in zip(names, vals, strict=True))
    return Signature(inputs=ins, outputs=outs)


def _spec(name: str, val: Any) -> TensorSpec:
    import torch

    if not isinstance(val, torch.Tensor):
        raise InputError(f"program input/output {name!r} is a {type(val).__name__}, "
                         "not a tensor; only tensors are supported")
    shape = tuple(int(d) if isinstance(d, int) else str(d) for d in val.shape)
    dtype = str(val.dtype).removeprefix("torch.")
    return TensorSpec(name, shape, dtype, guess_layout(shape, dtype))


def _check_runs(ep: Any, signature: Signature, spec: str) -> None:
    """Run once on zeros shaped like the program's example inputs (or batch 1)."""
    from edgepack.runners.torch import TorchRunner

    examples = _example_shapes(ep)
    feeds = {}
    for i, s in enumerate(signature.inputs):
        shape = examples[i] if examples and i < len(examples) else s.concrete_shape()
        feeds[s.name] = np.zeros(shape, dtype=s.dtype)
    try:
        TorchRunner(ep, signature.input_names).run_list(feeds)
    except EdgepackError:
        raise
    except Exception as e:
        raise InputError(f"{spec} does not run on zeros of its example input shapes: "
                         f"{one_line(e)}") from e


def _example_shapes(ep: Any) -> list[tuple[int, ...]] | None:
    ex = getattr(ep, "example_inputs", None)
    if not ex:
        return None
    args, _kwargs = ex
    return [tuple(a.shape) for a in args if hasattr(a, "shape")]
