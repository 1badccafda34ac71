"""Pass: symmetric int8 QDQ ONNX -> the Q/DQ placement TensorRT fuses, and its checks.

ONNX Runtime's quantizer places Q/DQ for ONNX Runtime's kernels: on the inputs
and outputs of every op it knows (Clip, pooling, Reshape, ...) and on biases as
int32. TensorRT's explicit quantization wants (NVIDIA's Q/DQ placement
recommendations; the ONNX parser's limits):

- Q/DQ on the activation inputs of Conv/ConvTranspose/Gemm/MatMul and on both
  inputs of residual Adds, nowhere else (TensorRT fuses Conv+bias+ReLU/Clip+Add
  and re-quantizes the output itself; a Q/DQ between Conv and its activation
  blocks that fusion);
- weights as int8 initializers -> DequantizeLinear, per channel on the output
  channel axis, values in [-127, 127], scales > 0;
- biases in float (the parser's DequantizeLinear takes int8 only);
- every zero point 0, given explicitly (TensorRT 8.5 needs three inputs);
- one DequantizeLinear per consumer.

The pass keeps the calibrated scales and the quantized weights; it only drops
roundings at sites TensorRT would not quantize, so the host proxy (ONNX
Runtime on this exact graph) simulates the int8 engine's numerics.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np

#: Weighted ops: index of their weight input.
WEIGHTED = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}
Q, DQ = "QuantizeLinear", "DequantizeLinear"


def weight_axis(node: Any, rank: int) -> int:
    """The output-channel axis of a weighted node's weight tensor."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1  # (C_in, C_out / group, kH, kW)
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return rank - 1  # MatMul: (..., K, N)


class QdqGraph:
    """Producer/consumer/constant lookups over one graph (rebuilt after edits)."""

    def __init__(self, model: Any) -> None:
        g = model.graph
        self.model = model
        self.inits = {t.name: t for t in g.initializer}
        self.producer = {o: n for n in g.node for o in n.output if o}
        self.consumers: dict[str, list[tuple[Any, int]]] = {}
        for n in g.node:
            for i, t in enumerate(n.input):
                if t:
                    self.consumers.setdefault(t, []).append((n, i))
        self.outputs = {o.name for o in g.output}
        self.shapes = {}
        for vi in (*g.input, *g.value_info, *g.output):
            dims = vi.type.tensor_type.shape.dim
            if vi.type.tensor_type.HasField("shape") and all(
                d.HasField("dim_value") for d in dims
            ):
                self.shapes[vi.name] = tuple(d.dim_value for d in dims)
        for t in g.initializer:
            self.shapes[t.name] = tuple(t.dims)

    def is_constant(self, t: str) -> bool:
        if t in self.inits:
            return True
        p = self.producer.get(t)
        if p is None:
            return False
        if p.op_type == "Constant":
            return True
        return p.op_type == DQ and p.input[0] in self.inits

    def activation_pair(self, t: str) -> tuple[Any, Any, str] | None:
        """(DQ, Q, float source) when ``t`` is DQ(Q(source)) of an activation."""
        dq = self.producer.get(t)
        if dq is None or dq.op_type != DQ or dq.input[0] in self.inits:
            return None
        q = self.producer.get(dq.input[0])
        if q is None or q.op_type != Q:
            return None
        return dq, q, q.input[0]

    def is_residual_add(self, node: Any) -> bool:
        """Both inputs computed (not constants) and of the same shape: a skip connection,
        not a bias add or a broadcast (attention mask) add."""
        if node.op_type != "Add" or len(node.input) != 2:
            return False
        a, b = (self._source(t) for t in node.input)
        if self.is_constant(a) or self.is_constant(b):
            return False
        sa, sb = self.shapes.get(a), self.shapes.get(b)
        return sa is None or sb is None or sa == sb

    def _source(self, t: str) -> str:
        pair = self.activation_pair(t)
        return pair[2] if pair else t


def _keeps_qdq(g: QdqGraph, node: Any, index: int, float_nodes: set[str]) -> bool:
    """Is a Q/DQ on input ``index`` of ``node`` one TensorRT fuses?"""
    if node.name in float_nodes:
        return False
    if node.op_type in ("Conv", "ConvTranspose"):
        return index == 0
    if node.op_type == "Gemm":
        return index == 0 or (index == 1 and not g.is_constant(node.input[1]))
    if node.op_type == "MatMul":
        return index in (0, 1)
    if node.op_type == "Add":
        return g.is_residual_add(node)
    return False


def dequantized_value(g: QdqGraph, dq: Any) -> np.ndarray:
    from onnx import numpy_helper

    q = numpy_helper.to_array(g.inits[dq.input[0]])
    scale = numpy_helper.to_array(g.inits[dq.input[1]]).astype(np.float32)
    zp = (numpy_helper.to_array(g.inits[dq.input[2]]) if len(dq.input) > 2 and dq.input[2]
          else np.zeros_like(scale, dtype=np.int64))
    if scale.ndim == 1 and scale.size > 1:
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1) % q.ndim
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    # float32 arithmetic, as DequantizeLinear computes it
    return ((q.astype(np.int64) - zp.astype(np.int64)).astype(np.float32) * scale).astype(
        np.float32)


def float_weighted_nodes(model: Any) -> list[str]:
    """Weighted nodes the quantizer kept in float: their weight is a plain float constant."""
    g = QdqGraph(model)
    out = []
    for node in model.graph.node:
        w = WEIGHTED.get(node.op_type)
        if w is None or len(node.input) <= w:
            continue
        p = g.producer.get(node.input[w])
        if node.input[w] in g.inits or (p is not None and p.op_type == "Constant"):
            out.append(node.name)
    return out


def tensorrt_placement(model: Any, float_nodes: Iterable[str] = ()) -> dict[str, Any]:
    """Rewrite ``model`` (in place) to TensorRT's Q/DQ placement; returns what changed.

    Nodes kept in float are ``float_nodes`` plus every weighted node whose weight
    the quantizer left in float, so the pass also works on a bare candidate.
    """
    from onnx import helper, numpy_helper

    float_nodes = set(float_nodes) | set(float_weighted_nodes(model))
    graph = model.graph
    report: dict[str, Any] = {"qdq_removed_before": Counter(), "dq_duplicated": 0,
                              "constants_dequantized": Counter(), "zero_points_added": 0,
                              "weight_scales_fixed": 0}

    # 1. one activation DQ per consumer edge (TensorRT cannot share a DQ between layers)
    g = QdqGraph(model)
    nodes = []
    for node in graph.node:
        nodes.append(node)
        if node.op_type != DQ or node.input[0] in g.inits:
            continue
        edges = g.consumers.get(node.output[0], [])
        extra = len(edges) - (0 if node.output[0] in g.outputs else 1)
        for k, (consumer, index) in enumerate(edges[len(edges) - extra:] if extra > 0 else []):
            copy = helper.make_node(DQ, list(node.input), [f"{node.output[0]}_dq{k + 1}"],
                                    name=f"{node.name}_dq{k + 1}")
            copy.attribute.extend(node.attribute)
            consumer.input[index] = copy.output[0]
            nodes.append(copy)
            report["dq_duplicated"] += 1
    del graph.node[:]
    graph.node.extend(nodes)

    # 2. drop Q/DQ at sites TensorRT does not quantize: the consumer reads the float source
    g = QdqGraph(model)
    dead: set[str] = set()
    for node in list(graph.node):
        for index, t in enumerate(node.input):
            pair = g.activation_pair(t)
            if pair is None or _keeps_qdq(g, node, index, float_nodes):
                continue
            node.input[index] = pair[2]
            dead.add(pair[0].name)
            report["qdq_removed_before"][node.op_type] += 1
    for i, node in enumerate(graph.node):  # graph outputs produced by a DQ: float instead
        if node.op_type == DQ and node.output[0] in g.outputs and g.activation_pair(
                node.output[0]):
            src = g.activation_pair(node.output[0])[2]
            graph.node[i].CopyFrom(helper.make_node("Identity", [src], [node.output[0]],
                                                    name=node.name))
            report["qdq_removed_before"]["graph output"] += 1
    _remove_unused(model, dead)

    # 3. constants through a DQ that is not a kept weight (int32 biases, Add/Mul constants)
    g = QdqGraph(model)
    for node in list(graph.node):
        for index, t in enumerate(node.input):
            dq = g.producer.get(t)
            if dq is None or dq.op_type != DQ or dq.input[0] not in g.inits:
                continue
            weight = (node.op_type in WEIGHTED and index == WEIGHTED[node.op_type]
                      and node.name not in float_nodes)
            if weight:
                continue
            name = f"{t}_float"
            if name not in g.inits:
                tensor = numpy_helper.from_array(dequantized_value(g, dq), name)
                graph.initializer.append(tensor)
                g.inits[name] = tensor
                report["constants_dequantized"][f"{node.op_type} input {index}"] += 1
            node.input[index] = name
    _remove_unused(model, set())

    # 4. explicit zero points; weight scales TensorRT accepts
    g = QdqGraph(model)
    for node in graph.node:
        if node.op_type not in (Q, DQ):
            continue
        if len(node.input) < 3 or not node.input[2]:
            scale = numpy_helper.to_array(g.inits[node.input[1]])
            zp_name = f"{node.name}_zero_point"
            graph.initializer.append(numpy_helper.from_array(
                np.zeros(scale.shape, np.int8), zp_name))
            while len(node.input) < 3:
                node.input.append("")
            node.input[2] = zp_name
            report["zero_points_added"] += 1
        if node.op_type == DQ and node.input[0] in g.inits:
            report["weight_scales_fixed"] += _fix_scales(g, node)
    report["qdq_removed_before"] = dict(sorted(report["qdq_removed_before"].items()))
    report["constants_dequantized"] = dict(sorted(report["constants_dequantized"].items()))
    return report


def _fix_scales(g: QdqGraph, dq: Any) -> int:
    """A channel of all-zero weights may carry scale 0; TensorRT rejects scales <= 0."""
    from onnx import numpy_helper

    scale = numpy_helper.to_array(g.inits[dq.input[1]]).astype(np.float32)
    bad = ~(np.isfinite(scale) & (scale > 0))
    if not bad.any():
        return 0
    q = numpy_helper.to_array(g.inits[dq.input[0]])
    if scale.size > 1:
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1) % q.ndim
        moved = np.moveaxis(q, axis, 0).reshape(scale.size, -1)
        if np.any(moved[bad] != 0):
            return 0  # a real problem: left for the checks to report
    elif np.any(q != 0):
        return 0
    fixed = np.where(bad, np.float32(1.0), scale).astype(np.float32)
    g.inits[dq.input[1]].CopyFrom(numpy_helper.from_array(fixed, dq.input[1]))
    return int(bad.sum())


def _remove_unused(model: Any, dead: set[str]) -> None:
    """Drop the given nodes and, repeatedly, Q/DQ nodes nobody reads; then stale initializers."""
    from edgepack.convert.onnx_cleanup import remove_unused_initializers

    graph = model.graph
    keep = [n for n in graph.node if n.name not in dead]
    outputs = {o.name for o in graph.output}
    while True:
        used = {t for n in keep for t in n.input} | outputs
        pruned = [n for n in keep if n.op_type not in (Q, DQ) or n.output[0] in used]
        if len(pruned) == len(keep):
            break
        keep = pruned
    del graph.node[:]
    graph.node.extend(keep)
    remove_unused_initializers(graph)


# --------------------------------------------------------------------------- checks


def check_tensorrt_qdq(model: Any, float_nodes: Iterable[str] = ()) -> list[str]:
    """Everything TensorRT's explicit quantization needs, as a list of problems (empty = ok).

    Zero points all 0 (int8); weights int8 in [-127, 127] through a per-channel DQ
    on the output-channel axis with positive scales; every activation input of a
    quantized Conv/ConvTranspose/Gemm/MatMul fed by DQ(Q(x)) with per-tensor
    scales; nodes kept in float read no Q/DQ; no int32 (bias) DequantizeLinear.
    """
    from onnx import TensorProto, numpy_helper

    float_nodes = set(float_nodes)
    g = QdqGraph(model)
    problems: list[str] = []
    for node in model.graph.node:
        if node.op_type not in (Q, DQ):
            continue
        if len(node.input) < 3 or not node.input[2]:
            problems.append(f"{node.name}: no zero point input")
            continue
        zp = g.inits.get(node.input[2])
        if zp is None:
            problems.append(f"{node.name}: zero point is not an initializer")
            continue
        if zp.data_type != TensorProto.INT8:
            kind = TensorProto.DataType.Name(zp.data_type)
            problems.append(f"{node.name}: zero point type {kind}, not INT8")
        if np.any(numpy_helper.to_array(zp) != 0):
            problems.append(f"{node.name}: non-zero zero point")
        scale = g.inits.get(node.input[1])
        if scale is None:
            problems.append(f"{node.name}: scale is not an initializer")
        elif not np.all(np.isfinite(s := numpy_helper.to_array(scale))) or np.any(s <= 0):
            problems.append(f"{node.name}: scale not positive and finite")
        if node.op_type == DQ and node.input[0] in g.inits:
            data = g.inits[node.input[0]]
            if data.data_type != TensorProto.INT8:
                problems.append(f"{node.name}: dequantizes a "
                                f"{TensorProto.DataType.Name(data.data_type)} constant "
                                "(TensorRT takes int8 only)")
    for node in model.graph.node:
        if node.op_type not in WEIGHTED:
            continue
        w_index = WEIGHTED[node.op_type]
        if len(node.input) <= w_index:
            continue
        weight = g.producer.get(node.input[w_index])
        two_activations = node.op_type in ("MatMul", "Gemm") and not g.is_constant(
            node.input[1])
        act_inputs = [0, 1] if two_activations else [0]
        if node.name in float_nodes:
            for i, t in enumerate(node.input):
                p = g.producer.get(t)
                if p is not None and p.op_type == DQ:
                    problems.append(f"{node.name} (kept in float): input {i} is dequantized")
            continue
        for i in act_inputs:
            if g.activation_pair(node.input[i]) is None:
                problems.append(f"{node.name}: activation input {i} is not fed by DQ(Q(x))")
            else:
                dq = g.producer[node.input[i]]
                s = g.inits.get(dq.input[1])
                if s is not None and numpy_helper.to_array(s).size != 1:
                    problems.append(f"{node.name}: activation input {i} is not per-tensor")
        if two_activations:
            continue  # activation x activation (attention scores): no weight
        if weight is None or weight.op_type != DQ or weight.input[0] not in g.inits:
            problems.append(f"{node.name}: weight is not an int8 initializer through a DQ")
            continue
        q = numpy_helper.to_array(g.inits[weight.input[0]])
        if q.dtype == np.int8 and q.size and int(q.min()) < -127:
            problems.append(f"{node.name}: weight values below -127")
        axis = weight_axis(node, q.ndim)
        scale = numpy_helper.to_array(g.inits[weight.input[1]])
        got = next((a.i for a in weight.attribute if a.name == "axis"), 1) % max(q.ndim, 1)
        channels = q.shape[axis] if q.ndim else 1
        if scale.size != channels or (channels > 1 and got != axis):
            problems.append(f"{node.name}: weight scale is not per-channel on axis {axis} "
                            f"({scale.size} scales, axis {got}, {channels} channels)")
    return problems


def qdq_summary(model: Any, float_nodes: Iterable[str] = ()) -> dict[str, Any]:
    """Counts for the manifest: quantized layers by type, residual Adds, Q/DQ nodes."""
    float_nodes = set(float_nodes)
    g = QdqGraph(model)
    layers: Counter = Counter()
    residual = 0
    for node in model.graph.node:
        if node.op_type in WEIGHTED and node.name not in float_nodes and g.activation_pair(
                node.input[0]):
            layers[node.op_type] += 1
        if node.op_type == "Add" and g.is_residual_add(node) and all(
                g.activation_pair(t) for t in node.input):
            residual += 1
    ops = Counter(n.op_type for n in model.graph.node)
    return {"quantized_layers": dict(sorted(layers.items())), "residual_adds_quantized": residual,
            "quantize_nodes": ops.get(Q, 0), "dequantize_nodes": ops.get(DQ, 0)}
