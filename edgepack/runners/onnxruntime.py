"""Runner for ONNX models (ONNX sources and ONNX artifacts) on ONNX Runtime."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgepack.errors import ConversionError, InputError, MissingExtraError

Arrays = dict[str, np.ndarray]

# ORT's type strings -> numpy dtypes, for casting feeds to what the model takes.
_ORT_DTYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int16)": np.int16,
    "tensor(uint16)": np.uint16, "tensor(int32)": np.int32, "tensor(uint32)": np.uint32,
    "tensor(int64)": np.int64, "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_,
}

# One intra-op thread by default: results then do not depend on the host's core
# count (ORT splits GEMM/reduction work by thread count, which can change float
# summation order), and validation next to other work does not oversubscribe.
DEFAULT_THREADS = 1


class OnnxRuntimeRunner:
    """Runs one batch on ONNX Runtime with a fixed, sequential thread setup.

    ``disabled_optimizers`` goes to the session (e.g. ``WeightBiasQuantization``,
    which otherwise re-quantizes float layers kept out of int8; see TOOLCHAIN.md).
    ``model`` is a file, or a serialized model (the int8 search scores candidates it
    never writes to disk).
    """

    name = "onnxruntime"

    def __init__(self, model: str | Path | bytes, disabled_optimizers: Sequence[str] = (),
                 threads: int | None = None,
                 providers: Sequence[str] = ("CPUExecutionProvider",)) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise MissingExtraError("onnxruntime", "onnx", "needed to run ONNX models") from e
        if isinstance(model, bytes):
            source: str | bytes = model
            self.label = "the model"
        else:
            path = Path(model)
            if not path.is_file():
                raise InputError(f"no such file: {path}")
            source, self.label = str(path), path.name
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or DEFAULT_THREADS
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.use_deterministic_compute = True
        opts.log_severity_level = 3  # errors only: runners never print
        kwargs = {"disabled_optimizers": list(disabled_optimizers)} if disabled_optimizers else {}
        try:
            self.session = ort.InferenceSession(source, sess_options=opts,
                                                providers=list(providers), **kwargs)
        except Exception as e:  # ORT raises its own Fail/InvalidGraph/... types
            raise ConversionError(f"onnxruntime cannot load {self.label}: {_short(e)}") from e
        self.disabled_optimizers = tuple(disabled_optimizers)
        self._inputs = {i.name: _ORT_DTYPES.get(i.type) for i in self.session.get_inputs()}
        self._shapes = {i.name: i.shape for i in self.session.get_inputs()}
        self.input_names = list(self._inputs)
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: Arrays) -> Arrays:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise InputError(f"missing inputs {missing}; the model takes {self.input_names}")
        for n, shape in self._shapes.items():
            _check_shape(n, np.shape(feeds[n]), shape)
        # Feeds are cast to the model's dtypes; extra keys (e.g. labels) are ignored.
        ort_feeds = {n: np.ascontiguousarray(feeds[n], dtype=dt) if dt else feeds[n]
                     for n, dt in self._inputs.items()}
        try:
            values = self.session.run(self.output_names, ort_feeds)
        except Exception as e:
            raise ConversionError(f"onnxruntime failed to run {self.label}: {_short(e)}") from e
        return dict(zip(self.output_names, (np.asarray(v) for v in values), strict=True))


def _check_shape(name: str, got: tuple[int, ...], want: list) -> None:
    """Wrong feed shapes are the caller's data problem, not a conversion failure."""
    fits = len(got) == len(want) and all(
        not isinstance(w, int) or w <= 0 or w == g for g, w in zip(got, want, strict=True))
    if not fits:
        shown = ["?" if not isinstance(w, int) or w <= 0 else w for w in want]
        raise InputError(f"input {name!r} has shape {list(got)}; the model takes {shown}")


def _short(e: BaseException) -> str:
    # ORT messages look like "[ONNXRuntimeError] : 10 : INVALID_GRAPH : Load model ... failed:..."
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 240 else text[:237] + "..."


def first_nonfinite_node(path: str | Path, feeds: Arrays,
                         disabled_optimizers: Sequence[str] = ()) -> str | None:
    """'node NAME (OpType)': the first node, in graph order, whose output holds NaN or Inf
    on ``feeds``; None when none does (or the graph cannot be cut at every node).

    Every node output becomes a graph output of an unoptimized session, so the values
    are the graph's own, node by node (what Polygraphy's "mark all" does).
    """
    import onnx
    import onnxruntime as ort

    try:
        model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
        typed = {v.name: v for v in (*model.graph.value_info, *model.graph.output)}
        present = {o.name for o in model.graph.output}
        for node in model.graph.node:
            for out in node.output:
                if out and out not in present:
                    model.graph.output.append(typed.get(out)
                                              or onnx.helper.make_empty_tensor_value_info(out))
                    present.add(out)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.log_severity_level = 3
        kwargs = {"disabled_optimizers": list(disabled_optimizers)} if disabled_optimizers \
            else {}
        session = ort.InferenceSession(model.SerializeToString(), opts,
                                       providers=["CPUExecutionProvider"], **kwargs)
        names = [o.name for o in session.get_outputs()]
        values = dict(zip(names, session.run(names, feeds), strict=True))
    except Exception:  # a graph that cannot be cut here: no node named, nothing else lost
        return None
    for node in model.graph.node:
        for out in node.output:
            value = values.get(out)
            if value is not None and np.issubdtype(np.asarray(value).dtype, np.floating) \
                    and not np.isfinite(value).all():
                return f"node {node.name or out} ({node.op_type})"
    return None
