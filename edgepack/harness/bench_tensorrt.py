"""Benchmark harness of an edgepack TensorRT bundle (copied in as ``bench.py``).

    python bench.py [--runs N] [--warmup N] [--json FILE] [--engine FILE] [--rebuild]

Run from inside the bundle on the Jetson. Builds ``model.engine`` from
``model.onnx`` with ``build_engine.sh`` (trtexec) when there is none (or uses
the engine given), runs it on the golden inputs in reference/ (TensorRT Python
API when importable, else ``trtexec --loadInputs ... --exportOutput ...``),
compares with the golden outputs under the bundle's tolerances, and reports
latency percentiles from trtexec's per-inference timing export (``--exportTimes``;
Python API timing when trtexec is absent). Refuses an engine built by another
TensorRT version. Needs numpy and TensorRT (JetPack) only.

Exit 0 golden passed, 1 golden failed, 2 TensorRT missing, engine not buildable
or loadable, or built by another TensorRT version (one line on stderr).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # the sibling edgepack_harness.py, whatever the cwd

try:
    import edgepack_harness as harness
    import numpy as np
except ImportError as e:  # numpy missing, or the bundle lost a file
    print(f"error: {e}: pip install -r requirements.txt", file=sys.stderr)
    sys.exit(2)

HarnessError = harness.HarnessError
ENGINE = "model.engine"
TRTEXEC_DIRS = ("/usr/src/tensorrt/bin", "/usr/local/tensorrt/bin", "/opt/tensorrt/bin")
NO_TENSORRT = ("TensorRT not found: no trtexec (PATH, /usr/src/tensorrt/bin, $TRTEXEC) and no "
               "tensorrt Python module; run this bundle on the Jetson (JetPack ships TensorRT)")


# ---------------------------------------------------------------- finding TensorRT


def find_trtexec(explicit: str | None = None) -> str | None:
    for candidate in (explicit, os.environ.get("TRTEXEC"), shutil.which("trtexec"),
                      *(os.path.join(d, "trtexec") for d in TRTEXEC_DIRS)):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def import_tensorrt():
    """The tensorrt module, or None (missing, or its native libraries do not load)."""
    try:
        import tensorrt as trt

        trt.__version__  # noqa: B018 - a broken install fails here
        return trt
    except Exception:
        return None


def decode_packed(packed: str) -> str:
    """trtexec's banner token: 100300 -> 10.3.0 (TensorRT >= 10), 8502 -> 8.5.2."""
    n = int(packed)
    if n >= 10000:
        return f"{n // 10000}.{n // 100 % 100}.{n % 100}"
    return f"{n // 1000}.{n // 100 % 10}.{n % 100}"


def banner_version(text: str) -> str | None:
    m = re.search(r"TensorRT v(\d{4,8})", text)
    return decode_packed(m.group(1)) if m else None


def trtexec_version(trtexec: str) -> str | None:
    """Every trtexec run starts with '&&&& RUNNING TensorRT.trtexec [TensorRT v100300] ...'."""
    try:
        proc = subprocess.run([trtexec, "--help"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return banner_version(proc.stdout + proc.stderr)


def same_release(a: str, b: str) -> bool:
    """Engines are tied to major.minor.patch of the TensorRT that built them."""
    return a.split(".")[:3] == b.split(".")[:3]


class Toolkit:
    """What this machine has: trtexec and/or the Python module, and their version."""

    def __init__(self, trtexec: str | None, trt) -> None:
        self.trtexec = trtexec
        self.trt = trt
        self.version = (trt.__version__ if trt is not None else None) or (
            trtexec_version(trtexec) if trtexec else None) or "unknown"


# ---------------------------------------------------------------- CUDA + TensorRT Python API


class Cuda:
    """The few CUDA runtime calls the Python path needs, through ctypes (no pycuda needed)."""

    H2D, D2H = 1, 2

    def __init__(self) -> None:
        lib = None
        for name in ("libcudart.so", "libcudart.so.12", "libcudart.so.11.0",
                     "/usr/local/cuda/lib64/libcudart.so"):
            try:
                lib = ctypes.CDLL(name)
                break
            except OSError:
                continue
        if lib is None:
            raise HarnessError("the CUDA runtime (libcudart.so) is not loadable: add "
                               "/usr/local/cuda/lib64 to LD_LIBRARY_PATH")
        lib.cudaMalloc.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t]
        lib.cudaFree.argtypes = [ctypes.c_void_p]
        lib.cudaMemcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                   ctypes.c_int]
        lib.cudaGetDeviceCount.argtypes = [ctypes.POINTER(ctypes.c_int)]
        lib.cudaGetErrorString.restype = ctypes.c_char_p
        self.lib = lib

    def check(self, code: int, what: str) -> None:
        if code != 0:
            msg = self.lib.cudaGetErrorString(code)
            raise HarnessError(f"CUDA {what} failed: {msg.decode() if msg else code}")

    def device_count(self) -> int:
        n = ctypes.c_int(0)
        return n.value if self.lib.cudaGetDeviceCount(ctypes.byref(n)) == 0 else 0

    def malloc(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self.check(self.lib.cudaMalloc(ctypes.byref(ptr), max(nbytes, 1)), "cudaMalloc")
        return ptr.value

    def free(self, ptr: int) -> None:
        self.lib.cudaFree(ctypes.c_void_p(ptr))

    def to_device(self, ptr: int, host: np.ndarray) -> None:
        self.check(self.lib.cudaMemcpy(ptr, host.ctypes.data, host.nbytes, self.H2D), "copy in")

    def to_host(self, host: np.ndarray, ptr: int) -> None:
        self.check(self.lib.cudaMemcpy(host.ctypes.data, ptr, host.nbytes, self.D2H), "copy out")


def _logger(trt):
    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors = []

        def log(self, severity, msg) -> None:
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(" ".join(str(msg).split()))

    return Logger()


def build_engine_python(trt, onnx_path: str, engine_path: str, options: dict) -> None:
    """The TensorRT Python API equivalent of build_engine.sh's trtexec command."""
    logger = _logger(trt)
    builder = trt.Builder(logger)
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    network = builder.create_network(0 if explicit is None else 1 << int(explicit))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(onnx_path):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        why = (errors or logger.errors or ["?"])[0]
        raise HarnessError(f"TensorRT {trt.__version__} cannot parse "
                           f"{os.path.basename(onnx_path)}: {why}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE,
                                 int(options.get("workspace_mib", 1024)) << 20)
    for flag in options.get("builder_flags", []):
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if not options.get("tf32", True):
        config.clear_flag(trt.BuilderFlag.TF32)
    if options.get("dla_core") is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(options["dla_core"])
        if options.get("gpu_fallback", True):
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    shapes = options.get("shapes") or {}
    if shapes:
        profile = builder.create_optimization_profile()
        for name, s in shapes.items():
            profile.set_shape(name, s["min"], s["opt"], s["max"])
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise HarnessError(f"TensorRT {trt.__version__} failed to build the engine: "
                           f"{(logger.errors or ['see the TensorRT log'])[-1]}")
    with open(engine_path, "wb") as f:
        f.write(bytes(serialized))
    write_sidecar(engine_path, {"tensorrt": trt.__version__, "device": "",
                                "built_with": "tensorrt python"})


class PythonEngine:
    """Runs a serialized engine with the TensorRT Python API (TensorRT 8.5 and 10.x)."""

    def __init__(self, trt, engine_path: str, dla_core=None) -> None:
        self.cuda = Cuda()
        if self.cuda.device_count() < 1:
            raise HarnessError("no CUDA device visible to this process")
        logger = _logger(trt)
        self.runtime = trt.Runtime(logger)
        if dla_core is not None:
            self.runtime.DLA_core = int(dla_core)
        with open(engine_path, "rb") as f:
            self.engine = self.runtime.deserialize_cuda_engine(f.read())
        if self.engine is None:
            why = (logger.errors or ["deserialization failed"])[-1]
            raise HarnessError(f"TensorRT {trt.__version__} cannot load "
                               f"{os.path.basename(engine_path)} ({why}): rebuild it here "
                               "with bash build_engine.sh")
        self.context = self.engine.create_execution_context()
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in self.names
                       if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in self.names if n not in self.inputs]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n)))
                       for n in self.names}
        self.buffers = {}  # name -> (device pointer, bytes)

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self.buffers.get(name, (None, 0))
        if ptr is None or size < nbytes:
            if ptr is not None:
                self.cuda.free(ptr)
            ptr, size = self.cuda.malloc(nbytes), nbytes
            self.buffers[name] = (ptr, size)
        return ptr

    def bind(self, feeds: dict) -> tuple:
        """Copy the inputs in, size the outputs; -> (host inputs, host outputs, bindings)."""
        host_in = {}
        for n in self.inputs:
            arr = np.ascontiguousarray(feeds[n], dtype=self.dtypes[n])
            self.context.set_input_shape(n, arr.shape)
            self.cuda.to_device(self._buffer(n, arr.nbytes), arr)
            host_in[n] = arr
        host_out = {}
        for n in self.outputs:
            shape = tuple(self.context.get_tensor_shape(n))
            host_out[n] = np.empty(shape, self.dtypes[n])
            self._buffer(n, host_out[n].nbytes)
        bindings = [self.buffers[n][0] for n in self.names]
        return host_in, host_out, bindings

    def run(self, feeds: dict) -> dict:
        _, host_out, bindings = self.bind(feeds)
        if not self.context.execute_v2(bindings):
            raise HarnessError("TensorRT execution failed")
        for n, arr in host_out.items():
            self.cuda.to_host(arr, self.buffers[n][0])
        return {n: arr.copy() for n, arr in host_out.items()}

    def prepare(self, feeds: dict):
        """One timed call: inputs in, execute, outputs out (what trtexec calls latency)."""
        host_in, host_out, bindings = self.bind(feeds)
        cuda, context, bufs = self.cuda, self.context, self.buffers
        ins = [(bufs[n][0], a) for n, a in host_in.items()]
        outs = [(a, bufs[n][0]) for n, a in host_out.items()]

        def call() -> None:
            for ptr, arr in ins:
                cuda.to_device(ptr, arr)
            context.execute_v2(bindings)
            for arr, ptr in outs:
                cuda.to_host(arr, ptr)

        return call


# ---------------------------------------------------------------- engines


def sidecar_path(engine_path: str) -> str:
    """results/<engine>.json beside the engine: which TensorRT and GPU built it."""
    return os.path.join(os.path.dirname(os.path.abspath(engine_path)), "results",
                        os.path.basename(engine_path) + ".json")


def read_sidecar(engine_path: str) -> dict | None:
    try:
        with open(sidecar_path(engine_path), encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def write_sidecar(engine_path: str, info: dict) -> None:
    path = sidecar_path(engine_path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(info, f)
        f.write("\n")


def build_engine(bundle: str, engine_path: str, options: dict, tk: Toolkit) -> None:
    """build_engine.sh with this trtexec, or the Python API when there is no trtexec."""
    if tk.trtexec:
        script = os.path.join(bundle, options.get("build_script", "build_engine.sh"))
        env = dict(os.environ, TRTEXEC=tk.trtexec)
        proc = subprocess.run(["bash", script, engine_path], env=env, capture_output=True,
                              text=True)
        if proc.returncode != 0 or not os.path.isfile(engine_path):
            tail = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
            raise HarnessError(f"building the engine failed: {tail[-1] if tail else 'no output'}")
        return
    build_engine_python(tk.trt, os.path.join(bundle, options.get("onnx", "model.onnx")),
                        engine_path, options)


def ensure_engine(bundle: str, options: dict, tk: Toolkit, given: str | None,
                  rebuild: bool) -> dict:
    """The engine to run -> {path, built_here, built_by, device}; refuses another version."""
    path = os.path.abspath(given) if given else os.path.join(bundle, options.get("engine", ENGINE))
    built_here = False
    if given and not os.path.isfile(path):
        raise HarnessError(f"no such engine: {given}")
    if rebuild or not os.path.isfile(path):
        if given and not rebuild:
            raise HarnessError(f"no such engine: {given}")
        print(f"building {os.path.basename(path)} from model.onnx with TensorRT {tk.version} "
              "(once per device; minutes) ...", file=sys.stderr, flush=True)
        build_engine(bundle, path, options, tk)
        built_here = True
    info = read_sidecar(path) or {}
    built_by = str(info.get("tensorrt") or "unknown")
    if built_by != "unknown" and tk.version != "unknown" and not same_release(built_by,
                                                                              tk.version):
        raise HarnessError(f"{os.path.basename(path)} was built by TensorRT {built_by}; this "
                           f"device has TensorRT {tk.version}: rebuild it with "
                           "python bench.py --rebuild")
    return {"path": path, "built_here": built_here, "built_by": built_by,
            "device": info.get("device") or None}


# ---------------------------------------------------------------- trtexec inference


def _quoted(name: str) -> str:
    return f"'{name}'" if ":" in name else name


def _trtexec_common(tk: Toolkit, engine: str, options: dict, feeds: dict, tmp: str) -> list:
    args = [tk.trtexec, f"--loadEngine={engine}"]
    specs = []
    for i, (name, arr) in enumerate(sorted(feeds.items())):
        path = os.path.join(tmp, f"input{i}.bin")
        np.ascontiguousarray(arr).tofile(path)
        specs.append(f"{_quoted(name)}:{path}")
    args.append("--loadInputs=" + ",".join(specs))
    dynamic = options.get("dynamic_inputs") or []
    if dynamic:
        args.append("--shapes=" + ",".join(
            f"{_quoted(n)}:{'x'.join(str(d) for d in feeds[n].shape)}" for n in dynamic))
    if options.get("dla_core") is not None:
        args.append(f"--useDLACore={int(options['dla_core'])}")
        if options.get("gpu_fallback", True):
            args.append("--allowGPUFallback")
    return args


def _run_trtexec(args: list, what: str) -> None:
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "[E]" in ln]
        why = lines[-1].strip() if lines else f"exit code {proc.returncode}"
        raise HarnessError(f"trtexec failed {what}: {why}")


_NONFINITE = re.compile(r"(?<![\w\"])(-?)(nan|inf)(?![\w\"])", re.IGNORECASE)


def parse_exported_outputs(text: str) -> dict:
    """trtexec --exportOutput JSON -> {name: flat float64 array} (nan/inf made JSON)."""
    fixed = _NONFINITE.sub(lambda m: "NaN" if m.group(2).lower() == "nan"
                           else f"{m.group(1)}Infinity", text)
    return {e["name"]: np.asarray(e["values"], dtype=np.float64) for e in json.loads(fixed)}


def trtexec_runtime(tk: Toolkit, engine: str, options: dict, reference: dict,
                    batch: int, tmp: str):
    """run(feeds) for the golden check: one trtexec call per batch (reloads the engine)."""
    shapes = {k: (batch,) + tuple(v.shape[1:]) for k, v in reference.items()}
    dtypes = {k: v.dtype for k, v in reference.items()}

    def run(feeds: dict) -> dict:
        out = os.path.join(tmp, "outputs.json")
        args = _trtexec_common(tk, engine, options, feeds, tmp)
        args += [f"--exportOutput={out}", "--iterations=1", "--warmUp=0", "--duration=0"]
        _run_trtexec(args, "on the golden inputs")
        with open(out, encoding="utf-8") as f:
            flat = parse_exported_outputs(f.read())
        result = {}
        for name, values in flat.items():
            shape = shapes.get(name)
            result[name] = (values.reshape(shape).astype(dtypes[name]) if shape is not None
                            and values.size == int(np.prod(shape)) else values)
        return result

    return run


def trtexec_times(tk: Toolkit, engine: str, options: dict, feeds: dict, runs: int,
                  warmup: int, tmp: str) -> tuple:
    """Per-inference latency and GPU compute times (ms) from trtexec --exportTimes."""
    path = os.path.join(tmp, "times.json")
    args = _trtexec_common(tk, engine, options, feeds, tmp)
    args += [f"--iterations={runs + warmup}", "--warmUp=0", "--duration=0", "--useSpinWait",
             f"--exportTimes={path}"]
    _run_trtexec(args, "while timing")
    with open(path, encoding="utf-8") as f:
        trace = json.load(f)
    trace = trace[warmup:][:runs] if len(trace) > warmup else trace
    if not trace:
        raise HarnessError("trtexec exported no timings")
    latency = [float(t["latencyMs"]) for t in trace]
    compute = [float(t["computeMs"]) for t in trace]
    return latency, compute


# ---------------------------------------------------------------- the run


def parse_args(argv: list | None, runs: int = 200, warmup: int = 20) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench.py",
        description="Build (once) and check this bundle's TensorRT engine, then time it.")
    p.add_argument("--runs", type=int, default=runs, help=f"timed runs (default {runs})")
    p.add_argument("--warmup", type=int, default=warmup,
                   help=f"untimed runs first (default {warmup})")
    p.add_argument("--threads", type=int, default=None, help="ignored (TensorRT runs on the GPU)")
    p.add_argument("--json", metavar="FILE", default=None, help="write the results as JSON")
    p.add_argument("--engine", default=None, help=f"run this engine (default: {ENGINE}, "
                   "built here when absent)")
    p.add_argument("--rebuild", action="store_true", help="build the engine again first")
    p.add_argument("--trtexec", default=None, help="path to trtexec (default: PATH, "
                   "/usr/src/tensorrt/bin)")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        p.error("--runs must be >= 1, --warmup >= 0")
    return args


def bench(bundle: str, args: argparse.Namespace) -> dict:
    trtexec, trt = find_trtexec(args.trtexec), import_tensorrt()
    if trtexec is None and trt is None:
        raise HarnessError(NO_TENSORRT)
    tk = Toolkit(trtexec, trt)
    manifest = harness.load_manifest(bundle)
    options = (manifest.get("harness") or {}).get("runtime_options") or {}
    batch = harness.batch_size(manifest)
    engine = ensure_engine(bundle, options, tk, args.engine, args.rebuild)

    inputs = harness.load_npz(os.path.join(bundle, "reference", "inputs.npz"))
    reference = harness.load_npz(os.path.join(bundle, "reference", "outputs.npz"))
    tolerances = (manifest.get("validation") or {}).get("tolerances") or {}
    gold_tol = harness.golden_tolerances(tolerances)
    feeds = {k: np.ascontiguousarray(v[:batch]) for k, v in inputs.items()}
    with tempfile.TemporaryDirectory(prefix="edgepack-trt-") as tmp:
        python = None
        if trt is not None:
            python = PythonEngine(trt, engine["path"], options.get("dla_core"))
            run, how = python.run, f"tensorrt {tk.version} python API"
        else:
            run = trtexec_runtime(tk, engine["path"], options, reference, batch, tmp)
            how = f"trtexec {tk.version}"
        try:
            candidate = harness.run_golden(run, inputs, batch)
        except HarnessError:
            raise
        except Exception as e:
            raise HarnessError(
                f"the engine failed on the golden inputs: {harness.one_line(e)}") from e
        golden = harness.evaluate(reference, candidate, gold_tol)
        golden["samples"] = len(next(iter(inputs.values())))

        compute = None
        if tk.trtexec:
            latency, compute = trtexec_times(tk, engine["path"], options, feeds, args.runs,
                                             args.warmup, tmp)
            times_ns = [ms * 1e6 for ms in latency]
            timing = "trtexec --exportTimes (latency = H2D + GPU compute + D2H)"
        else:
            times_ns = harness.time_calls(python.prepare(feeds), args.runs, args.warmup)
            timing = "tensorrt python API (copy in, execute_v2, copy out)"
    lat = harness.latency_stats(times_ns)
    target = manifest.get("target") or {}
    engine_info = dict(engine, path=os.path.relpath(engine["path"], bundle))
    return {
        "runtime": {"name": "tensorrt", "version": tk.version,
                    "detail": f"golden via {how}; timing via {timing.split(' (')[0]}"},
        "device": harness.device_info(),
        "bundle": {"target": target.get("name") if isinstance(target, dict) else target,
                   "precision": manifest.get("precision")},
        "batch": batch,
        "runs": args.runs,
        "warmup": args.warmup,
        "threads": None,
        "latency_ms": lat,
        "gpu_compute_ms": (harness.latency_stats([ms * 1e6 for ms in compute])
                           if compute else None),
        "timing": timing,
        "throughput_per_s": harness.rounded(batch * 1000.0 / lat["mean"]) if lat["mean"] else None,
        "engine": engine_info,
        "golden": {
            "status": golden["status"],
            "samples": golden["samples"],
            "metrics": golden["metrics"],
            "tolerances": golden["tolerances"],
            "failures": golden["failures"],
        },
    }


def main(argv: list | None = None) -> int:
    args = parse_args(argv)
    result = harness.run_and_save(lambda: bench(HERE, args), args)
    if result is None:
        return 2
    lines = harness.summary_lines(result)
    engine = result["engine"]
    lines.insert(1, f"engine   {engine['path']} (built by TensorRT {engine['built_by']}"
                    f"{', now' if engine['built_here'] else ''})")
    print("\n".join(lines))
    return 0 if result["golden"]["status"] == "passed" else 1


if __name__ == "__main__":
    sys.exit(main())
