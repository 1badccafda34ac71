"""Convert: torch nn.Module / ExportedProgram -> .tflite with litert-torch (channel-last I/O).

Per precision:
  fp32          litert_torch.convert
  fp16          float16 weights (litert-torch's fp16 recipe, via ai-edge-quantizer)
  int8-dynamic  dynamic range with ai-edge-quantizer (litert-torch's recipe): int8
                per-channel weights, embedding tables included. (PT2E dynamic
                mode leaves the embedding table to the MLIR converter, which
                quantizes it per-tensor with a non-zero zero point that LiteRT's
                EMBEDDING_LOOKUP refuses to load.)
  int8          static PT2E: ``quantize.tflite_pt2e`` (it uses this module's helpers).

NCHW image inputs/outputs become NHWC (``to_channel_last_io``): TFLite is
channel-last and this avoids transposes at the model's edges.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from edgepack.errors import ConversionError, MissingExtraError, one_line
from edgepack.frameworks import quiet
from edgepack.signature import TensorSpec


def import_litert_torch() -> Any:
    try:
        with quiet():
            import litert_torch
    except ImportError as e:
        raise MissingExtraError("litert-torch", "tflite", "needed to convert torch models "
                                "to TFLite") from e
    litert_torch.config.show_progress = False
    return litert_torch


def channel_last_module(model: Any, inputs: Sequence[int], outputs: Sequence[int]) -> Any:
    """The model as an nn.Module whose listed inputs/outputs are NHWC."""
    import torch

    litert_torch = import_litert_torch()
    if isinstance(model, torch.export.ExportedProgram):
        model = model.module()
    if isinstance(model, torch.jit.ScriptModule):
        raise ConversionError("litert-torch cannot convert TorchScript modules")
    if not inputs and not outputs:
        return _eval(model)
    with quiet():
        wrapped = litert_torch.to_channel_last_io(model, args=list(inputs),
                                                  outputs=list(outputs))
    return _eval(wrapped)


def _eval(module: Any) -> Any:
    """``module`` in eval mode. A torch.export program's module (a .pt2 source) is
    already traced in eval mode and refuses train()/eval() ("Calling train() is not
    supported yet"): it, or a wrapper around it, is returned as it is."""
    if not hasattr(module, "eval"):
        return module
    try:
        return module.eval()
    except NotImplementedError:
        return module


def example_args(inputs: Sequence[TensorSpec]) -> tuple:
    """Zeros of the inputs' shapes and dtypes: what litert-torch traces the model with."""
    import torch

    return tuple(torch.zeros(s.concrete_shape(), dtype=getattr(torch, s.dtype)) for s in inputs)


@contextlib.contextmanager
def converting(precision: str) -> Iterator[None]:
    """Run a litert-torch conversion quietly; a failure is a ConversionError naming its cause."""
    import torch

    tail: list[str] = []
    try:
        with quiet(tail), torch.no_grad():
            yield
    except ConversionError:
        raise
    except Exception as e:
        raise ConversionError(f"litert-torch conversion failed ({precision}): "
                              f"{one_line(e, tail=tail)}") from e


def convert(model: Any, inputs: Sequence[TensorSpec], out_path: Path, precision: str
            ) -> dict[str, Any] | None:
    """Convert ``model`` (already channel-last) traced with zeros of ``inputs``' shapes,
    at a float or dynamic-range precision (static int8: ``quantize.tflite_pt2e``).

    Returns the quantization record (None for float precisions).
    """
    litert_torch = import_litert_torch()
    args = example_args(inputs)
    record: dict[str, Any] | None = None
    with converting(precision):
        if precision == "fp32":
            edge = litert_torch.convert(model, args)
        elif precision == "fp16":
            from litert_torch.generative.quantize import quant_recipes

            edge = litert_torch.convert(model, args,
                                        quant_config=quant_recipes.full_fp16_recipe())
        elif precision == "int8-dynamic":
            from litert_torch.generative.quantize import quant_recipes

            edge = litert_torch.convert(model, args,
                                        quant_config=quant_recipes.full_dynamic_recipe())
            record = {"tool": "ai-edge-quantizer (litert-torch recipe)",
                      "method": "dynamic", "per_channel": True, "symmetric": True,
                      "weights": "int8 per-channel symmetric (embeddings included)",
                      "activations": "float (quantized at run time)"}
        else:
            raise ConversionError(f"litert-torch does not build {precision!r} here")
        edge.export(str(out_path))
    return record
