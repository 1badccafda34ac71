"""Benchmark harness of an edgepack ONNX Runtime bundle (copied in as ``bench.py``).

    python bench.py [--runs N] [--warmup N] [--threads T] [--json FILE]

Checks the golden outputs in reference/ against the bundle's tolerances, then
times the model. Needs only numpy and onnxruntime. Exit 0 golden passed,
1 golden failed, 2 runtime missing or model unloadable.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # the sibling edgepack_harness.py, whatever the cwd

try:
    import edgepack_harness as harness
except ImportError as e:  # numpy missing, or the bundle lost a file
    print(f"error: {e}: pip install -r requirements.txt", file=sys.stderr)
    sys.exit(2)


def open_runtime(model_path: str, manifest: dict, threads: int | None) -> harness.Runtime:
    try:
        import onnxruntime as ort
    except Exception as e:  # ImportError, or a broken native library
        raise harness.HarnessError(f"onnxruntime cannot be imported ({harness.one_line(e)}): "
                                   "pip install onnxruntime") from e

    options = (manifest.get("harness") or {}).get("runtime_options") or {}
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    available = ort.get_available_providers()
    # CPU first: the golden check must reproduce the host's numbers.
    wanted = options.get("providers") or ["CPUExecutionProvider"]
    providers = [p for p in wanted if p in available] or available
    try:
        session = ort.InferenceSession(
            model_path, sess_options=so, providers=providers,
            disabled_optimizers=list(options.get("disabled_optimizers") or []))
    except Exception as e:
        raise harness.HarnessError(f"cannot load {os.path.basename(model_path)} with "
                                   f"onnxruntime {ort.__version__}: {harness.one_line(e)}") from e

    names = [o.name for o in session.get_outputs()]
    session_run = session.run

    def run(feeds: dict) -> dict:
        return dict(zip(names, session_run(names, feeds)))  # noqa: B905 (py3.8 devices)

    def prepare(feeds: dict):
        return lambda: session_run(names, feeds)

    return harness.Runtime("onnxruntime", ort.__version__, run, prepare,
                           detail=",".join(session.get_providers()))


if __name__ == "__main__":
    sys.exit(harness.main(open_runtime, HERE, runs=200, warmup=20))
