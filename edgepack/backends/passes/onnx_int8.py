"""ONNX -> ONNX int8 with ONNX Runtime: static QDQ (accuracy-aware) and dynamic.

Static int8 goes through the backend-agnostic search (edgepack.quantize.search):
the fp32 model is run ONCE over the calibration data to collect every range
(MinMax, Percentile and Entropy from the same pass) and the input means used by
bias correction; each candidate (a different set of nodes kept in float) is then
built from those cached ranges by ORT's own QDQQuantizer in well under a second.
With ``Int8Options.fallback = "dynamic"`` (the onnx-cpu route) the kept-out MatMul/Gemm
layers of every candidate run as ORT dynamic int8 instead (MatMulInteger, per-channel
int8 weights as quantize_dynamic makes them, activations quantized per run), so the
search scores exactly what ships; kept-out Conv/Gather/attention MatMuls stay float.

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

import contextlib
import copy
import hashlib
import io
import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.errors import ConversionError, InputError
from edgepack.quantize.search import Budget, ranks_on_subset, round_score, search
from edgepack.runners.base import run_samples

#: Every session of an int8 model we produce must disable these ORT optimizers.
SESSION_DISABLED_OPTIMIZERS = ["WeightBiasQuantization"]
#: Fixed intra-op thread count for every session created here (determinism).
SESSION_THREADS = 1

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

#: Applied to the fp32 graph before quantizing (recorded in the manifest).
PREPROCESS = "onnxruntime basic graph optimizations (constant folding, Conv+Pad/BN fusion)"
#: Histograms are updated every >= this many samples (bounds memory; the order is fixed).
_HIST_CHUNK = 16


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


# --------------------------------------------------------------------------- sessions


class _OrtRunner:
    """Minimal Runner over an ORT session with our fixed, documented options."""

    def __init__(self, model: str | bytes | Path, quantized: bool = True) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = SESSION_THREADS
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        src = str(model) if isinstance(model, Path) else model
        kwargs = {"disabled_optimizers": SESSION_DISABLED_OPTIMIZERS} if quantized else {}
        self.session = ort.InferenceSession(
            src, sess_options=opts, providers=["CPUExecutionProvider"], **kwargs
        )
        self.name = "onnxruntime"
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(None, feeds), strict=True))


# --------------------------------------------------------------------------- model prep


def _quiet():
    """ORT's calibration and quantizer print and log chatter; passes never print."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    stack.callback(logger.setLevel, level)
    return stack


def name_nodes(model) -> int:
    """Give every unnamed (or duplicate-named) node a deterministic unique name.

    Node names are how the search and the manifest refer to layers kept in float.
    Returns how many nodes were renamed.
    """
    seen: set[str] = set()
    renamed = 0
    taken = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if node.name and node.name not in seen:
            seen.add(node.name)
            continue
        base = f"{node.op_type}_{i}"
        name, k = base, 1
        while name in taken or name in seen:
            name, k = f"{base}_{k}", k + 1
        node.name = name
        seen.add(name)
        renamed += 1
    return renamed


def _load_fp32(fp32_path: Path, workdir: Path, disabled: Sequence[str] = ()):
    """Load, name nodes, pre-optimize, re-load shape-inferred; all inside `workdir`.

    Pre-optimization is ORT's BASIC level (constant folding, Pad/BN folded
    into Conv, redundant nodes removed): portable ONNX, no contrib ops. It is
    what ORT asks for before quantizing, and it shrinks exported graphs a lot
    (EfficientNet-Lite0: 458 -> 94 nodes), making every candidate build faster.
    ORT writes `<name>-inferred.onnx` next to the file it loads, hence the
    private copies. ``disabled``: ORT optimizers left out of the pre-optimization.
    Returns (inferred model, renamed count).
    """
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization.quant_utils import (
        QuantType,
        load_model_with_shape_infer,
        update_opset_version,
    )

    fp32_path = Path(fp32_path)
    if not fp32_path.is_file():
        raise InputError(f"ONNX model not found: {fp32_path}")
    try:
        model = onnx.load(str(fp32_path))
    except Exception as exc:  # noqa: BLE001 - onnx raises several types
        raise InputError(f"cannot read ONNX model {fp32_path.name}: {exc}") from exc
    renamed = name_nodes(model)
    named = workdir / "fp32-named.onnx"
    onnx.save_model(model, str(named))
    optimized = workdir / "fp32.onnx"
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(optimized)
    opts.log_severity_level = 3
    try:
        ort.InferenceSession(str(named), opts, providers=["CPUExecutionProvider"],
                             disabled_optimizers=list(disabled))
    except Exception as exc:  # noqa: BLE001
        raise ConversionError(f"ONNX Runtime cannot load the fp32 model: {exc}") from exc
    model = onnx.load(str(optimized))
    used = {n.domain for n in model.graph.node}
    keep = [o for o in model.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    renamed += name_nodes(model)
    onnx.save_model(model, str(optimized))
    inferred = load_model_with_shape_infer(optimized)
    inferred = update_opset_version(inferred, QuantType.QInt8, QuantType.QUInt8)
    return inferred, renamed


def _quant_op_types(embeddings: bool = True) -> list[str]:
    """The op types handed to ORT's quantizer: searched ops + exact (same-scale) ones."""
    ops = {*COMPUTE_OPS, *SAME_SCALE_OPS, *FOLDED_ACTIVATIONS}
    if embeddings:
        ops.add("Gather")
    # sorted: the quantizer keeps them in a set (order would vary per process)
    return sorted(ops)


def _inits(model) -> dict:
    return {i.name: i for i in model.graph.initializer}


# --------------------------------------------------------------------------- calibration


@dataclass
class _Calibration:
    ranges: dict  # method -> onnxruntime TensorsData
    means: dict[str, np.ndarray]  # tensor -> per-sample mean (float64), inputs of weighted nodes
    samples: int


def _calibrate(
    model, calib: dict[str, np.ndarray], batch: int, methods: Sequence[str], percentile: float,
    embeddings: bool = True,
) -> _Calibration:
    """One fp32 pass over `calib` -> ranges for every method in `methods` + input means.

    Uses ORT's own HistogramCollector / TensorsData, i.e. what its Percentile
    and Entropy calibrators compute (same bins, same merge), without one
    augmented-model run per method.
    """
    import onnx
    from onnxruntime.quantization.calibrate import (
        CalibrationMethod,
        HistogramCollector,
        TensorData,
        TensorsData,
    )

    ops = set(_quant_op_types(embeddings))
    vis = {vi.name: vi for vi in model.graph.value_info}
    vis.update({o.name: o for o in model.graph.output})
    vis.update({i.name: i for i in model.graph.input})
    inits = _inits(model)
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    tensors: list[str] = []
    for node in model.graph.node:
        if node.op_type not in ops:
            continue
        for t in (*node.input, *node.output):
            vi = vis.get(t)
            if (
                t
                and t not in inits
                and vi is not None
                and vi.type.HasField("tensor_type")
                and vi.type.tensor_type.elem_type in floats
                and t not in tensors
            ):
                tensors.append(t)
    mean_of = {
        n.input[0]
        for n in model.graph.node
        if n.op_type in ("Conv", "Gemm") and len(n.input) > 1 and n.input[1] in inits
    } & set(tensors)

    aug = copy.deepcopy(model)
    outputs = {o.name for o in aug.graph.output}
    for t in tensors:
        if t not in outputs:
            aug.graph.output.append(vis[t])
    runner = _OrtRunner(aug.SerializeToString(), quantized=False)
    names = runner.output_names

    counts = {len(v) for v in calib.values()}
    if len(counts) != 1:
        raise InputError(f"calibration inputs disagree on the number of samples: {sorted(counts)}")
    (n,) = counts
    if n == 0 or n % batch:
        raise InputError(f"{n} calibration samples do not split into batches of {batch}")

    lo: dict[str, float] = {}
    hi: dict[str, float] = {}
    sums: dict[str, np.ndarray] = {}
    collectors = {}
    if "percentile" in methods:
        # |x| histogram, as ORT's default percentile calibrator; clipped to min/max later
        collectors["percentile"] = _AbsHistogram("percentile", True, 2048, 128, percentile, "same")
    if "entropy" in methods:
        collectors["entropy"] = HistogramCollector("entropy", False, 128, 128, percentile, "same")
    pending: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    pending_n = 0

    def flush() -> None:
        nonlocal pending_n
        if not pending_n or not collectors:
            pending_n = 0
            return
        chunk = {t: np.concatenate(v) for t, v in pending.items() if v}
        for c in collectors.values():
            c.collect(chunk)
        for v in pending.values():
            v.clear()
        pending_n = 0

    with _quiet():
        for start in range(0, n, batch):
            feeds = {k: np.ascontiguousarray(v[start : start + batch]) for k, v in calib.items()}
            out = dict(zip(names, runner.session.run(None, feeds), strict=True))
            for t in tensors:
                a = out[t]
                if a.dtype != np.float32:
                    a = a.astype(np.float32)
                if a.size:
                    amin, amax = float(a.min()), float(a.max())
                    if not (np.isfinite(amin) and np.isfinite(amax)):
                        raise InputError(
                            f"the fp32 model produced NaN/inf in {t!r} on the calibration data"
                        )
                    lo[t] = min(lo.get(t, amin), amin)
                    hi[t] = max(hi.get(t, amax), amax)
                if collectors:
                    pending[t].append(a.reshape(-1))
                if t in mean_of:
                    s = a.astype(np.float64).sum(axis=0)
                    sums[t] = s if t not in sums else sums[t] + s
            pending_n += batch
            if pending_n >= _HIST_CHUNK:
                flush()
        flush()
        ranges = {}
        if "minmax" in methods:
            ranges["minmax"] = TensorsData(
                CalibrationMethod.MinMax,
                {
                    t: TensorData(
                        lowest=np.array(lo.get(t, 0.0), np.float32),
                        highest=np.array(hi.get(t, 0.0), np.float32),
                    )
                    for t in tensors
                },
            )
        enum = {"percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.Entropy}
        for m, c in collectors.items():
            ranges[m] = TensorsData(enum[m], c.compute_collection_result())
    return _Calibration(ranges, {t: s / n for t, s in sums.items()}, n)


def _abs_histogram_class():
    from onnxruntime.quantization.calibrate import HistogramCollector

    class AbsHistogram(HistogramCollector):
        """ORT's |x| histogram (percentile), binned with uniform ranges.

        ORT re-bins every later chunk against its explicit edge array, which
        makes numpy sort the data (~3x slower). The edges are uniform by
        construction (first chunk: num_bins over [min|x|, max|x|]; growth:
        more bins of the same width), so a range-based histogram is the same.
        """

        def collect_absolute_value(self, name_to_arr):
            for tensor, arr in name_to_arr.items():
                x = np.asarray(arr).reshape(-1)
                if x.size == 0:
                    continue
                mn, mx = np.min(x), np.max(x)
                x = np.abs(x)
                old = self.histogram_dict.get(tensor)
                if old is None:
                    hist, edges = np.histogram(x, bins=self.num_bins)
                    self.histogram_dict[tensor] = (hist, edges.astype(x.dtype), mn, mx)
                    continue
                old_hist, edges, old_min, old_max = old
                width = edges[1] - edges[0]
                amax = np.max(x)
                if amax > edges[-1]:
                    extra = np.arange(edges[-1] + width, amax + width, width)
                    edges = np.hstack((edges, extra)).astype(x.dtype)
                hist, _ = np.histogram(x, bins=len(edges) - 1, range=(edges[0], edges[-1]))
                hist[: len(old_hist)] += old_hist
                self.histogram_dict[tensor] = (hist, edges, min(old_min, mn), max(old_max, mx))

    return AbsHistogram


def _AbsHistogram(*args):  # noqa: N802 - factory so onnxruntime stays a lazy import
    return _abs_histogram_class()(*args)


# --------------------------------------------------------------------------- bias correction


def _dequantized_weights(qmodel) -> dict[str, np.ndarray]:
    """node name -> the weight the int8 artifact really uses (DequantizeLinear of input 1)."""
    from onnx import numpy_helper

    inits = _inits(qmodel)
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


def _bias_shifts(model, qmodel, means: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Expected output shift per output channel caused by weight rounding, per node.

    shift = E[conv(x, W_q - W)] averaged over positions, computed exactly on the
    calibration mean input map (padding included) with a one-node ORT model.
    Subtracting it from the bias removes the systematic part of the weight error.
    """
    import onnx
    from onnx import helper, numpy_helper

    inits = _inits(model)
    wq = _dequantized_weights(qmodel)
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
        y = _OrtRunner(m.SerializeToString(), quantized=False).run({"x": x})["y"][0]
        shifts[node.name] = y.reshape(y.shape[0], -1).astype(np.float64).mean(axis=1)
    return shifts


def _apply_bias_shifts(model, shifts: dict[str, np.ndarray], excluded: set[str]) -> None:
    """Subtract the shifts from the biases of quantized nodes (in place, on a copy)."""
    from onnx import numpy_helper

    inits = _inits(model)
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
        self.dynamic: dict[tuple, tuple] = {}  # dynamic-int8 weights: (q, scale, zero point)

    @staticmethod
    def digest(proto) -> str:
        from onnx import numpy_helper

        data = proto.raw_data or numpy_helper.to_array(proto).tobytes()
        return hashlib.blake2b(data, digest_size=16).hexdigest()


def _quantizer_classes(cache: _WeightCache):
    from onnxruntime.quantization import qdq_quantizer as qdq_mod
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    class CachedQDQQuantizer(QDQQuantizer):
        def _calc_initializer_quant_params(self):
            inits = {i.name: i for i in self.model.initializer()}
            keys = {
                name: (name, str(info.tensor_type), info.axis, cache.digest(inits[name]))
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
                    weight.name, cache.digest(weight), quant_type, axis, repr((args, kwargs)),
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
        _apply_bias_shifts(m, shifts, set(excluded))
    act = QuantType.QInt8 if options.symmetric else QuantType.QUInt8
    extra = {"ActivationSymmetric": options.symmetric, "WeightSymmetric": True}
    args = (copy.deepcopy(ranges), [], list(excluded), _quant_op_types(options.embeddings),
            extra)
    with _quiet():
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
        _to_dynamic(q.model.model, dynamic_nodes(q.model.model, excluded),
                    cache, options.per_channel)
    if options.transform is not None:
        options.transform(q.model.model, list(excluded))
    return q.model.model


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

    inits = _inits(model)
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


def _dynamic_weight(w: np.ndarray, per_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """int8 weights as ORT's dynamic quantizer makes them: symmetric, [-127, 127], zero
    point 0, one scale per output column (axis 1 of the (K, N) MatMul weight)."""
    absmax = np.abs(w).max(axis=0) if per_channel else np.abs(w).max(keepdims=True)
    scale = (absmax.astype(np.float64) / 127.0).astype(np.float32)
    scale = np.where(scale > np.finfo(np.float32).tiny, scale, np.float32(1.0))
    q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
    return q, scale.reshape(-1) if per_channel else scale.reshape(())


def _to_dynamic(model, names: Sequence[str], cache: _WeightCache, per_channel: bool) -> None:
    """Replace float MatMul/Gemm nodes `names` (see dynamic_nodes) by ORT's dynamic int8
    form, in place: DynamicQuantizeLinear(x) -> MatMulInteger -> Cast -> Mul(x_scale *
    w_scale) [-> Add(bias)], the node pattern ORT's quantize_dynamic writes and ORT CPU
    fuses into DynamicQuantizeMatMul. The MatMulInteger keeps the original node's name
    (the manifest's nodes_dynamic); one DynamicQuantizeLinear per input tensor."""
    import onnx
    from onnx import helper, numpy_helper

    from edgepack.backends.passes.onnx_cleanup import name_maker

    if not names:
        return
    graph = model.graph
    inits = _inits(model)
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
        key = (w_name, cache.digest(w_init), trans_b, alpha, per_channel)
        if key not in cache.dynamic:
            w = numpy_helper.to_array(w_init).astype(np.float32)
            w = (w.T if trans_b else w) * np.float32(alpha)
            cache.dynamic[key] = _dynamic_weight(np.ascontiguousarray(w), per_channel)
        wq, ws = cache.dynamic[key]
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
    reference = run_samples(_OrtRunner(model.SerializeToString(), quantized=False), subset,
                            batch)

    def rank(path: Path) -> float:
        outs = run_samples(_OrtRunner(scoring_path(path)), subset, batch)
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

    inits = _inits(model)
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

    from edgepack.backends.passes.trt_qdq import _dequantized, _Graph

    g = _Graph(model)
    keep = []
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in g.inits:
            model.graph.initializer.append(
                numpy_helper.from_array(_dequantized(g, node), node.output[0]))
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
        model, renamed = _load_fp32(Path(fp32_path), work)
        inits = _inits(model)
        wanted = [i.name for i in model.graph.input if i.name not in inits]
        if sorted(calib) != sorted(wanted):
            raise InputError(
                f"calibration data has inputs {sorted(calib)}, the model needs {wanted}"
            )
        say(f"calibrating ({', '.join(methods)})")
        try:
            cal = _calibrate(model, calib, batch, methods, options.percentile,
                             options.embeddings)
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
                outs = run_samples(_OrtRunner(evaluate_path(path)), calib, batch)
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
                shifts_of[m] = _bias_shifts(model, qmodel, cal.means) or None
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
        "toolchain": {"onnxruntime": _ort_version()},
    }


def quantize_dynamic_int8(fp32_path: Path, out_path: Path) -> dict:
    """ORT dynamic int8 of MatMul/Gemm/Gather: per-channel int8 weights, activations
    quantized at run time; convolutions weight-only int8 (onnx_weight_only)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgepack.backends.passes.onnx_weight_only import quantize_conv_weights

    with tempfile.TemporaryDirectory(prefix="edgepack-int8-") as tmp:
        work = Path(tmp)
        model, renamed = _load_fp32(Path(fp32_path), work, DYNAMIC_UNFUSED)
        import onnx

        src = work / "named.onnx"
        onnx.save_model(model, str(src))
        dst = work / "dynamic.onnx"
        try:
            with _quiet():
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
        "toolchain": {"onnxruntime": _ort_version()},
    }


#: Dynamic int8 quantizes these only. Dynamic Conv (ConvInteger) measured on
#: EfficientNet-Lite0: top-1 agreement 0.60 and 17x slower than fp32. Gather: int8
#: embedding tables (half of MiniLM's weights; its int8-dynamic went from 1.56x to
#: 3.9x smaller than fp32, cosine min/mean 0.979/0.993).
DYNAMIC_OPS = ("MatMul", "Gemm", "Gather")
#: Pre-optimizations dynamic int8 goes without. MatMulAddFusion turns a 3-D
#: MatMul + Add into Reshape -> Gemm -> Reshape; dynamic int8 then runs the same
#: MatMulInteger between two extra Reshapes: MiniLM 2.5 % slower (paired rounds).
DYNAMIC_UNFUSED = ("MatMulAddFusion",)


def _ort_version() -> str:
    import onnxruntime as ort

    return ort.__version__
