"""Pass: large float GATHER tables of a .tflite become int8 per row (weight-only).

TFLiteConverter's full-integer route and ai-edge-quantizer's static recipe
quantize a GATHER table per tensor with the activation's scale, or not at all;
MiniLM's 30522x384 word table (46.9 MB float) then decides the artifact's size.
Here a table read only by GATHER along axis 0 becomes int8 rows with one scale
per row, and the op becomes GATHER(int8 rows) -> CAST -> MUL by GATHER(scales):
the same ops litert-torch writes for the torch route's int8 tables, so every
LiteRT that runs those runs this, and only the gathered rows are dequantized.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgepack.convert.tflite_compact import operator_code
from edgepack.quantize.tflite_hybrid import int8_rows, tensor_readers

#: Smaller tables stay float: their bytes do not matter and rows cost a scale each.
MIN_ELEMENTS = 65536
_FLOAT32, _INT8 = 0, 9


def int8_gather_tables(path: Path, min_elements: int = MIN_ELEMENTS) -> list[dict[str, Any]]:
    """Rewrite ``path`` in place; one record per table changed (shape, error)."""
    from edgepack.convert.tflite_compact import load_model, save_model
    from edgepack.convert.tflite_inspect import flatbuffer_schema

    schema = flatbuffer_schema()
    path = Path(path)
    model = load_model(path)
    ops = schema.BuiltinOperator
    changed: list[dict[str, Any]] = []
    for sg in model.subgraphs or []:
        readers = tensor_readers(sg)
        rewritten: list[Any] = []
        for op in sg.operators or []:
            table = _float_table(model, sg, op, ops.GATHER, readers, min_elements)
            if table is None:
                rewritten.append(op)
                continue
            weights, t_index = table
            q, scale, error = int8_rows(weights)
            src = sg.tensors[t_index]
            model.buffers[src.buffer].data = None  # its only reader was this op
            ids, out = int(op.inputs[1]), int(op.outputs[0])
            out_t = sg.tensors[out]
            rows = _tensor(schema, sg, model, f"{_text(src.name)}_i8", list(q.shape), _INT8,
                           q.tobytes())
            scales = _tensor(schema, sg, model, f"{_text(src.name)}_scale", [len(scale), 1],
                             _FLOAT32, scale.tobytes())
            shape = [int(d) for d in out_t.shape] if out_t.shape is not None else []
            picked = _tensor(schema, sg, model, f"{_text(out_t.name)}_i8", shape, _INT8)
            as_float = _tensor(schema, sg, model, f"{_text(out_t.name)}_f", shape, _FLOAT32)
            picked_scale = _tensor(schema, sg, model, f"{_text(out_t.name)}_s",
                                   shape[:-1] + [1] if shape else [], _FLOAT32)
            rewritten += [
                _op(schema, model, ops.GATHER, [rows, ids], [picked], op, version=2),
                _op(schema, model, ops.CAST, [picked], [as_float]),
                _op(schema, model, ops.GATHER, [scales, ids], [picked_scale], op),
                _op(schema, model, ops.MUL, [as_float, picked_scale], [out], mul=True),
            ]
            changed.append({"shape": list(weights.shape), "scales": "per row",
                            "max_abs_weight_error": round(error, 6)})
        sg.operators = rewritten
    if changed:
        save_model(model, path, path.stat().st_size)
    return changed


def _float_table(model: Any, sg: Any, op: Any, gather: int, readers: dict[int, int],
                 min_elements: int) -> tuple[np.ndarray, int] | None:
    """(table, tensor index) when ``op`` is a GATHER along axis 0 of a constant float
    2-D table of at least ``min_elements`` that nothing else reads."""
    code = model.operatorCodes[op.opcodeIndex]
    if max(code.builtinCode, code.deprecatedBuiltinCode) != gather or len(op.inputs) < 2:
        return None
    options = op.builtinOptions
    if options is not None and (getattr(options, "axis", 0) != 0
                                or getattr(options, "batchDims", 0) != 0):
        return None
    t_index = int(op.inputs[0])
    t = sg.tensors[t_index]
    data = model.buffers[t.buffer].data if t.buffer < len(model.buffers) else None
    if t.type != _FLOAT32 or data is None or len(data) == 0 or t.shape is None \
            or len(t.shape) != 2 or readers.get(t_index, 0) != 1:
        return None
    shape = [int(d) for d in t.shape]
    if shape[0] * shape[1] < min_elements:
        return None
    return np.frombuffer(bytes(data), dtype="<f4").reshape(shape), t_index


def _text(name: Any) -> str:
    return name.decode() if isinstance(name, bytes) else str(name or "t")


def _tensor(schema: Any, sg: Any, model: Any, name: str, shape: list[int], dtype: int,
            data: bytes | None = None) -> int:
    t = schema.TensorT()
    t.name = name
    t.shape = np.array(shape, dtype=np.int32)
    t.type = dtype
    buffer = schema.BufferT()
    if data is not None:
        buffer.data = np.frombuffer(data, dtype=np.uint8)
    model.buffers.append(buffer)
    t.buffer = len(model.buffers) - 1
    sg.tensors.append(t)
    return len(sg.tensors) - 1


def _op(schema: Any, model: Any, builtin: int, inputs: list[int], outputs: list[int],
        like: Any = None, mul: bool = False, version: int = 1) -> Any:
    op = schema.OperatorT()
    op.opcodeIndex = operator_code(model, builtin, version)
    op.inputs = np.array(inputs, dtype=np.int32)
    op.outputs = np.array(outputs, dtype=np.int32)
    if like is not None:  # a GATHER: same axis and options as the op it replaces
        op.builtinOptionsType = like.builtinOptionsType
        op.builtinOptions = like.builtinOptions
    elif mul:
        op.builtinOptionsType = schema.BuiltinOptions.MulOptions
        op.builtinOptions = schema.MulOptionsT()
    return op

