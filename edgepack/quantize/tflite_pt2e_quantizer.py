"""litert-torch's PT2E quantizer plus the conv/linear + clamp fusion TFLite's own
converter does (see ``quantize.tflite_pt2e``): shared by the plain route and the search."""

from __future__ import annotations

from typing import Any

# Clamp ranges TFLite can fuse into a conv/fully-connected as its activation
# (RELU6, RELU_N1_TO_1, RELU_0_TO_1); other ranges stay separate ops.
_FUSABLE_RANGES = {(0.0, 6.0), (-1.0, 1.0), (0.0, 1.0)}


def clamp_range(node: Any) -> tuple[float, float] | None:
    import torch

    aten = torch.ops.aten
    if node.target in (aten.hardtanh.default, aten.hardtanh_.default):
        low = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", -1.0)
        high = node.args[2] if len(node.args) > 2 else node.kwargs.get("max_val", 1.0)
    elif node.target == aten.clamp.default:
        low = node.args[1] if len(node.args) > 1 else node.kwargs.get("min")
        high = node.args[2] if len(node.args) > 2 else node.kwargs.get("max")
    else:
        return None
    if low is None or high is None:
        return None
    return float(low), float(high)


def fuse_clamps(model: Any, act_spec: Any) -> int:
    """Quantize conv/linear -> ReLU6-like clamp once, after the clamp; returns the count."""
    import torch

    producers = (torch.ops.aten.conv1d.default, torch.ops.aten.conv2d.default,
                 torch.ops.aten.linear.default)
    fused = 0
    for node in model.graph.nodes:
        if node.op != "call_function" or clamp_range(node) not in _FUSABLE_RANGES:
            continue
        prod = node.args[0]
        p_ann = getattr(prod, "meta", {}).get("quantization_annotation")
        c_ann = node.meta.get("quantization_annotation")
        if (p_ann is None or c_ann is None or p_ann.output_qspec is None
                or getattr(prod, "target", None) not in producers or len(prod.users) != 1):
            continue
        # the clamp's output shared the conv output's observer: give it its own
        p_ann.output_qspec = None
        c_ann.input_qspec_map = {}
        c_ann.output_qspec = act_spec
        fused += 1
    return fused


def quantizer_class(pq: Any) -> type:
    """litert-torch's PT2EQuantizer plus the conv/linear + clamp fusion."""

    class FusingPT2EQuantizer(pq.PT2EQuantizer):
        fused = 0

        def annotate(self, model: Any) -> Any:
            model = super().annotate(model)
            config = self.global_config
            if config is not None and config.output_activation is not None:
                self.fused = fuse_clamps(model, config.output_activation)
            return model

    return FusingPT2EQuantizer
