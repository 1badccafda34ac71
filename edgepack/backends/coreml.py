"""Backend ``coreml``: Core ML ML Program packages (.mlpackage) at fp32, fp16 and int8.

Recipes (one torch program per build, shared by every precision and profile):
  torch source   nn.Module -> torch.jit.trace; TorchScript as is; torch.export ->
                 run_decompositions({})
  ONNX source    cleaned ONNX -> onnx2torch -> checked against ONNX Runtime -> trace
  fp32           program -> ML Program, fp32 compute
  fp16           program -> ML Program, fp16 compute (fp16 weights)
  int8           the fp16 package -> int8 linear symmetric per-channel weights
                 (or, by the profile option ``int8_weights``, a 4/6-bit k-means palette)

Core ML executes only on macOS/iOS. Elsewhere ``runner`` raises Deferred with a
proxy: the same torch program with the package's expanded weights at fp16
compute, whose metrics are recorded as proxy metrics. On macOS the real
runtime validates the package.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgepack.backends.base import Artifact, Backend, Deferred, Job
from edgepack.backends.options import Option
from edgepack.backends.shared import export_toolchain, fp32_onnx
from edgepack.convert.torch_to_coreml import COMPRESSION_MIN, COMPUTE_UNITS, DEPLOYMENT_TARGETS
from edgepack.errors import ConversionError, UsageError
from edgepack.quantize.coreml_compress import WEIGHT_MODES
from edgepack.runners.base import Runner, run_samples
from edgepack.signature import Signature, TensorSpec

TOOLCHAIN = ["torch", "coremltools", "onnx2torch", "onnx", "onnxruntime"]
DEFERRED_REASON = ("Core ML runs only on macOS/iOS; bench.py checks the golden outputs "
                   "on the device")
PRECISIONS = ("fp32", "fp16", "int8")  # int8 = weight-only compression
OPTIONS = (
    Option("minimum_deployment_target", DEPLOYMENT_TARGETS, "iOS16",
           "the oldest OS the package runs on (ML Program needs iOS15/macOS12+; "
           "compressed weights iOS16/macOS13+)"),
    Option("compute_units", COMPUTE_UNITS, "ALL", "where Core ML may run the model"),
    Option("int8_weights", WEIGHT_MODES, "linear",
           "int8 weight compression: linear (int8) or k-means palettization"),
    Option("weight_threshold", int, 2048,
           "weights with at most this many elements stay fp16", minimum=0),
)
INTERMEDIATE_TOLERANCES = {"cosine_min": 0.9999}  # onnx2torch model vs ONNX Runtime
INTERMEDIATE_SAMPLES = 16


@dataclass
class CoreMLArtifact(Artifact):
    """An Artifact plus the host proxy that stands in for Core ML (not written anywhere)."""

    proxy: Runner | None = field(default=None, repr=False, compare=False)
    proxy_name: str = ""

    def __getstate__(self) -> dict[str, Any]:
        # Artifacts cross process boundaries (the build's worker); the proxy stays behind.
        return {**self.__dict__, "proxy": None}


def _program(job: Job) -> tuple[Any, dict[str, Any] | None]:
    """(TorchProgram, onnx->torch check record or None), once per build."""
    key = "coreml:program"
    if key in job.cache:
        return job.cache[key]
    from edgepack.convert.torch_to_coreml import torch_program

    source = job.source
    check = None
    if source.torch_model is not None:
        job.progress("tracing the torch model")
        program = torch_program(source.torch_model, source.signature)
    elif source.onnx_path is not None or getattr(source, "tf_call", None) is not None:
        # TensorFlow sources go through ONNX too (tf2onnx): coremltools 9.0's own
        # TensorFlow frontend takes TensorFlow 2.1-2.12 only
        module, check = _onnx_module(job)
        job.progress("tracing the onnx2torch model")
        program = torch_program(module, source.signature)
    else:
        raise _no_route(source.format)
    job.cache[key] = (program, check)
    return program, check


def _onnx_module(job: Job) -> tuple[Any, dict[str, Any]]:
    from edgepack.convert.onnx_to_torch import check_intermediate, onnx_to_torch
    from edgepack.data import seeded_inputs

    source = job.source
    job.progress("converting onnx → torch (onnx2torch)")
    try:
        module = onnx_to_torch(fp32_onnx(job))
    except ConversionError:
        if source.onnx_path is None:
            raise
        module = onnx_to_torch(source.onnx_path)  # the cleaned graph may hold ops it lacks
    if job.calib is not None and job.calib_reference is not None:
        n = min(INTERMEDIATE_SAMPLES, job.calib.count)
        n -= n % source.signature.batch
        inputs = {k: v[:n] for k, v in job.calib.inputs.items()}
        reference = {k: v[:n] for k, v in job.calib_reference.items()}
        data = "calibration data"
    else:
        samples = seeded_inputs(source.signature, INTERMEDIATE_SAMPLES // 2, 0)
        inputs = samples.inputs
        reference = run_samples(source.runner(), inputs, source.signature.batch)
        data = samples.origin
    job.progress("checking the torch intermediate against ONNX Runtime")
    check = check_intermediate(module, source.signature.input_names,
                               source.signature.output_names, inputs, reference,
                               INTERMEDIATE_TOLERANCES, source.signature.batch)
    check["data"] = data
    return module, check


def _no_route(fmt: str) -> Exception:
    return ConversionError(f"the coreml backend cannot convert {fmt} sources; "
                           "use a torch or ONNX model")


def _artifact_signature(program: Any, source_sig: Signature) -> Signature:
    """Static shapes, Core ML dtypes, the source's names; output shapes from one run."""
    from edgepack.convert.torch_to_coreml import artifact_dtype, example_inputs
    from edgepack.runners.coreml_proxy import torch_runner

    ins = tuple(TensorSpec(s.name, s.concrete_shape(), artifact_dtype(s.dtype), s.layout)
                for s in source_sig.inputs)
    feeds = {s.name: t.numpy() for s, t in zip(source_sig.inputs,
                                               example_inputs(source_sig), strict=True)}
    out = torch_runner(program.module, source_sig.input_names,
                       source_sig.output_names).run(feeds)
    outs = tuple(TensorSpec(s.name, tuple(out[s.name].shape), artifact_dtype(out[s.name].dtype
                                                                             .name), s.layout)
                 for s in source_sig.outputs)
    return Signature(ins, outs)


def _convert(job: Job, program: Any, precision: str, target: str) -> Any:
    """ML Program at "float32" | "float16" compute; torch.export falls back to tracing."""
    from edgepack.convert.torch_to_coreml import convert, torch_program

    key = f"coreml:model:{precision}:{target}"
    if key in job.cache:
        return job.cache[key]
    job.progress(f"converting to Core ML ({precision} compute, {target})")
    try:
        model = convert(program, job.source.signature, precision, target)
    except ConversionError:
        if program.dialect != "torch.export":
            raise
        program = torch_program(program.module, job.source.signature)
        model = convert(program, job.source.signature, precision, target)
    job.cache[key] = model
    return model


class CoreMLBackend(Backend):
    name = "coreml"
    runtime = "coreml"
    harness = "bench_coreml.py"
    precisions = PRECISIONS
    options = OPTIONS

    def check(self, profile: Any, precision: str) -> dict[str, Any]:
        """The base checks, and compressed weights' minimum OS (pure data, no coremltools)."""
        opts = super().check(profile, precision)
        target = str(opts["minimum_deployment_target"])
        if precision == "int8":
            os_name = "macOS" if target.startswith("macOS") else "iOS"
            if int(target[len(os_name):]) < COMPRESSION_MIN[os_name]:
                raise UsageError(f"profile {profile.name}: options: compressed weights need "
                                 f"minimum_deployment_target {os_name}{COMPRESSION_MIN[os_name]}"
                                 f" or newer, not {target}")
        return opts

    def build(self, job: Job) -> Artifact:
        from edgepack.convert.coreml_check import structural_check
        from edgepack.convert.torch_to_coreml import feature_names, save_deterministic
        from edgepack.frameworks import import_coremltools
        from edgepack.runners.coreml_proxy import fp16_weight_error, make_proxy

        opts = self.check(job.profile, job.precision)
        import_coremltools()
        target = opts["minimum_deployment_target"]
        program, intermediate = _program(job)
        sig = _artifact_signature(program, job.source.signature)
        names = feature_names(job.source.signature)
        quantization = None
        checks: dict[str, Any] = {}
        matches: list = []
        if job.precision == "fp32":
            model = _convert(job, program, "float32", target)
        else:
            model = _convert(job, program, "float16", target)
            checks["weight_error"] = {"storage": "float16", **fp16_weight_error(program.module)}
        if job.precision == "int8":
            from edgepack.quantize.coreml_compress import compress

            job.progress(f"compressing weights ({opts['int8_weights']})")
            uncompressed = model
            model, quantization = compress(model, opts["int8_weights"], opts["weight_threshold"])
        path = job.workdir / "model.mlpackage"
        job.progress("saving the package")
        save_deterministic(model, path)
        if job.precision == "int8":
            quantization, matches = self._weight_record(job, program, uncompressed, path,
                                                        quantization)
            checks["weight_error"] = quantization["weight_error"]
        checks["structure"] = structural_check(path, sig, names)
        if intermediate is not None:
            checks["onnx_to_torch"] = intermediate
        probe = {s.name: np.zeros(s.concrete_shape(), dtype=s.dtype)
                 for s in job.source.signature.inputs}
        proxy, how = make_proxy(program.module, matches, job.precision != "fp32",
                                job.source.signature.input_names,
                                job.source.signature.output_names, probe)
        proxy_name = self._proxy_name(job, how, quantization)
        checks["proxy"] = proxy_name
        runtime_options = {
            "compute_units": opts["compute_units"],
            "minimum_deployment_target": target,
            "feature_names": names,
            "host_checks": checks,
        }
        return CoreMLArtifact(
            folder=job.workdir, files=["model.mlpackage"], signature=sig,
            quantization=quantization, runtime_options=runtime_options,
            toolchain=TOOLCHAIN + export_toolchain(job),
            proxy=proxy, proxy_name=proxy_name,
        )

    @staticmethod
    def _weight_record(job: Job, program: Any, uncompressed: Any, path: Any,
                       record: dict[str, Any]) -> tuple[dict[str, Any], list]:
        from edgepack.quantize.coreml_compress import compressed_tensors, float_consts
        from edgepack.quantize.coreml_compress import program_of as mil_program
        from edgepack.runners.coreml_proxy import match_weights, weight_error

        job.progress("reading the compressed weights back")
        tensors = compressed_tensors(uncompressed, path)
        if not tensors:
            raise ConversionError("weight compression changed no weight: no const is larger "
                                  f"than weight_threshold={record['weight_threshold']}")
        matches, unmatched = match_weights(program.module, tensors)
        kept = [v for v in float_consts(mil_program(path)).values() if v.ndim >= 2]
        record = {
            **record,
            "compressed_tensors": len(tensors),
            "compressed_elements": int(sum(t.original.size for t in tensors)),
            "kept_in_float": {"tensors": len(kept), "elements": int(sum(v.size for v in kept)),
                              "why": f"at most weight_threshold={record['weight_threshold']} "
                                     "elements (fp16)"},
            "weight_error": {"storage": record["weights"],
                             "compared_with": "the uncompressed weights of the same program "
                                              "(batch norm folded, fp16)",
                             **weight_error(tensors)},
            "proxy_tensors": {"reproduced": len(matches), "of": len(tensors),
                              "unmatched": unmatched},
        }
        return record, matches

    @staticmethod
    def _proxy_name(job: Job, how: str, quantization: dict | None) -> str:
        what = {"onnx": "onnx2torch model", "torchscript": "TorchScript source",
                "torch.export": "exported source"}.get(job.source.format, "traced source")
        if quantization is None:
            return f"torch {what}, {how}"
        p = quantization["proxy_tensors"]
        return (f"torch {what} with the package's {quantization['weights']} weights "
                f"({p['reproduced']}/{p['of']} tensors), {how}")

    def runner(self, artifact: Artifact) -> Runner:
        from edgepack.convert.torch_to_coreml import can_predict

        if can_predict():
            from edgepack.runners.coreml import CoreMLRunner

            opts = artifact.runtime_options
            return CoreMLRunner(artifact.main, artifact.signature,
                                compute_units=opts.get("compute_units", "ALL"),
                                feature_names=opts.get("feature_names") or {})
        raise Deferred(DEFERRED_REASON, proxy=getattr(artifact, "proxy", None),
                       proxy_name=getattr(artifact, "proxy_name", ""))


BACKEND = CoreMLBackend()
