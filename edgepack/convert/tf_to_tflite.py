"""Pass: a TensorFlow function (Keras model, SavedModel, onnx2tf output) -> .tflite.

One ``tf.lite.TFLiteConverter`` recipe per precision:
  fp32          builtin ops only (a model needing Flex/Select-TF ops fails here,
                not on the device)
  fp16          float16 weights, float compute and I/O
  int8-dynamic  dynamic range: int8 weights, activations quantized at run time
  int8          full integer, calibrated on the calibration set (artifact layout);
                I/O float (default) or int8/uint8 for MCUs and NPUs

The function is traced with the artifact's static input shapes and names, and
returns its outputs as a tuple in the source's output order: TensorFlow flattens
a returned dict by sorted key, which put the .tflite outputs (Identity,
Identity_1, ...) in another order than the source's for outputs not named in
sorted order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.errors import ConversionError, one_line
from edgepack.frameworks import import_tensorflow, quiet
from edgepack.signature import TensorSpec

IO_TYPES = ("float", "int8", "uint8")


def concrete_function(call: Callable[..., Any], inputs: Sequence[TensorSpec],
                      output_names: Sequence[str]) -> Any:
    """Trace ``call(*tensors) -> tensor | list | dict`` with static, named input specs."""
    tf = import_tensorflow()
    specs = [tf.TensorSpec(tuple(int(d) for d in s.concrete_shape()), tf.as_dtype(s.dtype),
                           name=s.name) for s in inputs]

    from edgepack.runners.tensorflow import outputs_in_order

    def wrapped(*args: Any) -> tuple[Any, ...]:
        values = outputs_in_order(call(*args), output_names, ConversionError)
        return tuple(tf.identity(v, name=n) for n, v in zip(output_names, values, strict=True))

    with quiet():
        return tf.function(wrapped, input_signature=specs).get_concrete_function()


def input_order(float_model: Path, names: Sequence[str]) -> list[str]:
    """``names`` in the order of the converted model's input tensors (what a
    representative dataset given as a list is matched against), read from the
    float .tflite of the same function."""
    import re

    tf = import_tensorflow()
    with quiet():
        details = tf.lite.Interpreter(model_path=str(float_model)).get_input_details()
    found = [re.sub(r"^serving_default_|:\d+$", "", d["name"])
             for d in sorted(details, key=lambda d: d["index"])]
    if sorted(found) != sorted(names):
        raise ConversionError(f"cannot match the model's inputs {found} to {list(names)} "
                              f"for calibration")
    return found


def convert(fn: Any, out_path: Path, precision: str,
            calib: Sequence[dict[str, np.ndarray]] | None = None, io_type: str = "float",
            input_names: Sequence[str] = (), trackable: Any = None,
            float_model: Path | None = None) -> dict[str, Any] | None:
    """Convert a concrete function; returns the quantization record (None for float).

    ``float_model``: this function's fp32 .tflite; int8 reads the input order from it.
    """
    tf = import_tensorflow()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn], trackable)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    record: dict[str, Any] | None = None
    if precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8-dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        record = {"method": "dynamic-range", "tool": "tf.lite.TFLiteConverter",
                  "weights": "int8 per-channel", "activations": "float (quantized at run time)"}
    elif precision == "int8":
        if not calib:
            raise ConversionError("full-integer int8 needs calibration data (--calib)")
        if io_type not in IO_TYPES:
            raise ConversionError(f"unknown int8 I/O type {io_type!r}; use one of {IO_TYPES}")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        names = list(input_names)

        # The calibrator matches a sample list to the graph's input tensors in tensor
        # order, which need not be the function's: onnx2tf models list inputs by name
        # (MiniLM got its token ids as the attention mask: mask scale 114.6, int8
        # outputs NaN or refused by LiteRT). Dict samples need a signature these
        # temporary models lack, so the order is read from the float conversion.
        if len(names) > 1 and float_model is None:
            raise ConversionError("int8 of a multi-input model needs its float .tflite "
                                  "(calibration input order)")
        order = names if len(names) < 2 else input_order(float_model, names)

        def representative() -> Any:
            for feeds in calib:
                yield [np.asarray(feeds[n], dtype=np.float32) if feeds[n].dtype.kind == "f"
                       else feeds[n] for n in order]

        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if io_type != "float":
            dtype = tf.int8 if io_type == "int8" else tf.uint8
            converter.inference_input_type = dtype
            converter.inference_output_type = dtype
        record = {"method": "full-integer", "tool": "tf.lite.TFLiteConverter",
                  "calibration_samples": len(calib), "per_channel": True,
                  "symmetric": "weights", "activations": "int8 asymmetric",
                  "io_type": io_type, "nodes_in_float": []}
    elif precision != "fp32":
        raise ConversionError(f"the TFLite converter does not build {precision!r}")
    tail: list[str] = []
    try:
        with quiet(tail):
            blob = converter.convert()
    except Exception as e:
        raise ConversionError(f"TFLiteConverter failed ({precision}): "
                              f"{one_line(e, tail=tail)}") from e
    Path(out_path).write_bytes(blob)
    return record
