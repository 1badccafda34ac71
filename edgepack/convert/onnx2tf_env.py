"""Locate and drive onnx2tf, which lives in its own environment (scripts/setup_onnx2tf.sh).

onnx2tf 1.29 hard-pins tensorflow 2.19, onnx 1.19, onnxruntime 1.23, numpy 1.26
and ai-edge-litert 2.1, which conflict with edgepack's environment, so it runs
as a subprocess with its own interpreter. Its pitfalls, handled here:

- it downloads a calibration sample (.npy) for 3-channel 4-D inputs, even for
  float conversions: the set-up script places one, copied into the working
  directory; the child process also refuses every network connection;
- it runs the ``onnxsim`` command: its environment's bin is put first on PATH;
- it rewrites the input .onnx in place: it only ever sees a copy;
- it makes NCHW inputs NHWC and may silently permute 3-D inputs: inputs that
  are not NCHW images are kept as they are (``keep_shape_absolutely_input_names``)
  unless asked otherwise, and the backend maps layouts by shape (validation
  catches a permutation shapes cannot reveal);
- with opset < 20, Erf (GELU) becomes FlexErf, which LiteRT's builtin ops
  cannot run: exact Erf GELUs become TFLite's exact GELU builtin (onnx2tf's own
  detection, which needed help: see ``_SCRIPT``), any other Erf its pseudo-operator.

The result is a SavedModel (NHWC), whose signature names inputs ``input_<i>`` and
outputs ``output_<i>`` in the ONNX graph's order, plus ``io.json`` describing them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgepack.errors import ConversionError, UsageError

SAMPLE = "calibration_image_sample_data_20x128x128x3_float32.npy"
VERSION = "1.29.24"
ENV_VAR = "EDGEPACK_ONNX2TF_PYTHON"
TIMEOUT_S = 1800
SETUP = "scripts/setup_onnx2tf.sh"

# Runs inside the onnx2tf environment: argv[1] is a JSON object of settings.
_SCRIPT = r"""
import json, socket, sys
args = json.loads(sys.argv[1])

def _offline(*a, **k):
    raise OSError("edgepack: network access is disabled while onnx2tf runs")

socket.socket.connect = _offline
socket.socket.connect_ex = _offline
socket.create_connection = _offline

import numpy as np
import onnx2tf
import onnx2tf.ops.Div as _div
import tensorflow as tf

# onnx2tf turns x -> Div(x, sqrt2) -> Erf -> Add(+1) -> Mul(x) -> Mul(0.5) into TFLite's
# GELU only if the divisor has .numpy() (a tensor; onnxsim makes it a numpy constant)
# and equals the Python float 1.4142135 (NumPy 1.26 compares float32 with it in
# float64: never). Unmatched, Erf became a pseudo-Erf whose x/(|x|+eps) DIV breaks
# int8 (LiteRT: div.cc data[i] != zero_point). For Divs feeding an Erf only: scalar
# constants get .numpy() and Python scalars compare in float32 (as in NumPy 2).
class _Scalar(np.ndarray):
    def numpy(self):
        return np.asarray(self)

_constant_or_variable = _div.get_constant_or_variable
_div_make_node = _div.make_node

def _scalar_with_numpy(value, *a, **k):
    out = _constant_or_variable(value, *a, **k)
    return np.asarray(out).view(_Scalar) if isinstance(out, np.ndarray) and out.size == 1 else out

def _div_make_node_gelu(*a, **k):
    node = k.get("graph_node") or a[0]
    if not any(c.op == "Erf" for t in node.outputs for c in t.outputs):
        return _div_make_node(*a, **k)
    state = np._get_promotion_state()
    np._set_promotion_state("weak")
    _div.get_constant_or_variable = _scalar_with_numpy
    try:
        return _div_make_node(*a, **k)
    finally:
        _div.get_constant_or_variable = _constant_or_variable
        np._set_promotion_state(state)

_div.make_node = _div_make_node_gelu

model = onnx2tf.convert(
    input_onnx_file_path=args["onnx"],
    output_folder_path=args["work"],
    disable_model_save=True,
    non_verbose=True,
    verbosity="error",
    keep_shape_absolutely_input_names=args["keep_shape"] or None,
    replace_to_pseudo_operators=args["pseudo_ops"] or None,
    overwrite_input_shape=args["input_shapes"] or None,
)
inputs = list(model.inputs)
specs = [tf.TensorSpec(t.shape, t.dtype, name=f"input_{i}") for i, t in enumerate(inputs)]

@tf.function(input_signature=specs)
def serve(*xs):
    out = model(list(xs))
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    return {f"output_{i}": o for i, o in enumerate(outs)}

# Track the weights, not the Keras model: saving a functional model serializes its
# config, where onnx2tf keeps constants as Python lists (MiniLM: 130 s of 160 s)
module = tf.Module()
module.weights_ = list(model.weights)
module.serve = serve
tf.saved_model.save(module, args["saved_model"], signatures={"serving_default": serve})
outputs = serve.get_concrete_function().structured_outputs
info = {
    "onnx2tf": onnx2tf.__version__, "tensorflow": tf.__version__,
    "inputs": [{"name": t.name, "shape": [int(d) if d is not None else -1 for d in t.shape],
                "dtype": t.dtype.name} for t in inputs],
    "outputs": [{"shape": [int(d) if d is not None else -1 for d in outputs[f"output_{i}"].shape],
                 "dtype": outputs[f"output_{i}"].dtype.name} for i in range(len(outputs))],
}
with open(args["info"], "w") as f:
    json.dump(info, f)
"""


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent.parent


def find_python() -> Path | None:
    """The onnx2tf environment's interpreter: $EDGEPACK_ONNX2TF_PYTHON, else .venv-onnx2tf."""
    given = os.environ.get(ENV_VAR)
    if given:
        return Path(given)
    candidates = [repo_root() / ".venv-onnx2tf" / "bin" / "python",
                  Path(sys.prefix).parent / ".venv-onnx2tf" / "bin" / "python"]
    return next((p for p in candidates if p.exists()), None)


def require_python() -> Path:
    py = find_python()
    if py is None or not py.exists():
        raise UsageError(f"the onnx2tf environment is missing (ONNX sources -> TFLite need it): "
                         f"run {SETUP} (or set {ENV_VAR} to its python)")
    return py


def sample_file(python: Path) -> Path | None:
    p = python.parent.parent / "share" / "edgepack" / SAMPLE
    return p if p.is_file() else None


def run_onnx2tf(onnx_path: Path, out_dir: Path, keep_shape: Sequence[str] = (),
                pseudo_ops: Sequence[str] = ("erf",),
                input_shapes: dict[str, Sequence[int]] | None = None) -> dict[str, Any]:
    """Convert a COPY of ``onnx_path`` to a SavedModel in ``out_dir/saved_model``.

    Returns io.json's content (input names/shapes, output shapes, tool versions).
    ``pseudo_ops``: TFLite has no Erf: "erf" approximates any Erf that is not part of
    an exact GELU. ("gelu" would make onnx2tf's GELUs the tanh approximation.)
    onnx2tf's Python API matches these names in lower case only.
    """
    py = require_python()
    out_dir = Path(out_dir).resolve()
    work = out_dir / "onnx2tf-work"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    model = work / "model.onnx"
    shutil.copyfile(onnx_path, model)  # onnx2tf rewrites its input in place
    sample = sample_file(py)
    if sample is not None:
        shutil.copyfile(sample, work / SAMPLE)
    else:
        _write_sample(py, work / SAMPLE)
    saved = out_dir / "saved_model"
    if saved.exists():
        shutil.rmtree(saved)
    info_path = out_dir / "io.json"
    args = {
        "onnx": str(model), "work": str(work / "out"), "saved_model": str(saved),
        "info": str(info_path), "keep_shape": list(keep_shape),
        "pseudo_ops": [op.lower() for op in pseudo_ops],
        "input_shapes": [f"{n}:{','.join(str(int(d)) for d in s)}"
                         for n, s in (input_shapes or {}).items()],
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update({
        "PATH": f"{py.parent}{os.pathsep}{os.environ.get('PATH', '')}",  # onnxsim CLI
        "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore", "CUDA_VISIBLE_DEVICES": "-1",
        "NO_COLOR": "1", "HF_HUB_OFFLINE": "1",
    })
    try:
        proc = subprocess.run([str(py), "-c", _SCRIPT, json.dumps(args)], cwd=work, env=env,
                              capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ConversionError(f"onnx2tf timed out after {TIMEOUT_S} s") from None
    if proc.returncode != 0 or not info_path.is_file():
        raise ConversionError(f"onnx2tf {VERSION} failed: {_reason(proc)}")
    shutil.rmtree(work, ignore_errors=True)
    return json.loads(info_path.read_text())


def _write_sample(py: Path, path: Path) -> None:
    code = ("import sys, numpy as np; np.save(sys.argv[1], np.random.default_rng(0)"
            ".random((20, 128, 128, 3), dtype=np.float32))")
    subprocess.run([str(py), "-c", code, str(path)], check=True, capture_output=True)


def _reason(proc: subprocess.CompletedProcess) -> str:
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", (proc.stderr or "") + "\n" + (proc.stdout or ""))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.search(r"(Error|ERROR|error:)", ln)]
    line = (errors or lines or [f"exit code {proc.returncode}"])[-1]
    if proc.returncode < 0:
        line = f"killed by signal {-proc.returncode}: {line}"
    return line if len(line) <= 300 else line[:297] + "..."
