"""Pass: torch source -> one self-contained, byte-deterministic ONNX file.

Exporter per source kind (measured with torch 2.13, see the tests):
- nn.Module / ScriptModule: the TorchScript-based exporter (``dynamo=False``).
  Deprecated but deterministic, fast (~0.1 s vs ~3 s), honours the opset
  exactly and is the only exporter that takes a ScriptModule. An nn.Module it
  cannot trace is retried with the dynamo exporter.
- ExportedProgram: the dynamo exporter (the only one that takes a program;
  the legacy one cannot trace ``ep.module()``). It exports at opset >= 18;
  older opsets are reached with ONNX's version converter on the optimized graph.
Either way, doc strings and metadata (stack traces, source paths, rewrite-rule
names) are stripped, the opset actually written is checked (the exporter may
silently keep a newer one) and the model must pass the ONNX checker.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgepack.errors import ConversionError, EdgepackError, one_line
from edgepack.sources.base import SourceModel

_TWO_GB = 2**31 - 1
_DYNAMO_MIN_OPSET = 18  # the dynamo exporter's oldest native opset (torch 2.13)
# Loggers the exporters chatter on (torch's exporter registry, onnxscript's converter).
_NOISY_LOGGERS = ("torch", "torch.onnx", "torch.export", "torch._dynamo", "torch._export",
                  "torch.fx", "onnxscript", "onnx_ir")


def export_torch(source: SourceModel, out_path: Path, opset: int = 17) -> Path:
    """Export ``source.torch_model`` to ``out_path`` (single file, names from the signature)."""
    import torch

    model = source.torch_model
    if model is None:
        raise ConversionError(f"{source.location}: not a torch source ({source.format})")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sig = source.signature
    with quiet():
        if isinstance(model, torch.export.ExportedProgram):
            try:
                proto = _export_dynamo(model, (), sig, opset)
                _fix_static_shapes(proto, sig)
            except Exception as e:
                raise _failed(e) from e
        else:
            args = tuple(_zeros(spec) for spec in sig.inputs)
            try:
                proto = _export_legacy(_fresh(model), args, sig, opset)
            except Exception as legacy_error:
                if isinstance(model, torch.jit.ScriptModule):
                    raise _failed(legacy_error) from legacy_error
                try:
                    proto = _export_dynamo(model, args, sig, opset)
                except Exception as dynamo_error:
                    raise ConversionError(
                        f"torch -> ONNX export failed: {_reason(legacy_error, 150)} "
                        f"(dynamo exporter: {_reason(dynamo_error, 120)})"
                    ) from dynamo_error
    return finish_export(proto, out_path, opset, source.location)


def finish_export(proto: Any, out_path: Path, opset: int, location: str) -> Path:
    """What every exporter's ONNX goes through (torch here, TensorFlow in tf_to_onnx):
    metadata stripped, the asked opset checked, under 2 GB, valid, written atomically."""
    strip_metadata(proto)
    check_opset(proto, opset)
    if proto.ByteSize() > _TWO_GB:
        raise ConversionError(
            f"{location}: the ONNX model is over 2 GB; single-file export supports "
            "models under 2 GB"
        )
    _check_model(proto)
    _write_atomic(proto, out_path)
    return out_path


def _check_model(proto: Any) -> None:
    import onnx

    try:
        onnx.checker.check_model(proto)
    except Exception as e:
        raise ConversionError(f"the exported ONNX model is invalid: {one_line(e)}") from e


def check_opset(proto: Any, opset: int) -> None:
    """The default-domain opset written must be the one asked for."""
    got = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    if got != [opset]:
        raise ConversionError(
            f"the exporter wrote ONNX opset {got[0] if got else 'none'} instead of the "
            f"requested {opset}; request opset {got[0] if got else opset} or simplify the model"
        )


def strip_metadata(proto: Any) -> None:
    """Drop doc strings and per-node/value metadata: they carry stack traces and paths.

    Fields are cleared, not set to "": ONNX is proto2, where an empty string that is
    set is still written (2 bytes for every node and attribute).
    """
    _clear(proto)
    for fn in proto.functions:
        _clear(fn)
        _strip_nodes(fn.node)
    _strip_graph(proto.graph)


def _clear(proto: Any) -> None:
    proto.ClearField("doc_string")
    del proto.metadata_props[:]


def _strip_graph(graph: Any) -> None:
    _clear(graph)
    for v in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
        _clear(v)
    _strip_nodes(graph.node)


def _strip_nodes(nodes: Any) -> None:
    for node in nodes:
        _clear(node)
        for attr in node.attribute:
            attr.ClearField("doc_string")
            if attr.HasField("g"):
                _strip_graph(attr.g)
            for g in attr.graphs:
                _strip_graph(g)


def _fresh(model: Any) -> Any:
    """A private copy of a ScriptModule: the legacy exporter inlines its graph in
    place, so a second export of the same object would name nodes differently."""
    import torch

    if not isinstance(model, torch.jit.ScriptModule):
        return model  # nn.Modules are traced afresh on every export
    buf = io.BytesIO()
    torch.jit.save(model, buf)
    buf.seek(0)
    return torch.jit.load(buf, map_location="cpu")


def _fix_static_shapes(proto: Any, sig: Any) -> None:
    """A program exported with symbolic dims, used with static --input shapes: the
    ONNX file gets the signature's shapes (narrowing is always valid)."""
    import onnx

    changed = False
    for values, specs in ((proto.graph.input, sig.inputs), (proto.graph.output, sig.outputs)):
        by_name = {s.name: s for s in specs}
        for v in values:
            spec = by_name.get(v.name)
            dims = v.type.tensor_type.shape.dim
            if spec is None or len(spec.shape) != len(dims):
                continue
            for d, want in zip(dims, spec.shape, strict=True):
                if isinstance(want, int) and not d.HasField("dim_value"):
                    d.dim_value = want  # clears dim_param (same oneof)
                    changed = True
    if changed:
        del proto.graph.value_info[:]  # stale symbolic shapes; re-infer from the fixed inputs
        proto.CopyFrom(onnx.shape_inference.infer_shapes(proto))


def _zeros(spec: Any) -> Any:
    import numpy as np
    import torch

    return torch.from_numpy(np.zeros(spec.concrete_shape(), dtype=spec.dtype))


def _dynamic_axes(sig: Any) -> dict[str, dict[int, str]] | None:
    """Dynamic batch only when the signature's first input dim is symbolic."""
    first = sig.inputs[0].shape[0] if sig.inputs and sig.inputs[0].shape else 1
    if isinstance(first, int):
        return None
    axes: dict[str, dict[int, str]] = {}
    for t in (*sig.inputs, *sig.outputs):
        if t.shape and not isinstance(t.shape[0], int):
            axes[t.name] = {0: str(t.shape[0])}
    return axes


def _export_legacy(model: Any, args: tuple, sig: Any, opset: int) -> Any:
    import onnx
    import torch

    # Exported in a private folder: the legacy exporter writes weights over 2 GB
    # next to the file instead of failing.
    with tempfile.TemporaryDirectory(prefix="edgepack-export-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        torch.onnx.export(
            model, args, path, dynamo=False, opset_version=opset,
            input_names=sig.input_names, output_names=sig.output_names,
            dynamic_axes=_dynamic_axes(sig), do_constant_folding=True, export_params=True,
        )
        if len(os.listdir(tmp)) > 1:
            raise ConversionError("the ONNX model is over 2 GB; single-file export supports "
                                  "models under 2 GB")
        return onnx.load(path)


def _export_dynamo(model: Any, args: tuple, sig: Any, opset: int) -> Any:
    """Export at the exporter's native opset (>= 18), then lower it with ONNX's converter.

    Asked for an older opset, torch's exporter converts *before* its graph
    optimizations and, when that fails, silently keeps 18; converting the
    optimized graph succeeds far more often (e.g. conv + hardswish + mean).
    """
    import onnx
    import torch

    program = torch.onnx.export(
        model, args, None, dynamo=True, opset_version=max(opset, _DYNAMO_MIN_OPSET),
        external_data=False, input_names=sig.input_names, output_names=sig.output_names,
        dynamic_axes=None if isinstance(model, torch.export.ExportedProgram)
        else _dynamic_axes(sig),
        optimize=True, verify=False, report=False, dump_exported_program=False,
    )
    if program is None:
        raise ConversionError("the dynamo exporter returned nothing")
    proto = program.model_proto
    if opset < _DYNAMO_MIN_OPSET:
        try:
            proto = onnx.version_converter.convert_version(proto, opset)
            _drop_new_reduce_attribute(proto.graph)
            onnx.checker.check_model(proto)
        except Exception as e:
            # "/project/onnx/...h:66: adapter_lookup: Assertion `false` failed: No Adapter ..."
            reason = one_line(e).rsplit("failed: ", 1)[-1].replace("$", "")
            raise ConversionError(
                f"cannot lower the exported model from ONNX opset {_DYNAMO_MIN_OPSET} to "
                f"{opset} ({reason}); request opset {_DYNAMO_MIN_OPSET}"
            ) from e
    return proto


def _drop_new_reduce_attribute(graph: Any) -> None:
    """onnx 1.23's converter keeps ``noop_with_empty_axes`` (new in opset 18) when it
    moves Reduce* axes back into an attribute. At its default 0 the old semantics are
    the same, so the attribute can go; any other value stays and fails the checker."""
    for node in graph.node:
        if node.domain in ("", "ai.onnx") and node.op_type.startswith("Reduce"):
            keep = [a for a in node.attribute
                    if not (a.name == "noop_with_empty_axes" and a.i == 0)]
            if len(keep) != len(node.attribute):
                del node.attribute[:]
                node.attribute.extend(keep)
        for attr in node.attribute:
            if attr.HasField("g"):
                _drop_new_reduce_attribute(attr.g)
            for g in attr.graphs:
                _drop_new_reduce_attribute(g)


def _failed(e: BaseException) -> EdgepackError:
    if isinstance(e, EdgepackError):
        return e
    return ConversionError(f"torch -> ONNX export failed: {_reason(e)}")


def _reason(e: BaseException, limit: int = 200) -> str:
    """The root cause: the dynamo exporter wraps it in generic "step 3/3" errors."""
    seen = {id(e)}
    while e.__cause__ is not None and id(e.__cause__) not in seen:
        e = e.__cause__
        seen.add(id(e))
    return one_line(e, limit)


def _write_atomic(proto: Any, out_path: Path) -> None:
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_bytes(proto.SerializeToString())
    os.replace(tmp, out_path)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Passes never print: swallow exporter prints, warnings and log lines.

    Python-level output is redirected, and so are file descriptors 1 and 2:
    the TorchScript exporter prints graphs from C++ when it fails.
    """
    loggers = [logging.getLogger(n) for n in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings(), _fds_silenced(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


@contextlib.contextmanager
def _fds_silenced() -> Iterator[None]:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved: list[tuple[int, int]] = []
    try:
        with open(os.devnull, "w") as null:
            for fd in (1, 2):
                try:
                    saved.append((fd, os.dup(fd)))
                    os.dup2(null.fileno(), fd)
                except OSError:  # no such descriptor (embedded interpreters)
                    continue
            yield
    finally:
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)
