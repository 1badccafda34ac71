"""Pass: static int8 at the compute ops of a float .tflite, with the accuracy search.

For models that full-integer int8 breaks (transformers: LayerNorm internals,
the attention mask's huge negative ADD, softmax all share one int8 scale each;
MiniLM through onnx2tf measured 0.13 mean cosine), ai-edge-quantizer quantizes
only FULLY_CONNECTED, CONV_2D, DEPTHWISE_CONV_2D and BATCH_MATMUL statically
(int8 weights per channel, int8 activations) and leaves the other ops float, as
PT2E does on the torch route. ``edgepack.quantize.search`` then keeps the most
harmful compute nodes out of static int8: those run dynamic-range (int8
weights, float activations), like the torch route's hybrid layers.

Calibration runs once (float model, in process: it cannot abort); every
candidate is a real .tflite run in a LiteRT worker process on the calibration
data and judged against the source model's outputs there.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.errors import ConversionError, one_line
from edgepack.frameworks import quiet
from edgepack.quantize.search import Budget, ranks_on_subset, search

COMPUTE_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "BATCH_MATMUL")
RANK_SAMPLES = 32  # calibration samples the leave-one-out ranking runs


def compute_nodes(path: Path) -> tuple[list[str], list[list[str]]]:
    """(compute nodes by output tensor name, look-alike groups: same op and weight shape,
    e.g. one projection in every transformer layer)."""
    from edgepack.convert.tflite_inspect import flatbuffer_schema, tensor_name

    schema = flatbuffer_schema()
    model = schema.Model.GetRootAs(Path(path).read_bytes(), 0)
    names = {getattr(schema.BuiltinOperator, k): k for k in COMPUTE_OPS}
    graph = model.Subgraphs(0)
    nodes: list[str] = []
    groups: dict[tuple, list[str]] = {}
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        kind = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()))
        if kind is None or op.OutputsLength() == 0:
            continue
        name = tensor_name(graph.Tensors(op.Outputs(0)).Name())
        weight = graph.Tensors(op.Inputs(1)) if op.InputsLength() > 1 else None
        shape = tuple(weight.ShapeAsNumpy()) if weight is not None and weight.ShapeLength() \
            and model.Buffers(weight.Buffer()).DataLength() else ()
        nodes.append(name)
        groups.setdefault((kind, shape), []).append(name)
    return nodes, [g for g in groups.values() if len(g) > 1]


def _recipe(excluded: Sequence[str]) -> Any:
    from ai_edge_quantizer import recipe_manager
    from ai_edge_quantizer.qtyping import TFLOperationName

    manager = recipe_manager.RecipeManager()
    for op in COMPUTE_OPS:
        manager.add_static_config(regex=".*", operation_name=getattr(TFLOperationName, op),
                                  activation_num_bits=8, weight_num_bits=8)
    for name in excluded:  # the latest matching rule wins; a scope is "<outputs>;"
        for op in COMPUTE_OPS:
            manager.add_dynamic_config(regex="^" + re.escape(name) + ";",
                                       operation_name=getattr(TFLOperationName, op),
                                       num_bits=8)
    return manager.get_quantization_recipe()


def search_mixed(float_path: Path, out_path: Path, calib: Sequence[dict[str, np.ndarray]],
                 evaluate_path: Callable[[Path, int | None], tuple[bool, float]],
                 budget: Budget, progress: Callable[[str], None]) -> dict[str, Any]:
    """Write the chosen mixed-int8 model to ``out_path``; returns its search record.

    ``calib``: calibration feeds keyed by the .tflite signature's input names.
    ``evaluate_path(path, n)``: (meets the search targets, score) of a candidate on
    the calibration data (first ``n`` samples; ``None`` for all).
    """
    from ai_edge_quantizer import quantizer

    nodes, groups = compute_nodes(float_path)
    if not nodes:
        raise ConversionError("the model has no FULLY_CONNECTED/CONV/BATCH_MATMUL ops to "
                              "quantize")
    tail: list[str] = []
    progress(f"calibrating {len(nodes)} compute ops (ai-edge-quantizer, "
             f"{len(calib)} samples)")
    try:
        with quiet(tail):
            qt = quantizer.Quantizer(str(float_path))
            qt.load_quantization_recipe(_recipe(()))
            key = _signature_key(float_path)
            stats = qt.calibrate({key: list(calib)})
    except Exception as e:  # noqa: BLE001 - the quantizer raises many kinds
        raise ConversionError(f"ai-edge-quantizer calibration failed: "
                              f"{one_line(e, tail=tail)}") from e
    work = Path(tempfile.mkdtemp(prefix="edgepack-mixed-int8-"))
    built: dict[Path, tuple[str, ...]] = {}

    def build(excluded: Sequence[str]) -> Path:
        path = work / f"cand-{len(built)}.tflite"
        tail.clear()
        try:
            with quiet(tail):
                qt.load_quantization_recipe(_recipe(excluded))
                path.write_bytes(bytes(qt.quantize(stats).quantized_model))
        except Exception as e:  # noqa: BLE001
            raise ConversionError(f"ai-edge-quantizer failed: "
                                  f"{one_line(e, tail=tail)}") from e
        built[path] = tuple(excluded)
        return path

    def rank(path: Path) -> float:
        return evaluate_path(path, RANK_SAMPLES)[1]

    try:
        result = search(quantize=build, evaluate=lambda p: evaluate_path(p, None),
                        candidates=nodes, budget=budget, progress=progress,
                        rank=rank if ranks_on_subset(_samples(calib), RANK_SAMPLES) else None,
                        groups=groups)
        Path(out_path).write_bytes(result.artifact.read_bytes())
    finally:
        for path in built:
            path.unlink(missing_ok=True)
        work.rmdir()
    return {"search": result.to_record(), "excluded": list(result.excluded)}


def _samples(calib: Sequence[dict[str, np.ndarray]]) -> int:
    """Samples in a list of calibration batches."""
    return sum(len(next(iter(feeds.values()))) for feeds in calib)


def _signature_key(path: Path) -> str:
    from edgepack.convert.tflite_inspect import io_details

    return io_details(path)["signature"] or "serving_default"


def full_integer_or_mixed(out: Path, record: dict[str, Any], float_path: Path,
                          calib: Sequence[dict[str, np.ndarray]],
                          evaluate_path: Callable[[Path, int | None], tuple[bool, float]],
                          budget: Budget, progress: Callable[[str], None]) -> dict[str, Any]:
    """Keep the full-integer model at ``out`` when it meets the search targets on the
    calibration data; else search a mixed model from ``float_path`` and ship whichever
    scores higher. Returns the quantization record of what ``out`` now holds.

    ``calib``: feeds keyed by the float model's signature input names, its dtypes.
    """
    from edgepack.quantize.search import round_score
    from edgepack.quantize.tflite_embedding import int8_gather_tables

    progress("checking full-integer int8 on the calibration data")
    full_ok, full_score = evaluate_path(Path(out), None)
    full = {"passed": full_ok, "score": round_score(full_score)}
    if full_ok:
        return {**record, "full_integer_check": full}
    progress(f"full-integer int8 misses the search targets on calibration data (cosine "
             f"{full['score']}): searching static int8 at the compute ops")
    mixed_path = Path(out).with_name("mixed-int8.tflite")
    try:
        found = search_mixed(float_path, mixed_path, calib, evaluate_path, budget, progress)
    except ConversionError as e:  # no mixed model: validation judges the full integer one
        mixed_path.unlink(missing_ok=True)
        progress(f"no mixed int8 model ({e}); keeping full integer")
        return {**record, "full_integer_check": full, "mixed_search": {"error": str(e)}}
    score = found["search"]["score"]
    if score is None or (full["score"] is not None and score <= full["score"]):
        mixed_path.unlink(missing_ok=True)
        return {**record, "full_integer_check": full, "mixed_search": found["search"]}
    mixed_path.replace(out)
    tables = int8_gather_tables(Path(out))
    mixed: dict[str, Any] = {
        "method": "static (compute ops)", "tool": "ai-edge-quantizer",
        "calibration_samples": _samples(calib), "per_channel": True, "symmetric": "weights",
        "weights": "int8 per-channel symmetric",
        "activations": f"int8 at {', '.join(COMPUTE_OPS)}; other ops float",
        "io_type": "float", "full_integer_check": full,
        "nodes_in_float": found["excluded"], "search": found["search"],
    }
    if found["excluded"]:
        mixed["float_fallback"] = {
            "form": "dynamic-range: int8 per-channel weights, float activations "
                    "(quantized at run time by the kernel)", "layers": found["excluded"]}
    if tables:
        mixed["embeddings"] = tables
    return mixed

