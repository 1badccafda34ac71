"""ONNX Runtime dynamic int8: the ``int8-dynamic`` precision (quantize_dynamic_int8)
and the "dynamic" fallback of the static search (to_dynamic), which runs the layers
the search kept out of static int8 as MatMulInteger instead of float.

Both write the node pattern ORT's quantize_dynamic writes (DynamicQuantizeLinear ->
MatMulInteger -> Cast -> Mul), which ORT CPU fuses into DynamicQuantizeMatMul.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgepack.errors import ConversionError
from edgepack.frameworks import quiet
from edgepack.quantize.onnx_session import (
    PREPROCESS,
    SESSION_DISABLED_OPTIMIZERS,
    initializers,
    load_fp32,
    ort_version,
    tensor_digest,
)

#: Dynamic int8 quantizes these only. Dynamic Conv (ConvInteger) measured on
#: EfficientNet-Lite0: top-1 agreement 0.60 and 17x slower than fp32. Gather: int8
#: embedding tables (half of MiniLM's weights; its int8-dynamic went from 1.56x to
#: 3.9x smaller than fp32, cosine min/mean 0.979/0.993).
DYNAMIC_OPS = ("MatMul", "Gemm", "Gather")
#: Pre-optimizations dynamic int8 goes without. MatMulAddFusion turns a 3-D
#: MatMul + Add into Reshape -> Gemm -> Reshape; dynamic int8 then runs the same
#: MatMulInteger between two extra Reshapes: MiniLM 2.5 % slower (paired rounds).
DYNAMIC_UNFUSED = ("MatMulAddFusion",)


def quantize_dynamic_int8(fp32_path: Path, out_path: Path) -> dict:
    """ORT dynamic int8 of MatMul/Gemm/Gather: per-channel int8 weights, activations
    quantized at run time; convolutions weight-only int8 (onnx_weight_only)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgepack.quantize.onnx_weight_only import quantize_conv_weights

    with tempfile.TemporaryDirectory(prefix="edgepack-int8-") as tmp:
        work = Path(tmp)
        model, renamed = load_fp32(Path(fp32_path), work, DYNAMIC_UNFUSED)
        import onnx

        src = work / "named.onnx"
        onnx.save_model(model, str(src))
        dst = work / "dynamic.onnx"
        try:
            with quiet():
                quantize_dynamic(
                    src, dst, per_channel=True, weight_type=QuantType.QInt8,
                    op_types_to_quantize=list(DYNAMIC_OPS),
                )
        except Exception as exc:  # noqa: BLE001
            raise ConversionError(f"ORT dynamic quantization failed: {exc}") from exc
        quantized = onnx.load(str(dst))
    weight_only = quantize_conv_weights(quantized)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(quantized, str(out_path))
    return {
        "method": "dynamic",
        "format": "QOperator",
        "activation_type": "uint8 (dynamic, per batch)",
        "weight_type": "int8",
        "per_channel": True,
        "symmetric": False,
        "op_types": list(DYNAMIC_OPS),
        "weight_only": weight_only,
        "preprocess": f"{PREPROCESS}; not: {', '.join(DYNAMIC_UNFUSED)}",
        "calibration": None,
        "nodes_kept_float": [],
        "nodes_renamed": renamed,
        "disabled_optimizers": list(SESSION_DISABLED_OPTIMIZERS),
        "toolchain": {"onnxruntime": ort_version()},
    }



#: Kept-out layers that the "dynamic" fallback runs as ORT dynamic int8.
DYNAMIC_FALLBACK_OPS = ("Gemm", "MatMul")


def _attr(node, name: str, default):
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name),
                default)


def dynamic_nodes(model, excluded: Sequence[str]) -> list[str]:
    """The nodes of `excluded` the "dynamic" fallback quantizes dynamically, in `excluded`
    order: MatMul/Gemm whose weight (input 1) is a 2-D float initializer (Gemm: not
    transA). Attention's activation x activation MatMuls, Conv, Gather... stay float."""
    import onnx

    inits = initializers(model)
    by_name = {n.name: n for n in model.graph.node}
    out = []
    for name in excluded:
        node = by_name.get(name)
        if node is None or node.op_type not in DYNAMIC_FALLBACK_OPS or len(node.input) < 2:
            continue
        w = inits.get(node.input[1])
        if w is None or w.data_type != onnx.TensorProto.FLOAT or len(w.dims) != 2:
            continue
        if node.op_type == "Gemm" and _attr(node, "transA", 0):
            continue
        if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] and \
                node.input[2] not in inits:
            continue  # a computed bias: rare, keep it simple (float)
        out.append(name)
    return out


def dynamic_weight(w: np.ndarray, per_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """int8 weights as ORT's dynamic quantizer makes them: symmetric, [-127, 127], zero
    point 0, one scale per output column (axis 1 of the (K, N) MatMul weight)."""
    absmax = np.abs(w).max(axis=0) if per_channel else np.abs(w).max(keepdims=True)
    scale = (absmax.astype(np.float64) / 127.0).astype(np.float32)
    scale = np.where(scale > np.finfo(np.float32).tiny, scale, np.float32(1.0))
    q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
    return q, scale.reshape(-1) if per_channel else scale.reshape(())


def to_dynamic(model, names: Sequence[str], memo: dict, per_channel: bool) -> None:
    """Replace float MatMul/Gemm nodes `names` (see dynamic_nodes) by ORT's dynamic int8
    form, in place: DynamicQuantizeLinear(x) -> MatMulInteger -> Cast -> Mul(x_scale *
    w_scale) [-> Add(bias)], the node pattern ORT's quantize_dynamic writes and ORT CPU
    fuses into DynamicQuantizeMatMul. The MatMulInteger keeps the original node's name
    (the manifest's nodes_dynamic); one DynamicQuantizeLinear per input tensor.
    ``memo`` holds the int8 weights across the candidates of one search."""
    import onnx
    from onnx import helper, numpy_helper

    from edgepack.convert.onnx_cleanup import name_maker

    if not names:
        return
    graph = model.graph
    inits = initializers(model)
    wanted = set(names)
    fresh = name_maker(graph)

    dql: dict[str, list[str]] = {}  # input tensor -> [q, scale, zero point]
    new_nodes = []
    new_inits = []
    for node in graph.node:
        if node.name not in wanted:
            new_nodes.append(node)
            continue
        x, w_name, y = node.input[0], node.input[1], node.output[0]
        w_init = inits[w_name]
        alpha, trans_b, beta = 1.0, 0, 1.0
        if node.op_type == "Gemm":
            alpha = float(_attr(node, "alpha", 1.0))
            beta = float(_attr(node, "beta", 1.0))
            trans_b = int(_attr(node, "transB", 0))
        key = (w_name, tensor_digest(w_init), trans_b, alpha, per_channel)
        if key not in memo:
            w = numpy_helper.to_array(w_init).astype(np.float32)
            w = (w.T if trans_b else w) * np.float32(alpha)
            memo[key] = dynamic_weight(np.ascontiguousarray(w), per_channel)
        wq, ws = memo[key]
        stem = node.name
        wq_name, ws_name, wz_name = (fresh(f"{w_name}_dyn_quantized"),
                                     fresh(f"{w_name}_dyn_scale"),
                                     fresh(f"{w_name}_dyn_zero_point"))
        new_inits += [numpy_helper.from_array(wq, wq_name), numpy_helper.from_array(ws, ws_name),
                      numpy_helper.from_array(np.zeros(ws.shape, np.int8), wz_name)]
        if x not in dql:
            dql[x] = [fresh(f"{x}_dyn_{s}") for s in ("quantized", "scale", "zero_point")]
            new_nodes.append(helper.make_node("DynamicQuantizeLinear", [x], dql[x],
                                              fresh(f"{x}_DynamicQuantizeLinear")))
        xq, xs, xz = dql[x]
        acc, cast, scales = fresh(f"{y}_dyn_int32"), fresh(f"{y}_dyn_float"), fresh(f"{y}_dyn_s")
        has_bias = node.op_type == "Gemm" and len(node.input) > 2 and bool(node.input[2])
        prod = fresh(f"{y}_dyn_matmul") if has_bias else y
        new_nodes += [
            helper.make_node("MatMulInteger", [xq, wq_name, xz, wz_name], [acc], stem),
            helper.make_node("Cast", [acc], [cast], fresh(f"{stem}_cast"),
                             to=onnx.TensorProto.FLOAT),
            helper.make_node("Mul", [xs, ws_name], [scales], fresh(f"{stem}_scales_mul")),
            helper.make_node("Mul", [cast, scales], [prod], fresh(f"{stem}_output_scale_mul")),
        ]
        if has_bias:
            bias = node.input[2]
            if beta != 1.0:
                b = numpy_helper.to_array(inits[bias]).astype(np.float32) * np.float32(beta)
                bias = fresh(f"{bias}_beta")
                new_inits.append(numpy_helper.from_array(b, bias))
            new_nodes.append(helper.make_node("Add", [prod, bias], [y], fresh(f"{stem}_bias_add")))
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(new_inits)
    used = {t for n in graph.node for t in n.input} | {o.name for o in graph.output}
    for i in reversed(range(len(graph.initializer))):  # the float weights now unused
        if graph.initializer[i].name not in used:
            del graph.initializer[i]
