"""Pass: ONNX -> torch (onnx2torch), checked against ONNX Runtime before it is used.

coremltools no longer reads ONNX, so ONNX sources reach Core ML through torch.
The intermediate torch model is run on the same inputs as the source's ONNX
Runtime reference and must meet the fp32 tolerances; a bad intermediate is a
conversion failure here, not a silent accuracy loss later.

onnx2torch imports torchvision at import time for two converters (NonMaxSuppression,
RoiAlign). torchvision's PyPI wheels do not load beside the CPU torch build, so
when it is missing a placeholder stands in during the import only; models
using those two ops then fail with a clear message.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.errors import ConversionError, MissingExtraError, one_line

PIP = "pip install --no-deps onnx2torch==1.5.15"


def _needs_torchvision(*_a: Any, **_k: Any) -> Any:
    raise ConversionError("this ONNX model uses NonMaxSuppression/RoiAlign, which onnx2torch "
                          "runs with torchvision; install a torchvision matching torch")


def import_onnx2torch() -> Any:
    if "onnx2torch" in sys.modules:
        return sys.modules["onnx2torch"]
    stubbed = importlib.util.find_spec("torchvision") is None
    if stubbed:
        tv = types.ModuleType("torchvision")
        ops = types.ModuleType("torchvision.ops")
        ops.nms = ops.box_convert = ops.roi_align = _needs_torchvision  # type: ignore[attr-defined]
        tv.ops = ops  # type: ignore[attr-defined]
        sys.modules["torchvision"], sys.modules["torchvision.ops"] = tv, ops
    try:
        import onnx2torch
    except ImportError as e:
        raise MissingExtraError("onnx2torch", "coreml",
                                f"Core ML converts ONNX models through torch; {PIP}") from e
    finally:
        if stubbed:  # nobody else should see the placeholder
            sys.modules.pop("torchvision", None)
            sys.modules.pop("torchvision.ops", None)
    return onnx2torch


def onnx_to_torch(path: Path) -> Any:
    """The ONNX model as a torch ``fx.GraphModule`` (eval mode, CPU)."""
    import onnx

    from edgepack.frameworks import quiet

    o2t = import_onnx2torch()
    try:
        model = onnx.load(str(path))
        with quiet():
            module = o2t.convert(model)
    except ConversionError:
        raise
    except Exception as e:
        raise ConversionError(f"onnx2torch could not convert {Path(path).name}: "
                              f"{one_line(e)}") from e
    return module.eval()


def check_intermediate(module: Any, input_names: list[str], output_names: list[str],
                       inputs: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray],
                       tolerances: Mapping[str, float], batch: int) -> dict[str, Any]:
    """Run ``module`` on ``inputs`` and compare with ONNX Runtime's ``reference``.

    Returns the metrics; raises ConversionError when they miss ``tolerances``.
    """
    from edgepack.compare import compare
    from edgepack.runners.base import run_samples
    from edgepack.runners.torch import TorchRunner

    runner = TorchRunner(module, input_names, output_names)
    try:
        candidate = run_samples(runner, dict(inputs), batch)
    except Exception as e:
        raise ConversionError(f"the onnx2torch model fails to run: {one_line(e)}") from e
    result = compare(dict(reference), candidate, tolerances)
    if not result.passed:
        why = "; ".join(result.failures) or result.reason
        raise ConversionError(f"the onnx2torch intermediate disagrees with ONNX Runtime: {why}")
    return {"samples": result.samples, "metrics": result.metrics,
            "tolerances": dict(result.tolerances)}
