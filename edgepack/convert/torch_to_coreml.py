"""Pass: torch program -> Core ML ML Program (.mlpackage), saved byte-deterministically.

coremltools reads torch only (it dropped ONNX): TorchScript from ``torch.jit.trace``
or an ``ExportedProgram`` after ``run_decompositions({})``. Conversion runs on
Linux; execution does not (Core ML needs macOS), so the model is never loaded
here (``skip_model_load``).

ML Program feature names must match ``[A-Za-z_][A-Za-z0-9_]*``: other source
names ("input.1") are sanitized, and the map is recorded so the runner and the
device harness feed and read the source's names.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.errors import ConversionError, one_line
from edgepack.frameworks import import_coremltools
from edgepack.signature import Signature

COMPUTE_UNITS = ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE")
# ML Program needs iOS15/macOS12; weight compression ops (constexpr_*) need iOS16/macOS13.
DEPLOYMENT_TARGETS = ("iOS15", "iOS16", "iOS17", "iOS18", "iOS26", "macOS12", "macOS13",
                      "macOS14", "macOS15", "macOS26")
COMPRESSION_MIN = {"iOS": 16, "macOS": 13}
_VALID_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Metadata coremltools writes that would make two builds differ.
_VOLATILE_METADATA = ("com.github.apple.coremltools.conversion_date",)
# A fixed namespace: item identifiers in Manifest.json derive from the item path.
_NAMESPACE = uuid.UUID("6f1f5e0e-8d2c-4a53-9a8e-5c0a3c1e7b2d")


def can_predict() -> bool:
    """True where coremltools can execute models: macOS with its native runtime loaded."""
    import sys

    if sys.platform != "darwin":
        return False
    try:
        import_coremltools()
        from coremltools.models import model as ct_model
    except Exception:
        return False
    return getattr(ct_model, "_MLModelProxy", None) is not None


def feature_name(name: str) -> str:
    """The ML Program name of a source tensor name (sanitized when it must be)."""
    if _VALID_NAME.match(name):
        return name
    cleaned = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return cleaned if _VALID_NAME.match(cleaned) else f"t_{cleaned}"


def feature_names(signature: Signature) -> dict[str, str]:
    """Source name -> Core ML name, only for names that change; unique by construction."""
    names = [*signature.input_names, *signature.output_names]
    mapped = {n: feature_name(n) for n in names}
    if len(set(mapped.values())) != len(names):
        raise ConversionError("tensor names collide after Core ML's name rules "
                              f"([A-Za-z_][A-Za-z0-9_]*): {names}")
    return {n: m for n, m in mapped.items() if n != m}


# Core ML I/O types: float16 (iOS16+), float32, int32. Other dtypes are cast at the boundary.
_COREML_DTYPE = {"float32": "float32", "float64": "float32", "float16": "float32",
                 "int64": "int32", "int32": "int32", "int16": "int32", "int8": "int32",
                 "uint8": "int32", "bool": "int32"}


def artifact_dtype(dtype: str) -> str:
    return _COREML_DTYPE.get(dtype, dtype)


@dataclass
class TorchProgram:
    """What coremltools converts, and the same program as a runnable torch module."""

    program: Any   # ScriptModule (traced) or ExportedProgram (decomposed)
    module: Any    # runnable torch module with the same parameters (for the proxy)
    dialect: str   # "torchscript" | "torch.export"


def example_inputs(signature: Signature) -> tuple[Any, ...]:
    import torch

    return tuple(torch.zeros(s.concrete_shape(), dtype=getattr(torch, s.dtype))
                 for s in signature.inputs)


def torch_program(model: Any, signature: Signature) -> TorchProgram:
    """The source as a program coremltools reads.

    nn.Module -> ``torch.jit.trace``; ScriptModule as it is; ExportedProgram ->
    re-exported from ``ep.module()`` with contiguous example inputs, then
    ``run_decompositions({})`` (coremltools otherwise rejects non-contiguous dim
    order), falling back to tracing ``ep.module()``.
    """
    import torch

    from edgepack.frameworks import quiet

    args = example_inputs(signature)
    why = None
    if isinstance(model, torch.export.ExportedProgram):
        module = model.module()
        try:
            with quiet():
                ep = torch.export.export(module, args).run_decompositions({})
            return TorchProgram(ep, ep.module(), "torch.export")
        except Exception as e:  # trace the program's module instead
            model, why = module, e
    if isinstance(model, torch.jit.ScriptModule):
        return TorchProgram(model.eval(), model, "torchscript")
    if why is None and hasattr(model, "eval"):  # torch.export modules refuse eval()
        model.eval()
    try:
        with quiet(), torch.no_grad():
            traced = torch.jit.trace(model, args, check_trace=False)
    except Exception as e:
        extra = f" (torch.export also failed: {one_line(why)})" if why else ""
        raise ConversionError(f"torch.jit.trace failed for Core ML: {one_line(e)}{extra}") from e
    return TorchProgram(traced, traced, "torchscript")


# Identity ops on real tensors that traces of onnx2torch models hold (``Tensor.tolist``
# of pad amounts) and coremltools 9.0 has no converter for.
_IDENTITY_OPS = ("resolve_conj", "resolve_neg")


def _register_identity_ops() -> None:
    from coremltools.converters.mil.frontend.torch import ops
    from coremltools.converters.mil.frontend.torch.torch_op_registry import (
        _TORCH_OPS_REGISTRY,
        register_torch_op,
    )

    missing = [n for n in _IDENTITY_OPS if n not in _TORCH_OPS_REGISTRY.name_to_func_mapping]
    if not missing:
        return

    def identity(context: Any, node: Any) -> None:
        context.add(ops._get_inputs(context, node)[0], torch_name=node.name)

    for name in missing:
        identity.__name__ = name
        register_torch_op(identity, override=False)


def _register_new_ones() -> None:
    """``Tensor.new_ones`` (transformers' BERT attention-mask code; coremltools 9.0
    converts new_zeros/new_full but not new_ones): a fill of 1 in the source's kind."""
    from coremltools.converters.mil.frontend.torch import ops
    from coremltools.converters.mil.frontend.torch.torch_op_registry import (
        _TORCH_OPS_REGISTRY,
        register_torch_op,
    )
    from coremltools.converters.mil.frontend.torch.utils import NUM_TO_DTYPE_STRING
    from coremltools.converters.mil.mil import types

    if "new_ones" in _TORCH_OPS_REGISTRY.name_to_func_mapping:
        return

    def new_ones(context: Any, node: Any) -> None:
        inputs = ops._get_inputs(context, node)
        code = getattr(inputs[2], "val", None) if len(inputs) > 2 and inputs[2] is not None \
            else None
        kind = NUM_TO_DTYPE_STRING.get(code) if code is not None else None
        if kind is None:  # no dtype argument: the source tensor's
            dtype = inputs[0].dtype
            kind = "bool" if types.is_bool(dtype) else "int32" if types.is_int(dtype) else "fp"
        value = True if kind == "bool" else 1 if "int" in kind else 1.0
        context.add(ops._make_fill_op(inputs[1], value, node.name))

    register_torch_op(new_ones, override=False)


def convert(program: TorchProgram, signature: Signature, compute_precision: str,
            deployment_target: str) -> Any:
    """ML Program with the signature's names; compute precision "float32" | "float16"."""
    ct = import_coremltools()
    _register_identity_ops()
    _register_new_ones()
    from edgepack.frameworks import quiet

    names = feature_names(signature)
    inputs = [ct.TensorType(name=names.get(s.name, s.name), shape=s.concrete_shape(),
                            dtype=np.dtype(artifact_dtype(s.dtype)).type)
              for s in signature.inputs]
    outputs = [ct.TensorType(name=names.get(s.name, s.name),
                             dtype=np.dtype(artifact_dtype(s.dtype)).type)
               for s in signature.outputs]
    kwargs: dict[str, Any] = {"inputs": inputs, "outputs": outputs}
    precision = (ct.precision.FLOAT16 if compute_precision == "float16"
                 else ct.precision.FLOAT32)
    try:
        with quiet():
            model = ct.convert(
                program.program, convert_to="mlprogram", compute_precision=precision,
                minimum_deployment_target=getattr(ct.target, deployment_target),
                skip_model_load=True, **kwargs,
            )
    except Exception as e:
        raise ConversionError(f"coremltools could not convert the model: {one_line(e)}") from e
    _rename_features(model, signature, names)
    return model


def _rename_features(model: Any, signature: Signature, names: dict[str, str]) -> None:
    """Give the package the signature's (sanitized) names, in the signature's order."""
    import coremltools as ct

    spec = model._spec
    got_in = [f.name for f in spec.description.input]
    got_out = [f.name for f in spec.description.output]
    want_in = [names.get(n, n) for n in signature.input_names]
    want_out = [names.get(n, n) for n in signature.output_names]
    if len(got_in) != len(want_in) or len(got_out) != len(want_out):
        raise ConversionError(f"the Core ML model has {len(got_in)} inputs / {len(got_out)} "
                              f"outputs; the source has {len(want_in)} / {len(want_out)}")
    for old, new in [*zip(got_in, want_in, strict=True), *zip(got_out, want_out, strict=True)]:
        if old != new:
            ct.utils.rename_feature(spec, old, new)


def save_deterministic(model: Any, path: Path) -> Path:
    """Save the .mlpackage so the same inputs give the same bytes.

    coremltools stamps the conversion date into the model metadata, serializes
    protobuf maps in no fixed order and names package items with random UUIDs;
    all three are fixed here.
    """
    from coremltools.proto import Model_pb2

    from edgepack.frameworks import quiet

    path = Path(path)
    try:
        with quiet():
            model.save(str(path))
    except Exception as e:
        raise ConversionError(f"saving {path.name} failed: {one_line(e)}") from e
    spec_file = path / "Data" / "com.apple.CoreML" / "model.mlmodel"
    spec = Model_pb2.Model()
    spec.ParseFromString(spec_file.read_bytes())
    for key in _VOLATILE_METADATA:
        if key in spec.description.metadata.userDefined:
            del spec.description.metadata.userDefined[key]
    spec_file.write_bytes(spec.SerializeToString(deterministic=True))
    spec_file.chmod(0o644)
    _normalize_manifest(path / "Manifest.json")
    return path


def _normalize_manifest(manifest: Path) -> None:
    data = json.loads(manifest.read_text())
    entries = data.get("itemInfoEntries", {})
    renamed = {old: str(uuid.uuid5(_NAMESPACE, item.get("path", old))).upper()
               for old, item in entries.items()}
    data["itemInfoEntries"] = {renamed[k]: v for k, v in entries.items()}
    if data.get("rootModelIdentifier") in renamed:
        data["rootModelIdentifier"] = renamed[data["rootModelIdentifier"]]
    manifest.write_text(json.dumps(data, indent=4, sort_keys=True) + "\n")


def load_spec(path: Path) -> Any:
    """The saved package's spec, read the documented way (no model load)."""
    ct = import_coremltools()
    from edgepack.frameworks import quiet

    try:
        with quiet():
            return ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    except Exception as e:
        raise ConversionError(f"{Path(path).name} does not load in coremltools: "
                              f"{one_line(e)}") from e


_ARRAY_DTYPES = {65568: "float32", 65552: "float16", 65600: "float64", 131104: "int32",
                 131080: "int8"}


def feature_type(feature: Any) -> tuple[tuple[int, ...], str]:
    """(shape, numpy dtype name) of a multiArray feature description."""
    kind = feature.type.WhichOneof("Type")
    if kind != "multiArrayType":
        return (), kind or "unknown"
    arr = feature.type.multiArrayType
    return tuple(int(d) for d in arr.shape), _ARRAY_DTYPES.get(arr.dataType, str(arr.dataType))
