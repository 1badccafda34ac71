"""onnx fp32 -> onnx fp16 weights and compute, float32 I/O kept."""

from __future__ import annotations

import warnings
from pathlib import Path

from edgepack.errors import ConversionError


def to_fp16(in_path: Path, out_path: Path) -> Path:
    """Convert to fp16, keeping fp32 inputs/outputs so callers feed the same arrays."""
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(in_path))
    try:
        with warnings.catch_warnings():
            # it warns once per tiny weight it rounds to fp16's range: expected, not news
            warnings.simplefilter("ignore")
            half = float16.convert_float_to_float16(model, keep_io_types=True,
                                                    disable_shape_infer=False)
    except Exception as e:  # the converter raises bare Exceptions on odd graphs
        raise ConversionError(f"fp16 conversion failed: {str(e).splitlines()[0]}") from None
    onnx.save(half, str(out_path))
    return out_path
