"""Backend ``tflite``: LiteRT / TFLite artifacts at fp32, fp16, int8-dynamic and int8.

The route is chosen by the source format:
  torch (nn.Module, torch.export)  -> litert-torch (PT2E quantization for int8)
  ONNX, TorchScript (via ONNX)     -> onnx2tf (own environment, subprocess) -> SavedModel
                                      -> tf.lite.TFLiteConverter
  Keras .keras/.h5, SavedModel     -> tf.lite.TFLiteConverter

TFLite is channel-last: NCHW image tensors become NHWC. The artifact's
signature records each tensor's layout; the host runner takes source-layout
feeds and maps them (``runner``), golden I/O is stored in the artifact's own
layout (``to_artifact_layout``). Every interpreter runs in a worker process, so
a model that aborts LiteRT fails its bundle, not the build.

Profile ``options`` (all optional):
  int8_io: float | int8 | uint8     I/O type of full-integer int8 (TFLiteConverter routes)
  int8_ops: auto | full-integer     auto: when full integer misses the search targets on
                                    calibration data, static int8 at the compute ops
                                    only (the rest float); full-integer: never (NPU/DSP
                                    delegates that need every op integer)
  torch_int8: pt2e | onnx2tf         how torch sources get static int8
  calibration_samples: N             cap on calibration samples (default 500)
  onnx2tf_keep_shape: true           keep non-image inputs' shapes (false: onnx2tf's default)
  gpu_delegate_check: true           record ops the GPU delegate cannot run
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from edgepack.backends.base import Artifact, Backend, Job
from edgepack.backends.options import Option, read_options
from edgepack.convert.tflite_layout import (
    Mapped,
    Perms,
    channel_last,
    is_channel_first_image,
    to_layout,
)
from edgepack.errors import ConversionError, UsageError, ValidationFailed
from edgepack.runners.base import Arrays, Runner
from edgepack.signature import Signature, TensorSpec

OPTIONS = (
    Option("int8_io", ("float", "int8", "uint8"), "float",
           "I/O type of full-integer int8 models: float keeps app code unchanged; int8/uint8 "
           "for NPUs and microcontrollers (scales and zero points in the manifest)"),
    Option("int8_ops", ("auto", "full-integer"), "auto",
           "auto: when full-integer int8 misses the targets on calibration data, int8 at "
           "FULLY_CONNECTED/CONV/BATCH_MATMUL only; full-integer: never (NPU/DSP)"),
    Option("torch_int8", ("pt2e", "onnx2tf"), "pt2e",
           "static int8 route for torch sources: litert-torch PT2E or onnx2tf + TFLiteConverter"),
    Option("calibration_samples", int, 500, "calibration samples the converter uses",
           minimum=1),
    Option("onnx2tf_keep_shape", bool, True,
           "keep non-image inputs' shapes through onnx2tf (it may permute 3-D inputs)"),
    Option("gpu_delegate_check", bool, True,
           "record which ops the GPU delegate would take (a report, not a gate)"),
)
TORCH_FORMATS = ("python", "torch.export")
TF_FORMATS = ("keras", "savedmodel")


@dataclass
class TFLiteArtifact(Artifact):
    """An artifact plus the source -> artifact layout permutations (build time only)."""

    perms_in: Perms = field(default_factory=dict)
    perms_out: Perms = field(default_factory=dict)
    route: str = ""


def options(profile: Any) -> dict[str, Any]:
    """The profile's ``options:``, checked, with defaults."""
    return read_options(profile, OPTIONS, "tflite")


def route_for(job: Job, opts: dict[str, Any]) -> str:
    fmt = job.source.format
    if fmt in TF_FORMATS:
        return "tf"
    if fmt in TORCH_FORMATS and job.source.torch_model is not None:
        if job.precision == "int8" and opts["torch_int8"] == "onnx2tf":
            return "onnx2tf"
        return "litert-torch"
    if job.source.onnx_path is not None or job.source.torch_model is not None:
        return "onnx2tf"  # ONNX, and TorchScript (litert-torch needs torch.export)
    raise UsageError(f"the tflite backend cannot convert {fmt} sources")


def _calib_feeds(job: Job, perms: Perms, limit: int) -> list[Arrays]:
    """Calibration batches in the artifact's layout (sample order kept)."""
    if job.calib is None:
        return []
    batch = job.source.signature.batch
    n = min(job.calib.count, max(batch, limit - limit % batch))
    feeds = []
    for start in range(0, n - n % batch, batch):
        one = {k: v[start:start + batch] for k, v in job.calib.inputs.items()}
        feeds.append(to_layout(one, perms))
    return feeds


# ---------------------------------------------------------------- routes


def _torch_route(job: Job, out: Any, calib_limit: int) -> tuple[list[Mapped], list[Mapped], Any]:
    from edgepack.convert import torch_to_tflite as lt

    sig = job.source.signature
    ins = [channel_last(s) if is_channel_first_image(s) else Mapped(s, None) for s in sig.inputs]
    outs = [channel_last(s) if is_channel_first_image(s) else Mapped(s, None)
            for s in sig.outputs]
    key = "tflite:channel-last-module"
    if key not in job.cache:
        job.progress("preparing the channel-last torch module")
        job.cache[key] = lt.channel_last_module(
            job.source.torch_model, [i for i, m in enumerate(ins) if m.perm],
            [i for i, m in enumerate(outs) if m.perm])
    perms = {m.spec.name: m.perm for m in ins if m.perm}
    calib = _calib_feeds(job, perms, calib_limit) if job.precision == "int8" else None
    search = _search_settings(job, [m.spec.name for m in outs]) if calib else None
    job.progress(f"litert-torch → tflite ({job.precision})")
    if job.precision == "int8":
        from edgepack.quantize.tflite_pt2e import convert_int8

        record = convert_int8(job.cache[key], [m.spec for m in ins], out, calib, search=search)
    else:
        record = lt.convert(job.cache[key], [m.spec for m in ins], out, job.precision)
    return ins, outs, record


def _search_settings(job: Job, output_names: list[str]) -> dict[str, Any]:
    """The int8 accuracy search's settings: the onnx backend's stricter calibration
    targets and the build's int8 budget (edgepack.yaml / profile ``int8``)."""

    from edgepack.quantize.judge import search_tolerances
    from edgepack.quantize.search import Budget

    settings = job.int8_settings
    budget = Budget.from_settings(settings)
    samples = job.calib.count if job.calib is not None else 0
    return {"output_names": output_names, "tolerances": search_tolerances(job.tolerances, samples),
            "task": job.task, "budget": budget, "progress": job.progress}


def _tf_function(job: Job, opts: dict[str, Any]
                 ) -> tuple[Any, list[Mapped], list[Mapped], dict, Any]:
    """A traced TF function of the source (Keras/SavedModel, or onnx2tf's SavedModel),
    and, for onnx2tf, the loaded SavedModel that owns its variables (the converter must
    keep it alive; given a Keras model instead, it keeps resource variables that the
    int8 calibration cannot read)."""
    key = "tflite:tf-function"
    if key in job.cache:
        return job.cache[key]
    from edgepack.convert import tf_to_tflite as tc

    sig = job.source.signature
    tools: dict[str, str] = {}
    if job.source.format in TF_FORMATS:
        call = job.source.tf_call  # type: ignore[attr-defined]
        ins = [Mapped(s, None) for s in sig.inputs]
        outs = [Mapped(s, None) for s in sig.outputs]
    else:
        from edgepack.backends.shared import fp32_onnx
        from edgepack.convert import onnx2tf_env
        from edgepack.convert.onnx_to_tflite import onnx2tf_savedmodel

        onnx2tf_env.require_python()  # fail before exporting when the environment is missing
        ins, outs, call, tools = onnx2tf_savedmodel(
            sig, fp32_onnx(job), job.cache["root"] / "onnx2tf", job.progress,
            keep_shape=opts["onnx2tf_keep_shape"])
    fn = tc.concrete_function(call, [m.spec for m in ins], [m.spec.name for m in outs])
    job.cache[key] = (fn, ins, outs, tools, getattr(call, "keepalive", None))
    return job.cache[key]


def _converter_route(job: Job, out: Any, opts: dict[str, Any]
                     ) -> tuple[list[Mapped], list[Mapped], Any, dict]:
    from edgepack.convert import tf_to_tflite as tc

    fn, ins, outs, tools, owner = _tf_function(job, opts)
    perms = {m.spec.name: m.perm for m in ins if m.perm}
    calib = (_calib_feeds(job, perms, opts["calibration_samples"])
             if job.precision == "int8" else None)
    names = [m.spec.name for m in ins]
    if job.precision != "int8":
        job.progress(f"TFLiteConverter → tflite ({job.precision})")
        record = tc.convert(fn, out, job.precision, input_names=names, trackable=owner)
        return ins, outs, record, tools
    # int8 starts from the float model: its input order steers calibration, and the
    # mixed-int8 fallback quantizes it
    float_path = job.workdir / "float-for-int8.tflite"
    try:
        job.progress("TFLiteConverter → tflite (fp32, for int8)")
        tc.convert(fn, float_path, "fp32", input_names=names, trackable=owner)
        job.progress("TFLiteConverter → tflite (int8, full integer)")
        record = tc.convert(fn, out, "int8", calib, io_type=opts["int8_io"],
                            input_names=names, trackable=owner, float_model=float_path)
        if opts["int8_io"] == "float" and opts["int8_ops"] == "auto" \
                and job.calib_reference is not None:
            # integer I/O (MCU, NPU) needs every op integer: validation judges it as built
            record = _full_integer_or_mixed(job, out, record, float_path, calib or [], ins,
                                            outs)
    finally:
        float_path.unlink(missing_ok=True)
    return ins, outs, record, tools


def _full_integer_or_mixed(job: Job, out: Any, record: dict[str, Any], float_path: Any,
                           calib: list[Arrays], ins: list[Mapped], outs: list[Mapped]
                           ) -> dict[str, Any]:
    """The full-integer model at ``out``, or a mixed one when it misses the search
    targets (``tflite_mixed_int8``); returns the record of what ``out`` holds."""
    import numpy as np

    from edgepack.convert import tflite_inspect
    from edgepack.quantize.tflite_mixed import full_integer_or_mixed

    # every candidate has the float model's signature: map the names once
    details = tflite_inspect.io_details(float_path)
    sig = name_map([m.spec.name for m in ins], [d["name"] for d in details["inputs"]])
    sig.update(name_map([m.spec.name for m in outs], [d["name"] for d in details["outputs"]]))
    dtypes = {d["name"]: d["dtype"] for d in details["inputs"]}
    feeds = [{sig[k]: np.asarray(v, dtype=dtypes[sig[k]]) for k, v in f.items()}
             for f in calib]
    evaluate = _calibration_evaluator(job, ins, outs,
                                      len(calib) * job.source.signature.batch, sig)
    return full_integer_or_mixed(out, record, float_path, feeds, evaluate,
                                 _search_settings(job, [])["budget"], job.progress)


def _calibration_evaluator(job: Job, ins: list[Mapped], outs: list[Mapped], count: int,
                           names: dict[str, str]) -> Any:
    """evaluate(path, n) -> (meets the search targets, score): a .tflite run in a LiteRT
    worker on the first n (default ``count``) calibration samples, judged against the
    source model's outputs there. ``names``: source -> signature tensor names. A
    candidate that aborts LiteRT scores worst."""
    from pathlib import Path

    from edgepack.quantize.judge import calibration_judge, search_tolerances
    from edgepack.runners.base import run_samples
    from edgepack.runners.litert import LayoutMappedRunner, LiteRTRunner

    judge = calibration_judge(job.calib_reference, search_tolerances(job.tolerances, count),
                              job.task)
    samples = {k: v[:count] for k, v in job.calib.inputs.items()}  # type: ignore[union-attr]
    perms_in = {m.spec.name: m.perm for m in ins if m.perm}
    perms_out = {m.spec.name: m.perm for m in outs if m.perm}

    def evaluate(path: Path, n: int | None = None) -> tuple[bool, float]:
        runner = LayoutMappedRunner(LiteRTRunner(path, names=names), perms_in, perms_out)
        part = samples if n is None else {k: v[:n] for k, v in samples.items()}
        try:
            return judge(run_samples(runner, part, job.source.signature.batch))
        except (ConversionError, ValidationFailed):
            return False, float("-inf")
        finally:
            runner.inner.close()

    return evaluate


# ---------------------------------------------------------------- names and I/O


def name_map(ours: list[str], theirs: list[str]) -> dict[str, str]:
    """Our (source) tensor names -> the model's signature names.

    Same names map to themselves; litert-torch's ``args_<i>`` / ``output_<i>``
    and onnx2tf's ``input_<i>`` map by index; otherwise by position.
    """
    if set(ours) <= set(theirs):
        return {n: n for n in ours}
    numbered = [re.fullmatch(r"(?:args|input|output|serving_default_\w+?)_(\d+)", t)
                for t in theirs]
    if all(numbered):
        order = [t for _, t in sorted(zip((int(m.group(1)) for m in numbered), theirs,  # type: ignore[union-attr]
                                          strict=True))]
    else:
        order = list(theirs)
    if len(order) != len(ours):
        raise ConversionError(f"the .tflite model has {len(order)} tensors where the source "
                              f"has {len(ours)} ({', '.join(ours)})")
    return dict(zip(ours, order, strict=True))


def _artifact_signature(ins: list[Mapped], outs: list[Mapped], details: dict[str, Any]
                        ) -> tuple[Signature, dict[str, str], dict[str, Any]]:
    names = name_map([m.spec.name for m in ins], [d["name"] for d in details["inputs"]])
    names.update(name_map([m.spec.name for m in outs], [d["name"] for d in details["outputs"]]))
    by_name = {d["name"]: d for d in details["inputs"] + details["outputs"]}
    io_quant: dict[str, Any] = {}

    def spec(m: Mapped) -> TensorSpec:
        d = by_name[names[m.spec.name]]
        if d["dtype"] in ("int8", "uint8", "int16") and d["scale"] > 0:
            io_quant[m.spec.name] = {"dtype": d["dtype"], "scale": d["scale"],
                                     "zero_point": d["zero_point"]}
        shape = tuple(d["shape"]) if d["shape"] else m.spec.shape
        return TensorSpec(m.spec.name, shape, d["dtype"], m.spec.layout)

    sig = Signature(inputs=tuple(spec(m) for m in ins), outputs=tuple(spec(m) for m in outs))
    return sig, names, io_quant


def _check_mapped(ins: list[Mapped], outs: list[Mapped]) -> None:
    bad = [m.spec.name for m in ins + outs if m.perm == ()]
    if bad:
        raise ConversionError(f"the converted model's tensors {bad} have shapes that match "
                              "neither the source layout nor its channel-last form")


def _layouts(source: Signature, mapped: list[Mapped]) -> dict[str, Any]:
    src = {t.name: t for t in (*source.inputs, *source.outputs)}
    return {m.spec.name: {"source": src[m.spec.name].layout, "artifact": m.spec.layout,
                          "perm": list(m.perm)} for m in mapped if m.perm}


class TFLiteBackend(Backend):
    name = "tflite"
    runtime = "litert"
    harness = "bench_litert.py"
    options = OPTIONS

    def build(self, job: Job) -> Artifact:
        from edgepack.convert import tflite_inspect
        from edgepack.convert.tflite_compact import compact_tflite

        opts = options(job.profile)
        route = route_for(job, opts)
        if job.precision == "int8" and job.calib is None:
            raise UsageError("static int8 needs calibration data (--calib)")
        out = job.workdir / "model.tflite"
        tools: dict[str, str] = {}
        if route == "litert-torch":
            if job.precision == "int8" and opts["int8_io"] == "uint8":
                raise UsageError("int8_io: uint8 is not available for torch sources through "
                                 "litert-torch (PT2E gives int8 I/O); set torch_int8: onnx2tf")
            ins, outs, record = _torch_route(job, out, opts["calibration_samples"])
            toolchain = ["torch", "litert-torch", "ai-edge-litert", "torchao"]
            if job.precision == "fp16":
                toolchain.append("ai-edge-quantizer")
        else:
            ins, outs, record, tools = _converter_route(job, out, opts)
            toolchain = ["tensorflow-cpu", "ai-edge-litert"]
            if route == "onnx2tf":
                toolchain += ["onnx"] + (["torch"] if job.source.torch_model is not None else [])
        _check_mapped(ins, outs)
        # every precision alike, so size ratios compare weights, not tensor names
        compaction = compact_tflite(out)
        details = tflite_inspect.io_details(out)
        signature, names, io_quant = _artifact_signature(ins, outs, details)
        runtime_options: dict[str, Any] = {
            "signature": details["signature"],
            "tensor_names": names,
            "layouts": _layouts(job.source.signature, ins + outs),
        }
        if io_quant:
            runtime_options["io_quantization"] = io_quant
        if record is not None:
            record = {**record, "route": route}
            if io_quant:
                record["io"] = io_quant
                record["io_type"] = next(iter(io_quant.values()))["dtype"]
        if opts["gpu_delegate_check"]:
            report = tflite_inspect.gpu_delegate_report(out)
            if report is not None:
                runtime_options["gpu_delegate"] = report
        runtime_options["route"] = route
        runtime_options["compaction"] = compaction
        if tools:
            runtime_options["converter_tools"] = tools
        perms_in = {m.spec.name: m.perm for m in ins if m.perm}
        perms_out = {m.spec.name: m.perm for m in outs if m.perm}
        return TFLiteArtifact(
            folder=job.workdir, files=["model.tflite"], signature=signature,
            quantization=record, runtime_options=runtime_options, toolchain=toolchain,
            perms_in=perms_in, perms_out=perms_out, route=route,
        )

    def runner(self, artifact: Artifact) -> Runner:
        """A LiteRT runner (worker process); at build time it takes source-layout feeds."""
        from edgepack.runners.litert import LayoutMappedRunner, LiteRTRunner

        inner = LiteRTRunner(artifact.main,
                             names=artifact.runtime_options.get("tensor_names") or {})
        if isinstance(artifact, TFLiteArtifact) and (artifact.perms_in or artifact.perms_out):
            return LayoutMappedRunner(inner, artifact.perms_in, artifact.perms_out)
        return inner

    def golden_io(self, artifact: Artifact, inputs: Arrays, outputs: Arrays
                  ) -> tuple[Arrays, Arrays]:
        """Golden I/O (source layout) -> the artifact's layout, for the bundle's reference/."""
        perms_in = getattr(artifact, "perms_in", None) or {}
        perms_out = getattr(artifact, "perms_out", None) or {}
        return to_layout(inputs, perms_in), to_layout(outputs, perms_out)


BACKEND = TFLiteBackend()
