"""Pass: cleaned ONNX -> TensorRT-ready ONNX (constants folded, static or profiled shapes).

TensorRT's ONNX parser wants shape computations folded away, standard ops
only, an opset and IR version its bundled ONNX knows, and static input shapes
(or an optimization profile for the dims left dynamic). ONNX Runtime's BASIC
graph level folds what onnxscript cannot (e.g. the Pad-amount chains of
TF-style "SAME" padding with step -1 Slices) and fuses Pad/BatchNorm into Conv;
its output is portable standard ONNX (no contrib ops at that level).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from edgepack.errors import ConversionError, InputError, one_line

#: Newest IR version the ONNX parser of each supported TensorRT release reads for an opset
#: (onnx 1.12/1.13 wrote IR 8 for opsets 17-18). Older IR is always accepted.
_IR_FOR_OPSET = {17: 8, 18: 8, 19: 9, 20: 9}
STANDARD_DOMAINS = ("", "ai.onnx")


def ir_version_for(opset: int) -> int:
    return _IR_FOR_OPSET.get(opset, 8 if opset < 17 else 10)


def prepare_tensorrt_onnx(in_path: Path, out_path: Path,
                          fixed_shapes: dict[str, list[int]] | None = None,
                          max_opset: int = 17) -> dict[str, Any]:
    """Fold, fix the named input shapes, check what TensorRT needs; write ``out_path``.

    Returns facts for the manifest: opset, IR version, node counts, inputs left dynamic.
    """
    import onnx
    import onnxruntime as ort
    from onnx import shape_inference

    from edgepack.convert.onnx_cleanup import fix_input_shapes, name_nodes
    from edgepack.convert.torch_to_onnx import strip_metadata

    in_path, out_path = Path(in_path), Path(out_path)
    try:
        model = onnx.load(str(in_path))
    except Exception as e:
        raise InputError(f"{in_path.name} is not a valid ONNX model: {one_line(e)}") from e
    before = len(model.graph.node)
    if fixed_shapes:
        fix_input_shapes(model, fixed_shapes)
    with tempfile.TemporaryDirectory(prefix="edgepack-trt-") as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "folded.onnx"
        onnx.save_model(model, str(src))
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(dst)
        opts.log_severity_level = 3
        try:
            ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own Fail/InvalidGraph types
            raise ConversionError(f"folding constants for TensorRT failed: {one_line(e)}") from e
        model = onnx.load(str(dst))
    used = {n.domain for n in model.graph.node}
    foreign = sorted(d for d in used if d not in STANDARD_DOMAINS)
    if foreign:
        ops = sorted({f"{n.domain}.{n.op_type}" for n in model.graph.node if n.domain in foreign})
        raise ConversionError(f"the graph uses ops TensorRT's ONNX parser does not know: "
                              f"{', '.join(ops)}")
    keep = [o for o in model.opset_import if o.domain in STANDARD_DOMAINS]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    opset = graph_opset(model)
    if opset > max_opset:
        raise ConversionError(f"the graph has opset {opset}; this TensorRT reads opsets up to "
                              f"{max_opset}: export with a lower opset (profile 'opset')")
    model.ir_version = min(model.ir_version, ir_version_for(opset))
    name_nodes(model.graph)
    try:
        model = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as e:
        raise ConversionError(f"shape inference failed on the folded graph: {one_line(e)}") from e
    strip_metadata(model)
    del model.metadata_props[:]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(out_path))
    try:
        onnx.checker.check_model(str(out_path))
    except Exception as e:
        raise ConversionError(f"the TensorRT graph fails the ONNX checker: {one_line(e)}") from e
    return {
        "opset": opset,
        "ir_version": int(model.ir_version),
        "nodes": {"before": before, "after": len(model.graph.node)},
        "dynamic_inputs": dynamic_inputs(model),
    }


def graph_opset(model: Any) -> int:
    return max((o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS),
               default=0)


def input_dims(model: Any) -> dict[str, list[int | str]]:
    """Graph inputs (initializers excluded) -> dims; unknown dims are their names or '?'."""
    inits = {t.name for t in model.graph.initializer}
    out = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim
        out[vi.name] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0
                        else (d.dim_param or "?") for d in dims]
    return out


def dynamic_inputs(model: Any) -> list[str]:
    return [name for name, dims in input_dims(model).items()
            if any(not isinstance(d, int) for d in dims)]
