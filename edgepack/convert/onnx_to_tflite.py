"""Convert: the cleaned fp32 ONNX of the source -> onnx2tf -> SavedModel (NHWC), once per build.

onnx2tf runs in its own environment (``edgepack.convert.onnx2tf_env``); its
SavedModel is then loaded here and converted per precision by the TFLite
converter pass, so onnx2tf's slow conversion runs once for all precisions and
calibration data never goes through onnx2tf's own (NHWC, normalised) path.
Each artifact tensor is matched to its source tensor by shape, which yields
the layout (NCHW -> NHWC, NCW -> NWC, or unchanged).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgepack.convert.tflite_layout import Mapped, match_shape
from edgepack.frameworks import import_tensorflow, quiet
from edgepack.signature import Signature, TensorSpec


def onnx2tf_savedmodel(sig: Signature, onnx: Path, folder: Path,
                       progress: Callable[[str], None], keep_shape: bool = True
                       ) -> tuple[list[Mapped], list[Mapped], Any, dict[str, str]]:
    """(inputs, outputs, call(*tensors) -> outputs, tool versions) of onnx2tf's SavedModel
    of the cleaned fp32 ONNX ``onnx`` (source signature ``sig``), made in ``folder``."""
    from edgepack.convert import onnx2tf_env

    progress("onnx2tf → SavedModel (separate environment)")
    keep = [s.name for s in sig.inputs if not _image(s)]
    info = onnx2tf_env.run_onnx2tf(
        onnx, folder, keep_shape=keep if keep_shape else (),
        input_shapes={s.name: s.concrete_shape() for s in sig.inputs},
    )
    if len(info["inputs"]) != len(sig.inputs) or len(info["outputs"]) != len(sig.outputs):
        from edgepack.errors import ConversionError

        raise ConversionError(f"onnx2tf produced {len(info['inputs'])} inputs / "
                              f"{len(info['outputs'])} outputs for a model with "
                              f"{len(sig.inputs)} / {len(sig.outputs)}")
    # onnx2tf makes NCHW images NHWC; other tensors are expected unchanged. When it
    # permutes one anyway and the shape cannot show it (square dims), validation fails it.
    ins = [match_shape(s, d["shape"], prefer_channel_last=_image(s))
           for s, d in zip(sig.inputs, info["inputs"], strict=True)]
    outs = [match_shape(s, d["shape"], prefer_channel_last=_image(s))
            for s, d in zip(sig.outputs, info["outputs"], strict=True)]
    # onnx2tf's dtypes win (e.g. int64 token ids may arrive as int32)
    ins = [Mapped(TensorSpec(m.spec.name, m.spec.shape, d["dtype"], m.spec.layout), m.perm)
           for m, d in zip(ins, info["inputs"], strict=True)]
    tf = import_tensorflow()
    with quiet():
        loaded = tf.saved_model.load(str(folder / "saved_model"))
    fn = loaded.signatures["serving_default"]
    count = len(info["outputs"])

    def call(*xs: Any) -> list[Any]:
        out = fn(**{f"input_{i}": x for i, x in enumerate(xs)})
        return [out[f"output_{i}"] for i in range(count)]

    call.keepalive = loaded  # type: ignore[attr-defined]  # the function needs its variables
    return ins, outs, call, {"onnx2tf": info["onnx2tf"], "tensorflow (onnx2tf)": info["tensorflow"]}


def _image(spec: TensorSpec) -> bool:
    return len(spec.shape) == 4 and spec.layout == "NCHW"
