"""Check: the saved .mlpackage's I/O (names, shapes, dtypes) is what the manifest says.

Read the way a user would (``coremltools.models.MLModel(path, skip_model_load=True)``),
so a package whose spec disagrees with the bundle's signature never ships.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgepack.convert.torch_to_coreml import artifact_dtype, feature_type, load_spec
from edgepack.errors import ConversionError, Status
from edgepack.signature import Signature, TensorSpec


def _expected(spec: TensorSpec) -> tuple[tuple[int, ...], str]:
    return tuple(spec.concrete_shape()), artifact_dtype(spec.dtype)


def structural_check(package: Path, signature: Signature, names: dict[str, str]
                     ) -> dict[str, Any]:
    """Compare the package spec with ``signature``; raise ConversionError on a mismatch.

    ``names`` maps source names to the package's (sanitized) names; ``signature``
    is the artifact's (static shapes, Core ML dtypes). Returns the record kept in
    the manifest: what was compared and the package's own I/O. Core ML may leave
    an output's shape out of the spec; that is recorded, not failed.
    """
    spec = load_spec(package)
    problems: list[str] = []
    record: dict[str, Any] = {"status": Status.PASSED,
                              "method": "MLModel(skip_model_load=True) spec"}
    for role, features, wanted in (("input", spec.description.input, signature.inputs),
                                   ("output", spec.description.output, signature.outputs)):
        got = {f.name: feature_type(f) for f in features}
        order = [f.name for f in features]
        want_order = [names.get(t.name, t.name) for t in wanted]
        if order != want_order:
            problems.append(f"{role} names {order} != {want_order}")
        rows = []
        for t in wanted:
            name = names.get(t.name, t.name)
            if name not in got:
                continue
            shape, dtype = got[name]
            want_shape, want_dtype = _expected(t)
            if dtype != want_dtype:
                problems.append(f"{role} {t.name}: dtype {dtype} != {want_dtype}")
            if role == "output" and shape == ():
                record.setdefault("unrecorded_output_shapes", []).append(t.name)
            elif shape != want_shape:
                problems.append(f"{role} {t.name}: shape {list(shape)} != {list(want_shape)}")
            rows.append({"name": t.name, "coreml_name": name, "shape": list(shape),
                         "dtype": dtype})
        record[f"{role}s"] = rows
    if problems:
        raise ConversionError(f"{Path(package).name} does not match the signature: "
                              + "; ".join(problems))
    return record
