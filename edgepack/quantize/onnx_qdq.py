"""One static int8 candidate: which ops get Q/DQ, and ORT's QDQ quantizer run on cached
ranges and cached per-channel weights, with chosen nodes kept out (float or dynamic int8).

``onnx_static`` searches over these candidates; this module only builds one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgepack.frameworks import quiet
from edgepack.quantize.bias_correction import apply_bias_shifts
from edgepack.quantize.onnx_dynamic import dynamic_nodes, to_dynamic
from edgepack.quantize.onnx_session import initializers, tensor_digest
from edgepack.quantize.search import Budget

#: Nodes that may be kept in float by the search: the layers that carry weights (and
#: attention's activation x activation MatMuls). Together with embedding Gathers these
#: are the only ops whose quantization rounds anything new, so the search covers every
#: rounding in the graph.
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: Quantized only when their input already is, at the input's own scale: no new rounding.
SAME_SCALE_OPS = ("Flatten", "MaxPool", "Reshape", "Slice", "Squeeze", "Transpose", "Unsqueeze")
#: ReLU/Clip right after a quantized layer fold into its output range (U8S8).
FOLDED_ACTIVATIONS = ("Clip", "Relu")
#: Never quantized: normalization, softmax, residual/elementwise ops, GELU... ORT's
#: default list quantizes them too, outside any search: on the MiniLM encoder that
#: collapsed the output (cosine mean 0.37); with only the ops above all-int8 keeps a
#: calibration mean cosine of 0.944, 0.992 once Gemm outputs stay float (below).
#: Gemm outputs: a Gemm's output inside the graph is not quantized. ORT's QGemm
#: computes a float output (unlike QLinearConv/QLinearMatMul it needs no Q after it),
#: so the rounding only served the float readers, and on MiniLM it rounded the FFN
#: output's residual-stream outliers (one channel ~20x the median) before the float
#: Add/LayerNorm. A Gemm producing a graph output (logits) keeps ORT's int8 output.


@dataclass
class Int8Options:
    method: str = "auto"  # "auto" | "minmax" | "entropy" | "percentile"; auto = best calib score
    percentile: float = 99.999
    per_channel: bool = True
    symmetric: bool = False  # False: U8S8 (CPU); True: S8S8, zero point 0 (TensorRT form)
    bias_correction: bool = True  # tried on top of the chosen method; kept only if it scores higher
    budget: Budget = field(default_factory=Budget)
    # int8 embedding tables (Gather of a float initializer), searched like any layer.
    # TensorRT fuses Q/DQ into Conv/MatMul only, so its route keeps tables float.
    embeddings: bool = True
    # Applied to every candidate before it is scored and shipped (e.g. TensorRT's Q/DQ
    # placement): transform(model, nodes kept float) edits the ModelProto in place.
    transform: Callable[[Any, Sequence[str]], Any] | None = None
    # What the layers the search keeps out of static int8 become: "float", or "dynamic":
    # MatMul/Gemm with a float weight run as ORT dynamic int8 (MatMulInteger, per-channel
    # int8 weights, activations quantized at run time), other kept-out layers stay float.
    # ONNX Runtime CPU only (TensorRT has no MatMulInteger): its route keeps "float".
    fallback: str = "float"



def quant_op_types(embeddings: bool = True) -> list[str]:
    """The op types handed to ORT's quantizer: searched ops + exact (same-scale) ones."""
    ops = {*COMPUTE_OPS, *SAME_SCALE_OPS, *FOLDED_ACTIVATIONS}
    if embeddings:
        ops.add("Gather")
    # sorted: the quantizer keeps them in a set (order would vary per process)
    return sorted(ops)



# --------------------------------------------------------------------------- building


class WeightCache:
    """Per-channel weight quantization, computed once per quantization run.

    ORT quantizes weights channel by channel in Python (~70% of a candidate
    build on a 50-layer CNN). Weight parameters do not depend on which nodes
    are kept in float, so every candidate after the first reuses them.
    Keyed by tensor name + content digest, so a changed tensor is recomputed.
    """

    def __init__(self) -> None:
        self.params: dict[tuple, object] = {}
        self.weights: dict[tuple, object] = {}
        self.dynamic: dict[tuple, tuple] = {}  # dynamic-int8 weights: (q, scale)


def quantizer_classes(cache: WeightCache):
    from onnxruntime.quantization import qdq_quantizer as qdq_mod
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    class CachedQDQQuantizer(QDQQuantizer):
        def _calc_initializer_quant_params(self):
            inits = {i.name: i for i in self.model.initializer()}
            keys = {
                name: (name, str(info.tensor_type), info.axis, tensor_digest(inits[name]))
                for name, info in self.tensors_to_quantize.items()
                if name in inits
            }
            todo = {
                n: i for n, i in self.tensors_to_quantize.items() if keys.get(n) not in cache.params
            }
            everything = self.tensors_to_quantize
            self.tensors_to_quantize = todo
            try:
                fresh = super()._calc_initializer_quant_params()
            finally:
                self.tensors_to_quantize = everything
            for name, params in fresh.items():
                cache.params[keys[name]] = params
            # copies: bias-overflow adjustment may rescale a weight for this candidate only
            return {n: copy.deepcopy(cache.params[k]) for n, k in keys.items() if k in cache.params}

        def quantize_model(self):
            original = qdq_mod.quantize_onnx_initializer

            def memo(weight, quant_type, zero_point, scale, axis=None, *args, **kwargs):
                key = (
                    weight.name, tensor_digest(weight), quant_type, axis, repr((args, kwargs)),
                    np.asarray(zero_point).tobytes(), np.asarray(scale).tobytes(),
                )
                if key not in cache.weights:
                    cache.weights[key] = original(
                        weight, quant_type, zero_point, scale, axis, *args, **kwargs
                    )
                out = type(cache.weights[key])()
                out.CopyFrom(cache.weights[key])
                return out

            create = qdq_mod.CreateQDQQuantizer
            outputs = {o.name for o in self.model.graph().output}

            def float_gemm_output(quantizer, node):
                op = create(quantizer, node)
                if node.op_type == "Gemm" and node.output[0] not in outputs:
                    op.disable_qdq_for_node_output = True  # see the note on Gemm outputs
                return op

            qdq_mod.quantize_onnx_initializer = memo
            qdq_mod.CreateQDQQuantizer = float_gemm_output
            try:
                return super().quantize_model()
            finally:
                qdq_mod.quantize_onnx_initializer = original
                qdq_mod.CreateQDQQuantizer = create

    return CachedQDQQuantizer


def build_candidate(
    model,
    ranges,
    excluded: Sequence[str],
    options: Int8Options,
    shifts: dict[str, np.ndarray] | None = None,
    fmt: str = "QDQ",
    cache: WeightCache | None = None,
) -> Any:
    """One candidate (ModelProto): ORT's quantizer on a copy of `model` with cached ranges."""
    from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
    from onnxruntime.quantization.quant_utils import QuantizationMode, QuantType

    cache = cache or WeightCache()
    m = copy.deepcopy(model)
    if shifts:
        apply_bias_shifts(m, shifts, set(excluded))
    act = QuantType.QInt8 if options.symmetric else QuantType.QUInt8
    extra = {"ActivationSymmetric": options.symmetric, "WeightSymmetric": True}
    args = (copy.deepcopy(ranges), [], list(excluded), quant_op_types(options.embeddings),
            extra)
    with quiet():
        if fmt == "QDQ":
            cls = quantizer_classes(cache)
            q = cls(m, options.per_channel, False, QuantType.QInt8, act, *args)
        elif fmt == "QOperator":
            q = ONNXQuantizer(
                m,
                options.per_channel,
                False,
                QuantizationMode.QLinearOps,
                True,
                QuantType.QInt8,
                act,
                *args,
            )
        else:
            raise ValueError(f"unknown quantization format {fmt!r}")
        q.quantize_model()
        q.model.topological_sort()
    if options.fallback == "dynamic":
        to_dynamic(q.model.model, dynamic_nodes(q.model.model, excluded),
                   cache.dynamic, options.per_channel)
    if options.transform is not None:
        options.transform(q.model.model, list(excluded))
    return q.model.model



def compute_nodes(model, embeddings: bool = True) -> list[str]:
    """Candidates for float fallback, in graph order: weighted layers and attention
    MatMuls, plus (``embeddings``) Gathers of a float table."""
    import onnx

    floats = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    return [
        n.name for n in model.graph.node
        if n.op_type in COMPUTE_OPS
        or (embeddings and n.op_type == "Gather" and n.input and n.input[0] in floats)
    ]


def look_alike_groups(model, names: Sequence[str]) -> list[list[str]]:
    """Candidates alike in op, attributes, weight shape and input producers (past
    data-movement ops): e.g. the same projection in every transformer layer."""
    from onnx import helper

    inits = initializers(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    wanted = set(names)

    def source(t: str) -> str:
        for _ in range(16):
            node = producer.get(t)
            if node is None or node.op_type not in (*SAME_SCALE_OPS, "Identity"):
                break
            t = node.input[0]
        node = producer.get(t)
        return "constant" if t in inits else (node.op_type if node else "input")

    by_key: dict[tuple, list[str]] = {}
    for node in model.graph.node:
        if node.name not in wanted:
            continue
        attrs = tuple(sorted((a.name, repr(helper.get_attribute_value(a)))
                             for a in node.attribute))
        shapes = tuple(tuple(inits[t].dims) if t in inits else None for t in node.input)
        feeds = tuple(source(t) for t in node.input if t and t not in inits)
        by_key.setdefault((node.op_type, attrs, shapes, feeds), []).append(node.name)
    return [g for g in by_key.values() if len(g) > 1]


def fold_weight_dequantize(model) -> None:
    """DequantizeLinear of a constant -> its float value, computed once (in place).

    For scoring S8S8 candidates only: ORT CPU has no fast kernel for symmetric int8
    activations and re-dequantizes every weight on every run (~40 ms per MiniLM
    sentence). Folded, the same float32 values run ~4x faster; scores agreed with the
    unfolded graph to 2e-4 in mean cosine on the encoder.
    """
    from onnx import numpy_helper

    from edgepack.quantize.tensorrt_qdq import QdqGraph, dequantized_value

    g = QdqGraph(model)
    keep = []
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in g.inits:
            model.graph.initializer.append(
                numpy_helper.from_array(dequantized_value(g, node), node.output[0]))
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
