"""ONNX -> ONNX static int8 with ONNX Runtime: QDQ, accuracy-aware.

Static int8 goes through the backend-agnostic search (edgepack.quantize.search):
the fp32 model is run ONCE over the calibration data to collect every range
(MinMax, Percentile and Entropy from the same pass) and the input means used by
bias correction; each candidate (a different set of nodes kept in float) is then
built from those cached ranges by ORT's own QDQQuantizer in well under a second.
With ``Int8Options.fallback = "dynamic"`` (the onnx-cpu route) the kept-out MatMul/Gemm
layers of every candidate run as ORT dynamic int8 instead (MatMulInteger, per-channel
int8 weights as quantize_dynamic makes them, activations quantized per run), so the
search scores exactly what ships; kept-out Conv/Gather/attention MatMuls stay float.
The helpers live beside this module: onnx_ort (sessions, fp32 preparation),
onnx_calibration, onnx_bias_correction, onnx_dynamic_int8 (the fallback, and the
int8-dynamic precision).

What gets quantized: only ops the search can keep in float (COMPUTE_OPS, embedding
Gathers) plus ops that reuse their input's scale, so every rounding in an int8
artifact is one the search measured and could undo.

Pitfalls this module exists to avoid (measured, see TOOLCHAIN.md):
- ORT's ``WeightBiasQuantization`` optimizer re-quantizes (per-tensor) a float
  Conv/Gemm whose input comes from a DequantizeLinear, silently undoing the
  float fallback: every session of our int8 models disables it
  (``SESSION_DISABLED_OPTIMIZERS``), and bundles must record that.
- ``CalibTensorRangeSymmetric`` with uint8 activations removes ReLU6: never set.
- ORT writes scratch files next to its input model: we only ever hand it copies
  inside a private temporary directory.
"""

from __future__ import annotations

import copy
import hashlib
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.errors import ConversionError, InputError
from edgepack.frameworks import quiet
from edgepack.quantize.bias_correction import apply_bias_shifts, bias_shifts
from edgepack.quantize.calibration import calibrate
from edgepack.quantize.onnx_dynamic import dynamic_nodes, to_dynamic
from edgepack.quantize.onnx_session import (
    PREPROCESS,
    SESSION_DISABLED_OPTIMIZERS,
    initializers,
    int8_runner,
    load_fp32,
    ort_version,
    tensor_digest,
)
from edgepack.quantize.search import Budget, ranks_on_subset, round_score, search
from edgepack.runners.base import run_samples
from edgepack.runners.onnxruntime import OnnxRuntimeRunner

METHODS = ("minmax", "percentile", "entropy")
#: What "auto" tries. Entropy scored no better than MinMax on real models
#: (TOOLCHAIN.md, and here) and its histograms cost ~20 s on a 224px CNN.
AUTO_METHODS = ("minmax", "percentile")
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



def _quant_op_types(embeddings: bool = True) -> list[str]:
    """The op types handed to ORT's quantizer: searched ops + exact (same-scale) ones."""
    ops = {*COMPUTE_OPS, *SAME_SCALE_OPS, *FOLDED_ACTIVATIONS}
    if embeddings:
        ops.add("Gather")
    # sorted: the quantizer keeps them in a set (order would vary per process)
    return sorted(ops)



# --------------------------------------------------------------------------- building


class _WeightCache:
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


def _quantizer_classes(cache: _WeightCache):
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


def _build(
    model,
    ranges,
    excluded: Sequence[str],
    options: Int8Options,
    shifts: dict[str, np.ndarray] | None = None,
    fmt: str = "QDQ",
    cache: _WeightCache | None = None,
) -> Any:
    """One candidate (ModelProto): ORT's quantizer on a copy of `model` with cached ranges."""
    from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
    from onnxruntime.quantization.quant_utils import QuantizationMode, QuantType

    cache = cache or _WeightCache()
    m = copy.deepcopy(model)
    if shifts:
        apply_bias_shifts(m, shifts, set(excluded))
    act = QuantType.QInt8 if options.symmetric else QuantType.QUInt8
    extra = {"ActivationSymmetric": options.symmetric, "WeightSymmetric": True}
    args = (copy.deepcopy(ranges), [], list(excluded), _quant_op_types(options.embeddings),
            extra)
    with quiet():
        if fmt == "QDQ":
            cls = _quantizer_classes(cache)
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



#: Leave-one-out ranks on this many calibration samples (``ranks_on_subset``): on
#: MiniLM one full score (200 sentences) took ~2.5 s of a ~3.3 s candidate, on
#: EfficientNet-Lite0 (80 photos) 1.5 s of 2.2 s, and the ranking only orders the
#: greedy steps, which are scored in full.
RANK_SAMPLES = 48


def _ranking_score(model, calib: dict[str, np.ndarray], batch: int,
                   scoring_path: Callable[[Path], Path]):
    """(rank(artifact) -> mean cosine to the fp32 graph on a fixed, evenly spaced subset
    of the calibration batches, samples used), or (None, None) for small sets."""
    n = len(next(iter(calib.values())))
    batches = n // batch
    want = max(1, RANK_SAMPLES // batch)
    if not ranks_on_subset(batches, want):
        return None, None
    picks = np.linspace(0, batches - 1, want).round().astype(int)
    idx = np.concatenate([np.arange(b * batch, (b + 1) * batch) for b in picks])
    subset = {k: np.ascontiguousarray(v[idx]) for k, v in calib.items()}
    reference = run_samples(OnnxRuntimeRunner(model.SerializeToString()), subset,
                            batch)

    def rank(path: Path) -> float:
        outs = run_samples(int8_runner(scoring_path(path)), subset, batch)
        return min(_mean_cosine(reference[k], outs[k]) for k in reference)

    return rank, len(idx)


def _mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(den > 0, (a * b).sum(1) / np.where(den > 0, den, 1.0), 1.0)
    return float(cos.mean())


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


def _fold_weight_dequantize(model) -> None:
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


# --------------------------------------------------------------------------- public API


def quantize_static_int8(
    fp32_path: Path,
    out_path: Path,
    calib: dict[str, np.ndarray],
    batch: int,
    accept: Callable[[dict[str, np.ndarray]], tuple[bool, float]],
    options: Int8Options,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Static int8 (QDQ, per-channel weights) that passes `accept` on calib, or says it did not.

    `accept(outputs_on_calib) -> (meets tolerances, score)`; outputs are the
    candidate's, samples concatenated on axis 0 in calib order. Returns the
    manifest's `quantization` record; writes a single-file ONNX to `out_path`.
    """
    say = progress or (lambda _msg: None)
    method = options.method
    if method != "auto" and method not in METHODS:
        raise InputError(f"unknown calibration method {method!r}: use auto, {', '.join(METHODS)}")
    if batch < 1:
        raise InputError(f"batch must be >= 1, got {batch}")
    methods = list(AUTO_METHODS) if method == "auto" else [method]
    if options.fallback not in ("float", "dynamic"):
        raise InputError(f"unknown int8 fallback {options.fallback!r}: use float or dynamic")
    import onnx

    with tempfile.TemporaryDirectory(prefix="edgepack-int8-") as tmp:
        work = Path(tmp)
        model, renamed = load_fp32(Path(fp32_path), work)
        inits = initializers(model)
        wanted = [i.name for i in model.graph.input if i.name not in inits]
        if sorted(calib) != sorted(wanted):
            raise InputError(
                f"calibration data has inputs {sorted(calib)}, the model needs {wanted}"
            )
        say(f"calibrating ({', '.join(methods)})")
        try:
            cal = calibrate(model, calib, batch, methods, options.percentile,
                            _quant_op_types(options.embeddings))
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - ORT raises bare RuntimeErrors
            raise ConversionError(f"calibration run failed: {exc}") from exc

        built: dict[tuple, Path] = {}
        dynamic_of: dict[Path, list[str]] = {}  # artifact -> its nodes_dynamic
        wcache = _WeightCache()
        scored: dict[Path, tuple[bool, float]] = {}

        def build(m: str, excluded: Sequence[str], shifts=None) -> Path:
            key = (m, tuple(sorted(excluded)), shifts is not None)
            if key not in built:
                try:
                    proto = _build(model, cal.ranges[m], excluded, options, shifts, cache=wcache)
                except Exception as exc:  # noqa: BLE001
                    raise ConversionError(f"ORT quantization failed ({m}): {exc}") from exc
                digest = hashlib.sha256(repr(key).encode()).hexdigest()[:16]
                path = work / f"cand-{digest}.onnx"
                path.write_bytes(proto.SerializeToString())
                integer = {n.name for n in proto.graph.node if n.op_type == "MatMulInteger"}
                dynamic_of[path] = [n for n in excluded if n in integer]
                if options.symmetric:  # scored in a faster, equivalent form
                    _fold_weight_dequantize(proto)
                    path.with_suffix(".score.onnx").write_bytes(proto.SerializeToString())
                built[key] = path
            return built[key]

        def evaluate_path(path: Path) -> Path:
            scoring = path.with_suffix(".score.onnx")
            return scoring if scoring.is_file() else path

        def evaluate(path: Path) -> tuple[bool, float]:
            if path not in scored:
                outs = run_samples(int8_runner(evaluate_path(path)), calib, batch)
                ok, score = accept(outs)
                score = float(score)
                if not np.isfinite(score):  # e.g. NaN outputs: worst, never passes
                    ok, score = False, float("-inf")
                scored[path] = (bool(ok), score)
            return scored[path]

        # 1. calibration method (and bias correction) by measured score, all nodes int8
        tried = []
        shifts_of: dict[str, dict | None] = {}

        def trial(m: str, corrected: bool) -> None:
            ok, score = evaluate(build(m, [], shifts_of[m] if corrected else None))
            tried.append({"method": m, "bias_correction": corrected, "score": score, "passed": ok})

        for m in methods:
            say(f"scoring calibration ({m})")
            trial(m, False)
            if options.bias_correction:
                say(f"bias correction ({m})")
                qmodel = onnx.load_from_string(build(m, []).read_bytes())
                shifts_of[m] = bias_shifts(model, qmodel, cal.means) or None
                if shifts_of[m]:
                    trial(m, True)
        # passing first, then score; ties: listed method order, plain before corrected
        best = max(
            tried,
            key=lambda t: (
                t["passed"], t["score"], -methods.index(t["method"]), -t["bias_correction"]
            ),
        )
        chosen = best["method"]
        shifts = shifts_of.get(chosen) if best["bias_correction"] else None

        # 2. accuracy-aware search over layers kept in float
        rank, rank_samples = _ranking_score(model, calib, batch, evaluate_path)
        candidates = compute_nodes(model, options.embeddings)
        result = search(
            quantize=lambda excluded: build(chosen, excluded, shifts),
            evaluate=evaluate,
            candidates=candidates,
            budget=options.budget,
            progress=say,
            rank=rank,
            groups=look_alike_groups(model, candidates),
        )
        data = Path(result.artifact).read_bytes()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(data)

    ops = {n.name: n.op_type for n in model.graph.node}
    loo = dict(result.ranking)
    rec = result.to_record()
    dynamic = dynamic_of[Path(result.artifact)]

    def kept_out(names: Sequence[str], **extra) -> list[dict]:
        return [
            {
                "name": n,
                "op_type": ops.get(n),
                **extra,
                "reason": "leave-one-out",
                "leave_one_out_score": round_score(loo.get(n)),
            }
            for n in names
        ]
    return {
        "method": "static-qdq",
        "format": "QDQ",
        "activation_type": "int8" if options.symmetric else "uint8",
        "weight_type": "int8",
        "per_channel": options.per_channel,
        "symmetric": options.symmetric,
        "calibration": {
            "method": chosen,
            "percentile": options.percentile if chosen == "percentile" else None,
            "samples": cal.samples,
            "batch": batch,
            "candidates": [{**t, "score": round_score(t["score"])} for t in tried],
        },
        "bias_correction": shifts is not None,
        # layers the search kept out of static int8: float, or (fallback "dynamic") ORT
        # dynamic int8; the artifact's MatMulInteger nodes carry the nodes_dynamic names
        "fallback": options.fallback,
        "nodes_kept_float": kept_out([n for n in result.excluded if n not in dynamic]),
        "nodes_dynamic": kept_out(dynamic, runs_as="MatMulInteger",
                                  weight_type="int8", per_channel=options.per_channel),
        "nodes_renamed": renamed,
        "preprocess": PREPROCESS,
        "search": {**rec, "leave_one_out_samples": rank_samples or cal.samples},
        "passed": result.passed,
        "score": round_score(result.score),
        "disabled_optimizers": list(SESSION_DISABLED_OPTIMIZERS),
        "toolchain": {"onnxruntime": ort_version()},
    }

