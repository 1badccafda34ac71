"""edgepack.yaml + command-line flags -> BuildConfig. Flags win over the file."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepack.errors import UsageError
from edgepack.profiles import check_plain, read_yaml
from edgepack.signature import DTYPES, LAYOUTS, TensorSpec

CONFIG_KEYS = {
    "model", "name", "inputs", "outputs", "calib", "eval", "task", "labels_for", "targets",
    "precisions",
    "tolerances", "out", "seed", "samples", "golden_samples", "int8",
    "allow_random_calibration", "timeout",
}
INT8_KEYS = {"method", "percentile", "max_float_nodes", "max_seconds", "max_candidates",
             "fallback"}
#: Numbers the int8 search budget reads (bool is an int in Python: refused).
INT8_VALUE_CHECKS = {
    "max_float_nodes": (lambda v: type(v) is int and v >= 0, "an integer >= 0"),
    "max_candidates": (lambda v: type(v) is int and v >= 1, "an integer >= 1"),
    "max_seconds": (lambda v: type(v) in (int, float) and 0 < v < float("inf"),
                    "a number of seconds > 0"),
    "percentile": (lambda v: type(v) in (int, float) and 0 < v <= 100,
                   "a number in (0, 100]"),
}
#: What layers kept out of static int8 become where the runtime allows (onnx-cpu).
INT8_FALLBACKS = ("float", "dynamic")
#: Output tasks: what validation measures per output (edgepack_metrics.TASKS).
TASKS = ("classification", "regression", "embedding", "sequence", "ctc", "detection",
         "segmentation")


@dataclass
class BuildConfig:
    model: str
    name: str | None = None  # bundle name prefix; default: the source's name
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[str] | None = None
    calib: Path | None = None
    eval: Path | None = None
    # None: inferred per output; one task for every output; or {output: task}
    task: str | dict[str, str] | None = None
    labels_for: str | None = None  # the output the evaluation labels belong to
    targets: list[str] = field(default_factory=lambda: ["onnx"])
    precisions: list[str] = field(default_factory=list)  # empty: each profile's default
    tolerances: dict[str, float] = field(default_factory=dict)  # overrides for every bundle
    out: Path = Path("dist")
    seed: int = 0
    samples: int = 32  # seeded random samples when no --eval data is given
    golden_samples: int = 16
    int8: dict[str, Any] = field(default_factory=dict)
    allow_random_calibration: bool = False
    timeout: float = 1800.0  # seconds per bundle (conversion + validation)


def _spec(entry: Any, where: str) -> TensorSpec:
    if not isinstance(entry, dict) or "name" not in entry or "shape" not in entry:
        raise UsageError(f"{where}: each input needs 'name' and 'shape'")
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(
        (_is_int(d) and d > 0) or (isinstance(d, str) and d) for d in shape
    ):
        raise UsageError(f"{where}: input {entry['name']!r}: shape must be a list of positive "
                         "integers or names")
    dtype = entry.get("dtype", "float32")
    if dtype not in DTYPES:
        raise UsageError(f"{where}: input {entry['name']!r}: unknown dtype {dtype!r}")
    layout = entry.get("layout")
    if layout is not None and layout not in LAYOUTS:
        raise UsageError(f"{where}: input {entry['name']!r}: unknown layout {layout!r}")
    unknown = set(entry) - {"name", "shape", "dtype", "layout"}
    if unknown:
        raise UsageError(f"{where}: input {entry['name']!r}: unknown keys {sorted(unknown)}")
    return TensorSpec(name=str(entry["name"]), shape=tuple(shape), dtype=dtype, layout=layout)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _names(v: Any) -> bool:
    return isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))


# What each setting's value must be: (test, what to write in the message).
VALUE_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model": (lambda v: isinstance(v, str) and bool(v), "a path or file.py:callable"),
    "name": (lambda v: isinstance(v, str) and bool(v), "a string"),
    "labels_for": (lambda v: isinstance(v, str) and bool(v), "an output name"),
    "outputs": (_names, "a name or a list of names"),
    "calib": (lambda v: isinstance(v, str) or v is None, "a path to an .npz file"),
    "eval": (lambda v: isinstance(v, str) or v is None, "a path to an .npz file"),
    "targets": (_names, "a target or a list of targets"),
    "precisions": (_names, "a precision or a list of precisions"),
    "tolerances": (lambda v: isinstance(v, dict), "a mapping of tolerance names to numbers"),
    "out": (lambda v: isinstance(v, str) and bool(v), "a folder path"),
    "seed": (_is_int, "an integer"),
    "samples": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "golden_samples": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "allow_random_calibration": (lambda v: isinstance(v, bool), "true or false"),
    "timeout": (lambda v: _is_number(v) and v >= 1, "a number of seconds (at least 1)"),
}


def load_config_file(path: Path) -> dict[str, Any]:
    """Read edgepack.yaml; relative paths in it are relative to its folder."""
    data = read_yaml(path, "config")
    if not isinstance(data, dict):
        raise UsageError(f"config {path}: expected a mapping of settings")
    check_plain(data, f"config {path}")
    unknown = set(data) - CONFIG_KEYS
    if unknown:
        raise UsageError(f"config {path}: unknown keys {sorted(unknown)}; "
                         f"known: {', '.join(sorted(CONFIG_KEYS))}")
    for key, (ok, what) in VALUE_CHECKS.items():
        if key in data and not ok(data[key]):
            raise UsageError(f"config {path}: {key!r} must be {what}, not {data[key]!r:.80}")
    base = path.parent
    out: dict[str, Any] = dict(data)
    if "model" in out:
        out["model"] = _relative_model(str(out["model"]), base)
    for key in ("calib", "eval"):
        if out.get(key) is not None:
            out[key] = base / str(out[key])
    if "out" in out:
        out["out"] = base / str(out["out"])
    if "inputs" in out:
        if not isinstance(out["inputs"], list):
            raise UsageError(f"config {path}: 'inputs' must be a list")
        out["inputs"] = [_spec(e, f"config {path}") for e in out["inputs"]]
    for key in ("targets", "precisions", "outputs"):
        if key in out and isinstance(out[key], str):
            out[key] = [out[key]]
    if "int8" in out:
        if not isinstance(out["int8"], dict) or set(out["int8"]) - INT8_KEYS:
            raise UsageError(f"config {path}: 'int8' takes only {sorted(INT8_KEYS)}")
        for key, (ok, what) in INT8_VALUE_CHECKS.items():
            value = out["int8"].get(key)
            if value is not None and not ok(value):
                raise UsageError(f"config {path}: int8 {key} must be {what}, not {value!r:.40}")
        if out["int8"].get("fallback", "float") not in INT8_FALLBACKS:
            raise UsageError(f"config {path}: int8 fallback must be one of "
                             f"{', '.join(INT8_FALLBACKS)}, not {out['int8']['fallback']!r:.40}")
    if "task" in out:
        out["task"] = parse_task(out["task"], f"config {path}: task")
    return out


def parse_task(value: Any, where: str = "--task") -> str | dict[str, str] | None:
    """A task for every output (``classification``), or per output: ``{prob:
    classification, boxes: regression}`` (YAML) or ``["prob=classification", ...]``
    (repeated flags). Unknown tasks are usage errors."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if isinstance(value, (list, tuple)):
        whole = [v for v in value if isinstance(v, str) and "=" not in v]
        per = [v for v in value if isinstance(v, str) and "=" in v]
        if len(whole) + len(per) != len(value) or len(whole) > 1:
            raise UsageError(f"{where}: give one task for every output, or OUTPUT=TASK pairs")
        if whole and not per:
            value = whole[0]
        else:
            if whole:
                raise UsageError(f"{where}: give one task for every output, or OUTPUT=TASK "
                                 "pairs, not both")
            value = dict(v.rsplit("=", 1) for v in per)
    tasks = [value] if isinstance(value, str) else list(value.values()) \
        if isinstance(value, dict) else None
    if tasks is None or not all(isinstance(t, str) for t in tasks):
        raise UsageError(f"{where}: expected a task or a mapping of output names to tasks")
    bad = sorted({t for t in tasks if t not in TASKS})
    if bad:
        raise UsageError(f"{where}: unknown task {', '.join(bad)}; use one of "
                         f"{', '.join(TASKS)}")
    return value


def _relative_model(model: str, base: Path) -> str:
    """``model.py:build`` and ``model.onnx`` resolve next to the config file."""
    path_part, sep, attr = model.rpartition(":")
    if sep and path_part.endswith(".py"):
        return f"{base / path_part}:{attr}"
    if not sep and "/" not in model and "." in model and (base / model).exists():
        return str(base / model)
    if not sep and (base / model).exists():
        return str(base / model)
    return model


def make_config(model: str | None, config_file: Path | None, **flags: Any) -> BuildConfig:
    """Merge the config file (if any, or MODEL given as edgepack.yaml) with flags."""
    values: dict[str, Any] = {}
    if model and model.endswith((".yaml", ".yml")) and ":" not in model:
        config_file, model = Path(model), None
    if config_file is not None:
        values.update(load_config_file(config_file))
    if model:
        values["model"] = model
    for key, value in flags.items():
        if value is None or value == [] or value == {} or value == ():
            continue
        if key == "tolerances":
            values["tolerances"] = {**values.get("tolerances", {}), **value}
        else:
            values[key] = value
    if not values.get("model"):
        raise UsageError("no model given: edgepack build MODEL (or a config with 'model:')")
    unknown = set(values) - CONFIG_KEYS
    if unknown:
        raise UsageError(f"unknown settings {sorted(unknown)}")
    for key in ("calib", "eval", "out"):
        if values.get(key) is not None:
            values[key] = Path(values[key])
    return BuildConfig(**values)
