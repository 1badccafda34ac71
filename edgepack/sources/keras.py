"""Keras sources (.keras, .h5): loaded with keras.models.load_model (safe mode, no compile).

Keras image inputs are channel-last already (NHWC), so TFLite artifacts keep
the source layout. A symbolic batch dimension is fixed by the profile's static
shapes (1, or --input).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepack.errors import InputError, UsageError, one_line
from edgepack.signature import Signature, TensorSpec
from edgepack.sources.base import SourceModel, check_zip, file_sha256, safe_name


@dataclass
class TFSourceModel(SourceModel):
    """A TensorFlow source: ``tf_call(*tensors)`` runs it (the TFLite converter traces it)."""

    tf_call: Callable[..., Any] | None = field(default=None, repr=False)
    keepalive: Any = field(default=None, repr=False)


def guess_layout_nhwc(shape: Sequence[Any], dtype: str) -> str | None:
    if len(shape) == 4 and dtype.startswith("float") and shape[-1] in (1, 3, 4):
        return "NHWC"
    return None


def spec_from_tf(name: str, shape: Sequence[Any], dtype: str, what: str) -> TensorSpec:
    dims: list[int | str] = []
    for i, d in enumerate(shape):
        if d is None or (isinstance(d, int) and d < 0):
            if i != 0:
                raise UsageError(f"{what} {name!r} has an unknown dimension {i}: give its shape "
                                 f"with --input {name}:...")
            dims.append("batch")
        else:
            dims.append(int(d))
    return TensorSpec(name, tuple(dims), dtype, guess_layout_nhwc(dims, dtype))


def signature_of(ins: list[TensorSpec], outs: list[TensorSpec], inputs: list[TensorSpec],
                 outputs: list[str] | None) -> Signature:
    sig = Signature(inputs=tuple(ins), outputs=tuple(outs))
    if inputs:
        sig = sig.with_inputs(inputs)
    if outputs:
        if len(outputs) != len(sig.outputs):
            raise UsageError(f"the model has {len(sig.outputs)} outputs but {len(outputs)} "
                             f"output names were given ({', '.join(outputs)})")
        sig = Signature(sig.inputs, tuple(TensorSpec(n, t.shape, t.dtype, t.layout)
                                          for n, t in zip(outputs, sig.outputs, strict=True)))
    return sig


def tf_runner_factory(call: Callable[..., Any], sig: Signature) -> Callable[[], Any]:
    def make() -> Any:
        from edgepack.runners.tensorflow import TensorFlowRunner

        return TensorFlowRunner(call, sig.input_names, sig.output_names,
                                [t.dtype for t in sig.inputs])
    return make


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_FIX = "save it with model.save('model.keras') (or .h5), or re-download it"


def _check_format(spec: str, path: Path) -> None:
    """A .keras file is a zip archive, an .h5 file an HDF5 file: say so before importing
    TensorFlow, whose own messages for a wrong file are misleading ("File not found")."""
    if path.suffix.lower() == ".keras":
        check_zip(spec, path, "a Keras model file", _FIX)
        return
    size = path.stat().st_size
    with open(path, "rb") as f:
        offset = 0  # the HDF5 superblock sits at 0, 512, 1024, 2048, ... (after a user block)
        while offset < size and offset <= 1 << 20:
            f.seek(offset)
            if f.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                return
            offset = 512 if offset == 0 else offset * 2
    raise InputError(f"{spec} is not a Keras model file (no HDF5 signature: corrupt, "
                     f"truncated or another format); {_FIX}")


def load(spec: str, path: Path, inputs: list[TensorSpec],
         outputs: list[str] | None) -> SourceModel:
    from edgepack.frameworks import import_tensorflow, quiet

    _check_format(spec, path)
    import_tensorflow()
    import keras

    try:
        with quiet():
            model = keras.models.load_model(str(path), compile=False)
    except Exception as e:
        raise InputError(f"{spec} is not a loadable Keras model ({one_line(e, 160)})") from e
    ins = [spec_from_tf(t.name, tuple(t.shape), _dtype(t.dtype), "input") for t in model.inputs]
    names = list(getattr(model, "output_names", None) or [])
    if len(names) != len(model.outputs):
        names = [f"output{i}" for i in range(len(model.outputs))]
    outs = [spec_from_tf(n, tuple(t.shape), _dtype(t.dtype), "output")
            for n, t in zip(names, model.outputs, strict=True)]
    sig = signature_of(ins, outs, inputs, outputs)
    single = len(sig.inputs) == 1

    def call(*xs: Any) -> Any:
        out = model(xs[0] if single else list(xs), training=False)
        if isinstance(out, dict):
            # a dict comes back in the model's insertion order; model.outputs (and so
            # the signature) is Keras' flattened order: sorted keys. Pair by key.
            keys = names if set(names) == set(out) else sorted(out)
            return [out[k] for k in keys]
        return out

    return TFSourceModel(
        format="keras", location=spec, sha256=file_sha256(path), signature=sig,
        name=safe_name(path.stem), runner_factory=tf_runner_factory(call, sig),
        parameters=int(model.count_params()), tf_call=call, keepalive=model,
    )


def _dtype(d: Any) -> str:
    name = getattr(d, "name", None) or str(d)
    return name.replace("tf.", "")
