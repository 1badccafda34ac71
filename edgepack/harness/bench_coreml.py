"""Benchmark harness of an edgepack Core ML bundle (copied in as ``bench.py``).

    python bench.py [--runs N] [--warmup N] [--json FILE] [--compute-units UNITS]

UNITS: all (default: the bundle's choice), cpu, cpu-gpu, cpu-ne (CPU + Neural
Engine). Runs on macOS with numpy and coremltools installed (Core ML itself is
part of macOS). Checks the golden outputs in reference/ against the bundle's
tolerances, then times the model. Exit 0 golden passed, 1 golden failed,
2 runtime missing (any OS but macOS) or model unloadable.
"""

from __future__ import annotations

import os
import platform
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # the sibling edgepack_harness.py, whatever the cwd

try:
    import edgepack_harness as harness
    import numpy as np
except ImportError as e:  # numpy missing, or the bundle lost a file
    print(f"error: {e}: pip install -r requirements.txt", file=sys.stderr)
    sys.exit(2)

UNITS = {"all": "ALL", "cpu": "CPU_ONLY", "cpu-gpu": "CPU_AND_GPU", "cpu-ne": "CPU_AND_NE"}
UNITS_HELP = ("  --compute-units {all,cpu,cpu-gpu,cpu-ne}\n"
              "                        Core ML compute units (default: the bundle's, "
              "harness.runtime_options.compute_units)")


def split_units(argv: list) -> tuple:
    """Take ``--compute-units X`` out of argv; the shared harness parses the rest."""
    units, rest, i = None, [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--compute-units" or arg.startswith("--compute-units="):
            if "=" in arg:
                value = arg.split("=", 1)[1]
            elif i + 1 < len(argv):
                value, i = argv[i + 1], i + 1
            else:
                value = ""
            if value not in UNITS:
                print(f"bench.py: error: --compute-units must be one of {', '.join(UNITS)}",
                      file=sys.stderr)
                sys.exit(2)
            units = UNITS[value]
        else:
            rest.append(arg)
        i += 1
    return units, rest


def package_root(path: str) -> str:
    """The .mlpackage folder: the manifest lists its files, the first one inside it."""
    parts = path.replace(os.sep, "/").split("/")
    for i, part in enumerate(parts):
        if part.endswith(".mlpackage"):
            return os.sep.join(parts[: i + 1]) or path
    return path


def make_open_runtime(units):
    def open_runtime(model_path: str, manifest: dict, threads) -> harness.Runtime:
        if sys.platform != "darwin":
            raise harness.HarnessError(
                f"Core ML runs only on macOS/iOS, not {platform.system() or sys.platform}: "
                "copy this bundle to a Mac and run python bench.py there")
        try:
            import coremltools as ct
        except Exception as e:  # ImportError, or a broken native library
            raise harness.HarnessError(f"coremltools cannot be imported ({harness.one_line(e)})"
                                       ": pip install coremltools") from e
        options = (manifest.get("harness") or {}).get("runtime_options") or {}
        model_path = package_root(model_path)
        unit = units or options.get("compute_units") or "ALL"
        try:
            model = ct.models.MLModel(model_path, compute_units=getattr(ct.ComputeUnit, unit))
        except Exception as e:
            raise harness.HarnessError(
                f"cannot load {os.path.basename(model_path)} with coremltools "
                f"{ct.__version__}: {harness.one_line(e)}") from e
        names = options.get("feature_names") or {}
        sig = manifest.get("signature") or {}
        ins = [(t["name"], names.get(t["name"], t["name"]), t.get("dtype", "float32"))
               for t in sig.get("inputs", [])]
        outs = [(t["name"], names.get(t["name"], t["name"])) for t in sig.get("outputs", [])]
        predict = model.predict

        def to_coreml(feeds: dict) -> dict:
            return {cm: np.ascontiguousarray(feeds[name], dtype=dtype)
                    for name, cm, dtype in ins}

        def run(feeds: dict) -> dict:
            out = predict(to_coreml(feeds))
            return {name: np.asarray(out[cm]) for name, cm in outs}

        def prepare(feeds: dict):
            ready = to_coreml(feeds)
            return lambda: predict(ready)

        mac = platform.mac_ver()[0]
        detail = f"compute_units={unit}" + (f", macOS {mac}" if mac else "")
        if threads:
            detail += ", --threads ignored (Core ML schedules its own)"
        return harness.Runtime("coreml", f"coremltools {ct.__version__}", run, prepare,
                               detail=detail)

    return open_runtime


def main(argv: list) -> int:
    if "-h" in argv or "--help" in argv:
        print("Core ML option (besides the ones below):\n" + UNITS_HELP + "\n")
    units, rest = split_units(argv)
    return harness.main(make_open_runtime(units), HERE, argv=rest, runs=100, warmup=10)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
