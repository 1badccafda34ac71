"""Every bad input of issue 6, end to end through the CLI, as one table.

Each row runs ``edgepack build`` in a subprocess and must exit with its
documented code (2 usage/input, 3 conversion), print exactly one line on
stderr that names the problem, show no traceback and leave no bundle folder
(nor the ``.partial`` staging folder) behind.

Most rows use a tiny ONNX model with the digits model's signature (input
``input`` N x 1 x 8 x 8 float32, output ``logits`` N x 10), built here with
onnx.helper: it loads in well under a second. Python-entry rows write a small
entry file, or name a missing function of the bundled digits model
(sample_models/digits/model.py); the target is onnx unless a row is about another.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import DIGITS, ROOT, run_cli

from edgepack.bundle.folder import partial_dir

onnx = pytest.importorskip("onnx")


def _tiny_onnx(path: Path, checked: bool = True) -> Path:
    """input [N, 1, 8, 8] -> Flatten -> MatMul -> logits [N, 10]."""
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(0).standard_normal((64, 10)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]),
         helper.make_node("MatMul", ["flat" if checked else "nowhere", "w"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if checked:
        onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_onnx(tmp_path_factory.mktemp("tiny") / "tiny.onnx")


GOOD = np.random.default_rng(1).random((4, 1, 8, 8), dtype=np.float32)


@dataclass
class Kit:
    """Makes the bad files of one row in its own folder."""

    tmp: Path
    onnx: Path  # the tiny model, valid

    def file(self, name: str, data: bytes) -> str:
        path = self.tmp / name
        path.write_bytes(data)
        return str(path)

    def random(self, name: str) -> str:
        return self.file(name, np.random.default_rng(0).bytes(4096))

    def npz(self, name: str, **arrays: Any) -> str:
        path = self.tmp / name
        np.savez(path, **arrays)  # object arrays are pickled into the file by savez
        return str(path)

    def npy(self, name: str, array: np.ndarray) -> str:
        """A plain .npy file under the given name (np.save would add .npy)."""
        path = self.tmp / name
        with open(path, "wb") as f:
            np.save(f, array)
        return str(path)

    def text(self, name: str, text: str) -> str:
        path = self.tmp / name
        path.write_text(text)
        return str(path)

    def profile(self, base: str, name: str, **changes: Any) -> str:
        """A copy of a shipped profile (no aliases) with top-level or options changes."""
        data = yaml.safe_load((ROOT / "targets" / f"{base}.yaml").read_text())
        data.update(name=name, aliases=[])
        for key, value in changes.items():
            if key.startswith("options_"):
                data.setdefault("options", {})[key.removeprefix("options_")] = value
            else:
                data[key] = value
        return self.text(f"{name}.yaml", yaml.safe_dump(data))

    def read_only(self, name: str) -> Path:
        path = self.tmp / name
        path.mkdir()
        path.chmod(0o500)
        return path

    def entry(self, code: str, attr: str = "build") -> str:
        return f"{self.text('entry.py', code)}:{attr}"

    def config(self, **settings: Any) -> str:
        return self.text("edgepack.yaml", yaml.safe_dump({"model": str(self.onnx), **settings}))


@dataclass(frozen=True)
class Row:
    args: Callable[[Kit], list[str]]  # what follows ``edgepack build``
    code: int
    says: tuple[str, ...]  # pieces of the one line: what was wrong, what to do


def row(args: Callable[[Kit], list[str]], code: int, *says: str, id: str,
        marks: Any = ()) -> Any:
    return pytest.param(Row(args, code, says), id=id, marks=marks)


def onnx_with(*extra: str) -> Callable[[Kit], list[str]]:
    return lambda k: [str(k.onnx), "--target", "onnx", *extra]


NAN = np.where(np.arange(GOOD.size).reshape(GOOD.shape) == 5, np.nan, GOOD).astype(np.float32)
INF = np.where(np.arange(GOOD.size).reshape(GOOD.shape) == 5, np.inf, GOOD).astype(np.float32)
OBJECTS = np.array([GOOD[0], "text", None, 3], dtype=object)
DIGITS_PY = str(DIGITS / "model.py")
BUGGY_FORWARD = """import torch


class Buggy(torch.nn.Module):
    def forward(self, x):
        sizes = []
        return x * sizes[0]


def build():
    return Buggy()
"""


def _data_rows(flag: str, role: str, all_kinds: bool) -> list[Any]:
    """Bad .npz files given as --eval or as --calib (both go through one loader: the
    issue's five kinds for both, the other kinds for --eval only)."""
    f = flag.lstrip("-")
    rows = [
        row(lambda k: onnx_with(flag, k.npz("d.npz", images=GOOD))(k), 2,
            f"{role} data d.npz lacks inputs ['input']", "keys must be the model's input names",
            id=f"{f}-npz-missing-input"),
        row(lambda k: onnx_with(flag, k.npz("d.npz", input=GOOD[:, :, :4]))(k), 2,
            "'input' has shape [4, 1, 4, 8]; expected N x 1x8x8", id=f"{f}-npz-wrong-shape"),
        row(lambda k: onnx_with(flag, k.npz("d.npz", input=GOOD.astype(np.float64)))(k), 2,
            "'input' is float64, the model takes float32", "save it as float32",
            id=f"{f}-npz-wrong-dtype"),
        row(lambda k: onnx_with(flag, k.npz("d.npz", input=NAN))(k), 2,
            "'input' contains NaN or Inf values (sample 0", "clean or drop them",
            id=f"{f}-npz-nan"),
        row(lambda k: onnx_with(flag, k.npz("d.npz", input=INF))(k), 2,
            "'input' contains NaN or Inf values (sample 0", id=f"{f}-npz-inf"),
        row(lambda k: onnx_with(flag, k.npz("d.npz", input=OBJECTS))(k), 2,
            "d.npz holds object arrays", "save plain numeric arrays", id=f"{f}-npz-object"),
    ]
    if not all_kinds:
        return rows
    return rows + [
        row(lambda k: onnx_with(flag, k.npz("d.npz", input=GOOD[:, 0]))(k), 2,
            "'input' has shape [4, 8, 8]; expected N x 1x8x8", id=f"{f}-npz-wrong-rank"),
        row(lambda k: onnx_with(flag, k.npz("d.npz", input=GOOD.astype(np.complex64)))(k), 2,
            "'input' is complex64, the model takes float32", id=f"{f}-npz-complex"),
        row(lambda k: onnx_with(flag, k.random("d.npz"))(k), 2,
            "d.npz is not an .npz archive", "np.savez", id=f"{f}-npz-random-bytes"),
        row(lambda k: onnx_with(flag, k.npy("d.npz", GOOD))(k), 2,
            "d.npz is not an .npz archive", id=f"{f}-npy-not-npz"),
        row(lambda k: onnx_with(flag, str(k.tmp / "none.npz"))(k), 2,
            f"no such {role} file", id=f"{f}-npz-missing-file"),
        row(lambda k: onnx_with(flag, k.npz("d.npz", input=GOOD, labels=np.zeros(4)))(k), 2,
            "'labels' must be integer class ids, one per sample", id=f"{f}-float-labels"),
    ]


ROWS = [
    # --- the model path
    row(lambda k: [str(k.tmp / "nope.onnx"), "--target", "onnx"], 2,
        "no such file", "check the path", id="missing-path"),
    row(lambda k: [], 2, "no model given", id="no-model"),
    row(lambda k: [k.file("empty.onnx", b""), "--target", "onnx"], 2,
        "is empty (0 bytes)", "re-export", id="empty-file"),
    row(lambda k: [k.file("empty.pt", b""), "--target", "onnx"], 2,
        "is empty (0 bytes)", id="empty-file-pt"),
    row(lambda k: [k.random("m.onnx"), "--target", "onnx"], 2,
        "m.onnx is not a valid ONNX model", "re-export", id="random-onnx"),
    row(lambda k: [k.random("m.pt"), "--target", "onnx"], 2,
        "m.pt is not a TorchScript file", "torch.jit.save", id="random-pt"),
    row(lambda k: [k.random("m.pth"), "--target", "onnx"], 2,
        "m.pth is not a TorchScript file", id="random-pth"),
    row(lambda k: [k.random("m.pt2"), "--target", "onnx"], 2,
        "m.pt2 is not a torch.export program", "torch.export.save", id="random-pt2"),
    row(lambda k: [k.random("m.keras"), "--target", "onnx"], 2,
        "m.keras is not a Keras model file", "model.save", id="random-keras"),
    row(lambda k: [k.random("m.h5"), "--target", "onnx"], 2,
        "m.h5 is not a Keras model file", id="random-h5"),
    row(lambda k: [k.random("m.tflite"), "--target", "onnx"], 2,
        "unsupported file type '.tflite'", "edgepack loads", id="unsupported-extension"),
    row(lambda k: [k.file("cut.onnx", k.onnx.read_bytes()[:700]), "--target", "onnx"], 2,
        "cut.onnx is not a valid ONNX model", id="truncated-onnx"),
    row(lambda k: [str(_tiny_onnx(k.tmp / "unchecked.onnx", checked=False)), "--target", "onnx"],
        2, "unchecked.onnx is not a valid ONNX model", "nowhere", id="onnx-fails-checker"),
    # --- Python entries (torch)
    row(lambda k: [k.entry("raise RuntimeError('no GPU here')\n"), "--target", "onnx"], 2,
        "importing", "raised RuntimeError: no GPU here", "rerun with --debug for the traceback",
        id="entry-raises-on-import"),
    row(lambda k: [k.entry("def build():\n    raise ValueError('weights missing')\n"),
                   "--target", "onnx", "--input", "input:1x1x8x8"], 2,
        "calling build() raised ValueError: weights missing", id="entry-raises"),
    row(lambda k: [k.entry("def build():\n    return 42\n"), "--target", "onnx",
                   "--input", "input:1x1x8x8"], 2,
        "build() returned an object of type int, not a torch.nn.Module", "return the model object",
        id="entry-returns-non-module"),
    # a bug in the model's forward: a bare IndexError names its file, line and function
    row(lambda k: [k.entry(BUGGY_FORWARD), "--target", "onnx", "--input", "x:1x4"], 2,
        "does not fit the model: list index out of range",
        "(IndexError in entry.py:7 forward)", id="entry-forward-bug-located"),
    row(lambda k: [k.entry("build = 42\n"), "--target", "onnx"], 2,
        "build is of type int, not a callable", id="entry-not-callable"),
    row(lambda k: [f"{k.tmp}/gone.py:build", "--target", "onnx"], 2,
        "no such file", id="entry-file-missing"),
    row(lambda k: ["no_such_pkg_edgepack.models:build", "--target", "onnx"], 2,
        "no module named 'no_such_pkg_edgepack.models'", "install it", id="entry-module-missing"),
    row(lambda k: [f"{DIGITS_PY}:nope", "--target", "onnx", "--input", "input:1x1x8x8"], 2,
        "has no attribute 'nope'; name a function or class it defines",
        id="entry-function-missing"),
    # --- --input
    row(onnx_with("--input", "input:1xAx8x8"), 2,
        "shape dims must be positive integers separated by 'x'", id="input-malformed-shape"),
    row(onnx_with("--input", "input:1x0x8x8"), 2,
        "shape dims must be positive integers", id="input-zero-dim"),
    row(onnx_with("--input", "input"), 2, "expected NAME:SHAPE[:DTYPE]", id="input-no-shape"),
    row(onnx_with("--input", "input:1x1x8x8:float33"), 2,
        "unknown dtype 'float33'", id="input-unknown-dtype"),
    row(onnx_with("--input", "input:1x64"), 2,
        "--input input: rank 2 does not fit the model's input of shape ['N', 1, 8, 8]",
        "give 4 dims, e.g. --input input:1x1x8x8", id="input-wrong-rank"),
    row(onnx_with("--input", "input:1x1x9x9"), 2,
        "--input input: shape [1, 1, 9, 9] does not fit", "e.g. --input input:1x1x8x8",
        id="input-wrong-dims"),
    row(onnx_with("--input", "image:1x1x8x8"), 2,
        "--input names ['image'] are not model inputs; inputs: ['input']",
        id="input-unknown-name"),
    # --- evaluation and calibration data
    *_data_rows("--eval", "evaluation", all_kinds=True),
    *_data_rows("--calib", "calibration", all_kinds=False),
    # --- targets, precisions, profiles
    row(onnx_with("--target", "nowhere"), 2, "unknown target 'nowhere'", "use one of",
        id="unknown-target"),
    row(onnx_with("--precision", "int4"), 2, "unknown precision 'int4'", "use one of",
        id="unknown-precision"),
    row(lambda k: [str(k.onnx), "--target", "onnx,nowhere"], 2, "unknown target 'nowhere'",
        id="unknown-target-in-list"),
    row(onnx_with("--precision", "fp32,int4"), 2, "unknown precision 'int4'",
        id="unknown-precision-in-list"),
    row(lambda k: [str(k.onnx), "--target", "ios", "--precision", "int8-dynamic"], 2,
        "target ios does not support int8-dynamic; it supports fp32, fp16, int8",
        id="precision-not-supported"),
    row(lambda k: [str(k.onnx), "--target", str(k.tmp / "none.yaml")], 2,
        "no such profile file", id="profile-missing"),
    row(lambda k: [str(k.onnx), "--target", k.profile("onnx-cpu", "mine", colour="red")], 2,
        "profile", "Additional properties are not allowed ('colour' was unexpected)",
        "fix the profile (schema: edgepack/schemas/profile.schema.json)",
        id="profile-unknown-key"),
    row(lambda k: [str(k.onnx), "--target", k.profile("onnx-cpu", "mine", precisions=["fp64"])],
        2, "precisions/0: 'fp64' is not one of", id="profile-bad-precision"),
    row(lambda k: [str(k.onnx), "--target", k.profile("onnx-cpu", "mine", opset="17")], 2,
        "opset: '17' is not of type 'integer'", id="profile-bad-value"),
    row(lambda k: [str(k.onnx), "--target",
                   k.profile("onnx-cpu", "mine", tolerances={"fp32": {"cosine_min": 2}})], 2,
        "tolerances/fp32/cosine_min: 2 is greater than the maximum of 1",
        id="profile-bad-tolerance"),
    row(lambda k: [str(k.onnx), "--target", k.profile(
        "onnx-cpu", "mine", tolerances={"fp32": {"cosine_min": float("nan")}})], 2,
        "tolerances/fp32/cosine_min", "finite", id="profile-nan-tolerance"),
    row(lambda k: [str(k.onnx), "--target", k.profile("onnx-cpu", "mine", backend="nowhere")],
        2, "unknown backend 'nowhere'", id="profile-unknown-backend"),
    row(lambda k: [str(k.onnx), "--target", k.profile("onnx-cpu", "mine", backend="")],
        2, "unknown backend ''", id="profile-empty-backend"),
    row(lambda k: [str(k.onnx), "--target", k.text("p.yaml", "name: [unclosed\n")], 2,
        "is not valid YAML (expected ',' or ']', but got '<stream end>' at line 2, column 1)",
        "fix the file", id="profile-not-yaml"),
    row(lambda k: [str(k.onnx), "--target", k.text("p.yaml", "name: mine\nrelease: 2024-13-01\n")],
        2, "is not valid YAML", id="profile-bad-date"),
    row(lambda k: [str(k.onnx), "--target", k.random("p.yaml")], 2,
        "is not valid YAML", id="profile-binary"),
    row(lambda k: [str(k.onnx), "--target", k.text("p.yaml", "- a list\n")], 2,
        "expected a mapping", id="profile-not-mapping"),
    row(lambda k: [str(k.onnx), "--target", k.profile("android-arm64", "mine", options_bogus=1)],
        2, "profile mine: options: unknown keys ['bogus']; tflite takes",
        id="tflite-unknown-option"),
    row(lambda k: [str(k.onnx), "--target",
                   k.profile("android-arm64", "mine", options_int8_io="int4")],
        2, "options.int8_io must be one of float, int8, uint8, not 'int4'", id="tflite-bad-option"),
    row(lambda k: [str(k.onnx), "--target", k.profile("ios", "mine", options_bogus=1)], 2,
        "profile mine: options: unknown keys ['bogus']", id="coreml-unknown-option"),
    row(lambda k: [str(k.onnx), "--target",
                   k.profile("ios", "mine", options_compute_units="NEURAL_ONLY")], 2,
        "compute_units must be one of ALL, CPU_ONLY, CPU_AND_GPU, CPU_AND_NE",
        id="coreml-bad-option"),
    row(lambda k: [str(k.onnx), "--target",
                   k.profile("ios", "mine", options_minimum_deployment_target="iOS15"),
                   "--precision", "int8"], 2,
        "compressed weights need minimum_deployment_target iOS16", id="coreml-int8-on-ios15"),
    row(lambda k: [str(k.onnx), "--target",
                   k.profile("ios", "mine", precisions=["fp32", "int8-dynamic"],
                             default_precision="fp32"),
                   "--precision", "int8-dynamic"], 2,
        "the coreml backend does not build 'int8-dynamic'", id="coreml-unsupported-precision"),
    row(lambda k: [str(k.onnx), "--target",
                   k.profile("jetson-orin-nano", "mine", options_bogus=1)], 2,
        "profile mine: options: unknown keys ['bogus']", id="jetson-unknown-option"),
    row(lambda k: [str(k.onnx), "--target",
                   k.profile("jetson-orin-nano", "mine", precisions=["fp32", "int8-dynamic"],
                             default_precision="fp32"),
                   "--precision", "int8-dynamic"], 2,
        "the tensorrt backend does not build 'int8-dynamic'; it builds fp32, fp16, int8",
        id="jetson-unsupported-precision"),
    # --- tolerances (flag and edgepack.yaml)
    row(onnx_with("--tolerance", "cosine=0.9"), 2, "unknown tolerance cosine", "valid:",
        id="tolerance-unknown-key"),
    row(onnx_with("--tolerance", "cosine_min=high"), 2, "'high' is not a number",
        id="tolerance-not-a-number"),
    row(onnx_with("--tolerance", "cosine_min"), 2, "expected KEY=VALUE", id="tolerance-no-value"),
    row(onnx_with("--tolerance", "cosine_min=nan"), 2, "must be a finite number",
        id="tolerance-nan"),
    row(lambda k: [k.config(tolerances={"cosine": 0.9})], 2, "unknown tolerance cosine",
        id="config-tolerance-unknown-key"),
    row(lambda k: [k.config(tolerances=[1, "a"])], 2,
        "'tolerances' must be a mapping of tolerance names to numbers", id="config-tolerance-list"),
    row(lambda k: [k.config(colour="red")], 2, "unknown keys ['colour']", id="config-unknown-key"),
    row(lambda k: [k.config(seed="abc")], 2, "'seed' must be an integer", id="config-bad-value"),
    row(lambda k: [k.config(targets=5)], 2, "'targets' must be", id="config-bad-targets"),
    row(lambda k: [k.config(int8={"fallback": "fast"})], 2,
        "int8 fallback must be one of float, dynamic, not 'fast'", id="config-int8-fallback"),
    row(lambda k: [k.config(int8={"max_candidates": 0})], 2,
        "int8 max_candidates must be an integer >= 1, not 0", id="config-int8-candidates"),
    row(lambda k: [k.config(int8={"max_seconds": "soon"})], 2,
        "int8 max_seconds must be a number of seconds > 0, not 'soon'",
        id="config-int8-seconds"),
    # --- where the bundles go
    row(lambda k: onnx_with("--out", k.file("taken", b"a file"))(k), 2,
        "cannot write to --out", "choose a writable folder", id="out-is-a-file"),
    row(lambda k: onnx_with("--out", k.file("taken", b"a file") + "/dist")(k), 2,
        "cannot write to --out", id="out-under-a-file"),
    row(lambda k: onnx_with("--out", str(k.read_only("locked") / "dist"))(k), 2,
        "cannot write to --out", "Permission denied", id="out-read-only",
        marks=pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")),
    # sysfs refuses new folders even to root: the unwritable case that runs everywhere
    row(lambda k: onnx_with("--out", "/sys/edgepack-dist")(k), 2,
        "cannot write to --out", id="out-not-permitted",
        marks=pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux sysfs")),
]


@pytest.mark.parametrize("case", ROWS)
def test_bad_input(case: Row, tiny: Path, tmp_path: Path) -> None:
    kit = Kit(tmp_path, tiny)
    out = tmp_path / "dist"
    args = case.args(kit)
    if "--out" not in args:
        args += ["--out", str(out)]
    else:
        out = Path(args[args.index("--out") + 1])
    proc = run_cli("build", *args, cwd=tmp_path, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == case.code, proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len(lines) == 1 and lines[0].strip(), proc.stderr
    line = lines[0]
    assert line.startswith("error: "), line
    for piece in case.says:
        assert piece in line, line
    # no bundle, no staging folder, nothing half-written
    assert not (out.is_dir() and [p for p in out.iterdir() if p.is_dir()]), list(out.iterdir())
    assert not partial_dir(out).exists()
    assert not (out.is_dir() and (out / "summary.json").exists())
