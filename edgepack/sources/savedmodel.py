"""TensorFlow SavedModel sources: a folder holding saved_model.pb (serving_default signature).

Inputs and outputs are the signature's, ordered by name (the order TensorFlow
gives them); the content hash covers saved_model.pb and every variables file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgepack.errors import InputError, one_line
from edgepack.signature import TensorSpec
from edgepack.sources.base import SourceModel, file_sha256, safe_name
from edgepack.sources.keras import TFSourceModel, signature_of, spec_from_tf, tf_runner_factory

SIGNATURE = "serving_default"


def load(spec: str, path: Path, inputs: list[TensorSpec],
         outputs: list[str] | None) -> SourceModel:
    from edgepack.frameworks import import_tensorflow, quiet

    tf = import_tensorflow()
    try:
        with quiet():
            loaded = tf.saved_model.load(str(path))
    except Exception as e:
        raise InputError(f"{spec} is not a loadable SavedModel ({one_line(e, 160)})") from e
    signatures = dict(loaded.signatures)
    if SIGNATURE not in signatures:
        raise InputError(f"{spec} has no {SIGNATURE!r} signature (it has "
                         f"{sorted(signatures) or 'none'}); export one with tf.saved_model.save"
                         "(..., signatures=...)")
    fn = signatures[SIGNATURE]
    in_specs = fn.structured_input_signature[1]
    in_names = sorted(in_specs)
    out_specs = fn.structured_outputs
    out_keys = sorted(out_specs)
    ins = [spec_from_tf(n, tuple(in_specs[n].shape), in_specs[n].dtype.name, "input")
           for n in in_names]
    outs = [spec_from_tf(k, tuple(out_specs[k].shape), out_specs[k].dtype.name, "output")
            for k in out_keys]
    sig = signature_of(ins, outs, inputs, outputs)

    def call(*xs: Any) -> list[Any]:
        out = fn(**dict(zip(in_names, xs, strict=True)))
        return [out[k] for k in out_keys]

    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name != "saved_model.pb")
    params = sum(int(v.shape.num_elements() or 0) for v in getattr(loaded, "variables", []))
    return TFSourceModel(
        format="savedmodel", location=spec, sha256=file_sha256(path / "saved_model.pb", files),
        signature=sig, name=safe_name(path.resolve().name), runner_factory=tf_runner_factory(
            call, sig), parameters=params or None, tf_call=call, keepalive=loaded,
    )
