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
The helpers live beside this module: onnx_qdq (building one candidate), onnx_session
(sessions, fp32 preparation), calibration, bias_correction, onnx_dynamic (the fallback,
and the int8-dynamic precision).

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

import hashlib
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from edgepack.errors import ConversionError, InputError
from edgepack.quantize.bias_correction import bias_shifts
from edgepack.quantize.calibration import calibrate
from edgepack.quantize.onnx_qdq import (
    Int8Options,
    WeightCache,
    build_candidate,
    compute_nodes,
    fold_weight_dequantize,
    look_alike_groups,
    quant_op_types,
)
from edgepack.quantize.onnx_session import (
    PREPROCESS,
    SESSION_DISABLED_OPTIMIZERS,
    initializers,
    int8_runner,
    load_fp32,
    ort_version,
)
from edgepack.quantize.search import ranks_on_subset, round_score, search
from edgepack.runners.base import run_samples
from edgepack.runners.onnxruntime import OnnxRuntimeRunner

METHODS = ("minmax", "percentile", "entropy")
#: What "auto" tries. Entropy scored no better than MinMax on real models
#: (TOOLCHAIN.md, and here) and its histograms cost ~20 s on a 224px CNN.
AUTO_METHODS = ("minmax", "percentile")
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
                            quant_op_types(options.embeddings))
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - ORT raises bare RuntimeErrors
            raise ConversionError(f"calibration run failed: {exc}") from exc

        built: dict[tuple, Path] = {}
        dynamic_of: dict[Path, list[str]] = {}  # artifact -> its nodes_dynamic
        wcache = WeightCache()
        scored: dict[Path, tuple[bool, float]] = {}

        def build(m: str, excluded: Sequence[str], shifts=None) -> Path:
            key = (m, tuple(sorted(excluded)), shifts is not None)
            if key not in built:
                try:
                    proto = build_candidate(model, cal.ranges[m], excluded, options, shifts,
                                            cache=wcache)
                except Exception as exc:  # noqa: BLE001
                    raise ConversionError(f"ORT quantization failed ({m}): {exc}") from exc
                digest = hashlib.sha256(repr(key).encode()).hexdigest()[:16]
                path = work / f"cand-{digest}.onnx"
                path.write_bytes(proto.SerializeToString())
                integer = {n.name for n in proto.graph.node if n.op_type == "MatMulInteger"}
                dynamic_of[path] = [n for n in excluded if n in integer]
                if options.symmetric:  # scored in a faster, equivalent form
                    fold_weight_dequantize(proto)
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

