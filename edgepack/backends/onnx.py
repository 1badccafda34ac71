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

from edgepack.backends.base import Artifact, Backend, Job
from edgepack.backends.shared import export_toolchain, fp32_onnx
from edgepack.convert.onnx_cleanup import compact_file
from edgepack.errors import UsageError
from edgepack.quantize.judge import calibration_judge, search_tolerances
from edgepack.runners.base import Runner

TOOLCHAIN = ["torch", "onnx", "onnxruntime", "onnxscript", "onnxconverter-common"]


class OnnxBackend(Backend):
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
            from edgepack.convert.onnx_fp16 import to_fp16

            job.progress("converting to fp16")
            to_fp16(base, out)
        elif job.precision == "int8-dynamic":
            from edgepack.quantize.onnx_dynamic import quantize_dynamic_int8

            job.progress("dynamic int8 quantization")
            quantization = quantize_dynamic_int8(base, out)
        elif job.precision == "int8":
            from edgepack.quantize.onnx_qdq import Int8Options
            from edgepack.quantize.onnx_session import SESSION_DISABLED_OPTIMIZERS
            from edgepack.quantize.onnx_static import quantize_static_int8
            from edgepack.quantize.search import Budget

            if job.calib is None or job.calib_reference is None:
                raise UsageError("static int8 needs calibration data (--calib)")
            settings = job.int8_settings
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
            target = search_tolerances(job.tolerances, job.calib.count)
            quantization = quantize_static_int8(
                base, out, job.calib.inputs, job.source.signature.batch,
                calibration_judge(job.calib_reference, target, job.task), opts,
                progress=job.progress,
            )
            quantization["search_tolerances"] = target
            options = {"disabled_optimizers": list(SESSION_DISABLED_OPTIMIZERS)}
        else:
            raise UsageError(f"the onnx backend does not build {job.precision!r}")
        # the nodes the manifest names keep their names in the compacted artifact
        kept = [n["name"] for key in ("nodes_kept_float", "nodes_dynamic")
                for n in (quantization or {}).get(key, [])]
        stats = compact_file(out, kept, drop_zero_points=True)
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
