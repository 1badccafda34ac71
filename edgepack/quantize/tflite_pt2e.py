"""Static int8 TFLite from torch: litert-torch PT2E, calibrated on the calibration set.

int8 per-channel weights, int8 activations. litert-torch folds the input quantize /
output dequantize into the model's I/O, so these models take and return int8 (scale
and zero point recorded). Large embedding tables are stored int8 per row (weight-only,
``int8_embeddings``): PT2E leaves them float, which kept MiniLM's 46.9 MB word table
float (int8 model 1.41x smaller than fp32). Linear layers the accuracy search keeps out
of int8 keep float activations but get int8 weights (``tflite_hybrid``).

litert-torch's PT2E quantizer fuses conv/linear with ReLU only: before a ReLU6
(``hardtanh(0, 6)``, MobileNet/EfficientNet-Lite) it quantizes the raw conv output,
whose wide negative range leaves a few int8 steps for [0, 6]. Measured on
EfficientNet-Lite0: top-1 agreement 0.717 that way, 0.983 with the fusion
``tflite_pt2e_quantizer`` adds (the same one TFLite's own converter does).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.convert.torch_to_tflite import converting, example_args, import_litert_torch
from edgepack.errors import ConversionError
from edgepack.quantize.tflite_pt2e_quantizer import quantizer_class
from edgepack.signature import TensorSpec


def convert_int8(model: Any, inputs: Sequence[TensorSpec], out_path: Path,
                 calib: Sequence[dict[str, np.ndarray]] | None,
                 search: dict[str, Any] | None = None) -> dict[str, Any]:
    """Static int8 of ``model`` (already channel-last) to ``out_path``; the quantization
    record. ``calib``: feeds in the artifact's layout, keyed by input name. ``search``:
    accuracy search settings (``tflite_pt2e_search.search_pt2e``'s output_names,
    tolerances, task, budget, progress); None: plain PT2E.
    """
    litert_torch = import_litert_torch()
    args = example_args(inputs)
    with converting("int8"):
        quantized, tables = int8_embeddings(model)
        if search is not None:
            search = {**search, "reference_model": model}
        edge, record = _pt2e(litert_torch, quantized, args, inputs, calib, search)
        if tables:
            record["embeddings"] = tables
        edge.export(str(out_path))
        if record.get("nodes_in_float"):
            from edgepack.quantize.tflite_hybrid import hybridize_float_fully_connected

            layers = hybridize_float_fully_connected(out_path)
            record["float_fallback"] = {
                "form": "dynamic-range FULLY_CONNECTED: int8 per-channel weights, float "
                        "activations (quantized at run time by the kernel)",
                "layers": layers}
    return record


#: Embedding tables with at least this many elements get int8 rows (smaller ones,
#: e.g. position or token-type tables, are not worth a Gather + Cast + Mul).
EMBEDDING_MIN_ELEMENTS = 1 << 16


def int8_embeddings(model: Any) -> tuple[Any, list[dict[str, Any]]]:
    """(copy of ``model`` whose large nn.Embedding tables are int8 per row, records).

    Each row gets a symmetric scale (max |w| / 127); the module gathers int8 rows
    and their scales and multiplies, so the .tflite holds an int8 table
    (GATHER, CAST, MUL) and activations stay as PT2E quantizes them. The model
    passed in is not changed (it is the float reference). Tables with max_norm
    (renormalised at lookup) are left float.
    """
    import copy

    import torch

    wanted = [name for name, m in model.named_modules()
              if isinstance(m, torch.nn.Embedding) and m.max_norm is None
              and m.weight.numel() >= EMBEDDING_MIN_ELEMENTS]
    if not wanted:
        return model, []
    model = copy.deepcopy(model)
    records = []
    for name in wanted:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        table = getattr(parent, attr)
        swapped = _int8_row_embedding_class()(table.weight.detach())
        setattr(parent, attr, swapped)
        records.append({"module": name, "shape": list(table.weight.shape),
                        "weights": "int8 per-row symmetric (weight-only)",
                        "max_abs_error": round(float(swapped.max_abs_error), 6)})
    return model, records


def _int8_row_embedding_class() -> type:
    import torch

    class Int8RowEmbedding(torch.nn.Module):
        def __init__(self, weight: Any) -> None:
            super().__init__()
            w = weight.float()
            scale = w.abs().amax(dim=1, keepdim=True) / 127.0
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            q = torch.round(w / scale).clamp(-127, 127).to(torch.int8)
            self.register_buffer("q", q)
            self.register_buffer("scale", scale)
            self.max_abs_error = (q.float() * scale - w).abs().max()

        def forward(self, ids: Any) -> Any:
            return torch.nn.functional.embedding(ids, self.q).to(torch.float32) * \
                torch.nn.functional.embedding(ids, self.scale)

    return Int8RowEmbedding


def _pt2e(litert_torch: Any, model: Any, args: tuple, inputs: Sequence[TensorSpec],
          calib: Sequence[dict[str, np.ndarray]] | None,
          search: dict[str, Any] | None = None) -> tuple[Any, dict]:
    """Static int8: PT2E prepare, calibrate, convert, lower to TFLite."""
    import torch
    from litert_torch.quantize import pt2e_quantizer as pq
    from litert_torch.quantize import quant_config as qc
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if not calib:
        raise ConversionError("static int8 needs calibration data (--calib)")
    found: dict[str, Any] | None = None
    if search is not None:
        from edgepack.quantize.tflite_pt2e_search import search_pt2e

        converted, quantizer, found = search_pt2e(model, inputs, calib=calib, **search)
    else:
        quantizer = quantizer_class(pq)().set_global(
            pq.get_symmetric_quantization_config(is_per_channel=True))
        graph = torch.export.export(model, args).module()
        prepared = prepare_pt2e(graph, quantizer)
        for feeds in calib:
            prepared(*(torch.from_numpy(np.ascontiguousarray(feeds[s.name])) for s in inputs))
        converted = convert_pt2e(prepared, fold_quantize=False)
    edge = litert_torch.convert(converted, args,
                                quant_config=qc.QuantConfig(pt2e_quantizer=quantizer))
    record = {
        "tool": "litert-torch PT2E",
        "method": "static",
        "per_channel": True,
        "symmetric": "weights",
        "weights": "int8 per-channel symmetric",
        "activations": "int8 (histogram observer)",
        "fused_activations": quantizer.fused,
        "calibration_samples": len(calib),
        "io_type": "int8",
        "nodes_in_float": [e["name"] for e in found["excluded"]] if found else [],
    }
    if found is not None:
        record["search"] = found
    return edge, record
