"""Backend ``onnx``: ONNX Runtime artifacts at fp32, fp16, int8-dynamic and static int8.

Recipes (one cleaned fp32 graph shared by all precisions):
  fp32          source -> onnx -> cleaned onnx
  fp16          cleaned onnx -> fp16 (float I/O kept)
  int8-dynamic  cleaned onnx -> ORT dynamic quantization of MatMul/Gemm/Gather, and
                convolutions weight-only int8 (folded to fp32 kernels at load)
  int8          cleaned onnx -> static QDQ U8S8, calibrated, with the accuracy search; the
                MatMul/Gemm layers the search keeps out of static int8 run as dynamic int8
                (MatMulInteger), the other kept-out layers in float
Every precision's artifact is then compacted the same way (onnx_cleanup.compact_onnx:
no value_info/doc strings/metadata, merged duplicate constants, short internal names,
all-zero constant zero points omitted), so size ratios between precisions compare
weights, not bookkeeping.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from edgepack.backends.base import Artifact, Job
from edgepack.backends.shared import export_toolchain, fp32_onnx
from edgepack.compare import compare
from edgepack.errors import UsageError
from edgepack.runners.base import Arrays, Runner

TOOLCHAIN = ["torch", "onnx", "onnxruntime", "onnxscript", "onnxconverter-common"]


# Scores on the calibration set overestimate held-out ones (the search tunes on
# them), so the search aims past the tolerance: lower bounds in [0, 1] close
# half the remaining gap to 1, upper bounds are halved.
HEADROOM = 0.5


def search_tolerances(tolerances: dict[str, float]) -> dict[str, float]:
    """The stricter tolerances the int8 search must meet on calibration data."""
    from edgepack.compare import TOLERANCE_KEYS

    out = {}
    for key, value in tolerances.items():
        if TOLERANCE_KEYS[key] == "max":
            out[key] = value * (1 - HEADROOM)
        elif 0.0 <= value <= 1.0:
            out[key] = value + (1.0 - value) * HEADROOM
        else:
            out[key] = value
    return {k: round(v, 6) for k, v in out.items()}


def calibration_judge(job: Job, tolerances: dict[str, float]):
    """accept(candidate outputs on calib) -> (meets tolerances, score): calibration data only.

    The score is the worst output's mean cosine: steadier than top-1 agreement
    on a few hundred samples. A cosine compare() could not compute (None: NaN
    outputs) is the worst score there is. A candidate run on the first n calibration
    samples only is compared with the first n reference outputs.
    """
    reference = job.calib_reference

    def accept(candidate: Arrays) -> tuple[bool, float]:
        n = min(len(v) for v in candidate.values())
        result = compare({k: v[:n] for k, v in reference.items()}, candidate, tolerances,
                         task=job.task)
        cosines = [m.get("cosine_mean", 0.0) for m in result.metrics.values()]
        cosines = [float("-inf") if c is None else float(c) for c in cosines]
        return result.passed, min(cosines) if cosines else 0.0

    return accept


def compact_artifact(path: Path, keep_node_names: list[str],
                     drop_zero_points: bool) -> dict[str, int]:
    """Compact the ONNX file at ``path`` in place (see onnx_cleanup.compact_onnx)."""
    import onnx

    from edgepack.backends.passes.onnx_cleanup import compact_onnx

    model = onnx.load(str(path))
    stats = compact_onnx(model, keep_node_names, drop_zero_points=drop_zero_points)
    if model.ByteSize() < 2**31 - 1:  # protobuf's limit; a bigger model stays as it was
        path.write_bytes(model.SerializeToString())
    return stats


class OnnxBackend:
    name = "onnx"
    runtime = "onnxruntime"
    harness = "bench_onnxruntime.py"

    def build(self, job: Job) -> Artifact:
        base = fp32_onnx(job)
        out = job.workdir / "model.onnx"
        quantization = None
        options: dict = {}
        if job.precision == "fp32":
            shutil.copyfile(base, out)
        elif job.precision == "fp16":
            from edgepack.backends.passes.onnx_fp16 import to_fp16

            job.progress("converting to fp16")
            to_fp16(base, out)
        elif job.precision == "int8-dynamic":
            from edgepack.backends.passes.onnx_dynamic_int8 import quantize_dynamic_int8

            job.progress("dynamic int8 quantization")
            quantization = quantize_dynamic_int8(base, out)
        elif job.precision == "int8":
            from edgepack.backends.passes.onnx_int8 import Int8Options, quantize_static_int8
            from edgepack.backends.passes.onnx_ort import SESSION_DISABLED_OPTIMIZERS
            from edgepack.quantize.search import Budget

            if job.calib is None or job.calib_reference is None:
                raise UsageError("static int8 needs calibration data (--calib)")
            settings = {**job.profile.int8, **job.int8}
            budget = Budget.from_settings(settings)
            opts = Int8Options(
                method=settings.get("method", "auto"),
                per_channel=settings.get("per_channel", True),
                symmetric=settings.get("format") == "qdq-s8s8",
                budget=budget,
                # ORT CPU runs dynamic int8 MatMul well: kept-out MatMul/Gemm go dynamic
                fallback=settings.get("fallback", "dynamic"),
            )
            if "percentile" in settings:
                opts = replace(opts, percentile=float(settings["percentile"]))
            target = search_tolerances(job.tolerances)
            quantization = quantize_static_int8(
                base, out, job.calib.inputs, job.source.signature.batch,
                calibration_judge(job, target), opts, progress=job.progress,
            )
            quantization["search_tolerances"] = target
            options = {"disabled_optimizers": list(SESSION_DISABLED_OPTIMIZERS)}
        else:
            raise UsageError(f"the onnx backend does not build {job.precision!r}")
        # the nodes the manifest names keep their names in the compacted artifact
        kept = [n["name"] for key in ("nodes_kept_float", "nodes_dynamic")
                for n in (quantization or {}).get(key, [])]
        stats = compact_artifact(out, kept, drop_zero_points=True)
        if quantization is not None:
            quantization["artifact_compaction"] = stats
        return Artifact(
            folder=job.workdir,
            files=["model.onnx"],
            signature=job.source.signature,
            quantization=quantization,
            runtime_options=options,
            toolchain=TOOLCHAIN + export_toolchain(job),
        )

    def runner(self, artifact: Artifact) -> Runner:
        from edgepack.runners.onnxruntime import OnnxRuntimeRunner

        return OnnxRuntimeRunner(
            artifact.main,
            disabled_optimizers=tuple(artifact.runtime_options.get("disabled_optimizers", ())),
        )


BACKEND = OnnxBackend()
