"""Build the artifacts a user would make by hand, with each tool's defaults.

    python benchmarks/baselines.py MODEL OUT_DIR [--skip NAME ...]

Writes OUT_DIR/baselines.json: one entry per baseline with its files, bytes,
build seconds, or the error it stopped with. The paths, on purpose, are the
documented one-liners, not tuned recipes:

- ``onnx-export``: ``torch.onnx.export(model, args, "model.onnx", input_names=...)``
  (torch's default exporter and opset);
- ``ort-quantize-dynamic``: ``onnxruntime.quantization.quantize_dynamic(fp32, int8)``
  with every default (per-tensor int8 weights, every supported op type);
- ``litert-torch``: ``litert_torch.convert(model, args).export("model.tflite")`` (fp32);
- ``onnx2tf``: the ``onnx2tf -i model.onnx -o out`` command in its own environment
  (its default outputs are ``*_float32.tflite`` and ``*_float16.tflite``).
Torch eager needs no build; its weights are measured as a saved state_dict.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from models import MODELS, ModelSpec  # noqa: E402

ONNX2TF_TIMEOUT_S = 900


def load_model(spec: ModelSpec):
    from edgepack.sources import load_source

    source = load_source(str(spec.config.parent / spec.settings()["model"]),
                         inputs=_input_specs(spec), outputs=spec.settings().get("outputs"))
    return source.torch_model, source.signature


def _input_specs(spec: ModelSpec) -> list:
    from edgepack.signature import TensorSpec

    return [TensorSpec(i["name"], tuple(i["shape"]), i.get("dtype", "float32"), i.get("layout"))
            for i in spec.settings()["inputs"]]


def example_args(sig) -> tuple:
    import numpy as np
    import torch

    return tuple(torch.from_numpy(np.zeros(t.concrete_shape(), dtype=t.dtype))
                 for t in sig.inputs)


def files_bytes(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths)


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return f"{type(e).__name__}: {text}"[:300]


def _timed(name: str, fn, results: list[dict[str, Any]]) -> None:
    started = time.monotonic()
    try:
        entry = fn()
        entry.setdefault("status", "built")
    except Exception as e:  # a baseline that fails is a result, not a crash
        entry = {"status": "failed", "error": one_line(e)}
    entry["name"] = name
    entry["build_seconds"] = round(time.monotonic() - started, 2)
    results.append(entry)


def build_all(spec: ModelSpec, out: Path, skip: set[str],
              onnx2tf_timeout: float = ONNX2TF_TIMEOUT_S) -> list[dict[str, Any]]:
    import torch

    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    model, sig = load_model(spec)
    args = example_args(sig)
    names_in = sig.input_names
    results: list[dict[str, Any]] = []

    def torch_eager() -> dict:
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        return {"kind": "torch", "bytes": buf.tell(), "files": [], "layout": "source"}

    def onnx_export() -> dict:
        folder = out / "onnx-export"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "model.onnx"
        # output names stay torch's own: naming the encoder's output "embedding" makes
        # torch 2.13's default exporter write an invalid model ("Duplicate definition of
        # name (embedding)"), which a user would work around exactly like this
        torch.onnx.export(model, args, str(path), input_names=names_in)
        files = sorted(folder.iterdir())
        return {"kind": "onnx", "model": str(path), "files": [str(f) for f in files],
                "bytes": files_bytes(files), "layout": "source"}

    def quantize_dynamic() -> dict:
        from onnxruntime.quantization import quantize_dynamic as qd

        src = out / "onnx-export" / "model.onnx"
        if not src.is_file():
            raise RuntimeError("needs the onnx-export baseline, which failed")
        folder = out / "ort-quantize-dynamic"
        folder.mkdir(parents=True, exist_ok=True)
        dst = folder / "model.onnx"
        qd(str(src), str(dst))
        files = sorted(folder.iterdir())
        return {"kind": "onnx", "model": str(dst), "files": [str(f) for f in files],
                "bytes": files_bytes(files), "layout": "source"}

    def litert_torch() -> dict:
        import litert_torch

        folder = out / "litert-torch"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "model.tflite"
        litert_torch.convert(model.eval(), args).export(str(path))
        return {"kind": "tflite", "model": str(path), "files": [str(path)],
                "bytes": path.stat().st_size, "layout": "source"}

    steps = [("torch-eager", torch_eager), ("onnx-export", onnx_export),
             ("ort-quantize-dynamic", quantize_dynamic), ("litert-torch", litert_torch)]
    for name, fn in steps:
        if name in skip:
            results.append({"name": name, "status": "skipped", "error": "--skip"})
            continue
        _timed(name, fn, results)
    if "onnx2tf" in skip:
        results.append({"name": "onnx2tf", "status": "skipped", "error": "--skip"})
    else:
        results.extend(onnx2tf(out, onnx2tf_timeout))
    return results


def onnx2tf(out: Path, timeout: float = ONNX2TF_TIMEOUT_S) -> list[dict[str, Any]]:
    """The onnx2tf CLI with its defaults, in its own environment: fp32 and fp16 .tflite."""
    from edgepack.convert import onnx2tf_env

    names = ("onnx2tf-fp32", "onnx2tf-fp16")
    py = onnx2tf_env.find_python()
    src = out / "onnx-export" / "model.onnx"
    if py is None or not Path(py).exists():
        why = f"not installed (run {onnx2tf_env.SETUP})"
        return [{"name": n, "status": "skipped", "error": why} for n in names]
    if not src.is_file():
        return [{"name": n, "status": "failed", "error": "needs the onnx-export baseline"}
                for n in names]
    work = out / "onnx2tf"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for f in src.parent.iterdir():  # onnx2tf rewrites its input: give it a copy
        shutil.copyfile(f, work / f.name)
    sample = onnx2tf_env.sample_file(Path(py))
    if sample is not None:  # it would download this for 3-channel inputs
        shutil.copyfile(sample, work / onnx2tf_env.SAMPLE)
    env = dict(os.environ, PATH=f"{Path(py).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="-1", NO_COLOR="1")
    env.pop("PYTHONPATH", None)
    started = time.monotonic()
    try:
        proc = subprocess.run([str(Path(py).parent / "onnx2tf"), "-i", "model.onnx", "-o", "out"],
                              cwd=work, env=env, capture_output=True, text=True,
                              timeout=timeout)
        error = None if proc.returncode == 0 else _last_error(proc.stdout + proc.stderr)
    except subprocess.TimeoutExpired:
        error = f"timed out after {timeout:.0f} s (the suite's time budget)"
    seconds = round(time.monotonic() - started, 2)
    results = []
    for name, suffix in zip(names, ("float32", "float16"), strict=True):
        path = work / "out" / f"model_{suffix}.tflite"
        if path.is_file():
            results.append({"name": name, "status": "built", "kind": "tflite",
                            "model": str(path), "files": [str(path)],
                            "bytes": path.stat().st_size, "layout": "channel-last",
                            "build_seconds": seconds, "shared_build": "one onnx2tf call"})
        else:
            results.append({"name": name, "status": "failed", "build_seconds": seconds,
                            "error": error or f"no {path.name} written"})
    return results


def _last_error(text: str) -> str:
    import re

    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.search(r"Error|ERROR|error:", ln)]
    return ((errors or lines or ["failed"])[-1])[:300]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("model", choices=sorted(MODELS))
    p.add_argument("out", type=Path)
    p.add_argument("--skip", nargs="*", default=[])
    p.add_argument("--onnx2tf-timeout", type=float, default=ONNX2TF_TIMEOUT_S)
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    results = build_all(MODELS[a.model], a.out.resolve(), set(a.skip), a.onnx2tf_timeout)
    (a.out / "baselines.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
