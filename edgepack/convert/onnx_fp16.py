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


#: Float weights smaller than this stay fp32 (biases, norms: bytes do not matter there).
FP16_STORAGE_MIN_ELEMENTS = 1024
_FP16_MAX = 65504.0
_CAST_READERS = ("MatMul", "Gemm")  # ops that take a weight computed in the graph


def store_weights_fp16(model: Any, min_elements: int = FP16_STORAGE_MIN_ELEMENTS
                       ) -> dict[str, int]:
    """Store the large fp32 initializers as fp16, cast back to fp32 where they are read.

    For artifacts whose float layers run in fp16 on the device anyway (TensorRT int8
    engines built with --fp16): the device rounds these weights to fp16 itself, so
    storing them so costs nothing there and halves their bytes. An embedding table
    read by Gather is gathered in fp16 and only the gathered rows are cast (a cast of
    the whole table before the Gather could run at every inference); a MatMul/Gemm
    weight gets one Cast right after it (TensorRT multiplies tensors; runtimes fold
    the cast as a constant). Convolution kernels stay fp32: TensorRT 8 takes a kernel
    computed in the graph only from a DequantizeLinear. Tensors fp16 cannot hold
    (|w| > 65504) stay fp32. Changes ``model`` in place.
    """
    import copy

    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from edgepack.convert.onnx_cleanup import name_maker

    graph = model.graph
    if any(a.HasField("g") or len(a.graphs) for n in graph.node for a in n.attribute):
        return {"tensors": 0, "bytes_saved": 0}  # readers inside subgraphs: not tracked
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, i))
    outputs = {o.name for o in graph.output} | {i.name for i in graph.input}
    fresh = name_maker(graph)
    head: list[Any] = []  # Casts of constants: they go first, before any reader
    after: dict[str, Any] = {}  # fp16 output of a Gather -> the Cast that follows it
    stored = saved = 0
    for init in graph.initializer:
        uses = consumers.get(init.name, [])
        if (init.data_type != TensorProto.FLOAT or init.name in outputs or not uses
                or int(np.prod(init.dims)) < min_elements):
            continue
        gathered = all(n.op_type == "Gather" and i == 0 for n, i in uses)
        if not gathered and not all(n.op_type in _CAST_READERS for n, _ in uses):
            continue
        value = numpy_helper.to_array(init)
        if not np.isfinite(value).all() or np.abs(value).max() > _FP16_MAX:
            continue
        init.CopyFrom(numpy_helper.from_array(value.astype(np.float16), init.name))
        saved += value.nbytes // 2
        stored += 1
        if gathered:
            for node, _ in uses:
                half = fresh(f"{node.output[0]}_fp16")
                after[half] = helper.make_node("Cast", [half], [node.output[0]],
                                               to=TensorProto.FLOAT)
                node.output[0] = half
            continue
        cast_out = fresh(f"{init.name}_fp32")
        head.append(helper.make_node("Cast", [init.name], [cast_out], to=TensorProto.FLOAT))
        for node, i in uses:
            node.input[i] = cast_out
    nodes = list(head)
    for node in graph.node:
        nodes.append(copy.deepcopy(node))
        if node.output and node.output[0] in after:
            nodes.append(after[node.output[0]])
    del graph.node[:]
    graph.node.extend(nodes)
    return {"tensors": stored, "bytes_saved": saved}
