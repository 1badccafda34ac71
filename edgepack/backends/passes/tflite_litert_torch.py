"""Pass: torch nn.Module / ExportedProgram -> .tflite with litert-torch (channel-last I/O).

Per precision:
  fp32          litert_torch.convert
  fp16          float16 weights (litert-torch's fp16 recipe, via ai-edge-quantizer)
  int8-dynamic  PT2E dynamic quantization: int8 per-channel weights
  int8          PT2E static quantization, calibrated on the calibration set:
                int8 per-channel weights, int8 activations. litert-torch folds
                the input quantize / output dequantize into the model's I/O, so
                these models take and return int8 (scale and zero point recorded)

NCHW image inputs/outputs become NHWC (``to_channel_last_io``): TFLite is
channel-last and this avoids transposes at the model's edges.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.backends.passes.tflite_common import last_error_line, quiet
from edgepack.errors import ConversionError, MissingExtraError
from edgepack.signature import TensorSpec


def _import() -> Any:
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

    litert_torch = _import()
    if isinstance(model, torch.export.ExportedProgram):
        model = model.module()
    if isinstance(model, torch.jit.ScriptModule):
        raise ConversionError("litert-torch cannot convert TorchScript modules")
    if not inputs and not outputs:
        return model.eval() if hasattr(model, "eval") else model
    with quiet():
        wrapped = litert_torch.to_channel_last_io(model, args=list(inputs),
                                                  outputs=list(outputs))
    return wrapped.eval()


def convert(model: Any, inputs: Sequence[TensorSpec], out_path: Path, precision: str,
            calib: Sequence[dict[str, np.ndarray]] | None = None) -> dict[str, Any] | None:
    """Convert ``model`` (already channel-last) traced with zeros of ``inputs``' shapes.

    ``calib``: feeds in the artifact's layout, keyed by input name (int8 only).
    Returns the quantization record (None for float precisions).
    """
    import torch

    litert_torch = _import()
    args = tuple(torch.zeros(s.concrete_shape(), dtype=getattr(torch, s.dtype)) for s in inputs)
    record: dict[str, Any] | None = None
    tail: list[str] = []
    try:
        with quiet(tail), torch.no_grad():
            if precision == "fp32":
                edge = litert_torch.convert(model, args)
            elif precision == "fp16":
                from litert_torch.generative.quantize import quant_recipes

                edge = litert_torch.convert(model, args,
                                            quant_config=quant_recipes.full_fp16_recipe())
            elif precision in ("int8-dynamic", "int8"):
                edge, record = _pt2e(litert_torch, model, args, inputs, precision, calib)
            else:
                raise ConversionError(f"litert-torch does not build {precision!r}")
            edge.export(str(out_path))
    except ConversionError:
        raise
    except Exception as e:
        raise ConversionError(f"litert-torch conversion failed ({precision}): "
                              f"{last_error_line(e, tail)}") from e
    return record


def _pt2e(litert_torch: Any, model: Any, args: tuple, inputs: Sequence[TensorSpec],
          precision: str, calib: Sequence[dict[str, np.ndarray]] | None) -> tuple[Any, dict]:
    import torch
    from litert_torch.quantize import pt2e_quantizer as pq
    from litert_torch.quantize import quant_config as qc
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    dynamic = precision == "int8-dynamic"
    if not dynamic and not calib:
        raise ConversionError("static int8 needs calibration data (--calib)")
    quantizer = pq.PT2EQuantizer().set_global(
        pq.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic))
    graph = torch.export.export(model, args).module()
    prepared = prepare_pt2e(graph, quantizer)
    if dynamic:
        prepared(*args)
    else:
        for feeds in calib or ():
            prepared(*(torch.from_numpy(np.ascontiguousarray(feeds[s.name])) for s in inputs))
    converted = convert_pt2e(prepared, fold_quantize=False)
    edge = litert_torch.convert(converted, args,
                                quant_config=qc.QuantConfig(pt2e_quantizer=quantizer))
    record = {
        "tool": "litert-torch PT2E",
        "method": "dynamic" if dynamic else "static",
        "per_channel": True,
        "symmetric": "weights" if not dynamic else True,
        "weights": "int8 per-channel symmetric",
        "activations": "float (quantized at run time)" if dynamic else "int8 (histogram observer)",
    }
    if not dynamic:
        record["calibration_samples"] = len(calib or ())
        record["io_type"] = "int8"
        record["nodes_in_float"] = []
    return edge, record
