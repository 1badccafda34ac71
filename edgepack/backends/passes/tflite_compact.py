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

from edgepack.backends.passes.onnx_cleanup import short_name

#: Buffer alignment the converter uses (kernels may read constants in place, mmapped).
ALIGNMENT = 16


def _builder_class() -> Any:
    import flatbuffers
    import numpy as np

    class AlignedBuilder(flatbuffers.Builder):
        """Byte vectors (buffer data) start on ALIGNMENT boundaries."""

        def CreateNumpyVector(self, x: Any) -> int:  # noqa: N802 - flatbuffers' API
            if x.dtype != np.uint8 or x.size < ALIGNMENT:
                return super().CreateNumpyVector(x)
            self.StartVector(1, x.size, ALIGNMENT)
            payload = x.tobytes()
            self.head = self.head - len(payload)
            self.Bytes[self.head:self.head + len(payload)] = payload
            return self.EndVector()

    return AlignedBuilder


def load_model(path: Path) -> Any:
    """The .tflite at ``path`` as the schema's object API (ModelT)."""
    from edgepack.backends.passes.tflite_inspect import _schema

    return _schema().ModelT.InitFromPackedBuf(bytearray(Path(path).read_bytes()), 0)


def save_model(model: Any, path: Path, size_hint: int = 1 << 20) -> int:
    """Write ModelT ``model`` to ``path`` (atomically, buffers 16-byte aligned) -> bytes."""
    builder = _builder_class()(max(1024, size_hint))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    out = bytes(builder.Output())
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(out)
    os.replace(tmp, path)
    return len(out)


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
