"""Pass: ONNX -> ONNX, cleaned: fixed shapes, folded constants, stable node names.

Uses onnxscript's optimizer (constant folding, dead-code and unused-initializer
removal, function inlining, standard-op rewrites that keep float numerics) and
ONNX shape inference. Every node ends up with a unique, deterministic name: the
int8 quantizer refers to nodes by name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgepack.errors import ConversionError, InputError, UsageError
from edgepack.sources.base import one_line

_TWO_GB = 2**31 - 1


def cleanup_onnx(in_path: Path, out_path: Path,
                 fixed_shapes: dict[str, list[int]] | None = None) -> Path:
    """Clean ``in_path`` into ``out_path`` (one file; external data only over 2 GB)."""
    import onnx
    from onnx import shape_inference

    from edgepack.backends.passes.torch_to_onnx import quiet, strip_metadata

    in_path, out_path = Path(in_path), Path(out_path)
    try:
        model = onnx.load(str(in_path))
    except Exception as e:
        raise InputError(f"{in_path.name} is not a valid ONNX model: {one_line(e)}") from e
    if fixed_shapes:
        fix_input_shapes(model, fixed_shapes)
    try:
        with quiet():
            model = _optimize(model)
            model = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as e:
        raise ConversionError(f"cleaning up {in_path.name} failed: {one_line(e)}") from e
    remove_unused_initializers(model.graph)
    name_nodes(model.graph)
    strip_metadata(model)
    _save(model, out_path)
    try:
        onnx.checker.check_model(str(out_path))
    except Exception as e:
        raise ConversionError(f"cleaned model {out_path.name} fails the ONNX checker: "
                              f"{one_line(e)}") from e
    return out_path


def fix_input_shapes(model: Any, shapes: dict[str, list[int]]) -> None:
    """Set static dims on named graph inputs; rank and static dims must agree."""
    inputs = {v.name: v for v in model.graph.input}
    unknown = sorted(set(shapes) - set(inputs))
    if unknown:
        raise UsageError(f"cannot fix shapes of {unknown}: not model inputs "
                         f"({', '.join(inputs)})")
    for name, shape in shapes.items():
        dims = inputs[name].type.tensor_type.shape.dim
        if len(dims) != len(shape) or any(
            d.HasField("dim_value") and d.dim_value > 0 and d.dim_value != s
            for d, s in zip(dims, shape, strict=True)
        ):
            current = [d.dim_value if d.HasField("dim_value") else d.dim_param or "?"
                       for d in dims]
            raise UsageError(f"input {name!r}: shape {list(shape)} does not fit the model's "
                             f"input of shape {current}")
        for d, s in zip(dims, shape, strict=True):
            d.dim_value = int(s)
    # Recorded intermediate shapes may still carry the old symbolic dims.
    del model.graph.value_info[:]


def _optimize(model: Any) -> Any:
    import onnxscript.optimizer

    return onnxscript.optimizer.optimize(model)


def remove_unused_initializers(graph: Any) -> None:
    """Drop initializers no node (subgraphs included) or graph output reads."""
    used = {o.name for o in graph.output}
    _collect_inputs(graph, used)
    removed = {t.name for t in graph.initializer if t.name not in used}
    if not removed:
        return
    keep = [t for t in graph.initializer if t.name not in removed]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    # Old models (IR < 4) also list initializers among the graph inputs.
    inputs = [v for v in graph.input if v.name not in removed]
    del graph.input[:]
    graph.input.extend(inputs)


def _collect_inputs(graph: Any, used: set[str]) -> None:
    for node in graph.node:
        used.update(node.input)
        for attr in node.attribute:
            if attr.HasField("g"):
                _collect_inputs(attr.g, used)
                used.update(o.name for o in attr.g.output)
            for g in attr.graphs:
                _collect_inputs(g, used)
                used.update(o.name for o in g.output)


def name_nodes(graph: Any, taken: set[str] | None = None) -> None:
    """Give every node a unique name; unnamed ones become ``<op>_<index>``."""
    taken = set() if taken is None else taken
    for index, node in enumerate(graph.node):
        name = node.name or f"{node.op_type}_{index}"
        if name in taken:
            base, n = name, 1
            while f"{base}_{n}" in taken:
                n += 1
            name = f"{base}_{n}"
        node.name = name
        taken.add(name)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                name_nodes(attr.g, taken)
            for g in attr.graphs:
                name_nodes(g, taken)


def _save(model: Any, out_path: Path) -> None:
    import onnx

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    if model.ByteSize() <= _TWO_GB:
        tmp.write_bytes(model.SerializeToString())
    else:  # protobuf cannot hold it: weights go to "<name>.data" next to the model
        onnx.save_model(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=out_path.name + ".data", size_threshold=1024)
    os.replace(tmp, out_path)
