"""Bias correction for static int8: subtract the systematic output shift that
weight rounding causes (per output channel, measured on the calibration mean input)
from each quantized Conv/Gemm's bias. The static search tries it on top of the
chosen calibration method and keeps it only where it scores higher.
"""

from __future__ import annotations

import numpy as np

from edgepack.quantize.onnx_session import initializers
from edgepack.runners.onnxruntime import OnnxRuntimeRunner


def dequantized_weights(qmodel) -> dict[str, np.ndarray]:
    """node name -> the weight the int8 artifact really uses (DequantizeLinear of input 1)."""
    from onnx import numpy_helper

    inits = initializers(qmodel)
    producer = {o: n for n in qmodel.graph.node for o in n.output}
    out = {}
    for node in qmodel.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2:
            continue
        dq = producer.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            continue
        q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float64)
        scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
        zp = (
            numpy_helper.to_array(inits[dq.input[2]]).astype(np.float64)
            if len(dq.input) > 2 and dq.input[2]
            else np.zeros_like(scale)
        )
        if scale.ndim == 1 and scale.size > 1:
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            shape = [1] * q.ndim
            shape[axis] = -1
            scale, zp = scale.reshape(shape), zp.reshape(shape)
        out[node.name] = (q - zp) * scale
    return out


def bias_shifts(model, qmodel, means: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Expected output shift per output channel caused by weight rounding, per node.

    shift = E[conv(x, W_q - W)] averaged over positions, computed exactly on the
    calibration mean input map (padding included) with a one-node ORT model.
    Subtracting it from the bias removes the systematic part of the weight error.
    """
    import onnx
    from onnx import helper, numpy_helper

    inits = initializers(model)
    wq = dequantized_weights(qmodel)
    shifts = {}
    for node in model.graph.node:
        if node.name not in wq or node.input[0] not in means or node.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        err = wq[node.name] - w
        if err.shape != w.shape or not np.any(err):
            continue
        mean = means[node.input[0]]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Gemm":
            if attrs.get("transA", 0) or mean.ndim != 1:
                continue
            e = err.T if attrs.get("transB", 0) else err  # (K, N)
            beta = attrs.get("beta", 1.0) or 1.0
            shifts[node.name] = attrs.get("alpha", 1.0) * (mean @ e) / beta
            continue
        # Conv: convolve the mean input map with the weight error
        x = mean[None].astype(np.float32)
        g = helper.make_graph(
            [helper.make_node("Conv", ["x", "e"], ["y"], **attrs)],
            "shift",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(x.shape))],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
            [numpy_helper.from_array(err.astype(np.float32), "e")],
        )
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        y = OnnxRuntimeRunner(m.SerializeToString()).run({"x": x})["y"][0]
        shifts[node.name] = y.reshape(y.shape[0], -1).astype(np.float64).mean(axis=1)
    return shifts


def apply_bias_shifts(model, shifts: dict[str, np.ndarray], excluded: set[str]) -> None:
    """Subtract the shifts from the biases of quantized nodes (in place, on a copy)."""
    from onnx import numpy_helper

    inits = initializers(model)
    users: dict[str, int] = {}
    for node in model.graph.node:
        for t in node.input:
            users[t] = users.get(t, 0) + 1
    for node in model.graph.node:
        shift = shifts.get(node.name)
        if shift is None or node.name in excluded:
            continue
        if len(node.input) > 2 and node.input[2]:
            b = node.input[2]
            if b not in inits or users[b] != 1:
                continue
            old = numpy_helper.to_array(inits[b])
            if old.size != shift.size:
                continue
            new = (old.astype(np.float64) - shift.reshape(old.shape)).astype(old.dtype)
            inits[b].CopyFrom(numpy_helper.from_array(new, b))
        elif node.op_type == "Conv":
            b = f"{node.name}_bias_corrected"
            model.graph.initializer.append(numpy_helper.from_array((-shift).astype(np.float32), b))
            while len(node.input) < 3:
                node.input.append("")
            node.input[2] = b
