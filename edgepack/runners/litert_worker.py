"""Child process that owns one LiteRT interpreter: ``python -m edgepack.runners.litert_worker``.

Some TFLite models abort the interpreter process (SIGABRT) instead of raising,
so the host never runs an interpreter in its own process. The parent
(``edgepack.runners.litert``) talks to this worker over its stdin/stdout with
length-prefixed frames; a worker that dies mid-call is reported by the parent
with the signal that killed it.

Frames: one kind byte (``J`` JSON, ``N`` npz), an 8-byte big-endian length, the
payload. The worker first answers with a JSON description of the model's I/O
(or ``{"error": ...}``), then answers each npz request (one batch of feeds,
keyed by the model's own tensor names) with an npz of outputs, or a JSON error.
"""

from __future__ import annotations

import io
import json
import os
import struct
import sys
from typing import Any, BinaryIO

import numpy as np

HEADER = struct.Struct(">cQ")


def write_frame(stream: BinaryIO, kind: bytes, payload: bytes) -> None:
    stream.write(HEADER.pack(kind, len(payload)))
    stream.write(payload)
    stream.flush()


def read_frame(stream: BinaryIO) -> tuple[bytes, bytes] | None:
    """(kind, payload), or None at end of stream (the other side closed or died)."""
    head = _read_exact(stream, HEADER.size)
    if head is None:
        return None
    kind, size = HEADER.unpack(head)
    payload = _read_exact(stream, size)
    if payload is None:
        return None
    return kind, payload


def _read_exact(stream: BinaryIO, n: int) -> bytes | None:
    parts, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            return None
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def pack_arrays(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def unpack_arrays(payload: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(payload), allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _interpreter_class() -> tuple[Any, str]:
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai_edge_litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite_runtime"
    except ImportError:
        pass
    import tensorflow as tf

    return tf.lite.Interpreter, "tensorflow.lite"


def _detail(d: dict[str, Any], name: str) -> dict[str, Any]:
    scale, zero_point = d.get("quantization", (0.0, 0))
    return {"name": name, "shape": [int(x) for x in d["shape"]],
            "dtype": np.dtype(d["dtype"]).name,
            "scale": float(scale), "zero_point": int(zero_point)}


class _Model:
    def __init__(self, path: str, threads: int) -> None:
        interpreter_class, self.runtime = _interpreter_class()
        self.interpreter = interpreter_class(model_path=path, num_threads=threads)
        signatures = self.interpreter.get_signature_list()
        if signatures:
            key = "serving_default" if "serving_default" in signatures else sorted(signatures)[0]
            self.runner = self.interpreter.get_signature_runner(key)
            ins = self.runner.get_input_details()
            outs = self.runner.get_output_details()
            self.inputs = [_detail(d, n) for n, d in ins.items()]
            self.outputs = [_detail(d, n) for n, d in outs.items()]
            self.signature = key
        else:
            self.runner = None
            self.interpreter.allocate_tensors()
            self._in = self.interpreter.get_input_details()
            self._out = self.interpreter.get_output_details()
            self.inputs = [_detail(d, d["name"]) for d in self._in]
            self.outputs = [_detail(d, d["name"]) for d in self._out]
            self.signature = None

    def describe(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "signature": self.signature,
                "inputs": self.inputs, "outputs": self.outputs}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.runner is not None:
            out = self.runner(**feeds)
            return {k: np.array(v) for k, v in out.items()}
        for d in self._in:
            self.interpreter.set_tensor(d["index"], feeds[d["name"]])
        self.interpreter.invoke()
        return {d["name"]: np.array(self.interpreter.get_tensor(d["index"])) for d in self._out}


def _error(e: BaseException) -> bytes:
    text = " ".join(str(e).split()) or type(e).__name__
    return json.dumps({"error": f"{type(e).__name__}: {text[:400]}"}).encode()


def main(argv: list[str]) -> int:
    # The protocol owns the original stdout; anything the runtime prints goes to stderr.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    inp = sys.stdin.buffer
    path, threads = argv[0], int(argv[1]) if len(argv) > 1 else 1
    try:
        model = _Model(path, threads)
    except Exception as e:
        write_frame(out, b"J", _error(e))
        return 0
    write_frame(out, b"J", json.dumps(model.describe()).encode())
    while True:
        frame = read_frame(inp)
        if frame is None:
            return 0
        _kind, payload = frame
        try:
            result = model.run(unpack_arrays(payload))
        except Exception as e:
            write_frame(out, b"J", _error(e))
            continue
        write_frame(out, b"N", pack_arrays(result))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
