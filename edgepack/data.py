"""Sample inputs: seeded random, or real data from .npz files (first axis = samples).

Files are loaded with ``allow_pickle=False``: an object array is refused, never
unpickled.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepack.errors import InputError
from edgepack.signature import Signature, TensorSpec

LABELS = "labels"  # integer class ids; ``labels_<output>`` binds them to one output


@dataclass(frozen=True)
class SampleSet:
    inputs: dict[str, np.ndarray]
    # {output: labels}; "" for plain ``labels`` (bound to labels_for or the one
    # classification output when validation knows the tasks); None: no labels
    labels: dict[str, np.ndarray] | None
    origin: str  # a file name or "seeded(seed=N)"; never an absolute path

    @property
    def count(self) -> int:
        return len(next(iter(self.inputs.values())))

    def head(self, n: int) -> SampleSet:
        labels = None if self.labels is None else {k: v[:n] for k, v in self.labels.items()}
        return SampleSet({k: v[:n] for k, v in self.inputs.items()}, labels, self.origin)


def seeded_inputs(signature: Signature, count: int, seed: int) -> SampleSet:
    """Random inputs with a fixed seed: floats ~ N(0, 1), integers in [0, 16)."""
    rng = np.random.default_rng(seed)
    batch = signature.batch
    count = max(batch, count - count % batch)
    inputs = {}
    for spec in signature.inputs:
        shape = (count, *spec.concrete_shape()[1:])
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            inputs[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            inputs[spec.name] = rng.integers(0, 2, shape).astype(dtype)
        else:
            inputs[spec.name] = rng.integers(0, 16, shape).astype(dtype)
    return SampleSet(inputs, None, f"seeded(seed={seed})")


def _check_array(path: Path, spec: TensorSpec, arr: np.ndarray, batch: int) -> None:
    name = f"{path.name}: {spec.name!r}"
    if arr.dtype.kind == "O":
        raise InputError(f"{name} is an object array; save plain numeric arrays")
    try:
        want_dtype = np.dtype(spec.dtype)
    except TypeError:
        raise InputError(f"{name}: the model's input type {spec.dtype} cannot be fed from "
                         ".npz data; give inputs of a numpy dtype") from None
    if arr.dtype != want_dtype:
        raise InputError(f"{name} is {arr.dtype}, the model takes {spec.dtype}; "
                         f"save it as {spec.dtype}")
    want = spec.shape[1:]
    if arr.ndim == 0 or arr.ndim != len(spec.shape) or any(
        isinstance(w, int) and w > 0 and w != g for w, g in zip(want, arr.shape[1:], strict=False)
    ):
        dims = "x".join(str(d) for d in want)
        raise InputError(f"{name} has shape {list(arr.shape)}; expected N x {dims} "
                         "(first axis = samples)")
    if len(arr) == 0:
        raise InputError(f"{name} has no samples")
    if len(arr) % batch:
        raise InputError(f"{name}: {len(arr)} samples do not split into batches of {batch}")
    if arr.dtype.kind in "fc":
        bad = ~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)
        if bad.any():
            first = int(np.argmax(bad))
            raise InputError(f"{name} contains NaN or Inf values (sample {first}, "
                             f"{int(bad.sum())} sample(s) in all); clean or drop them")


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:160] if lines else type(e).__name__


def _read(path: Path, role: str) -> dict[str, np.ndarray]:
    """Every array of an .npz, never unpickling: object arrays are refused."""
    if not path.is_file():
        raise InputError(f"no such {role} file: {path}")
    fix = "save the data with np.savez(path, input_name=array, ...)"
    if not zipfile.is_zipfile(path):  # a .npy, a pickle, or anything else that is not an .npz
        raise InputError(f"{path.name} is not an .npz archive; {fix}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except ValueError as e:
        if "pickle" in str(e):
            raise InputError(f"{path.name} holds object arrays (they would need unpickling); "
                             "save plain numeric arrays") from None
        raise InputError(f"{path.name} is not a readable .npz file ({_first_line(e)}); {fix}") \
            from None
    except Exception as e:  # a corrupt member: zip, zlib or .npy header errors of any kind
        raise InputError(f"{path.name} is not a readable .npz file ({_first_line(e)}); {fix}") \
            from None
    # np.load hands back members that are not .npy files as raw bytes
    raw = sorted(k for k, v in arrays.items() if not isinstance(v, np.ndarray))
    if raw:
        raise InputError(f"{path.name}: members {raw} are not .npy arrays; {fix}")
    return arrays


def load_npz(path: Path, signature: Signature, role: str) -> SampleSet:
    """Load calibration or evaluation data keyed by input name (+ optional ``labels``)."""
    arrays = _read(path, role)
    missing = [n for n in signature.input_names if n not in arrays]
    if missing:
        raise InputError(f"{role} data {path.name} lacks inputs {missing}; it has "
                         f"{sorted(arrays)} (keys must be the model's input names)")
    label_keys = {LABELS} | {f"{LABELS}_{n}" for n in signature.output_names}
    extra = sorted(set(arrays) - set(signature.input_names) - label_keys)
    if extra:
        raise InputError(f"{role} data {path.name} has arrays {extra} that are not model "
                         f"inputs {signature.input_names} (nor labels, labels_<output>)")
    batch = signature.batch
    for spec in signature.inputs:
        _check_array(path, spec, arrays[spec.name], batch)
    counts = {len(arrays[n]) for n in signature.input_names}
    if len(counts) != 1:
        raise InputError(f"{role} data {path.name}: inputs have different sample counts")
    count = counts.pop()
    labels = {}
    for key in sorted(label_keys & set(arrays)):
        if arrays[key].dtype.kind not in "iu" or arrays[key].shape != (count,):
            raise InputError(f"{path.name}: {key!r} must be integer class ids, one per sample")
        labels[key[len(LABELS) + 1:]] = arrays[key]
    inputs = {n: arrays[n] for n in signature.input_names}
    return SampleSet(inputs, labels or None, path.name)
