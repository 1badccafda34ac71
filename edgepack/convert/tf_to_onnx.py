"""TensorFlow (Keras, SavedModel) -> ONNX with tf2onnx, for the ONNX-based targets
(onnx-cpu, TensorRT, and Core ML through onnx2torch).

The graph keeps the source's tensor layout (a Keras image input stays NHWC;
tf2onnx puts Transposes around the convolutions), so golden inputs, calibration
and evaluation data are the same arrays the source takes. Input names come from
the signature; tf2onnx names outputs after TensorFlow's tensors ("Identity:0"),
so they are renamed to the signature's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from edgepack.errors import ConversionError, MissingExtraError
from edgepack.sources.base import SourceModel

TOOLCHAIN = ["tensorflow-cpu", "tf2onnx"]


def export_tf(source: SourceModel, out_path: Path, opset: int = 17) -> Path:
    """Export a TensorFlow source (``source.tf_call``) to one ONNX file at ``opset``."""
    from edgepack.convert.torch_to_onnx import finish_export
    from edgepack.errors import one_line
    from edgepack.frameworks import import_tensorflow, quiet

    call = getattr(source, "tf_call", None)
    if call is None:
        raise ConversionError(f"{source.location}: not a TensorFlow source ({source.format})")
    tf = import_tensorflow()
    try:
        import tf2onnx
    except ImportError as e:
        raise MissingExtraError("tf2onnx", "tflite",
                                "needed to convert Keras/SavedModel sources to ONNX") from e
    sig = source.signature
    specs = [tf.TensorSpec([None if isinstance(d, str) else d for d in t.shape],
                           tf.as_dtype(t.dtype), name=t.name) for t in sig.inputs]
    from edgepack.runners.tensorflow import outputs_in_order

    names = list(sig.output_names)
    fn = tf.function(lambda *xs: outputs_in_order(call(*xs), names, ConversionError),
                     input_signature=specs, autograph=False)
    tail: list[str] = []
    try:
        with quiet(tail):
            tf2onnx.logging.set_level(logging.ERROR)
            proto, _ = tf2onnx.convert.from_function(fn, input_signature=specs, opset=opset)
    except Exception as e:
        raise ConversionError(f"TensorFlow -> ONNX (tf2onnx {tf2onnx.__version__}) failed: "
                              f"{one_line(e, tail=tail)}") from e
    _name_io(proto, sig)
    _drop_unused_opsets(proto)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    return finish_export(proto, out_path, opset, source.location)


def _name_io(proto: Any, sig: Any) -> None:
    """Graph inputs must be the signature's; outputs are renamed to it, in order."""
    from onnx import helper

    got = [i.name for i in proto.graph.input]
    if got != list(sig.input_names):
        raise ConversionError(f"tf2onnx named the inputs {got}, expected "
                              f"{list(sig.input_names)}")
    outputs = list(proto.graph.output)
    if len(outputs) != len(sig.outputs):
        raise ConversionError(f"the ONNX graph has {len(outputs)} outputs, the model "
                              f"{len(sig.outputs)}")
    inputs = set(got)
    for value, want in zip(outputs, sig.output_names, strict=True):
        old = value.name
        if old == want:
            continue
        producers = [n for n in proto.graph.node if old in n.output]
        if old in inputs or not producers:  # an input passed through: keep it, add a copy
            proto.graph.node.append(helper.make_node("Identity", [old], [want]))
        else:
            for node in proto.graph.node:
                node.output[:] = [want if t == old else t for t in node.output]
                node.input[:] = [want if t == old else t for t in node.input]
        value.name = want


def _drop_unused_opsets(proto: Any) -> None:
    """tf2onnx always imports ai.onnx.ml; TensorRT's parser reads only what is used."""
    used = {n.domain for n in proto.graph.node}
    keep = [o for o in proto.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
    del proto.opset_import[:]
    proto.opset_import.extend(keep)
