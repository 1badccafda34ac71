"""What the bytes of a model file are: weight tensors by storage type, and the rest.

The int8 size bar (≥ 3.5× smaller than fp32) assumes weight bytes dominate a
file. On small CNNs they do not: per-channel quantization stores a scale (and a
zero point, and an int32 bias with its own scale) for every output channel, and
the graph itself costs the same at every precision. The report shows the int8
weights' share of each int8 file so a missed bar says why.
"""

from __future__ import annotations

from pathlib import Path


def composition(model_file: Path) -> dict[str, int] | None:
    """Bytes of weight tensors (rank >= 2) by storage type, and the file's bytes.

    ``{"file": n, "int8": n, "float": n}``; None for formats not read here (Core ML).
    """
    model_file = Path(model_file)
    if model_file.suffix == ".onnx":
        return _onnx(model_file)
    if model_file.suffix == ".tflite":
        return _tflite(model_file)
    return None


def _onnx(path: Path) -> dict[str, int]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    out = {"file": path.stat().st_size, "int8": 0, "float": 0}
    for t in model.graph.initializer:
        if len(t.dims) < 2:
            continue
        a = numpy_helper.to_array(t)
        kind = "int8" if a.dtype.itemsize == 1 else "float" if a.dtype.kind == "f" else None
        if kind:
            out[kind] += a.nbytes
    return out


def _tflite(path: Path) -> dict[str, int]:
    from edgepack.convert.tflite_compact import load_model
    from edgepack.convert.tflite_inspect import flatbuffer_schema

    types = flatbuffer_schema().TensorType
    kinds = {types.INT8: "int8", types.UINT8: "int8", types.FLOAT32: "float",
             types.FLOAT16: "float"}
    model = load_model(path)
    out = {"file": path.stat().st_size, "int8": 0, "float": 0}
    seen: set[int] = set()
    for sg in model.subgraphs or []:
        for t in sg.tensors or []:
            data = model.buffers[t.buffer].data if t.buffer else None
            kind = kinds.get(t.type)
            if data is None or kind is None or t.shape is None or len(t.shape) < 2 \
                    or t.buffer in seen:
                continue
            seen.add(t.buffer)
            out[kind] += len(data)
    return out

