"""Read a .tflite file without running it: signature I/O, operators, GPU-delegate support.

Reading the flatbuffer (not loading an interpreter) keeps the build safe from
models that abort the interpreter: those fail at validation, in the worker.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

# TFLite TensorType enum -> numpy dtype name
_TYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 6: "bool",
          7: "int16", 9: "int8", 10: "float64", 16: "uint32", 17: "uint16"}


def flatbuffer_schema() -> Any:
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        from tensorflow.lite.python import schema_py_generated as schema
    return schema


def tensor_name(b: bytes | str | None) -> str:
    return b.decode() if isinstance(b, bytes) else (b or "")


def io_details(path: Path) -> dict[str, Any]:
    """{"signature", "inputs", "outputs"}: name, shape, dtype, scale, zero_point per tensor.

    Same form as the LiteRT worker's description. Names are the signature's
    (the first signature, "serving_default" if present), else the tensors'.
    """
    schema = flatbuffer_schema()
    buf = Path(path).read_bytes()
    model = schema.Model.GetRootAs(buf, 0)
    graph = model.Subgraphs(0)

    def tensor(index: int, name: str | None = None) -> dict[str, Any]:
        t = graph.Tensors(index)
        q = t.Quantization()
        scale = q.ScaleAsNumpy() if q is not None and q.ScaleLength() else np.zeros(0)
        zero = q.ZeroPointAsNumpy() if q is not None and q.ZeroPointLength() else np.zeros(0)
        return {"name": name or tensor_name(t.Name()),
                "shape": [int(d) for d in t.ShapeAsNumpy()] if t.ShapeLength() else [],
                "dtype": _TYPES.get(t.Type(), f"tflite_type_{t.Type()}"),
                "scale": float(scale[0]) if len(scale) == 1 else 0.0,
                "zero_point": int(zero[0]) if len(zero) == 1 else 0}

    keys = [model.SignatureDefs(i) for i in range(model.SignatureDefsLength())]
    if keys:
        by_key = {tensor_name(s.SignatureKey()): s for s in keys}
        key = "serving_default" if "serving_default" in by_key else sorted(by_key)[0]
        sig = by_key[key]
        ins = sorted((sig.Inputs(i) for i in range(sig.InputsLength())),
                     key=lambda m: tensor_name(m.Name()))
        outs = sorted((sig.Outputs(i) for i in range(sig.OutputsLength())),
                      key=lambda m: tensor_name(m.Name()))
        return {"signature": key,
                "inputs": [tensor(m.TensorIndex(), tensor_name(m.Name())) for m in ins],
                "outputs": [tensor(m.TensorIndex(), tensor_name(m.Name())) for m in outs]}
    return {"signature": None,
            "inputs": [tensor(int(i)) for i in graph.InputsAsNumpy()],
            "outputs": [tensor(int(i)) for i in graph.OutputsAsNumpy()]}


def operators(path: Path) -> dict[str, int]:
    """Builtin/custom operator name -> count, over all subgraphs."""
    schema = flatbuffer_schema()
    model = schema.Model.GetRootAs(Path(path).read_bytes(), 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = []
    for i in range(model.OperatorCodesLength()):
        c = model.OperatorCodes(i)
        code = max(c.BuiltinCode(), c.DeprecatedBuiltinCode())
        codes.append(tensor_name(c.CustomCode()) if c.CustomCode() else names.get(code, str(code)))
    counts: dict[str, int] = {}
    for s in range(model.SubgraphsLength()):
        g = model.Subgraphs(s)
        for o in range(g.OperatorsLength()):
            op = codes[g.Operators(o).OpcodeIndex()]
            counts[op] = counts.get(op, 0) + 1
    return dict(sorted(counts.items()))


_GPU_WARNING = re.compile(r"GPU COMPATIBILITY WARNING:\s*(.*)")
_OP_LINE = re.compile(r"Op#\d+\s+([A-Za-z0-9_]+)\(")


def gpu_delegate_report(path: Path) -> dict[str, Any] | None:
    """Ops TFLite's model analyzer says the GPU delegate cannot run; None when unavailable."""
    analyze = _analyzer()
    if analyze is None:
        return None
    try:
        text = analyze(str(path))
    except Exception:
        return None
    unsupported: dict[str, str] = {}
    last_op = None
    for line in text.splitlines():
        m = _OP_LINE.search(line)
        if m:
            last_op = m.group(1)
        w = _GPU_WARNING.search(line)
        if w:
            reason = w.group(1).strip()
            op = last_op or reason.split()[-1]
            unsupported.setdefault(op, reason)
    return {
        "analyzer": "tflite model analyzer (gpu_compatibility)",
        "compatible": not unsupported and "GPU COMPATIBILITY WARNING" not in text,
        "unsupported_ops": sorted(unsupported),
        "reasons": dict(sorted(unsupported.items())),
    }


def _analyzer() -> Any:
    try:
        from ai_edge_litert import _pywrap_analyzer_wrapper as wrapper

        return lambda p: wrapper.ModelAnalyzer(p, True, True)
    except ImportError:
        pass
    try:
        from tensorflow.lite.python import analyzer_wrapper  # noqa: F401
    except ImportError:
        return None
    from tensorflow.lite.python.analyzer_wrapper import _pywrap_analyzer_wrapper as wrapper

    return lambda p: wrapper.ModelAnalyzer(p, True, True)
