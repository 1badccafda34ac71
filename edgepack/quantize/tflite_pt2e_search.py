"""Pass: litert-torch static int8 with the accuracy search (layers kept in float).

PT2E's own quantized torch graph is far too slow to score dozens of candidates
(1.6 s per MiniLM sample: its quantize/dequantize ops are Python), so candidates
are simulated instead: the calibration set runs in batches of 40 through a
batch-40 export of the model, each observer becomes ``torch.fake_quantize_*``
with the qparams it computed (native ops, float speed). The search itself is
``edgepack.quantize.search`` (all-int8, leave-one-out ranking, greedy), scored
against the float model on the calibration data only.

The chosen exclusion is then prepared on the batch-1 export (the artifact's
shape) and given the observers' statistics of the full-batch calibration
(identical graphs, identical observer names), converted and lowered by
litert-torch. The shipped .tflite is what validation runs; the simulation
only steers the search.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.errors import ConversionError
from edgepack.quantize.search import Budget, search
from edgepack.signature import TensorSpec


def _compute_targets() -> tuple:
    import torch

    aten = torch.ops.aten
    return (aten.linear.default, aten.conv1d.default, aten.conv2d.default)


def _exclude(model: Any, excluded: set[str], act_spec: Any) -> None:
    """Drop the annotations of ``excluded`` nodes (they stay float) and re-point
    specs that shared an observer with them to a fresh activation spec."""
    from torchao.quantization.pt2e.quantizer import SharedQuantizationSpec

    for node in model.graph.nodes:
        if node.name in excluded:
            node.meta.pop("quantization_annotation", None)
    annotated = {n for n in model.graph.nodes if "quantization_annotation" in n.meta}

    def alive(spec: Any) -> bool:
        if not isinstance(spec, SharedQuantizationSpec):
            return True
        ref = spec.edge_or_node
        nodes = ref if isinstance(ref, tuple) else (ref,)
        return all(n in annotated for n in nodes)

    for node in annotated:
        ann = node.meta["quantization_annotation"]
        if ann.output_qspec is not None and not alive(ann.output_qspec):
            ann.output_qspec = act_spec
        for arg, spec in list(ann.input_qspec_map.items()):
            if spec is not None and not alive(spec):
                ann.input_qspec_map[arg] = act_spec


def quantizer_for(pq: Any, excluded: Sequence[str] = ()) -> Any:
    """litert-torch's PT2EQuantizer + ReLU6 fusion, with ``excluded`` nodes left float."""
    from edgepack.quantize.tflite_pt2e_quantizer import quantizer_class

    base = quantizer_class(pq)
    skip = set(excluded)

    class SearchQuantizer(base):  # type: ignore[misc, valid-type]
        def annotate(self, model: Any) -> Any:
            model = super().annotate(model)
            if skip:
                _exclude(model, skip, self.global_config.output_activation)
            return model

    return SearchQuantizer().set_global(pq.get_symmetric_quantization_config(is_per_channel=True))


def _fake_quant(observer: Any) -> Any:
    """An observer's qparams applied with torch's native fake-quantize ops; a module
    whose ``enabled`` flag lets the search bypass it (that edge stays float)."""
    import torch

    scale, zero_point = observer.calculate_qparams()
    qmin, qmax = int(observer.quant_min), int(observer.quant_max)
    axis = int(getattr(observer, "ch_axis", 0))
    per_channel = observer.qscheme in (torch.per_channel_symmetric, torch.per_channel_affine)

    class FakeQuant(torch.nn.Module):
        enabled = True

        def forward(self, x: Any) -> Any:
            if not self.enabled or not x.is_floating_point():
                return x
            if per_channel:
                return torch.fake_quantize_per_channel_affine(
                    x, scale.float(), zero_point.int(), axis, qmin, qmax)
            return torch.fake_quantize_per_tensor_affine(
                x, float(scale), int(zero_point), qmin, qmax)

    return FakeQuant()


def _simulate(prepared: Any, candidates: Sequence[str]) -> tuple[dict[str, Any],
                                                                 dict[str, list[str]]]:
    """Turn a calibrated prepared graph's observers into fake-quantizers, in place.

    Returns the fake-quantizers by name and, per candidate node, the ones that
    keeping it float bypasses: its weight's and its own input's (observers
    feeding only that node) and its output's.
    """
    fakes: dict[str, Any] = {}
    owned: dict[str, list[str]] = {c: [] for c in candidates}
    for node in prepared.graph.nodes:
        if node.op != "call_module" or not node.target.startswith("activation_post_process"):
            continue
        module = getattr(prepared, node.target)
        if not hasattr(module, "calculate_qparams"):
            continue
        fakes[node.target] = _fake_quant(module)
        setattr(prepared, node.target, fakes[node.target])
        producer = node.args[0] if node.args else None
        users = {u.name for u in node.users}
        for c in candidates:
            if users == {c} or getattr(producer, "name", None) == c:
                owned[c].append(node.target)
    return fakes, owned


CHUNK = 40  # samples per simulated batch: memory stays flat on large calibration sets


def _chunks(feeds: Sequence[dict[str, np.ndarray]], inputs: Sequence[TensorSpec],
            chunk: int = CHUNK) -> list[tuple]:
    """Calibration feeds as equal batches (the export is static; a remainder is dropped)."""
    size = min(len(feeds), chunk)
    return [_stack(feeds[i:i + size], inputs)
            for i in range(0, len(feeds) - len(feeds) % size, size)]


def _stack(feeds: Sequence[dict[str, np.ndarray]], inputs: Sequence[TensorSpec]) -> tuple:
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(
        np.concatenate([f[s.name] for f in feeds]))) for s in inputs)


def _outputs(result: Any) -> list[np.ndarray]:
    if isinstance(result, (list, tuple)):
        return [r.detach().numpy() for r in result]
    if isinstance(result, dict):
        return [r.detach().numpy() for r in result.values()]
    return [result.detach().numpy()]


def search_pt2e(model: Any, inputs: Sequence[TensorSpec], output_names: Sequence[str],
                calib: Sequence[dict[str, np.ndarray]], tolerances: dict[str, float],
                task: str | None, budget: Budget, progress: Callable[[str], None],
                reference_model: Any = None) -> tuple[Any, Any, dict]:
    """(converted batch-1 PT2E graph, its quantizer, search record).

    ``tolerances``: what a candidate must meet on the calibration set against the
    float model's own outputs (the backend passes its stricter search targets).
    ``reference_model``: the float model those outputs come from when ``model``
    already carries weight-only int8 parts (embedding tables); default ``model``.
    """
    import torch
    from litert_torch.quantize import pt2e_quantizer as pq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from edgepack.compare import compare

    batches = _chunks(calib, inputs)
    try:
        graph = torch.export.export(model, batches[0]).module()
    except Exception as e:  # noqa: BLE001 - export raises many kinds
        # a program fixed to its own batch (a .pt2 source): one feed per simulated batch
        try:
            single = _chunks(calib, inputs, chunk=1)
            graph = torch.export.export(model, single[0]).module()
            batches = single
        except Exception:  # noqa: BLE001
            raise ConversionError(f"the int8 search exports the model at batch "
                                  f"{len(batches[0][0])}, and that failed: {e}") from e

    def run(module: Any, chunks: list[tuple] = batches) -> dict[str, np.ndarray]:
        outs = [_outputs(module(*b)) for b in chunks]
        return {name: np.concatenate([o[i] for o in outs])
                for i, name in enumerate(output_names)}

    with torch.no_grad():
        reference = run(model if reference_model is None else reference_model)
    def calibrated(excluded: Sequence[str]) -> Any:
        prepared = prepare_pt2e(copy.deepcopy(graph), quantizer_for(pq, excluded))
        with torch.no_grad():
            for b in batches:
                prepared(*b)
        return prepared

    def observer_stats(prepared: Any) -> dict[str, Any]:
        return {k: v.clone() for k, v in prepared.state_dict().items()
                if k.startswith("activation_post_process")}

    # calibrate once; each candidate is the same fake-quantized graph with the
    # quantizers of its float nodes bypassed (observers do not alter values)
    sim = calibrated(())
    stats_all = observer_stats(sim)
    targets = _compute_targets()
    nodes = {n.name: n for n in sim.graph.nodes}
    candidates = [name for name, n in nodes.items()
                  if n.target in targets and any(
                      getattr(a, "op", None) == "call_module" for a in n.args)]
    numel = {name: _weight_numel(sim, nodes[name]) for name in candidates}
    total = sum(p.numel() for p in model.parameters())
    fakes, owned = _simulate(sim, candidates)
    work = Path(tempfile.mkdtemp(prefix="edgepack-pt2e-"))
    built: dict[Path, tuple[str, ...]] = {}
    scored: dict[Path, tuple[bool, float]] = {}

    def build(excluded: Sequence[str]) -> Path:
        path = work / f"cand-{len(built)}"
        with open(path, "wb") as f:  # sparse: the search's size budget reads st_size
            f.truncate(total + 3 * sum(numel[n] for n in excluded))  # float = 4 bytes
        built[path] = tuple(excluded)
        return path

    def simulate(path: Path, subset: bool = False) -> dict[str, np.ndarray]:
        off = {name for node in built[path] for name in owned[node]}
        for name, fake in fakes.items():
            fake.enabled = name not in off
        with torch.no_grad():
            return run(sim, batches[:1] if subset else batches)

    def evaluate(path: Path) -> tuple[bool, float]:
        if path not in scored:
            result = compare(reference, simulate(path), tolerances, task=task)
            cosines = [m.get("cosine_mean", 0.0) for m in result.metrics.values()]
            scored[path] = (result.passed, float(min(cosines) if cosines else 0.0))
        return scored[path]

    first = {k: v[:len(batches[0][0])] for k, v in reference.items()}

    def rank(path: Path) -> float:
        outs = simulate(path, subset=True)
        return float(min(_cosine(first[k], outs[k]) for k in output_names))

    progress(f"int8 search over {len(candidates)} layers (simulated on the calibration set)")
    try:
        result = search(quantize=build, evaluate=evaluate, candidates=candidates,
                        budget=budget, progress=progress,
                        rank=rank if len(batches) > 1 else None)
    finally:
        for path in built:
            path.unlink(missing_ok=True)
        work.rmdir()
    stats = observer_stats(calibrated(result.excluded)) if result.excluded else stats_all
    single = torch.export.export(model, _stack(calib[:1], inputs)).module()
    missing = set(result.excluded) - {n.name for n in single.graph.nodes}
    if missing:
        raise ConversionError(f"the batch-1 export has no nodes {sorted(missing)[:3]}: "
                              "the model's graph depends on the batch size")
    quantizer = quantizer_for(pq, result.excluded)
    prepared = prepare_pt2e(single, quantizer)
    prepared.load_state_dict(stats, strict=False)
    converted = convert_pt2e(prepared, fold_quantize=False)
    record = result.to_record()
    record["simulated"] = (f"torch fake-quantize on {len(batches) * len(batches[0][0])} "
                           "calibration samples")
    return converted, quantizer, record


def _weight_numel(graph: Any, node: Any) -> int:
    """Elements of a linear/conv node's weight (behind its observer, if any)."""
    weight = node.args[1] if len(node.args) > 1 else None
    if getattr(weight, "op", None) == "call_module" and weight.args:
        weight = weight.args[0]
    if getattr(weight, "op", None) != "get_attr":
        return 0
    value = graph
    for part in weight.target.split("."):
        value = getattr(value, part)
    return int(value.numel())


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12
    return float(np.mean(num / den))
