"""Pass: float FULLY_CONNECTED layers of a static-int8 .tflite get int8 weights.

The int8 accuracy search keeps a few layers out of int8 (MiniLM: FFN output
projections whose activations carry outliers). Kept fully float, each 1536x384
layer costs 1.8 MB and the encoder missed the 3.5x size bar (3.36x). Here those
layers become dynamic-range ("hybrid") FULLY_CONNECTED: int8 per-channel
symmetric weights, float input and output, the input quantized at run time by
the kernel. This is the form ai-edge-quantizer's dynamic recipe writes (same
operator version, 12, and options), so every LiteRT that runs our int8-dynamic
bundles runs these. Activations stay float, so the search's reason for keeping
the layer out of int8 (activation range) still holds; the weight rounding is
measured by validation on the artifact itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

#: ai-edge-quantizer writes per-channel hybrid FULLY_CONNECTED as version 12.
HYBRID_FC_VERSION = 12
_FLOAT32, _INT8 = 0, 9


def hybridize_float_fully_connected(path: Path) -> list[dict[str, Any]]:
    """Rewrite ``path`` in place; one record per layer changed (weight shape, error)."""
    from edgepack.convert.tflite_compact import load_model, operator_code, save_model
    from edgepack.convert.tflite_inspect import flatbuffer_schema

    schema = flatbuffer_schema()
    path = Path(path)
    model = load_model(path)
    fc = schema.BuiltinOperator.FULLY_CONNECTED
    hybrid_code = None
    changed: list[dict[str, Any]] = []
    for sg in model.subgraphs or []:
        readers = tensor_readers(sg)
        for op in sg.operators or []:
            code = model.operatorCodes[op.opcodeIndex]
            if max(code.builtinCode, code.deprecatedBuiltinCode) != fc or len(op.inputs) < 2:
                continue
            x, w = sg.tensors[op.inputs[0]], sg.tensors[op.inputs[1]]
            data = model.buffers[w.buffer].data
            if x.type != _FLOAT32 or w.type != _FLOAT32 or data is None or len(data) == 0 \
                    or len(w.shape) != 2 or readers.get(int(op.inputs[1]), 0) != 1:
                continue
            weights = np.frombuffer(bytes(data), dtype="<f4").reshape([int(d) for d in w.shape])
            q, scale, error = int8_rows(weights)
            buffer = schema.BufferT()
            buffer.data = np.frombuffer(q.tobytes(), dtype=np.uint8)
            model.buffers.append(buffer)
            model.buffers[w.buffer].data = None  # its only reader was this layer
            w.buffer = len(model.buffers) - 1
            w.type = _INT8
            quant = schema.QuantizationParametersT()
            quant.scale = scale
            quant.zeroPoint = np.zeros(len(scale), dtype=np.int64)
            quant.quantizedDimension = 0
            w.quantization = quant
            if hybrid_code is None:
                hybrid_code = operator_code(model, fc, HYBRID_FC_VERSION)
            op.opcodeIndex = hybrid_code
            changed.append({"weight_shape": list(weights.shape),
                            "max_abs_weight_error": round(error, 6)})
    if changed:
        save_model(model, path, path.stat().st_size)
    return changed


def tensor_readers(sg: Any) -> dict[int, int]:
    """Tensor index -> how many operator inputs of subgraph ``sg`` read it."""
    readers: dict[int, int] = {}
    for op in sg.operators or []:
        for t in op.inputs if op.inputs is not None else []:
            readers[int(t)] = readers.get(int(t), 0) + 1
    return readers


def int8_rows(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(int8 rows, float32 scale per row, max abs error): symmetric, [-127, 127]."""
    scale = np.abs(weights).max(axis=1) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.round(weights / scale[:, None]), -127, 127).astype(np.int8)
    error = float(np.abs(q.astype(np.float32) * scale[:, None] - weights).max())
    return q, scale, error
