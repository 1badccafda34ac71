"""Steps several backends share: the cleaned fp32 ONNX graph of the source.

Built once per build (cached in ``job.cache``) and reused by every precision
and every ONNX-based target, so a build never exports the same model twice.
"""

from __future__ import annotations

from pathlib import Path

from edgepack.backends.base import Job


def fp32_onnx(job: Job) -> Path:
    """The source as one cleaned, self-contained fp32 ONNX file at the profile's opset."""
    key = f"fp32_onnx:opset{job.profile.opset}"
    if key in job.cache:
        return job.cache[key]
    from edgepack.convert.onnx_cleanup import cleanup_onnx

    folder = job.cache.setdefault("root", job.workdir.parent) / f"fp32-opset{job.profile.opset}"
    done = folder / "model.onnx"
    if (folder / ".complete").exists():  # made by an earlier worker of this build
        job.cache[key] = done
        return done
    folder.mkdir(parents=True, exist_ok=True)
    fixed = {t.name: list(t.concrete_shape()) for t in job.source.signature.inputs}
    if job.source.onnx_path is not None:
        raw = job.source.onnx_path
    elif getattr(job.source, "tf_call", None) is not None:
        from edgepack.convert.tf_to_onnx import export_tf

        job.progress("exporting tensorflow → onnx (tf2onnx)")
        raw = export_tf(job.source, folder / "exported.onnx", opset=job.profile.opset)
    else:
        from edgepack.convert.torch_to_onnx import export_torch

        job.progress("exporting torch → onnx")
        raw = export_torch(job.source, folder / "exported.onnx", opset=job.profile.opset)
    job.progress("cleaning the onnx graph")
    static = job.profile.static_shapes or job.source.signature.inputs[0].is_static
    path = cleanup_onnx(raw, done, fixed_shapes=fixed if static else None)
    (folder / ".complete").touch()
    job.cache[key] = path
    return path


def export_toolchain(job: Job) -> list[str]:
    """Packages that turned the source into the fp32 ONNX, beyond the backend's own."""
    if getattr(job.source, "tf_call", None) is not None:
        from edgepack.convert.tf_to_onnx import TOOLCHAIN

        return list(TOOLCHAIN)
    return []
