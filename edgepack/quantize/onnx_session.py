"""ONNX Runtime sessions and fp32 model preparation shared by the int8 passes
(static search in onnx_static, dynamic in onnx_dynamic, and the TensorRT route).

Every session here has the same fixed, documented options (one thread: scores and
artifacts must not depend on the machine), and every int8 model we produce is run
with ``SESSION_DISABLED_OPTIMIZERS``; the bundles record that.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from edgepack.errors import ConversionError, InputError
from edgepack.runners.onnxruntime import OnnxRuntimeRunner

#: Every session of an int8 model we produce must disable these ORT optimizers
#: (``runners.onnxruntime.OnnxRuntimeRunner(model, disabled_optimizers=...)``).
SESSION_DISABLED_OPTIMIZERS = ["WeightBiasQuantization"]
#: Fixed intra-op thread count for every session created here (determinism).
SESSION_THREADS = 1

#: Applied to the fp32 graph before quantizing (recorded in the manifest).
PREPROCESS = "onnxruntime basic graph optimizations (constant folding, Conv+Pad/BN fusion)"


def int8_runner(model: str | Path | bytes) -> OnnxRuntimeRunner:
    """A runner for an int8 model we produced: its session disables the optimizers that
    would undo the float fallback (``SESSION_DISABLED_OPTIMIZERS``)."""
    return OnnxRuntimeRunner(model, disabled_optimizers=SESSION_DISABLED_OPTIMIZERS)


def name_nodes(model) -> int:
    """Give every unnamed (or duplicate-named) node a deterministic unique name.

    Node names are how the search and the manifest refer to layers kept in float.
    Returns how many nodes were renamed.
    """
    seen: set[str] = set()
    renamed = 0
    taken = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if node.name and node.name not in seen:
            seen.add(node.name)
            continue
        base = f"{node.op_type}_{i}"
        name, k = base, 1
        while name in taken or name in seen:
            name, k = f"{base}_{k}", k + 1
        node.name = name
        seen.add(name)
        renamed += 1
    return renamed


def load_fp32(fp32_path: Path, workdir: Path, disabled: Sequence[str] = ()):
    """Load, name nodes, pre-optimize, re-load shape-inferred; all inside `workdir`.

    Pre-optimization is ORT's BASIC level (constant folding, Pad/BN folded
    into Conv, redundant nodes removed): portable ONNX, no contrib ops. It is
    what ORT asks for before quantizing, and it shrinks exported graphs a lot
    (EfficientNet-Lite0: 458 -> 94 nodes), making every candidate build faster.
    ORT writes `<name>-inferred.onnx` next to the file it loads, hence the
    private copies. ``disabled``: ORT optimizers left out of the pre-optimization.
    Returns (inferred model, renamed count).
    """
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization.quant_utils import (
        QuantType,
        load_model_with_shape_infer,
        update_opset_version,
    )

    fp32_path = Path(fp32_path)
    if not fp32_path.is_file():
        raise InputError(f"ONNX model not found: {fp32_path}")
    try:
        model = onnx.load(str(fp32_path))
    except Exception as exc:  # noqa: BLE001 - onnx raises several types
        raise InputError(f"cannot read ONNX model {fp32_path.name}: {exc}") from exc
    renamed = name_nodes(model)
    named = workdir / "fp32-named.onnx"
    onnx.save_model(model, str(named))
    optimized = workdir / "fp32.onnx"
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(optimized)
    opts.log_severity_level = 3
    try:
        ort.InferenceSession(str(named), opts, providers=["CPUExecutionProvider"],
                             disabled_optimizers=list(disabled))
    except Exception as exc:  # noqa: BLE001
        raise ConversionError(f"ONNX Runtime cannot load the fp32 model: {exc}") from exc
    model = onnx.load(str(optimized))
    used = {n.domain for n in model.graph.node}
    keep = [o for o in model.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    renamed += name_nodes(model)
    onnx.save_model(model, str(optimized))
    inferred = load_model_with_shape_infer(optimized)
    inferred = update_opset_version(inferred, QuantType.QInt8, QuantType.QUInt8)
    return inferred, renamed


def initializers(model) -> dict:
    """name -> initializer proto of a ModelProto's main graph."""
    return {i.name: i for i in model.graph.initializer}


def tensor_digest(proto) -> str:
    """Content digest of a TensorProto (cache keys: a changed tensor is recomputed)."""
    from onnx import numpy_helper

    data = proto.raw_data or numpy_helper.to_array(proto).tobytes()
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def ort_version() -> str:
    import onnxruntime as ort

    return ort.__version__
