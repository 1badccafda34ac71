"""Pass: torch nn.Module / ExportedProgram -> .tflite with litert-torch (channel-last I/O).

Per precision:
  fp32          litert_torch.convert
  fp16          float16 weights (litert-torch's fp16 recipe, via ai-edge-quantizer)
  int8-dynamic  dynamic range with ai-edge-quantizer (litert-torch's recipe): int8
                per-channel weights, embedding tables included. (PT2E dynamic
                mode leaves the embedding table to the MLIR converter, which
                quantizes it per-tensor with a non-zero zero point that LiteRT's
                EMBEDDING_LOOKUP refuses to load.)
  int8          PT2E static quantization, calibrated on the calibration set:
                int8 per-channel weights, int8 activations. litert-torch folds
                the input quantize / output dequantize into the model's I/O, so
                these models take and return int8 (scale and zero point recorded).
                Large embedding tables are stored int8 per row (weight-only,
                ``int8_embeddings``): PT2E leaves them float, which kept MiniLM's
                46.9 MB word table float (int8 model 1.41x smaller than fp32).
                Linear layers the accuracy search keeps out of int8 keep float
                activations but get int8 weights (``tflite_hybrid``).

litert-torch's PT2E quantizer fuses conv/linear with ReLU only: before a ReLU6
(``hardtanh(0, 6)``, MobileNet/EfficientNet-Lite) it quantizes the raw conv output,
whose wide negative range leaves a few int8 steps for [0, 6]. Measured on
EfficientNet-Lite0: top-1 agreement 0.717 that way, 0.983 with the fusion
``_fuse_clamps`` adds (the same one TFLite's own converter does).

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
            calib: Sequence[dict[str, np.ndarray]] | None = None,
            search: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Convert ``model`` (already channel-last) traced with zeros of ``inputs``' shapes.

    ``calib``: feeds in the artifact's layout, keyed by input name (int8 only).
    ``search``: int8 accuracy search settings (``tflite_pt2e_search.search_pt2e``'s
    output_names, tolerances, task, budget, progress); None: plain PT2E.
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
            elif precision == "int8-dynamic":
                from litert_torch.generative.quantize import quant_recipes

                edge = litert_torch.convert(model, args,
                                            quant_config=quant_recipes.full_dynamic_recipe())
                record = {"tool": "ai-edge-quantizer (litert-torch recipe)",
                          "method": "dynamic", "per_channel": True, "symmetric": True,
                          "weights": "int8 per-channel symmetric (embeddings included)",
                          "activations": "float (quantized at run time)"}
            elif precision == "int8":
                quantized, tables = int8_embeddings(model)
                if search is not None:
                    search = {**search, "reference_model": model}
                edge, record = _pt2e(litert_torch, quantized, args, inputs, calib, search)
                if tables:
                    record["embeddings"] = tables
            else:
                raise ConversionError(f"litert-torch does not build {precision!r}")
            edge.export(str(out_path))
        if record is not None and record.get("nodes_in_float"):
            from edgepack.backends.passes.tflite_hybrid import hybridize_float_fully_connected

            layers = hybridize_float_fully_connected(out_path)
            record["float_fallback"] = {
                "form": "dynamic-range FULLY_CONNECTED: int8 per-channel weights, float "
                        "activations (quantized at run time by the kernel)",
                "layers": layers}
    except ConversionError:
        raise
    except Exception as e:
        raise ConversionError(f"litert-torch conversion failed ({precision}): "
                              f"{last_error_line(e, tail)}") from e
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
        from edgepack.backends.passes.tflite_pt2e_search import search_pt2e

        converted, quantizer, found = search_pt2e(model, inputs, calib=calib, **search)
    else:
        quantizer = _quantizer_class(pq)().set_global(
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


# Clamp ranges TFLite can fuse into a conv/fully-connected as its activation
# (RELU6, RELU_N1_TO_1, RELU_0_TO_1); other ranges stay separate ops.
_FUSABLE_RANGES = {(0.0, 6.0), (-1.0, 1.0), (0.0, 1.0)}


def _clamp_range(node: Any) -> tuple[float, float] | None:
    import torch

    aten = torch.ops.aten
    if node.target in (aten.hardtanh.default, aten.hardtanh_.default):
        low = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", -1.0)
        high = node.args[2] if len(node.args) > 2 else node.kwargs.get("max_val", 1.0)
    elif node.target == aten.clamp.default:
        low = node.args[1] if len(node.args) > 1 else node.kwargs.get("min")
        high = node.args[2] if len(node.args) > 2 else node.kwargs.get("max")
    else:
        return None
    if low is None or high is None:
        return None
    return float(low), float(high)


def _fuse_clamps(model: Any, act_spec: Any) -> int:
    """Quantize conv/linear -> ReLU6-like clamp once, after the clamp; returns the count."""
    import torch

    producers = (torch.ops.aten.conv1d.default, torch.ops.aten.conv2d.default,
                 torch.ops.aten.linear.default)
    fused = 0
    for node in model.graph.nodes:
        if node.op != "call_function" or _clamp_range(node) not in _FUSABLE_RANGES:
            continue
        prod = node.args[0]
        p_ann = getattr(prod, "meta", {}).get("quantization_annotation")
        c_ann = node.meta.get("quantization_annotation")
        if (p_ann is None or c_ann is None or p_ann.output_qspec is None
                or getattr(prod, "target", None) not in producers or len(prod.users) != 1):
            continue
        # the clamp's output shared the conv output's observer: give it its own
        p_ann.output_qspec = None
        c_ann.input_qspec_map = {}
        c_ann.output_qspec = act_spec
        fused += 1
    return fused


def _quantizer_class(pq: Any) -> type:
    """litert-torch's PT2EQuantizer plus the conv/linear + clamp fusion."""

    class FusingPT2EQuantizer(pq.PT2EQuantizer):
        fused = 0

        def annotate(self, model: Any) -> Any:
            model = super().annotate(model)
            config = self.global_config
            if config is not None and config.output_activation is not None:
                self.fused = _fuse_clamps(model, config.output_activation)
            return model

    return FusingPT2EQuantizer
