"""Pass: ML Program -> ML Program with compressed weights (int8 linear or k-means palette).

Weight-only compression, as Core ML stores it: each large float ``const`` becomes
a ``constexpr_*`` op (int8 codes + per-channel fp16 scales, or a 2^n-entry
lookup table + n-bit indices) that the runtime expands when the model loads;
compute stays fp16. ``compressed_tensors`` reads the expanded weights back out
of a saved package beside the float weights they replaced, so the proxy and the
weight-error record use exactly what the device will compute with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgepack.errors import ConversionError, UsageError, one_line
from edgepack.runners.coreml_proxy import CompressedTensor

# int8 | palettize-4 | palettize-6 (profile option ``int8_weights``)
WEIGHT_MODES = ("linear", "palettize-4", "palettize-6")
SUFFIXES = ("_quantized", "_palettized")


def compress(model: Any, mode: str, weight_threshold: int) -> tuple[Any, dict[str, Any]]:
    """Compress ``model``'s weights; returns (model, the quantization record)."""
    import coremltools.optimize.coreml as cto

    from edgepack.frameworks import quiet

    if mode == "linear":
        op_config = cto.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int8", granularity="per_channel",
            weight_threshold=weight_threshold)
        record = {
            "method": "coremltools linear_quantize_weights",
            "weights": "int8", "mode": "linear_symmetric", "per_channel": True,
            "symmetric": True, "zero_point": 0, "range": [-127, 127],
            "scale_dtype": "float16", "activations": "float16 (weight-only quantization)",
        }
        apply = cto.linear_quantize_weights
    elif mode in ("palettize-4", "palettize-6"):
        nbits = int(mode.rsplit("-", 1)[1])
        op_config = cto.OpPalettizerConfig(mode="kmeans", nbits=nbits, granularity="per_tensor",
                                           weight_threshold=weight_threshold)
        record = {
            "method": "coremltools palettize_weights", "weights": f"{nbits}-bit palette",
            "mode": "kmeans", "lut_entries": 2**nbits, "per_channel": False,
            "lut_dtype": "float16", "activations": "float16 (weight-only compression)",
        }
        apply = cto.palettize_weights
    else:
        raise UsageError(f"coreml option int8_weights must be one of {', '.join(WEIGHT_MODES)}, "
                         f"not {mode!r}")
    record.update({"calibration_samples": 0, "weight_threshold": weight_threshold})
    config = cto.OptimizationConfig(global_config=op_config)
    try:
        with quiet():
            compressed = apply(model, config)
    except Exception as e:
        raise ConversionError(f"coremltools weight compression ({mode}) failed: "
                              f"{one_line(e)}") from e
    return compressed, record


def program_of(model_or_path: Any) -> Any:
    """The pymil Program of an MLModel or a saved package (weights read from disk)."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto import load as milproto

    from edgepack.frameworks import quiet

    with quiet():
        model = (ct.models.MLModel(str(model_or_path), skip_model_load=True)
                 if isinstance(model_or_path, (str, Path)) else model_or_path)
        spec = model.get_spec()
        return milproto.load(spec, spec.specificationVersion, model.weights_dir)


def float_consts(program: Any) -> dict[str, np.ndarray]:
    """Float ``const`` values of the main function that are weights (rank >= 1)."""
    out = {}
    for op in program.functions["main"].operations:
        if op.op_type != "const":
            continue
        val = op.outputs[0].val
        if isinstance(val, np.ndarray) and val.ndim >= 1 and np.issubdtype(val.dtype, np.floating):
            out[op.name] = val
    return out


def compressed_tensors(uncompressed: Any, package: Path) -> list[CompressedTensor]:
    """Every compressed weight in the saved ``package``, expanded, with its float original.

    ``uncompressed`` is the model before compression; compressed ops are named
    after the const they replaced plus ``_quantized`` / ``_palettized``.
    """
    originals = float_consts(program_of(uncompressed))
    program = program_of(package)
    out = []
    for op in program.functions["main"].operations:
        if not op.op_type.startswith("constexpr_"):
            continue
        if any(c.op_type.startswith("constexpr_") for c in op.outputs[0].child_ops):
            continue  # an inner step of a chained compression: the last op has the value
        base = op.name
        for suffix in SUFFIXES:
            base = base.removesuffix(suffix)
        if base not in originals:
            raise ConversionError(f"compressed weight {op.name} has no float original "
                                  "in the uncompressed program")
        expanded = np.asarray(op.materialized_val_inference())
        out.append(CompressedTensor(base, originals[base], expanded, _channel_axis(op)))
    return out


def _channel_axis(op: Any) -> int | None:
    """The axis a compression op keeps one scale per entry of (None: per tensor)."""
    axis = getattr(op, "axis", None)
    if axis is not None and getattr(axis, "val", None) is not None:  # constexpr_affine_dequantize
        scale = getattr(op, "scale", None)
        if scale is not None and np.size(scale.val) > 1:
            return int(axis.val) % op.outputs[0].rank
        return None
    scale = getattr(op, "scale", None)  # constexpr_blockwise_shift_scale: scale has data's rank
    if scale is not None and scale.val is not None and np.ndim(scale.val) >= 1:
        big = [i for i, n in enumerate(np.shape(scale.val)) if n > 1]
        return big[0] if len(big) == 1 else None
    return None
