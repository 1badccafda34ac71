"""TensorRT engines for an edgepack TensorRT bundle: find, build, load and run them.

Copied verbatim into TensorRT bundles as ``tensorrt_engine.py``, beside
``bench.py`` (which imports it). Finds trtexec and the TensorRT Python module
and their version; builds ``model.engine`` with ``build_engine.sh`` (trtexec)
or the TensorRT Python API, records which TensorRT built it (a sidecar in
results/) and refuses an engine from another release; runs an engine through
the Python API with a ctypes CUDA wrapper (no pycuda). The host loads this
file too (``edgepack.runners.tensorrt``), so a GPU workstation builds and runs
engines exactly as the device does. Needs numpy and TensorRT only; Python 3.8.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)  # the sibling edgepack_harness.py, also when loaded by path

import numpy as np  # noqa: E402
from edgepack_harness import HarnessError  # noqa: E402

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
