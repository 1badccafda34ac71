"""torch -> ONNX export and ONNX cleanup on real tiny models: numerics, opset, determinism."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from onnx import TensorProto, helper  # noqa: E402

from edgepack.convert.onnx_cleanup import cleanup_onnx  # noqa: E402
from edgepack.convert.torch_to_onnx import check_opset, export_torch  # noqa: E402
from edgepack.errors import ConversionError, UsageError  # noqa: E402
from edgepack.runners.onnxruntime import OnnxRuntimeRunner  # noqa: E402
from edgepack.signature import Signature, TensorSpec, parse_input_option  # noqa: E402
from edgepack.sources import SourceModel, load_source  # noqa: E402

NET_PY = '''
import torch
from torch import nn


class Net(nn.Module):
    """Conv + batch norm + depthwise conv + hardswish + pooling + linear: common edge ops."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = nn.functional.hardswish(self.dw(x))
        return self.fc(x.mean(dim=(2, 3)))


def build():
    torch.manual_seed(0)
    model = Net()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model
'''

INPUT = [parse_input_option("input:2x3x8x8")]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SourceModel]:
    d = tmp_path_factory.mktemp("export_src")
    (d / "net.py").write_text(NET_PY)
    py = load_source(f"{d / 'net.py'}:build", INPUT, outputs=["logits"])
    module = py.torch_model
    x = torch.zeros(2, 3, 8, 8)
    with warnings.catch_warnings():  # "torch.jit.* is deprecated"
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(module, (x,)), d / "traced.pt")
        torch.jit.save(torch.jit.script(module), d / "scripted.pt")
        batch = torch.export.Dim("batch", min=1, max=64)
        torch.export.save(torch.export.export(module, (x,), dynamic_shapes=({0: batch},)),
                          d / "dynamic.pt2")
        torch.export.save(torch.export.export(module, (x,)), d / "static.pt2")
    return {
        "module": py,
        "traced": load_source(d / "traced.pt", INPUT, outputs=["logits"]),
        "scripted": load_source(d / "scripted.pt", INPUT, outputs=["logits"]),
        "program": load_source(d / "dynamic.pt2", outputs=["logits"]),
        "program_static_inputs": load_source(d / "dynamic.pt2", INPUT, outputs=["logits"]),
        "static_program": load_source(d / "static.pt2"),
    }


def _x(batch: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, 8, 8)).astype(np.float32)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _max_err(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


KINDS = ["module", "traced", "scripted", "program", "program_static_inputs", "static_program"]


@pytest.mark.parametrize("kind", KINDS)
def test_export_matches_torch_and_is_deterministic(kind: str, sources: dict[str, SourceModel],
                                                   tmp_path: Path) -> None:
    src = sources[kind]
    a = export_torch(src, tmp_path / "a" / "model.onnx")
    b = export_torch(src, tmp_path / "b" / "model.onnx")
    assert a == tmp_path / "a" / "model.onnx"
    assert _sha(a) == _sha(b)  # byte-identical
    assert sorted(p.name for p in a.parent.iterdir()) == ["model.onnx"]  # no external data
    model = onnx.load(str(a))
    assert [(o.domain, o.version) for o in model.opset_import if o.domain == ""] == [("", 17)]
    assert [i.name for i in model.graph.input] == src.signature.input_names
    assert [o.name for o in model.graph.output] == src.signature.output_names
    data = a.read_bytes()
    for leak in (str(tmp_path).encode(), b"site-packages", b"stack_trace", b".py\""):
        assert leak not in data
    onnx.checker.check_model(model)

    x = _x()
    ort = OnnxRuntimeRunner(a)
    feeds = {src.signature.input_names[0]: x}
    want = src.runner().run(feeds)
    got = ort.run(feeds)
    assert np.abs(next(iter(want.values()))).max() > 0.05  # real signal
    assert _max_err(want, got) < 1e-4


def test_export_bytes_do_not_depend_on_the_process(sources: dict[str, SourceModel],
                                                   tmp_path: Path) -> None:
    """Another interpreter (other hash seed, other output folder) writes the same bytes."""
    here = export_torch(sources["module"], tmp_path / "here.onnx")
    code = (
        "import sys; from edgepack.sources import load_source; "
        "from edgepack.signature import parse_input_option as p; "
        "from edgepack.convert.torch_to_onnx import export_torch; "
        "s = load_source(sys.argv[1], [p('input:2x3x8x8')], outputs=['logits']); "
        "export_torch(s, sys.argv[2])"
    )
    there = tmp_path / "sub" / "there.onnx"
    env = {**os.environ, "PYTHONHASHSEED": "123",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    subprocess.run([sys.executable, "-c", code, sources["module"].location, str(there)],
                   check=True, env=env, capture_output=True)
    assert _sha(here) == _sha(there)


@pytest.mark.parametrize("kind", ["module", "program"])
def test_dynamic_batch_only_when_the_signature_says_so(kind: str, tmp_path: Path,
                                                       sources: dict[str, SourceModel]) -> None:
    src = sources[kind]
    path = export_torch(src, tmp_path / "m.onnx")
    dim0 = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    if kind == "program":  # exported with a symbolic batch: the ONNX batch is symbolic
        assert isinstance(src.signature.inputs[0].shape[0], str)
        assert dim0.dim_param and not dim0.HasField("dim_value")
        x = _x(batch=5, seed=1)
        got = OnnxRuntimeRunner(path).run({"x": x})
        assert _max_err(src.runner().run({"x": x}), got) < 1e-4
    else:
        assert dim0.dim_value == 2
    # Static --input on a dynamic program: the ONNX file takes the signature's shape.
    fixed = export_torch(sources["program_static_inputs"], tmp_path / "fixed.onnx")
    dims = onnx.load(str(fixed)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [2, 3, 8, 8]


def test_other_opsets_and_the_opset_check(sources: dict[str, SourceModel],
                                          tmp_path: Path) -> None:
    for opset in (13, 18):
        path = export_torch(sources["module"], tmp_path / f"m{opset}.onnx", opset=opset)
        assert [o.version for o in onnx.load(str(path)).opset_import if o.domain == ""] == [opset]
    # Programs go through the dynamo exporter (native opset 18), which cannot lower
    # Relu-14 to 13: the pass refuses instead of writing a file with another opset.
    with pytest.raises(ConversionError, match="from ONNX opset 18 to 13") as info:
        export_torch(sources["program"], tmp_path / "p13.onnx", opset=13)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "p13.onnx").exists()
    proto = onnx.load(str(export_torch(sources["module"], tmp_path / "m.onnx")))
    check_opset(proto, 17)
    with pytest.raises(ConversionError, match="wrote ONNX opset 17 instead of the requested 16"):
        check_opset(proto, 16)


class _Histc(torch.nn.Module):
    def forward(self, x):
        return torch.histc(x, bins=4)


def test_export_failure_is_one_quiet_line(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    sig = Signature((TensorSpec("x", (2, 2)),), (TensorSpec("y", (4,)),))
    src = SourceModel("python", "histc.py:build", "0" * 64, sig, "histc",
                      torch_model=_Histc().eval())
    capfd.readouterr()
    with pytest.raises(ConversionError) as info:
        export_torch(src, tmp_path / "h.onnx")
    msg = str(info.value)
    assert "\n" not in msg and "\x1b" not in msg
    assert msg.startswith("torch -> ONNX export failed: ") and "histc" in msg
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # the exporters' C++ and Python chatter is swallowed
    assert not (tmp_path / "h.onnx").exists()


def test_export_is_silent(sources: dict[str, SourceModel], tmp_path: Path,
                          capfd: pytest.CaptureFixture) -> None:
    capfd.readouterr()
    export_torch(sources["program"], tmp_path / "p.onnx")
    export_torch(sources["scripted"], tmp_path / "s.onnx")
    cleanup_onnx(tmp_path / "p.onnx", tmp_path / "pc.onnx")
    assert capfd.readouterr() == ("", "")


def test_onnx_source_is_not_exported(sources: dict[str, SourceModel], tmp_path: Path) -> None:
    path = export_torch(sources["module"], tmp_path / "m.onnx")
    with pytest.raises(ConversionError, match="not a torch source"):
        export_torch(load_source(path), tmp_path / "again.onnx")


# --- cleanup ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["module", "scripted", "program"])
def test_cleanup_keeps_numerics_and_names_nodes(kind: str, sources: dict[str, SourceModel],
                                                tmp_path: Path) -> None:
    raw = export_torch(sources[kind], tmp_path / "raw.onnx")
    clean = cleanup_onnx(raw, tmp_path / "clean.onnx")
    again = cleanup_onnx(raw, tmp_path / "again.onnx")
    assert _sha(clean) == _sha(again)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.onnx", "clean.onnx", "raw.onnx"]
    model = onnx.load(str(clean))
    names = [n.name for n in model.graph.node]
    assert all(names) and len(set(names)) == len(names)
    assert all(not n.doc_string and not n.metadata_props for n in model.graph.node)
    assert [o.version for o in model.opset_import if o.domain == ""] == [17]
    x = _x(seed=2)
    feeds = {sources[kind].signature.input_names[0]: x}
    before, after = OnnxRuntimeRunner(raw).run(feeds), OnnxRuntimeRunner(clean).run(feeds)
    assert _max_err(before, after) < 1e-5
    assert _max_err(sources[kind].runner().run(feeds), after) < 1e-4


def test_cleanup_fixes_shapes(sources: dict[str, SourceModel], tmp_path: Path) -> None:
    raw = export_torch(sources["program"], tmp_path / "raw.onnx")
    clean = cleanup_onnx(raw, tmp_path / "fixed.onnx", fixed_shapes={"x": [4, 3, 8, 8]})
    model = onnx.load(str(clean))
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [4, 3, 8, 8]
    assert [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim] == [4, 4]
    x = _x(batch=4, seed=3)
    assert _max_err(OnnxRuntimeRunner(raw).run({"x": x}),
                    OnnxRuntimeRunner(clean).run({"x": x})) < 1e-5
    with pytest.raises(UsageError, match="not model inputs"):
        cleanup_onnx(raw, tmp_path / "bad.onnx", fixed_shapes={"nope": [1]})
    with pytest.raises(UsageError, match="does not fit"):
        cleanup_onnx(raw, tmp_path / "bad.onnx", fixed_shapes={"x": [4, 1, 8, 8]})


def test_cleanup_folds_constants_and_drops_unused(tmp_path: Path) -> None:
    """A hand-built graph: unnamed nodes, a foldable constant branch, an unused weight."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    init = [
        helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel()),
        helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
        helper.make_tensor("unused", TensorProto.FLOAT, [64], np.ones(64, np.float32)),
    ]
    nodes = [
        helper.make_node("Mul", ["w", "two"], ["w2"]),  # constant: folded away
        helper.make_node("MatMul", ["x", "w2"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Identity", ["r"], ["y"], doc_string="/home/someone/train.py:12"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    src = tmp_path / "hand.onnx"
    onnx.save(model, str(src))
    clean = onnx.load(str(cleanup_onnx(src, tmp_path / "clean.onnx")))
    ops = [n.op_type for n in clean.graph.node]
    assert "Mul" not in ops and "MatMul" in ops
    assert "unused" not in {t.name for t in clean.graph.initializer}
    names = [n.name for n in clean.graph.node]
    assert all(names) and len(set(names)) == len(names)
    assert b"/home/someone" not in (tmp_path / "clean.onnx").read_bytes()
    x = rng.standard_normal((5, 4)).astype(np.float32)
    got = OnnxRuntimeRunner(tmp_path / "clean.onnx").run({"x": x})["y"]
    np.testing.assert_allclose(got, np.maximum(x @ (w * 2), 0), rtol=1e-6, atol=1e-6)


def test_cleanup_names_unnamed_nodes_by_op_and_index() -> None:
    from edgepack.convert.onnx_cleanup import name_nodes

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"], name="k"),
         helper.make_node("Neg", ["b"], ["c"], name="k"), helper.make_node("Abs", ["c"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    name_nodes(graph)
    assert [n.name for n in graph.node] == ["Relu_0", "k", "k_1", "Abs_3"]


def test_runner_thread_setting_and_errors(sources: dict[str, SourceModel],
                                          tmp_path: Path) -> None:
    from edgepack.errors import InputError

    path = export_torch(sources["module"], tmp_path / "m.onnx")
    one = OnnxRuntimeRunner(path)
    two = OnnxRuntimeRunner(path, threads=2, disabled_optimizers=["ConstantFolding"])
    x = _x()
    np.testing.assert_array_equal(one.run({"input": x})["logits"],
                                  two.run({"input": x})["logits"])
    with pytest.raises(InputError, match="missing inputs"):
        one.run({})
    with pytest.raises(InputError, match=r"has shape \[1, 3, 8\]"):
        one.run({"input": np.zeros((1, 3, 8), np.float32)})
    # float64 data is cast to the model's float32
    np.testing.assert_allclose(one.run({"input": x.astype(np.float64)})["logits"],
                               one.run({"input": x})["logits"])
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not onnx at all")
    with pytest.raises(ConversionError, match="onnxruntime cannot load junk.onnx") as info:
        OnnxRuntimeRunner(junk)
    assert "\n" not in str(info.value)
