"""One fp32 pass over the calibration data -> activation ranges for every
calibration method at once, plus the input means bias correction needs.

Uses ORT's own HistogramCollector / TensorsData, i.e. what its Percentile and
Entropy calibrators compute (same bins, same merge), without one augmented-model
run per method.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgepack.errors import InputError
from edgepack.frameworks import quiet
from edgepack.quantize.onnx_session import initializers
from edgepack.runners.onnxruntime import OnnxRuntimeRunner

#: Histograms are updated every >= this many samples (bounds memory; the order is fixed).
HIST_CHUNK = 16


@dataclass
class Calibration:
    ranges: dict  # method -> onnxruntime TensorsData
    means: dict[str, np.ndarray]  # tensor -> per-sample mean (float64), inputs of weighted nodes
    samples: int


def calibrate(
    model, calib: dict[str, np.ndarray], batch: int, methods: Sequence[str], percentile: float,
    op_types: Sequence[str],
) -> Calibration:
    """One fp32 pass over `calib` -> ranges for every method in `methods` + input means.

    Ranges are collected for the float inputs and outputs of nodes of `op_types` (the
    ops the quantizer will touch); means for the inputs of weighted Conv/Gemm nodes.
    """
    import onnx
    from onnxruntime.quantization.calibrate import (
        CalibrationMethod,
        HistogramCollector,
        TensorData,
        TensorsData,
    )

    ops = set(op_types)
    vis = {vi.name: vi for vi in model.graph.value_info}
    vis.update({o.name: o for o in model.graph.output})
    vis.update({i.name: i for i in model.graph.input})
    inits = initializers(model)
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
    runner = OnnxRuntimeRunner(aug.SerializeToString())
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

    with quiet():
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
            if pending_n >= HIST_CHUNK:
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
    return Calibration(ranges, {t: s / n for t, s in sums.items()}, n)


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

