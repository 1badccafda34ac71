"""Pass: full-integer int8 with TFLiteConverter plus the accuracy search (op types kept float).

Calibrate once (``_experimental_calibrate_only``), then quantize the calibrated
model as often as the search needs with ``mlir_quantize``'s ``denylisted_ops``:
each candidate keeps some op types in float. Candidates are scored by running
the real .tflite in a LiteRT worker process on the calibration data (a
candidate that crashes the interpreter scores worst, it does not stop the
search). The search is ``edgepack.quantize.search`` with the backend's stricter
calibration targets.

Op types, not single nodes: the failures seen are per kind of op (BERT's
LayerNorm internals MEAN/RSQRT and its mean-pooling DIV, whose quantized kernel
refuses a zero divisor), and a model has ~20 op types against hundreds of nodes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.backends.passes.tflite_common import import_tensorflow, last_error_line, quiet
from edgepack.errors import ConversionError
from edgepack.quantize.search import Budget, search

# Ops that only move or reshape data: keeping them float changes nothing useful.
_DATA_OPS = {
    "RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS", "CONCATENATION", "PACK", "UNPACK",
    "SLICE", "STRIDED_SLICE", "GATHER", "GATHER_ND", "SHAPE", "CAST", "QUANTIZE",
    "DEQUANTIZE", "PAD", "PADV2", "SPLIT", "SPLIT_V", "TILE", "BROADCAST_TO", "FILL",
    "ZEROS_LIKE", "ONES_LIKE", "SELECT", "SELECT_V2", "LOGICAL_AND", "LOGICAL_OR",
    "EMBEDDING_LOOKUP", "RANGE", "WHERE", "NOT_EQUAL", "EQUAL", "LESS", "GREATER",
}


def _op_types(model: bytes) -> list[str]:
    """Compute op types of a .tflite model, in first-appearance order."""
    from ai_edge_litert.interpreter import Interpreter

    with quiet():
        ops = Interpreter(model_content=model)._get_ops_details()  # noqa: SLF001
    seen = dict.fromkeys(o["op_name"] for o in ops)
    return [op for op in seen if op not in _DATA_OPS]


def search_int8(fn: Any, trackable: Any, calib: Sequence[dict[str, np.ndarray]],
                input_names: Sequence[str], io_type: str,
                evaluate_file: Callable[[Path], tuple[bool, float]], budget: Budget,
                progress: Callable[[str], None], work: Path) -> tuple[bytes, dict[str, Any]]:
    """(.tflite bytes, search record). ``evaluate_file(path) -> (passed, score)``."""
    tf = import_tensorflow()
    from tensorflow.lite.python import convert as tfl_convert

    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn], trackable)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    # float builtins allowed: a denylisted op must have a float kernel to fall back to
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                           tf.lite.OpsSet.TFLITE_BUILTINS]
    names = list(input_names)

    def representative() -> Any:
        for feeds in calib:
            yield [np.asarray(feeds[n], dtype=np.float32) if feeds[n].dtype.kind == "f"
                   else feeds[n] for n in names]

    converter.representative_dataset = representative
    converter.experimental_mlir_quantizer = True
    converter._experimental_calibrate_only = True  # noqa: SLF001 - TF's own debugger does this
    tail: list[str] = []
    progress("calibrating (TFLiteConverter)")
    try:
        with quiet(tail):
            calibrated = converter.convert()
    except Exception as e:
        raise ConversionError(f"TFLiteConverter calibration failed: "
                              f"{last_error_line(e, tail)}") from e
    io_dtype = {"float": tf.float32, "int8": tf.int8, "uint8": tf.uint8}[io_type]
    work.mkdir(parents=True, exist_ok=True)
    files: dict[tuple[str, ...], Path] = {}

    def quantize(excluded: Sequence[str]) -> Path:
        key = tuple(sorted(excluded))
        if key not in files:
            try:
                with quiet():
                    blob = tfl_convert.mlir_quantize(
                        calibrated, fully_quantize=io_type != "float",
                        input_data_type=io_dtype, output_data_type=io_dtype,
                        denylisted_ops=list(key) or None)
            except Exception as e:  # noqa: BLE001 - the MLIR quantizer raises bare errors
                raise ConversionError(f"TFLite quantization failed with {list(key)} kept "
                                      f"float: {last_error_line(e, [])}") from e
            path = work / f"cand-{len(files)}.tflite"
            path.write_bytes(blob)
            files[key] = path
        return files[key]

    candidates = _op_types(calibrated)
    result = search(quantize=quantize, evaluate=evaluate_file, candidates=candidates,
                    budget=budget, progress=progress)
    blob = Path(result.artifact).read_bytes()
    for path in files.values():
        path.unlink(missing_ok=True)
    record = result.to_record()
    record["unit"] = "op type (denylisted_ops)"
    return blob, record
