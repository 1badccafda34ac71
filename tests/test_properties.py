"""Property tests (hypothesis) for the parsers and loaders that take user input.

Each property is the same promise the CLI makes: whatever the user hands in, the
loader either returns something valid or raises the project's one-line error
(UsageError / InputError); never another exception (which the CLI would report
as an internal error), and never an unpickled object.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgepack.backends import check_profile
from edgepack.bundle import folder as bd
from edgepack.bundle import manifest as mf
from edgepack.compare import check_tolerance_keys, parse_tolerance_option
from edgepack.config import load_config_file, make_config
from edgepack.data import load_npz
from edgepack.errors import InputError, UsageError
from edgepack.profiles import (
    PRECISIONS,
    Profile,
    _from_mapping,
    load_profile_file,
    profiles_dir,
    resolve_targets,
)
from edgepack.report import gate
from edgepack.signature import DTYPES, LAYOUTS, Signature, TensorSpec, parse_input_option

# Modest and deterministic: the suite runs on loaded CI machines, and a failure must
# reproduce. tmp_path is shared by the examples of one test; each writes its own file.
SETTINGS = settings(max_examples=80, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


def _one_line(e: Exception) -> None:
    assert str(e).strip() and "\n" not in str(e), repr(str(e))


# JSON/YAML-like values: what a parsed YAML or JSON file can hold.
SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)


# --------------------------------------------------------------------------- (a) --input

NAMES = st.text(st.characters(blacklist_characters=":", blacklist_categories=("Cs",)),
                min_size=1, max_size=12).filter(lambda s: s == s.strip() and s != "")
SPECS = st.builds(
    TensorSpec,
    name=NAMES,
    shape=st.lists(st.integers(1, 10**6), min_size=1, max_size=6).map(tuple),
    dtype=st.sampled_from(DTYPES),
    layout=st.none() | st.sampled_from(LAYOUTS),
)


def _format(spec: TensorSpec, with_dtype: bool, lower_layout: bool) -> str:
    text = f"{spec.name}:{'x'.join(map(str, spec.shape))}"
    if with_dtype or spec.layout:
        text += f":{spec.dtype}"
    if spec.layout:
        text += ":" + (spec.layout.lower() if lower_layout else spec.layout)
    return text


@SETTINGS
@given(SPECS, st.booleans(), st.booleans())
def test_input_option_round_trips(spec: TensorSpec, with_dtype: bool, lower: bool) -> None:
    if not with_dtype and not spec.layout:
        spec = TensorSpec(spec.name, spec.shape, "float32", None)  # the default dtype
    assert parse_input_option(_format(spec, with_dtype, lower)) == spec


# Text near the grammar (names, digits, x, colons, dtype words) finds more branches than
# arbitrary unicode alone; all three are drawn.
NEAR = st.lists(st.sampled_from([":", "x", "X", "0", "1", "7", "-1", "²", "١", " ", "\n",
                                 "input", "float32", "int8", "nchw", "NHWC", "1x3", ":x:", ""]),
                max_size=10).map("".join)
SHAPED = st.builds(
    lambda name, dims, rest: f"{name}:{'x'.join(dims)}{rest}",
    st.sampled_from(["input", "a b", " x", "", "ü"]),
    st.lists(st.sampled_from(["1", "3", "0", "007", "-2", "²", "١", "", " 4", "1.5", "N"]),
             min_size=1, max_size=4),
    st.sampled_from(["", ":float32", ":int8:nhwc", ":float32:NCHW:x", ":bogus", "::", ":"]),
)
ANY_INPUT = NEAR | SHAPED | st.text(max_size=40)


@SETTINGS
@given(ANY_INPUT)
def test_input_option_any_text(text: str) -> None:
    try:
        spec = parse_input_option(text)
    except UsageError as e:
        _one_line(e)
        return
    assert spec.name and ":" not in spec.name
    assert spec.shape and all(isinstance(d, int) and d > 0 for d in spec.shape)
    assert spec.dtype in DTYPES and spec.layout in (None, *LAYOUTS)


@SETTINGS
@given(ANY_INPUT)
def test_tolerance_option_any_text(text: str) -> None:
    try:
        key, value = parse_tolerance_option(text)
    except UsageError as e:
        _one_line(e)
        return
    assert isinstance(value, float) and np.isfinite(value) and key


# --------------------------------------------------------------------------- (b) profiles

SHIPPED = {p.stem: yaml.safe_load(p.read_text()) for p in sorted(profiles_dir().glob("*.yaml"))}
PROFILE_KEYS = sorted({k for d in SHIPPED.values() for k in d} | {"colour"})
OPTION_KEYS = sorted({k for d in SHIPPED.values() for k in d.get("options", {})} | {"bogus"})


@st.composite
def mutated_profiles(draw: st.DrawFn) -> dict[str, Any]:
    """A shipped profile with a few keys (top level, options, tolerances, device) changed
    to arbitrary values or removed: mostly near-valid, so the backend checks run too."""
    data = json.loads(json.dumps(draw(st.sampled_from(list(SHIPPED.values())))))  # a copy
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from(["top", "options", "tolerances", "tolerance", "device"]))
        if where == "top":
            key = draw(st.sampled_from(PROFILE_KEYS))
            target = data
        elif where == "options":
            key = draw(st.sampled_from(OPTION_KEYS))
            target = data.setdefault("options", {})
        elif where == "tolerances":
            key = draw(st.sampled_from(["fp32", "int8", "fp64", 1]))  # YAML allows int keys
            target = data["tolerances"] if isinstance(data.get("tolerances"), dict) else data
        elif where == "tolerance":  # one bound: NaN and infinities pass JSON Schema's limits
            key = draw(st.sampled_from(["cosine_min", "max_abs_err", "snr_db"]))
            tolerances = data.get("tolerances")
            per = next(iter(tolerances.values()), None) if isinstance(tolerances, dict) else None
            if isinstance(per, dict):
                per[key] = draw(st.floats() | VALUES)
            continue
        else:
            key = draw(st.sampled_from(["dla_cores", "os"]))
            target = data.setdefault("device", {})
        if not isinstance(target, dict):
            continue
        if draw(st.booleans()) and key in target:
            del target[key]
        else:
            target[key] = draw(VALUES | st.sampled_from(PRECISIONS + ("auto",))
                               | st.lists(st.sampled_from(PRECISIONS), max_size=4))
    return data


def _profile_or_usage_error(load: Any) -> Profile | None:
    try:
        profile = load()
    except UsageError as e:
        _one_line(e)
        return None
    assert isinstance(profile, Profile)
    assert profile.default_precision in profile.precisions
    assert set(profile.precisions) <= set(PRECISIONS)
    for per in profile.tolerances.values():
        assert all(np.isfinite(v) for v in per.values())
    budget = profile.latency_budget_ms
    assert budget is None or (np.isfinite(budget) and budget > 0)
    # what a build does next with it: the backend's option checks, per precision
    for precision in profile.precisions:
        try:
            check_profile(profile, precision)
        except UsageError as e:
            _one_line(e)
    return profile


@SETTINGS
@given(mutated_profiles() | st.dictionaries(st.sampled_from(PROFILE_KEYS), VALUES, max_size=8)
       | VALUES)
def test_profile_mapping(data: Any) -> None:
    _profile_or_usage_error(lambda: _from_mapping(data, "p.yaml"))


BACKEND_PROFILES = {name: d for name, d in SHIPPED.items() if d.get("backend") != "onnx"}
DIMS = st.lists(st.integers(-1, 4), max_size=4)
TRT_SHAPES = st.dictionaries(st.sampled_from(["input", "x"]), st.fixed_dictionaries(
    {"min": DIMS, "opt": DIMS, "max": DIMS}) | VALUES, max_size=2)
OPTION_VALUES = (VALUES | TRT_SHAPES | st.integers(-2, 3)
                 | st.sampled_from(["iOS16", "iOS15", "macOS13", "ALL", "linear", "float",
                                    "uint8", "pt2e", "10.3", "fp16"]))


@SETTINGS
@given(st.sampled_from(sorted(BACKEND_PROFILES)),
       st.dictionaries(st.sampled_from(OPTION_KEYS), OPTION_VALUES, max_size=4),
       st.dictionaries(st.sampled_from(["dla_cores", "os"]), OPTION_VALUES, max_size=2),
       st.sampled_from(PRECISIONS))
def test_backend_option_checks(name: str, options: dict[str, Any], device: dict[str, Any],
                               precision: str) -> None:
    """A valid profile with arbitrary ``options`` and ``device`` facts: the backend's
    check passes or raises UsageError, before any work (tflite, coreml, tensorrt)."""
    data = {**BACKEND_PROFILES[name], "options": options, "device": device}
    profile = _from_mapping(data, f"{name}.yaml")
    try:
        check_profile(profile, precision)
    except UsageError as e:
        _one_line(e)


# YAML that PyYAML parses into something odd, or refuses in odd ways.
YAML_SNIPPETS = [
    "release: 2024-13-01\n", "a: &x [*x]\n", "1: one\n", "? [a, b]\n: c\n", "!!binary aGk=\n",
    "x: !!set {a, b}\n", "name: [unclosed\n", "- a\n- b\n", "'", "\t", "x: .nan\n", "~\n",
    "%YAML 1.1\n---\na: 1\n", "a: !!python/object:os.system {}\n", "x: 0x1F\n",
    "tolerances:\n  1: {}\n", "options: &o {a: *o}\n", "latency_budget_ms: .inf\n",
]


@SETTINGS
@given(st.one_of(
    mutated_profiles().map(lambda d: yaml.safe_dump(d).encode()),
    st.lists(st.sampled_from(YAML_SNIPPETS), max_size=3).map(lambda x: "".join(x).encode()),
    st.text(max_size=60).map(str.encode),
    st.binary(max_size=60),
))
def test_profile_file(tmp_path: Path, text: bytes) -> None:
    path = tmp_path / "profile.yaml"
    path.write_bytes(text)
    _profile_or_usage_error(lambda: load_profile_file(path))


@SETTINGS
@given(st.one_of(
    st.dictionaries(st.sampled_from(["model", "targets", "precisions", "tolerances", "seed",
                                     "samples", "timeout", "inputs", "out", "int8", "task",
                                     "allow_random_calibration", "outputs", "colour"]),
                    VALUES | st.dictionaries(st.sampled_from(["cosine_min", "cos"]), VALUES),
                    max_size=5).map(lambda d: yaml.safe_dump(d).encode()),
    st.lists(st.sampled_from(YAML_SNIPPETS), max_size=3).map(lambda x: "".join(x).encode()),
    st.binary(max_size=40),
))
def test_config_file(tmp_path: Path, text: bytes) -> None:
    """edgepack.yaml goes through the same YAML reader: the same promise."""
    path = tmp_path / "edgepack.yaml"
    path.write_bytes(text)
    try:
        assert isinstance(load_config_file(path), dict)
        cfg = make_config("m.onnx", path)
        # what api.build does with the settings before it loads the model
        check_tolerance_keys(cfg.tolerances)
        resolve_targets(cfg.targets)
    except UsageError as e:
        _one_line(e)
        return
    assert isinstance(cfg.seed, int) and cfg.samples > 0 and cfg.golden_samples > 0
    assert all(isinstance(t, str) for t in cfg.targets + cfg.precisions)
    assert isinstance(cfg.out, Path) and cfg.timeout >= 1


# --------------------------------------------------------------------------- (c) manifests

SHA = "0" * 64


def _manifest() -> dict[str, Any]:
    tensor = {"name": "input", "shape": ["N", 1, 8, 8], "dtype": "float32", "layout": "NCHW"}
    return mf.new(
        name="m-onnx-cpu-fp32",
        source={"format": "onnx", "sha256": SHA, "name": "m", "parameters": 10},
        target={"name": "onnx-cpu", "backend": "onnx", "runtime": "onnxruntime"},
        precision="fp32",
        signature={"inputs": [tensor], "outputs": [dict(tensor, name="logits")]},
        artifacts=[{"path": "model.onnx", "sha256": SHA, "bytes": 3, "role": "model"}],
        quantization=None,
        validation={"status": "passed", "metrics": {}, "tolerances": {"cosine_min": 0.9},
                    "samples": 4},
        toolchain={"numpy": "2.0"},
        harness={"entry": "bench.py", "command": "python bench.py", "batch": 1},
    )


def test_manifest_template_is_valid() -> None:
    mf.check(_manifest())


PATHS = [("name",), ("source", "sha256"), ("target",), ("precision",), ("signature", "inputs"),
         ("signature", "outputs", 0, "shape"), ("artifacts",), ("artifacts", 0, "path"),
         ("artifacts", 0, "bytes"), ("artifacts", 0, "role"), ("validation", "status"),
         ("validation", "metrics"), ("validation", "failures"), ("validation", "reason"),
         ("toolchain",), ("harness", "batch"), ("schema_version",), ("extra",)]
ARTIFACT_PATHS = st.sampled_from(["model.onnx", "/etc/passwd", "../x", "a/../../b", "a/..",
                                  "dir/", "x\x00y", "\udcff", "a\n/b", ".", "", "bench.py"])


def _node(data: Any, path: tuple[Any, ...]) -> Any:
    """The container at path in data, or None when the path no longer exists."""
    for key in path:
        if isinstance(data, dict) and key in data:
            data = data[key]
        elif isinstance(data, list) and isinstance(key, int) and key < len(data):
            data = data[key]
        else:
            return None
    return data


@st.composite
def mutated_manifests(draw: st.DrawFn) -> dict[str, Any]:
    """The valid template with up to three values replaced by arbitrary ones, or removed."""
    data = _manifest()
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(PATHS))
        node, last = _node(data, path[:-1]), path[-1]
        value = draw(ARTIFACT_PATHS | VALUES if last == "path" else VALUES)
        if isinstance(node, dict):
            if draw(st.booleans()) and last in node:
                del node[last]
            else:
                node[last] = value
        elif isinstance(node, list) and isinstance(last, int) and last < len(node):
            node[last] = value
    return data


@SETTINGS
@given(st.one_of(
    mutated_manifests().map(lambda d: json.dumps(d).encode()),
    VALUES.map(lambda v: json.dumps(v).encode()),
    st.sampled_from([b"[" * 5000, b'{"a": NaN}', b"\xff\xfe", b"", b"null"]),
    st.binary(max_size=40),
))
def test_manifest_read(tmp_path: Path, raw: bytes) -> None:
    folder = tmp_path / "bundle"
    folder.mkdir(exist_ok=True)
    (folder / mf.MANIFEST).write_bytes(raw)
    (folder / "model.onnx").write_bytes(b"abc")
    try:
        manifest = mf.read(folder)
    except InputError as e:
        _one_line(e)
        return
    mf.check(manifest)
    # what validate / verify / the CI gate do next with a manifest that passed the schema
    problems = bd.verify(folder)
    assert all(isinstance(p, str) for p in problems)
    gate.record_from_manifest(manifest, folder)


# --------------------------------------------------------------------------- (d) .npz data


class Unpickled(BaseException):
    """Raised by pickle.load(s) during these tests: not an Exception, so no handler of
    edgepack's can swallow it."""


@pytest.fixture()
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise Unpickled("something unpickled user data")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)


NPZ_DTYPES = st.sampled_from(["float32", "float16", "float64", "int8", "uint8", "int64", "bool",
                              "complex64", "complex128", ">f4", "<U3", "S2", "datetime64[s]"])
SIG_SHAPES = st.sampled_from([("N", 1, 4, 4), (2, 3), ("N",), (1, 4), ("batch", "seq")])


@st.composite
def npz_cases(draw: st.DrawFn) -> tuple[Signature, dict[str, np.ndarray]]:
    shape = draw(SIG_SHAPES)
    spec = TensorSpec("input", shape, draw(st.sampled_from(["float32", "float16", "int64"])))
    sig = Signature(inputs=(spec,), outputs=(TensorSpec("out", ("N", 2)),))
    arrays: dict[str, np.ndarray] = {}
    names = draw(st.lists(st.sampled_from(["input", "labels", "other"]), max_size=3,
                          unique=True))
    for name in names:
        kind = draw(st.sampled_from(["near", "any", "object"]))
        if kind == "object":
            arrays[name] = np.array([draw(SCALARS) for _ in range(3)] + [None], dtype=object)
            continue
        if kind == "near":  # the signature's rank and dims, a chosen sample count
            dims = [draw(st.integers(0, 5))] + [d if isinstance(d, int) else draw(
                st.integers(1, 3)) for d in shape[1:]]
        else:
            dims = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4))
        dtype = np.dtype(draw(NPZ_DTYPES)) if kind == "any" or draw(st.booleans()) \
            else np.dtype(spec.dtype)
        arrays[name] = draw(hnp.arrays(dtype, tuple(dims)))
    return sig, arrays


@SETTINGS
@given(npz_cases())
def test_npz_loading(tmp_path: Path, no_unpickling: None,
                     case: tuple[Signature, dict[str, np.ndarray]]) -> None:
    sig, arrays = case
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)  # savez pickles object arrays: the loader must refuse them
    try:
        samples = load_npz(path, sig, "evaluation")
    except InputError as e:
        _one_line(e)
        return
    spec = sig.inputs[0]
    got = samples.inputs["input"]
    assert got.dtype == np.dtype(spec.dtype) and got.ndim == len(spec.shape)
    assert all(g == w for g, w in zip(got.shape[1:], spec.shape[1:], strict=True)
               if isinstance(w, int))
    assert len(got) > 0 and len(got) % sig.batch == 0
    if got.dtype.kind in "fc":
        assert np.isfinite(got).all()
    for labels in (samples.labels or {}).values():
        assert labels.dtype.kind in "iu" and labels.shape == (len(got),)


MEMBERS = st.lists(st.tuples(st.sampled_from(["input.npy", "input", "labels.npy", "../up.npy"]),
                             st.booleans(), st.binary(max_size=120)), min_size=1, max_size=3,
                   unique_by=lambda member: member[0])


@SETTINGS
@given(st.binary(max_size=200) | MEMBERS)
def test_npz_bytes(tmp_path: Path, no_unpickling: None, raw: Any) -> None:
    """Corrupt files, and zips with arbitrary members: InputError, nothing else."""
    path = tmp_path / "data.npz"
    if isinstance(raw, list):
        with zipfile.ZipFile(path, "w") as z:
            for name, npy_like, data in raw:  # .npy magic + version, then anything
                z.writestr(name, b"\x93NUMPY\x01\x00" + data if npy_like else data)
    else:
        path.write_bytes(raw)
    sig = Signature(inputs=(TensorSpec("input", ("N", 2), "float32"),))
    try:
        load_npz(path, sig, "calibration")
    except InputError as e:
        _one_line(e)


def test_npz_object_array_is_refused_not_unpickled(tmp_path: Path, no_unpickling: None) -> None:
    """The plainest case, stated once without hypothesis."""
    path = tmp_path / "data.npz"
    np.savez(path, input=np.array([{"evil": 1}, None], dtype=object))
    sig = Signature(inputs=(TensorSpec("input", ("N",), "float32"),))
    with pytest.raises(InputError, match="object arrays"):
        load_npz(path, sig, "evaluation")


def test_profiles_shipped_pass_their_checks() -> None:
    """Every shipped profile loads and passes its backend's check for each precision it
    lists and each one --precision auto would try."""
    for path in sorted(profiles_dir().glob("*.yaml")):
        profile = load_profile_file(path)
        for precision in {*profile.precisions, *profile.auto_order}:
            check_profile(profile, precision)

