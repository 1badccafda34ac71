"""Backend ``tensorrt``: TensorRT-ready ONNX for NVIDIA Jetson, engine built on the device.

A TensorRT engine is tied to the TensorRT version and GPU that built it, so the
bundle carries the ONNX TensorRT will accept, ``build_engine.sh`` (the exact
trtexec command for the profile's TensorRT) and ``bench.py``, which builds,
checks and times the engine on the Jetson.

Recipes (one TensorRT-ready fp32 graph: folded, static shapes or an
optimization profile, opset/IR the profile's TensorRT reads):
  fp32  that graph; engine built with --noTF32 (true fp32 on Ampere)
  fp16  the same graph; engine built with --fp16
  int8  explicit quantization: symmetric int8 Q/DQ (zero points 0), activations
        calibrated on --calib, per-channel weights on the output-channel axis,
        through the accuracy-aware search (layers kept in float when they hurt),
        then TensorRT's Q/DQ placement (quantize/tensorrt_qdq.py); built with --int8
        (+ --fp16 for the float layers unless the profile says fp32; then the
        float weights and embedding tables are also stored fp16 in the ONNX)

Host validation (runners/tensorrt.py): this machine has no TensorRT/GPU, so
``runner`` raises Deferred with ONNX Runtime on the exact shipped ONNX as the
proxy (fp16: a copy converted to fp16, so fp16 rounding is simulated). Where
TensorRT and a GPU are present, the engine is built and run for real instead.
"""

from __future__ import annotations

import json
import shlex
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from edgepack.backends.base import Artifact, Backend, Deferred, Job
from edgepack.backends.options import Option, read_options
from edgepack.backends.shared import export_toolchain, fp32_onnx
from edgepack.errors import ConversionError, UsageError
from edgepack.quantize.judge import calibration_judge, search_tolerances
from edgepack.runners.base import Runner, run_samples
from edgepack.signature import Signature, TensorSpec

TOOLCHAIN = ["torch", "onnx", "onnxruntime", "onnxscript", "onnxconverter-common"]
HARNESS_DIR = Path(__file__).resolve().parent.parent / "harness"
BUILD_SCRIPT = "build_engine.sh"
ENGINE = "model.engine"
DEFERRED_REASON = ("TensorRT engines are built and checked on the Jetson (bench.py); "
                   "this host has no TensorRT/GPU")
#: Newest ONNX opset each TensorRT release's parser reads.
MAX_OPSET = {"8": 17, "10": 20}
INT8_FORMAT = "qdq-s8s8"
PLACEMENT = ("TensorRT explicit quantization: Q/DQ on the activation inputs of "
             "Conv/ConvTranspose/Gemm/MatMul, and on both inputs of residual Adds when both "
             "already come quantized from those layers (Adds are not quantized on their "
             "own: only searched layers round); "
             "int8 weights through per-channel DequantizeLinear on the output-channel axis; "
             "float biases; every zero point 0; one DequantizeLinear per consumer")


@dataclass(frozen=True)
class Settings:
    """The profile's ``options:`` for this backend, checked."""

    tensorrt: str
    max_opset: int
    workspace_mib: int = 1024
    dla_core: int | None = None
    gpu_fallback: bool = True
    int8_float_fallback: str = "fp16"
    shapes: dict[str, dict[str, list[int]]] | None = None
    timing_cache: bool = True


def _version_problem(value: Any) -> str | None:
    text = str(value).strip()
    if not text or not text.split(".")[0].isdigit():
        return "must name the device's TensorRT version, e.g. '10.3'"
    return None


def _shapes_problem(shapes: Any) -> str | None:
    if not isinstance(shapes, dict):
        return "expects {input: {min: [...], opt: [...], max: [...]}}"
    for name, spec in shapes.items():
        ok = isinstance(spec, dict) and set(spec) == {"min", "opt", "max"} and all(
            isinstance(spec[k], list) and spec[k] and all(
                isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in spec[k])
            for k in ("min", "opt", "max"))
        if not ok or not len(spec["min"]) == len(spec["opt"]) == len(spec["max"]):
            return (f"{name}: needs min, opt and max: lists of positive integers of one "
                    "rank")
        if not all(a <= b <= c for a, b, c in zip(spec["min"], spec["opt"], spec["max"],
                                                  strict=True)):
            return f"{name}: needs min <= opt <= max in every dim"
    return None


OPTIONS = (
    Option("tensorrt", object, None,
           "the device's TensorRT version the build_engine.sh flags are written for",
           rule=_version_problem),
    Option("max_opset", int, None, "newest ONNX opset the device's parser reads "
           "(default: by TensorRT major version)", minimum=1),
    Option("workspace_mib", int, 1024, "builder workspace (MiB)", minimum=1),
    Option("dla_core", int, None, "run on this DLA core (device.dla_cores says how many)",
           minimum=0),
    Option("gpu_fallback", bool, True, "with dla_core: layers the DLA cannot run go to the GPU"),
    Option("int8_float_fallback", ("fp16", "fp32"), "fp16",
           "precision of the layers an int8 engine keeps in float"),
    Option("shapes", dict, None, "dynamic inputs: an optimization profile "
           "{input: {min, opt, max}} instead of static shapes", rule=_shapes_problem),
    Option("timing_cache", bool, True, "keep trtexec's timing cache beside the engine"),
)


def settings_for(profile: Any, precision: str) -> Settings:
    """The profile's options, checked against ``OPTIONS`` and the device facts."""
    opts = read_options(profile, OPTIONS, "tensorrt")
    where = f"profile {profile.name}: options"
    if opts["tensorrt"] is None:
        raise UsageError(f"{where}.tensorrt {_version_problem('')}")
    trt = str(opts["tensorrt"]).strip()
    max_opset = opts["max_opset"] or MAX_OPSET.get(trt.split(".")[0], 17)
    dla = opts["dla_core"]
    cores = profile.device.get("dla_cores", 0) or 0
    if not isinstance(cores, int) or isinstance(cores, bool) or cores < 0:
        raise UsageError(f"profile {profile.name}: device.dla_cores must be the number of DLA "
                         f"cores (0 or more), not {cores!r}")
    if dla is not None:
        if dla >= cores:
            raise UsageError(f"{where}.dla_core {dla!r}: {profile.name} has {cores} DLA core(s)"
                             + (f"; use 0..{cores - 1}" if cores else "; remove dla_core"))
        if precision == "fp32":
            raise UsageError(f"{where}.dla_core: the DLA runs fp16 and int8 only, not fp32")
    shapes = opts["shapes"] or None
    if shapes is not None:
        shapes = {str(n): {k: [int(d) for d in spec[k]] for k in ("min", "opt", "max")}
                  for n, spec in shapes.items()}
    return Settings(tensorrt=trt, max_opset=max_opset, workspace_mib=opts["workspace_mib"],
                    dla_core=dla, gpu_fallback=opts["gpu_fallback"],
                    int8_float_fallback=opts["int8_float_fallback"], shapes=shapes,
                    timing_cache=opts["timing_cache"])


def _dims(shape: list[int]) -> str:
    return "x".join(str(d) for d in shape)


def _shape_arg(name: str) -> str:
    return f"'{name}'" if ":" in name else name


def trtexec_flags(s: Settings, precision: str) -> list[str]:
    """The trtexec build flags for this precision and profile (TensorRT 8.5 and 10.x)."""
    flags = {"fp32": ["--noTF32"], "fp16": ["--fp16"],
             "int8": ["--int8"] + (["--fp16"] if s.int8_float_fallback == "fp16" else [])
             }[precision]
    if s.dla_core is not None:
        flags.append(f"--useDLACore={s.dla_core}")
        if s.gpu_fallback:
            flags.append("--allowGPUFallback")
    for key in ("min", "opt", "max"):
        if s.shapes:
            flags.append(f"--{key}Shapes=" + ",".join(
                f"{_shape_arg(n)}:{_dims(v[key])}" for n, v in s.shapes.items()))
    flags.append(f"--memPoolSize=workspace:{s.workspace_mib}")
    if s.timing_cache:
        flags.append("--timingCacheFile=model.timing.cache")
    # build only, no timing run: --buildOnly up to TensorRT 8.6, --skipInference from 8.6 on
    flags.append("--buildOnly" if int(s.tensorrt.split(".")[0]) < 10 else "--skipInference")
    return flags


def builder_flags(s: Settings, precision: str) -> list[str]:
    """The same precision choice for the TensorRT Python API (BuilderFlag names)."""
    return {"fp32": [], "fp16": ["FP16"],
            "int8": ["INT8"] + (["FP16"] if s.int8_float_fallback == "fp16" else [])}[precision]


def render_build_script(path: Path, target: str, s: Settings, precision: str) -> None:
    template = (HARNESS_DIR / "build_engine.sh.in").read_text()
    lines = "".join(f"  {shlex.quote(f)} \\\n" for f in trtexec_flags(s, precision))
    text = (template.replace("@@FLAGS@@\n", lines).replace("@@TARGET@@", target)
            .replace("@@PRECISION@@", precision).replace("@@TENSORRT@@", s.tensorrt))
    path.write_text(text)
    path.chmod(0o755)


def _fixed_shapes(job: Job, model_inputs: dict[str, list], s: Settings) -> dict[str, list[int]]:
    """Dynamic inputs without an optimization profile get the signature's run shape."""
    sig = job.source.signature
    fixed: dict[str, list[int]] = {}
    for name in s.shapes or {}:
        if name not in model_inputs:
            raise UsageError(f"profile {job.profile.name}: options.shapes.{name}: the model has "
                             f"no input {name!r}; inputs: {', '.join(model_inputs)}")
    for name, dims in model_inputs.items():
        dynamic = [i for i, d in enumerate(dims) if not isinstance(d, int)]
        spec = s.shapes.get(name) if s.shapes else None
        run = list(sig.input(name).concrete_shape()) if name in sig.input_names else None
        if spec is not None:
            if len(spec["min"]) != len(dims) or any(
                    isinstance(d, int) and not spec["min"][i] == spec["max"][i] == d
                    for i, d in enumerate(dims)):
                raise UsageError(f"profile {job.profile.name}: options.shapes.{name} does not fit "
                                 f"the model's input of shape {dims}")
            if run and not all(a <= r <= b for a, r, b in zip(spec["min"], run, spec["max"],
                                                              strict=True)):
                raise UsageError(f"profile {job.profile.name}: options.shapes.{name}: the run "
                                 f"shape {run} is outside min..max")
            continue
        if not dynamic:
            continue
        if dynamic != [0] or run is None:
            raise UsageError(f"input {name!r} has dynamic dims {dims}: TensorRT needs static "
                             f"shapes (--input {name}:1x...) or options.shapes (min/opt/max) in "
                             "the profile")
        fixed[name] = run
    return fixed


def _trt_graph(job: Job, s: Settings) -> tuple[Path, dict[str, Any]]:
    """The TensorRT-ready fp32 graph, built once per build for equal settings."""
    import onnx

    from edgepack.convert.onnx_for_tensorrt import input_dims, prepare_tensorrt_onnx

    base = fp32_onnx(job)
    model_inputs = input_dims(onnx.load(str(base), load_external_data=False))
    fixed = _fixed_shapes(job, model_inputs, s)
    key = "tensorrt_onnx:" + json.dumps([str(base), fixed, s.max_opset], sort_keys=True)
    if key not in job.cache:
        folder = job.cache.setdefault("root", job.workdir.parent) / f"tensorrt-{len(job.cache)}"
        folder.mkdir(parents=True, exist_ok=True)
        job.progress("folding the onnx graph for TensorRT")
        out = folder / "model.onnx"
        info = prepare_tensorrt_onnx(base, out, fixed_shapes=fixed, max_opset=s.max_opset)
        info["fixed_shapes"] = fixed
        left = sorted(set(info["dynamic_inputs"]) - set(s.shapes or {}))
        if left:
            raise UsageError(f"inputs {left} stay dynamic after folding: give them "
                             "options.shapes (min/opt/max) in the profile")
        job.cache[key] = (out, info)
    return job.cache[key]


def _signature(job: Job, model_path: Path, fixed: dict[str, list[int]]) -> Signature:
    """The shipped graph's own I/O: fixed input shapes, output shapes where known."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    outs = {o.name: [d.dim_value if d.HasField("dim_value") and d.dim_value > 0
                     else (d.dim_param or "N") for d in o.type.tensor_type.shape.dim]
            for o in model.graph.output}
    sig = job.source.signature
    inputs = tuple(replace(t, shape=tuple(fixed[t.name])) if t.name in fixed else t
                   for t in sig.inputs)
    outputs = tuple(replace(t, shape=tuple(outs[t.name])) if outs.get(t.name) else t
                    for t in sig.outputs) or tuple(
        TensorSpec(name=n, shape=tuple(d)) for n, d in outs.items())
    return Signature(inputs=inputs, outputs=outputs)


# --------------------------------------------------------------------------- int8


def _int8_options(job: Job):
    from edgepack.quantize.onnx_qdq import Int8Options
    from edgepack.quantize.search import Budget

    settings = job.int8_settings
    if settings.get("format", INT8_FORMAT) != INT8_FORMAT:
        raise UsageError(f"profile {job.profile.name}: TensorRT takes symmetric int8 only: "
                         f"int8.format must be {INT8_FORMAT}")
    if settings.get("per_channel", True) is not True:
        raise UsageError(f"profile {job.profile.name}: TensorRT int8 here uses per-channel "
                         "weights: int8.per_channel must be true")
    budget = Budget.from_settings(settings)
    # embeddings=False: TensorRT fuses Q/DQ into Conv/MatMul weights only; an int8 Gather
    # table would be dequantized back to float here, rounded for nothing.
    opts = Int8Options(method=settings.get("method", "auto"), per_channel=True, symmetric=True,
                       budget=budget, embeddings=False)
    if "percentile" in settings:
        opts = replace(opts, percentile=float(settings["percentile"]))
    return opts


class _Placement:
    """The search's transform: TensorRT's Q/DQ placement on every candidate, so the
    search scores what ships; keeps each placement's report for the manifest."""

    def __init__(self) -> None:
        self.reports: dict[tuple[str, ...], dict[str, Any]] = {}

    def __call__(self, model: Any, excluded: list[str]) -> None:
        from edgepack.quantize.tensorrt_qdq import tensorrt_placement

        self.reports[tuple(sorted(excluded))] = tensorrt_placement(model, excluded)


def _quantize(job: Job, base: Path, out: Path, s: Settings) -> dict[str, Any]:
    """Static symmetric int8 through the search, then TensorRT's Q/DQ placement."""
    import onnx

    from edgepack.convert.onnx_cleanup import compact_onnx
    from edgepack.convert.onnx_for_tensorrt import graph_opset, ir_version_for
    from edgepack.quantize.onnx_session import SESSION_DISABLED_OPTIMIZERS
    from edgepack.quantize.onnx_static import quantize_static_int8
    from edgepack.quantize.tensorrt_qdq import (
        check_tensorrt_qdq,
        float_weighted_nodes,
        qdq_summary,
    )
    from edgepack.runners.onnxruntime import OnnxRuntimeRunner

    if job.calib is None or job.calib_reference is None:
        raise UsageError("int8 needs calibration data (--calib)")
    opts = _int8_options(job)
    # the search scores TensorRT's placement itself (the transform runs on every candidate)
    placement = _Placement()
    opts = replace(opts, transform=placement)
    key = "tensorrt_int8:" + json.dumps(
        [str(base), repr(replace(opts, transform=None)),
         sorted(job.tolerances.items()), job.task], sort_keys=True, default=str)
    if key in job.cache:
        cached, record = job.cache[key]
        shutil.copyfile(cached, out)
        return json.loads(json.dumps(record))
    batch = job.source.signature.batch
    # aim past the tolerance, as the onnx target
    target = search_tolerances(job.tolerances, job.calib.count)
    accept = calibration_judge(job.calib_reference, target, job.task)
    with tempfile.TemporaryDirectory(prefix="edgepack-trt-int8-") as tmp:
        raw = Path(tmp) / "qdq.onnx"
        record = quantize_static_int8(base, raw, job.calib.inputs, batch, accept, opts,
                                      progress=job.progress)
        job.progress("placing Q/DQ for TensorRT")
        model = onnx.load(str(raw))
    kept = [n["name"] for n in record.get("nodes_kept_float", [])]
    report = placement.reports[tuple(sorted(kept))]
    floats = sorted(set(kept) | set(float_weighted_nodes(model)))
    opset = graph_opset(model)
    if opset > s.max_opset:
        raise ConversionError(f"the int8 graph has opset {opset}; TensorRT {s.tensorrt} reads "
                              f"up to {s.max_opset}")
    model.ir_version = min(model.ir_version, ir_version_for(opset))
    problems = check_tensorrt_qdq(model, floats)
    if problems:
        raise ConversionError(f"the int8 graph breaks TensorRT's Q/DQ rules: {problems[0]} "
                              f"({len(problems)} problem(s))")
    summary = qdq_summary(model, floats)
    if s.int8_float_fallback == "fp16":
        # the engine runs the float layers in fp16 (--fp16): their weights and the
        # embedding tables are rounded to fp16 on the device either way
        from edgepack.convert.onnx_fp16 import store_weights_fp16

        record["float_weights_fp16"] = store_weights_fp16(model)
    # zero points stay explicit (TensorRT 8.5 needs all three DQ inputs); identical ones merge
    record["artifact_compaction"] = compact_onnx(model, kept, drop_zero_points=False)
    onnx.save_model(model, str(out))
    onnx.checker.check_model(str(out))
    job.progress("scoring the TensorRT placement on calibration data")
    outputs = run_samples(OnnxRuntimeRunner(out, disabled_optimizers=SESSION_DISABLED_OPTIMIZERS),
                          job.calib.inputs, batch)
    passed, score = accept(outputs)
    record = dict(record)
    record["search_passed"], record["search_score"] = record.get("passed"), record.get("score")
    record["passed"], record["score"] = bool(passed), round(float(score), 6)
    record["search_tolerances"] = target
    record["format"] = "QDQ"
    record["activation_type"] = "int8 (symmetric, zero point 0, per tensor)"
    record["weight_type"] = "int8 (symmetric, [-127, 127], per output channel)"
    record["nodes_kept_float"] = record.get("nodes_kept_float") or [
        {"name": n, "reason": "not quantized"} for n in floats]
    record["tensorrt"] = {
        "placement": PLACEMENT,
        "search_scored": "the TensorRT placement",
        **report,
        **summary,
        "float_layers_on_device": s.int8_float_fallback,
    }
    job.cache[key] = (out, json.loads(json.dumps(record)))
    return record


class TensorRTBackend(Backend):
    name = "tensorrt"
    runtime = "tensorrt"
    harness = "bench_tensorrt.py"
    harness_extra = ("tensorrt_engine.py",)
    precisions = ("fp32", "fp16", "int8")
    options = OPTIONS

    def check(self, profile: Any, precision: str) -> dict[str, Any]:
        """The base checks, and the options against the device facts."""
        super().check(profile, precision)
        return asdict(settings_for(profile, precision))

    def build(self, job: Job) -> Artifact:
        self.check(job.profile, job.precision)
        s = settings_for(job.profile, job.precision)
        graph, info = _trt_graph(job, s)
        out = job.workdir / "model.onnx"
        quantization = None
        if job.precision == "int8":
            quantization = _quantize(job, graph, out, s)
        else:  # compacted as the int8 graph is, so sizes compare weights, not bookkeeping
            from edgepack.convert.onnx_cleanup import compact_file

            shutil.copyfile(graph, out)
            compact_file(out, [], drop_zero_points=False)
        render_build_script(job.workdir / BUILD_SCRIPT, job.profile.name, s, job.precision)
        from edgepack.quantize.onnx_session import SESSION_DISABLED_OPTIMIZERS

        options = {
            "precision": job.precision,
            "tensorrt": s.tensorrt,
            "onnx": "model.onnx",
            "engine": ENGINE,
            "build_script": BUILD_SCRIPT,
            "trtexec_build": ["trtexec", "--onnx=model.onnx", f"--saveEngine={ENGINE}",
                              *trtexec_flags(s, job.precision)],
            "builder_flags": builder_flags(s, job.precision),
            "tf32": job.precision != "fp32",
            "workspace_mib": s.workspace_mib,
            "dla_core": s.dla_core,
            "gpu_fallback": s.gpu_fallback,
            "shapes": s.shapes or {},
            "dynamic_inputs": sorted(s.shapes or {}),
            "graph": {k: info[k] for k in ("opset", "ir_version", "nodes", "fixed_shapes")},
            # the host proxy (ONNX Runtime) needs this for the int8 graph's float layers
            "disabled_optimizers": list(SESSION_DISABLED_OPTIMIZERS)
            if job.precision == "int8" else [],
        }
        return Artifact(
            folder=job.workdir,
            files=["model.onnx", BUILD_SCRIPT],
            signature=_signature(job, out, info["fixed_shapes"]),
            quantization=quantization,
            runtime_options=options,
            toolchain=TOOLCHAIN + export_toolchain(job),
        )

    def runner(self, artifact: Artifact) -> Runner:
        from edgepack.runners.tensorrt import ProxyRunner, host_tensorrt

        opts = artifact.runtime_options
        host = host_tensorrt()
        if host is not None:
            return self._real_runner(artifact, *host)
        precision = opts.get("precision")
        numerics = None
        if precision == "fp16":
            from edgepack.convert.onnx_fp16 import to_fp16 as numerics
        proxy = ProxyRunner(artifact.main,
                            disabled_optimizers=tuple(opts.get("disabled_optimizers", ())),
                            numerics=numerics)
        name = {
            "fp16": "onnxruntime-cpu on the shipped ONNX converted to fp16 (weights and "
                    "activations rounded to fp16 as in TensorRT's fp16 layers)",
            "int8": "onnxruntime-cpu on the shipped ONNX (its Q/DQ simulate the int8 engine; "
                    "float layers run in fp32 here, on their weights as shipped)",
        }.get(precision, "onnxruntime-cpu on the shipped ONNX")
        raise Deferred(DEFERRED_REASON, proxy=proxy, proxy_name=name)

    @staticmethod
    def _real_runner(artifact: Artifact, trt: Any, bench: Any) -> Runner:
        """A GPU workstation: build an engine from the shipped ONNX here and run it.

        The engine is for this GPU and TensorRT only; it is not shipped (the device
        builds its own). The manifest says the numbers come from a real engine.
        """
        from edgepack.runners.tensorrt import EngineRunner

        opts = dict(artifact.runtime_options, dla_core=None)  # no DLA on a workstation
        folder = Path(tempfile.mkdtemp(prefix="edgepack-trt-host-"))
        try:
            engine = folder / ENGINE
            bench.build_engine_python(trt, str(artifact.main), str(engine), opts)
            runner = EngineRunner(bench.PythonEngine(trt, str(engine)))
        except bench.HarnessError as e:
            raise ConversionError(f"TensorRT {trt.__version__} on this host: {e}") from None
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # the runtime holds the engine
        artifact.runtime_options["host_validation"] = (
            f"engine built from the shipped ONNX and run with TensorRT {trt.__version__} on "
            "this host's GPU (not shipped: the device builds its own)")
        return runner


BACKEND = TensorRTBackend()
