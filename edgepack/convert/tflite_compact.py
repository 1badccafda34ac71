"""Shrink a .tflite file to what the interpreter reads; the numerics do not change.

litert-torch names every tensor after its torch.export trace path
(``litert_torch._convert.to_channel_last_io.ChannelLastIOWrapper/...``, 100-300
characters each): on the MobileNet-style sample that was 61 kB of a 432 kB fp32
file and 41 kB of the 191 kB int8 one, so size ratios between precisions
measured names, not weights. Internal tensors get short base-36 names; the
tensors a signature or a subgraph's inputs/outputs refer to keep theirs (the
runner and the harness look I/O up by name). Constant buffers stay 16-byte
aligned, as the converter writes them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgepack.convert.onnx_cleanup import short_name

#: Buffer alignment the converter uses (kernels may read constants in place, mmapped).
ALIGNMENT = 16


def _builder_class() -> Any:
    import flatbuffers
    import numpy as np

    class AlignedBuilder(flatbuffers.Builder):
        """Byte vectors (buffer data) start on ALIGNMENT boundaries; every other
        numeric vector is written once and shared by all tables that hold the same
        one (flatbuffers allows it; the reader only follows offsets)."""

        def __init__(self, initial_size: int) -> None:
            super().__init__(initial_size)
            self.shared: dict[tuple[str, bytes], int] = {}

        def CreateNumpyVector(self, x: Any) -> int:  # noqa: N802 - flatbuffers' API
            if x.dtype == np.uint8 and x.size >= ALIGNMENT:
                self.StartVector(1, x.size, ALIGNMENT)
                payload = x.tobytes()
                self.head = self.head - len(payload)
                self.Bytes[self.head:self.head + len(payload)] = payload
                return self.EndVector()
            # per-channel int8 stores an int64 zero point per channel for the weights
            # and again for the bias, all zeros: on the MobileNet-style sample 27 kB
            # of its 151 kB int8 file were zero points, 7.6 kB of them distinct
            key = (x.dtype.str, x.tobytes())
            if key not in self.shared:
                self.shared[key] = super().CreateNumpyVector(x)
            return self.shared[key]

    return AlignedBuilder


#: A flatbuffer cannot exceed 2 GB; larger models keep their buffers outside it.
FLATBUFFER_LIMIT = (1 << 31) - 1


def load_model(path: Path) -> Any:
    """The .tflite at ``path`` as the schema's object API (ModelT).

    Buffers stored after the flatbuffer (offset/size, as ai-edge-quantizer writes
    them) are read into it when the whole model fits a flatbuffer, so passes see
    and can rewrite every constant.
    """
    import numpy as np

    from edgepack.convert.tflite_inspect import flatbuffer_schema

    raw = bytearray(Path(path).read_bytes())
    model = flatbuffer_schema().ModelT.InitFromPackedBuf(raw, 0)
    if len(raw) < FLATBUFFER_LIMIT:
        for buffer in model.buffers or []:
            if getattr(buffer, "offset", 0) > 1:
                end = buffer.offset + buffer.size
                buffer.data = np.frombuffer(bytes(raw[buffer.offset:end]), dtype=np.uint8)
                buffer.offset, buffer.size = 0, 0
    return model


def save_model(model: Any, path: Path, size_hint: int = 1 << 20) -> int:
    """Write ModelT ``model`` to ``path`` (atomically, buffers 16-byte aligned) -> bytes."""
    builder = _builder_class()(max(1024, size_hint))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    out = bytes(builder.Output())
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(out)
    os.replace(tmp, path)
    return len(out)


def operator_code(model: Any, builtin: int, version: int) -> int:
    """Index of the operator code (``builtin``, ``version``) in ``model``; added if missing."""
    from edgepack.convert.tflite_inspect import flatbuffer_schema

    for i, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin and \
                code.version == version:
            return i
    code = flatbuffer_schema().OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, 127)
    code.version = version
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def compact_tflite(path: Path) -> dict[str, int | str]:
    """Rewrite ``path`` in place with short internal tensor names.

    Returns byte counts before/after and how many names were shortened; a model
    whose buffers live outside the flatbuffer (> 2 GB, buffer offsets) is left as
    it is (``skipped`` says why).
    """
    path = Path(path)
    before = path.stat().st_size
    model = load_model(path)
    if any(getattr(b, "offset", 0) for b in model.buffers or []):
        return {"bytes_before": before, "bytes_after": before, "names_shortened": 0,
                "skipped": "buffers stored outside the flatbuffer"}
    renamed = 0
    for index, sg in enumerate(model.subgraphs or []):
        keep = set(sg.inputs if sg.inputs is not None else []) | \
            set(sg.outputs if sg.outputs is not None else [])
        for sig in model.signatureDefs or []:
            if sig.subgraphIndex == index:
                keep |= {t.tensorIndex for t in (*(sig.inputs or []), *(sig.outputs or []))}
        taken = {(t.name.decode() if isinstance(t.name, bytes) else t.name or "")
                 for i, t in enumerate(sg.tensors or []) if i in keep}
        counter = 0
        for i, tensor in enumerate(sg.tensors or []):
            if i in keep:
                continue
            while short_name(counter) in taken:
                counter += 1
            tensor.name = short_name(counter)
            counter += 1
            renamed += 1
    after = save_model(model, path, before)
    return {"bytes_before": before, "bytes_after": after, "names_shortened": renamed}
