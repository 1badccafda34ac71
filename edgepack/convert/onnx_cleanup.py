"""Pass: ONNX -> ONNX, cleaned: fixed shapes, folded constants, stable node names.

Uses onnxscript's optimizer (constant folding, dead-code and unused-initializer
removal, function inlining, standard-op rewrites that keep float numerics) and
ONNX shape inference. Every node ends up with a unique, deterministic name: the
int8 quantizer refers to nodes by name.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from edgepack.errors import ConversionError, InputError, UsageError, one_line

_TWO_GB = 2**31 - 1


def cleanup_onnx(in_path: Path, out_path: Path,
                 fixed_shapes: dict[str, list[int]] | None = None) -> Path:
    """Clean ``in_path`` into ``out_path`` (one file; external data only over 2 GB)."""
    import onnx
    from onnx import shape_inference

    from edgepack.convert.torch_to_onnx import strip_metadata
    from edgepack.frameworks import quiet

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


# --------------------------------------------------------------------------- compaction

#: Dequantize ops whose all-zero zero point may be omitted (the ONNX default is 0).
_OPTIONAL_ZERO_POINT = {"DequantizeLinear": 2, "MatMulInteger": 3}


def compact_onnx(model: Any, keep_node_names: Iterable[str] = (),
                 drop_zero_points: bool = False) -> dict[str, int]:
    """Shrink ``model`` in place to what a runtime reads; the numerics do not change.

    Drops doc strings, metadata and intermediate ``value_info`` (runtimes infer
    shapes), merges byte-identical initializers, optionally omits all-zero zero
    points of constant DequantizeLinear/MatMulInteger inputs (0 is the ONNX
    default; TensorRT 8.5 wants them explicit, so it is a choice), and gives
    internal tensors and nodes short names. Graph input/output names and the
    nodes in ``keep_node_names`` (those a manifest refers to) keep their names.
    Returns byte counts before/after and what was removed.
    """
    from edgepack.convert.torch_to_onnx import strip_metadata

    before = model.ByteSize()
    strip_metadata(model)
    del model.metadata_props[:]
    graph = model.graph
    del graph.value_info[:]
    dropped = _drop_zero_points(graph) if drop_zero_points else 0
    merged = _merge_duplicate_initializers(graph)
    remove_unused_initializers(graph)
    renamed = 0
    if not _has_subgraphs(graph):  # outer-scope references would need tracking: keep names
        renamed = _shorten_names(graph, set(keep_node_names))
    return {"bytes_before": before, "bytes_after": model.ByteSize(),
            "zero_points_dropped": dropped, "initializers_merged": merged,
            "names_shortened": renamed}


def _has_subgraphs(graph: Any) -> bool:
    return any(a.HasField("g") or len(a.graphs) for n in graph.node for a in n.attribute)


def _drop_zero_points(graph: Any) -> int:
    import numpy as np
    from onnx import numpy_helper

    inits = {t.name: t for t in graph.initializer}
    readers: dict[str, set[str]] = {}
    for node in graph.node:
        for t in node.input:
            readers.setdefault(t, set()).add(node.op_type)
    dropped = 0
    for node in graph.node:
        index = _OPTIONAL_ZERO_POINT.get(node.op_type)
        if index is None or len(node.input) <= index or node.input[index] not in inits:
            continue
        # only constant (weight/bias) inputs: an activation's zero point is its calibration
        data = 0 if node.op_type == "DequantizeLinear" else 1
        if node.input[data] not in inits:
            continue
        # ORT fuses DQ->Conv without it, but not DQ(weight)->Gemm: that ran as float Gemm
        if node.op_type == "DequantizeLinear" and inits[node.input[0]].data_type != 6 and \
                not readers.get(node.output[0], set()) <= {"Conv", "ConvTranspose"}:
            continue  # 6: int32 biases are fine everywhere
        if np.any(numpy_helper.to_array(inits[node.input[index]])):
            continue
        del node.input[index]
        while node.input and not node.input[-1]:  # trailing empty optional inputs
            del node.input[-1]
        dropped += 1
    return dropped


def _merge_duplicate_initializers(graph: Any) -> int:
    """Point every reader of a byte-identical initializer at the first copy."""
    import hashlib

    graph_inputs = {v.name for v in graph.input}
    first: dict[tuple, str] = {}
    alias: dict[str, str] = {}
    for t in graph.initializer:
        if t.name in graph_inputs:
            continue
        probe = type(t)()
        probe.CopyFrom(t)
        probe.name = ""
        key = (t.data_type, tuple(t.dims),
               hashlib.blake2b(probe.SerializeToString(), digest_size=20).digest())
        if key in first:
            alias[t.name] = first[key]
        else:
            first[key] = t.name
    if not alias:
        return 0
    outputs = {o.name for o in graph.output}
    alias = {k: v for k, v in alias.items() if k not in outputs}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    return len(alias)


def short_name(i: int) -> str:
    """The i-th short tensor name (base 36): what compacted artifacts call internal tensors."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        i, r = divmod(i, 36)
        out = digits[r] + out
        if i == 0:
            return out


def name_maker(graph: Any) -> Callable[[str], str]:
    """``fresh(base)``: ``base`` or ``base_1``, ``base_2``... whichever no tensor or node
    of ``graph`` (nor an earlier call) uses, for passes that add tensors."""
    taken = {t.name for t in graph.initializer} | {i.name for i in graph.input}
    taken |= {t for n in graph.node for t in (*n.input, *n.output)}
    taken |= {n.name for n in graph.node}

    def fresh(base: str) -> str:
        name, k = base, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        return name

    return fresh


def _shorten_names(graph: Any, keep_nodes: set[str]) -> int:
    """Base-36 names for internal tensors and nodes, in graph order (deterministic)."""
    fixed = {v.name for v in (*graph.input, *graph.output)}
    taken_t = set(fixed)
    names: dict[str, str] = {}
    counter = 0

    def fresh(taken: set[str]) -> str:
        nonlocal counter
        while short_name(counter) in taken:
            counter += 1
        name = short_name(counter)
        counter += 1
        return name

    order = [t.name for t in graph.initializer]
    for node in graph.node:
        order.extend(node.input)
        order.extend(node.output)
    for t in order:
        if t and t not in fixed and t not in names:
            names[t] = fresh(taken_t)
            taken_t.add(names[t])
    for t in graph.initializer:
        t.name = names.get(t.name, t.name)
    for node in graph.node:
        for i, t in enumerate(node.input):
            if t:
                node.input[i] = names.get(t, t)
        for i, t in enumerate(node.output):
            if t:
                node.output[i] = names.get(t, t)
    counter = 0
    taken_n = set(keep_nodes)
    for node in graph.node:
        if node.name not in keep_nodes:
            node.name = fresh(taken_n)
            taken_n.add(node.name)
    return len(names)


def compact_file(path: Path, keep_node_names: list[str],
                     drop_zero_points: bool) -> dict[str, int]:
    """Compact the ONNX file at ``path`` in place (see ``compact_onnx``)."""
    import onnx

    model = onnx.load(str(path))
    stats = compact_onnx(model, keep_node_names, drop_zero_points=drop_zero_points)
    if model.ByteSize() < 2**31 - 1:  # protobuf's limit; a bigger model stays as it was
        path.write_bytes(model.SerializeToString())
    return stats
