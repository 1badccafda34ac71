"""Benchmark harness of an edgepack LiteRT / TFLite bundle (copied in as ``bench.py``).

    python bench.py [--runs N] [--warmup N] [--threads T] [--json FILE]

Checks the golden outputs in reference/ against the bundle's tolerances, then
times the model. Needs numpy and one of ai_edge_litert, tflite_runtime or
tensorflow (tried in that order; the summary says which). Golden I/O is in the
model's own layout (NHWC for images). Integer-I/O models (int8/uint8) get their
float inputs quantized and their outputs dequantized with the scale and zero
point recorded in manifest.json. Exit 0 golden passed, 1 golden failed,
2 runtime missing or model unloadable.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # the sibling edgepack_harness.py, whatever the cwd

try:
    import edgepack_harness as harness
    import numpy as np
except ImportError as e:  # numpy missing, or the bundle lost a file
    print(f"error: {e}: pip install -r requirements.txt", file=sys.stderr)
    sys.exit(2)

RUNTIMES = (
    ("ai_edge_litert", "ai_edge_litert.interpreter", "ai-edge-litert"),
    ("tflite_runtime", "tflite_runtime.interpreter", "tflite-runtime"),
    ("tensorflow.lite", "tensorflow", "tensorflow"),
)


def find_interpreter():
    """(Interpreter class, runtime name, version) of the first runtime that imports."""
    import importlib

    problems = []
    for name, module, dist in RUNTIMES:
        try:
            mod = importlib.import_module(module)
        except Exception as e:  # ImportError, or a broken native library
            problems.append(f"{name}: {harness.one_line(e)}")
            continue
        if name == "tensorflow.lite":
            return mod.lite.Interpreter, name, getattr(mod, "__version__", "?")
        return mod.Interpreter, name, _version(dist, mod)
    raise harness.HarnessError(
        "no TFLite runtime can be imported (" + "; ".join(problems) + "): "
        "pip install ai-edge-litert (or tflite-runtime)")


def _version(dist: str, mod) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return getattr(mod, "__version__", "?")


def _quantize(x, q: dict):
    info = np.iinfo(q["dtype"])
    v = np.round(np.asarray(x, dtype=np.float64) / q["scale"]) + q["zero_point"]
    return np.clip(v, info.min, info.max).astype(q["dtype"])


def _dequantize(y, q: dict):
    return ((np.asarray(y, dtype=np.float32) - np.float32(q["zero_point"]))
            * np.float32(q["scale"])).astype(np.float32)


class _TensorRunner:
    """A signature runner's interface over a model without signatures (tensor names)."""

    def __init__(self, interp) -> None:
        interp.allocate_tensors()
        self.interp = interp
        self.inputs = {d["name"]: d for d in interp.get_input_details()}
        self.outputs = {d["name"]: d for d in interp.get_output_details()}

    def get_input_details(self) -> dict:
        return self.inputs

    def __call__(self, **feeds) -> dict:
        for name, value in feeds.items():
            self.interp.set_tensor(self.inputs[name]["index"], value)
        self.interp.invoke()
        return {n: self.interp.get_tensor(d["index"]) for n, d in self.outputs.items()}


def open_runtime(model_path: str, manifest: dict, threads: int | None) -> harness.Runtime:
    interpreter_class, runtime, version = find_interpreter()
    options = (manifest.get("harness") or {}).get("runtime_options") or {}
    names = options.get("tensor_names") or {}  # bundle name -> model signature name
    io_quant = options.get("io_quantization") or {}
    kwargs = {"num_threads": threads} if threads else {}
    try:
        interp = interpreter_class(model_path=model_path, **kwargs)
        signatures = interp.get_signature_list()
    except Exception as e:
        raise harness.HarnessError(f"cannot load {os.path.basename(model_path)} with "
                                   f"{runtime} {version}: {harness.one_line(e)}") from e
    key = options.get("signature") or (sorted(signatures)[0] if signatures else None)
    if key is not None and key not in signatures:
        raise harness.HarnessError(f"{os.path.basename(model_path)} has no signature {key!r} "
                                   f"(it has {sorted(signatures)}): rebuild the bundle")
    runner = interp.get_signature_runner(key) if key else _TensorRunner(interp)
    in_types = {n: d["dtype"] for n, d in runner.get_input_details().items()}
    back = {v: k for k, v in names.items()}

    def model_feeds(feeds: dict) -> dict:
        out = {}
        for name, value in feeds.items():
            model_name = names.get(name, name)
            if name in io_quant and np.issubdtype(np.asarray(value).dtype, np.floating):
                value = _quantize(value, io_quant[name])
            out[model_name] = np.ascontiguousarray(value, dtype=in_types[model_name])
        return out

    def run(feeds: dict) -> dict:
        raw = runner(**model_feeds(feeds))
        result = {}
        for model_name, value in raw.items():
            name = back.get(model_name, model_name)
            value = np.array(value)
            if name in io_quant:
                value = _dequantize(value, io_quant[name])
            result[name] = value
        return result

    def prepare(feeds: dict):
        ready = model_feeds(feeds)
        return lambda: runner(**ready)

    detail = (f"signature {key}" if key else "no signature") + (
        ", integer I/O" if io_quant else "")
    return harness.Runtime(runtime, version, run, prepare, detail=detail)


if __name__ == "__main__":
    sys.exit(harness.main(open_runtime, HERE, runs=200, warmup=20))
