"""ONNX sources: a checked model file (external data next to it is allowed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgepack.errors import InputError, MissingExtraError, UsageError, one_line
from edgepack.signature import Signature, TensorSpec
from edgepack.sources.base import SourceModel, file_sha256, guess_layout, safe_name


def load(spec: str, path: Path, inputs: list[TensorSpec],
         outputs: list[str] | None) -> SourceModel:
    try:
        import onnx
    except ImportError as e:
        raise MissingExtraError("onnx", "onnx", "needed to load ONNX models") from e
    try:
        # Weights stay on disk: the signature, hash and checker need only the graph.
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(str(path))  # by path: handles external data and > 2 GB
    except Exception as e:
        raise InputError(f"{spec} is not a valid ONNX model ({one_line(e, 160)}); re-export "
                         "it (torch.onnx.export, onnx.save) or re-download it") from e
    data_files = _external_data_files(model, path)
    missing = [f.name for f in data_files if not f.is_file()]
    if missing:
        raise InputError(f"{spec}: external data file(s) {missing} are missing; "
                         "keep them next to the .onnx file")
    signature = read_signature(model)
    if inputs:
        signature = signature.with_inputs(inputs)
    if outputs:
        signature = _select_outputs(signature, outputs)
    return SourceModel(
        format="onnx", location=spec, sha256=file_sha256(path, data_files),
        signature=signature, name=safe_name(path.stem), onnx_path=path.resolve(),
        parameters=_count_parameters(model),
    )


def read_signature(model: Any) -> Signature:
    """Graph inputs (minus initializers) and outputs; unnamed unknown dims become str."""
    init = {t.name for t in model.graph.initializer}
    ins = tuple(_spec(v) for v in model.graph.input if v.name not in init)
    outs = tuple(_spec(v) for v in model.graph.output)
    return Signature(inputs=ins, outputs=outs)


def _spec(value: Any) -> TensorSpec:
    from onnx import helper

    if value.type.WhichOneof("value") != "tensor_type":
        raise InputError(f"model input/output {value.name!r} is not a tensor; "
                         "only tensor inputs and outputs are supported")
    tt = value.type.tensor_type
    try:
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type).name
    except Exception:
        dtype = f"onnx_type_{tt.elem_type}"
    shape: list[int | str] = []
    for i, d in enumerate(tt.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            shape.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            shape.append(d.dim_param)
        else:
            shape.append(f"{value.name}_dim{i}")
    return TensorSpec(value.name, tuple(shape), dtype, guess_layout(shape, dtype))


def _select_outputs(signature: Signature, names: list[str]) -> Signature:
    by_name = {t.name: t for t in signature.outputs}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise UsageError(f"outputs {unknown} are not model outputs; outputs: "
                         f"{signature.output_names}")
    return Signature(signature.inputs, tuple(by_name[n] for n in names))


def _external_data_files(model: Any, path: Path) -> list[Path]:
    """Files holding external weights, sorted: they are part of the model's content."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    names = {ExternalDataInfo(t).location for t in _tensors(model.graph) if uses_external_data(t)}
    return [path.parent / n for n in sorted(names)]


def _tensors(graph: Any) -> Any:
    """Every TensorProto in a graph, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for g in attr.graphs:
                yield from _tensors(g)


def _count_parameters(model: Any) -> int:
    total = 0
    for t in model.graph.initializer:
        n = 1
        for d in t.dims:
            n *= int(d)
        total += n
    return total

