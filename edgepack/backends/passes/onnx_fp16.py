"""onnx fp32 -> onnx fp16 weights and compute, float32 I/O kept."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from edgepack.errors import ConversionError

_FLOATS = (1, 11)  # TensorProto.FLOAT, DOUBLE


def to_fp16(in_path: Path, out_path: Path) -> Path:
    """Convert to fp16, keeping fp32 inputs/outputs so callers feed the same arrays.

    Float arithmetic on integer inputs (an attention mask cast to float, its token
    count, the clamp of that count) stays fp32: the converter leaves a Cast-to-float
    as it is, so its fp32 output met fp16 constants downstream and ONNX Runtime
    refused the model (MiniLM: "Clip bound to different types"). fp16 would also stop
    counting integers exactly past 2048. Blocked nodes get Casts at their borders.
    """
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(in_path))
    blocked = integer_derived_nodes(model)
    try:
        with warnings.catch_warnings():
            # it warns once per tiny weight it rounds to fp16's range: expected, not news
            warnings.simplefilter("ignore")
            half = float16.convert_float_to_float16(model, keep_io_types=True,
                                                    disable_shape_infer=False,
                                                    node_block_list=blocked or None)
    except Exception as e:  # the converter raises bare Exceptions on odd graphs
        raise ConversionError(f"fp16 conversion failed: {str(e).splitlines()[0]}") from None
    onnx.save(half, str(out_path))
    return out_path


def integer_derived_nodes(model: Any) -> list[str]:
    """Names of nodes computing floats from integer data only (masks, counts).

    Seeds: Casts to float of a non-float tensor. A node joins when it reads a seeded
    tensor and every other non-constant float input it reads is seeded too.
    """
    from onnx import shape_inference

    # element types of every tensor (shipped graphs carry no value_info)
    g = shape_inference.infer_shapes(model, strict_mode=False).graph
    constants = {t.name for t in g.initializer}
    constants |= {o for n in g.node if n.op_type == "Constant" for o in n.output}
    dtype = {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.value_info, *g.output)}
    dtype.update({t.name: t.data_type for t in g.initializer})
    derived: set[str] = set()
    names = []
    for node in g.node:
        if node.op_type == "Cast":
            to = next((a.i for a in node.attribute if a.name == "to"), 0)
            src = dtype.get(node.input[0])
            hit = to in _FLOATS and src is not None and src not in _FLOATS
        else:
            ins = [t for t in node.input if t and t not in constants]
            floats = [t for t in ins if t in derived or dtype.get(t) in _FLOATS]
            hit = bool(floats) and all(t in derived for t in floats)
        if hit:
            derived.update(o for o in node.output if o)
            names.append(node.name)
    return names
