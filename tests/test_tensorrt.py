"""Jetson / TensorRT target: TensorRT-ready ONNX, explicit int8 Q/DQ, the device scripts.

TensorRT cannot run here, so the engine side is checked structurally (what
TensorRT's ONNX parser and explicit quantization require) and the harness's
"no TensorRT" path is run for real; numbers come from the host proxy.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import py_compile
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from conftest import DIGITS, ROOT, run_cli
from onnx import numpy_helper

from edgepack.bundle import manifest as mf
from edgepack.profiles import builtin_profiles, resolve_targets
from edgepack.quantize.tensorrt_qdq import (
    check_tensorrt_qdq,
    float_weighted_nodes,
    weight_axis,
)

PRECISIONS = ["fp32", "fp16", "int8"]
JETSONS = {"jetson-orin-nano": "10.3", "jetson-orin-nx": "10.3", "jetson-agx-orin": "10.3",
           "jetson-xavier-nx": "8.5"}
REASON = "TensorRT engines are built and checked on the Jetson"


def _bundle(out: Path, precision: str, target: str = "jetson-orin-nano",
            model: str = "digits") -> Path:
    return out / f"{model}-{target}-{precision}"


@pytest.fixture(scope="module")
def jetson_dist(tmp_path_factory):
    out = tmp_path_factory.mktemp("jetson") / "dist"
    proc = run_cli("build", DIGITS / "edgepack.yaml", "--target", "jetson", "--precision", "all",
                   "--out", out, "--json")
    return out, proc


# --------------------------------------------------------------------------- structure


def _inits(model) -> dict:
    return {t.name: t for t in model.graph.initializer}


def _producers(model) -> dict:
    return {o: n for n in model.graph.node for o in n.output}


def assert_tensorrt_int8(model, float_nodes=()) -> dict:
    """The structural rules of issue 8, checked independently of trt_qdq's own checker."""
    inits, producer = _inits(model), _producers(model)
    float_nodes = set(float_nodes) | set(float_weighted_nodes(model))
    assert check_tensorrt_qdq(model, float_nodes) == []
    counts = {"Q": 0, "DQ": 0, "weights": 0, "activations": 0}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            counts["Q" if node.op_type == "QuantizeLinear" else "DQ"] += 1
            assert len(node.input) == 3, node.name  # TensorRT 8.5 wants the zero point
            zp = numpy_helper.to_array(inits[node.input[2]])
            assert zp.dtype == np.int8 and not zp.any(), node.name  # zero points all 0
            assert np.all(numpy_helper.to_array(inits[node.input[1]]) > 0), node.name
            if node.op_type == "DequantizeLinear" and node.input[0] in inits:
                q = numpy_helper.to_array(inits[node.input[0]])
                assert q.dtype == np.int8 and q.min() >= -127, node.name  # no int32 biases
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        if node.name in float_nodes:
            continue
        weight_dq = producer.get(node.input[1])
        act_b = weight_dq is None or weight_dq.input[0] not in inits
        for i in ((0, 1) if act_b else (0,)):  # every activation input fed by DQ(Q(x))
            dq = producer[node.input[i]]
            assert dq.op_type == "DequantizeLinear", (node.name, i)
            assert producer[dq.input[0]].op_type == "QuantizeLinear", (node.name, i)
            assert numpy_helper.to_array(inits[dq.input[1]]).size == 1  # per-tensor
            counts["activations"] += 1
        if act_b:
            continue
        q = numpy_helper.to_array(inits[weight_dq.input[0]])
        scale = numpy_helper.to_array(inits[weight_dq.input[1]])
        axis = weight_axis(node, q.ndim)
        attr = next(a.i for a in weight_dq.attribute if a.name == "axis") % q.ndim
        assert attr == axis and scale.shape == (q.shape[axis],), node.name  # per output channel
        counts["weights"] += 1
    return counts


def _opset(model) -> int:
    return max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


# --------------------------------------------------------------------------- profiles


def test_jetson_profiles():
    profiles = builtin_profiles()
    assert resolve_targets(["jetson"])[0].name == "jetson-orin-nano"
    for name, trt in JETSONS.items():
        p = profiles[name]
        assert p.backend == "tensorrt" and p.runtime["name"] == "tensorrt"
        assert p.default_precision == "fp16" and set(p.precisions) == set(PRECISIONS)
        assert p.options["tensorrt"] == trt and p.static_shapes and p.opset == 17
        assert p.int8["format"] == "qdq-s8s8"
        assert {"dla_cores", "memory_gb", "compute_capability"} <= set(p.device)
        for precision in PRECISIONS:
            assert p.tolerances_for(precision)["cosine_min"] > 0.9
    assert profiles["jetson-orin-nano"].device["dla_cores"] == 0
    assert profiles["jetson-agx-orin"].device["dla_cores"] == 2
    assert profiles["jetson-xavier-nx"].device["compute_capability"] == "7.2"
    assert profiles["jetson-orin-nx"].device["compute_capability"] == "8.7"


def test_trtexec_flags_follow_the_tensorrt_version():
    from edgepack.backends.tensorrt import BACKEND, settings_for, trtexec_flags

    profiles = builtin_profiles()
    xavier = settings_for(profiles["jetson-xavier-nx"], "int8")
    orin = settings_for(profiles["jetson-agx-orin"], "int8")
    assert xavier.max_opset == 17 and orin.max_opset == 20
    assert trtexec_flags(xavier, "int8")[-1] == "--buildOnly"  # TensorRT 8.5
    assert trtexec_flags(orin, "int8")[-1] == "--skipInference"  # TensorRT 10
    for flags in (trtexec_flags(xavier, "fp16"), trtexec_flags(orin, "fp16")):
        assert "--fp16" in flags and "--int8" not in flags
        assert "--memPoolSize=workspace:1024" in flags
    BACKEND.check(profiles["jetson-agx-orin"], "fp32")  # options are fine


# --------------------------------------------------------------------------- digits end to end


def test_digits_bundles_are_deferred_with_proxy_metrics(jetson_dist):
    out, proc = jetson_dist
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert [b["precision"] for b in summary["bundles"]] == PRECISIONS
    for p in PRECISIONS:
        m = mf.read(_bundle(out, p))
        v = m["validation"]
        assert v["status"] == "deferred" and v["proxy"] is True
        assert v["reason"].startswith(REASON) and "proxy metrics from onnxruntime" in v["reason"]
        assert m["target"] == {"name": "jetson-orin-nano", "backend": "tensorrt",
                               "runtime": "tensorrt"}
        logits = v["metrics"]["logits"]
        assert logits["top1_agreement"] >= 0.99 and logits["cosine_min"] > 0.999
        assert logits["reference_task_accuracy"] - logits["task_accuracy"] <= 1.0
        assert {a["path"] for a in m["artifacts"]} >= {"model.onnx", "build_engine.sh",
                                                        "bench.py"}
    fp16 = mf.read(_bundle(out, "fp16"))["validation"]
    assert "converted to fp16" in fp16["reason"]
    # the fp16 proxy really rounds to fp16: not bit-equal to fp32 like the fp32 proxy
    fp32 = mf.read(_bundle(out, "fp32"))["validation"]
    assert fp16["metrics"]["logits"]["max_abs_err"] > 10 * fp32["metrics"]["logits"]["max_abs_err"]
    # the fp16 bundle ships the fp32 graph: TensorRT applies --fp16 at build time
    assert (_bundle(out, "fp16") / "model.onnx").read_bytes() == \
        (_bundle(out, "fp32") / "model.onnx").read_bytes()


def test_digits_graphs_are_tensorrt_ready(jetson_dist):
    out, _ = jetson_dist
    for p in PRECISIONS:
        model = onnx.load(str(_bundle(out, p) / "model.onnx"))
        assert _opset(model) == 17 and model.ir_version <= 8
        assert {o.domain for o in model.graph.node} <= {"", "ai.onnx"}
        for vi in model.graph.input:  # static shapes
            assert all(d.HasField("dim_value") and d.dim_value > 0
                       for d in vi.type.tensor_type.shape.dim)
        assert not any(n.op_type in ("Shape", "ConstantOfShape") for n in model.graph.node)


def test_digits_int8_is_explicit_symmetric_qdq(jetson_dist):
    out, _ = jetson_dist
    m = mf.read(_bundle(out, "int8"))
    q = m["quantization"]
    model = onnx.load(str(_bundle(out, "int8") / "model.onnx"))
    kept = [n["name"] for n in q["nodes_kept_float"]]
    counts = assert_tensorrt_int8(model, kept)
    assert counts["weights"] == 4 and counts["activations"] == 4  # 3 Conv + 1 Gemm
    assert q["symmetric"] is True and q["per_channel"] is True and q["passed"] is True
    assert q["calibration"]["samples"] == 200
    t = q["tensorrt"]
    assert t["quantized_layers"] == {"Conv": 3, "Gemm": 1}
    assert t["constants_dequantized"] == {"Conv input 2": 3, "Gemm input 2": 1}  # float biases
    assert "Relu" in t["qdq_removed_before"]  # Conv+ReLU left for TensorRT to fuse
    assert t["search_scored"] == "the TensorRT placement"  # what ships is what was searched
    # both graphs compacted alike; int8 keeps explicit zero points (merged when equal)
    assert q["artifact_compaction"]["zero_points_dropped"] == 0
    assert (_bundle(out, "fp32") / "model.onnx").stat().st_size / \
        (_bundle(out, "int8") / "model.onnx").stat().st_size >= 3.5


def test_build_engine_script(jetson_dist, tmp_path):
    out, _ = jetson_dist
    expected = {"fp32": ["--noTF32"], "fp16": ["--fp16"], "int8": ["--int8", "--fp16"]}
    for p in PRECISIONS:
        script = _bundle(out, p) / "build_engine.sh"
        assert subprocess.run(["bash", "-n", script]).returncode == 0
        text = script.read_text()
        for flag in (*expected[p], "--onnx=model.onnx", '--saveEngine="$engine"',
                     "--memPoolSize=workspace:1024", "--timingCacheFile=model.timing.cache"):
            assert flag in text, (p, flag)
        options = mf.read(_bundle(out, p))["harness"]["runtime_options"]
        assert options["trtexec_build"][3:3 + len(expected[p])] == expected[p]
        assert options["precision"] == p and options["tensorrt"] == "10.3"
    assert "--int8" not in (_bundle(out, "fp16") / "build_engine.sh").read_text()
    # without trtexec: exit 2 and one line
    env = {**os.environ, "TRTEXEC": str(tmp_path / "no-trtexec"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(["bash", _bundle(out, "int8") / "build_engine.sh"], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "trtexec not found" in proc.stderr


STAND_IN = """#!/usr/bin/env bash
# A stand-in for trtexec that records its arguments: exercises build_engine.sh's own
# logic (flags, version banner, results files), not TensorRT.
echo "&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec $*"
echo "[I] Selected Device: Orin"
printf '%s\\n' "$@" > "$(dirname "$0")/args.txt"
for a in "$@"; do case "$a" in --saveEngine=*) echo engine > "${a#--saveEngine=}";; esac; done
"""


def test_build_engine_script_records_who_built_the_engine(jetson_dist, tmp_path):
    import shutil

    out, _ = jetson_dist
    bundle = tmp_path / "bundle"
    shutil.copytree(_bundle(out, "int8"), bundle)
    stand_in = tmp_path / "bin" / "trtexec"
    stand_in.parent.mkdir()
    stand_in.write_text(STAND_IN)
    stand_in.chmod(0o755)
    proc = subprocess.run(["bash", bundle / "build_engine.sh"], capture_output=True, text=True,
                          env={**os.environ, "TRTEXEC": str(stand_in)})
    assert proc.returncode == 0, proc.stderr
    assert "built model.engine with TensorRT 10.3.0 on Orin" in proc.stdout
    options = mf.read(bundle)["harness"]["runtime_options"]
    args = (tmp_path / "bin" / "args.txt").read_text().splitlines()
    assert args == options["trtexec_build"][1:]  # exactly the recorded command
    info = json.loads((bundle / "results" / "model.engine.json").read_text())
    assert info == {"tensorrt": "10.3.0", "device": "Orin", "built_with": "trtexec",
                    "precision": "int8", "target": "jetson-orin-nano"}
    assert (bundle / "results" / "model.engine.log").is_file()
    b = _engine_module()
    tk = b.Toolkit(None, None)
    tk.version = "10.3.0.30"  # the Python module's four-part version
    assert b.ensure_engine(str(bundle), options, tk, None, False)["built_by"] == "10.3.0"
    # what a device run leaves in the bundle does not break its integrity check
    (bundle / "model.timing.cache").write_bytes(b"cache")
    proc = run_cli("validate", bundle)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_harness_without_tensorrt_exits_2_in_one_line(jetson_dist):
    out, _ = jetson_dist
    bundle = _bundle(out, "int8")
    py_compile.compile(str(bundle / "bench.py"), doraise=True)
    for name in ("bench.py", "edgepack_harness.py", "edgepack_metrics.py", "edgepack_tasks.py",
                 "tensorrt_engine.py"):  # JetPack 5 ships Python 3.8
        ast.parse((bundle / name).read_text(), feature_version=(3, 8))
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    env.pop("TRTEXEC", None)
    proc = subprocess.run([sys.executable, "bench.py"], cwd=bundle, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: TensorRT not found")
    proc = run_cli("bench", bundle, "--runs", "3")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert not (bundle / "model.engine").exists()


@pytest.mark.slow
def test_jetson_builds_are_byte_identical(jetson_dist, tmp_path):
    out, _ = jetson_dist
    again = tmp_path / "again"
    proc = run_cli("build", DIGITS / "edgepack.yaml", "--target", "jetson", "--precision", "fp32",
                   "--precision", "int8", "--out", again, "--quiet")
    assert proc.returncode == 0, proc.stderr
    for p in ("fp32", "int8"):
        for name in ("model.onnx", "build_engine.sh", "manifest.json"):
            assert (_bundle(out, p) / name).read_bytes() == \
                (_bundle(again, p) / name).read_bytes(), (p, name)


# --------------------------------------------------------------------------- harness pieces


def _bench_module(name: str = "bench_tensorrt"):
    path = ROOT / "edgepack" / "harness" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _engine_module():
    return _bench_module("tensorrt_engine")


def test_harness_reads_trtexec_formats():
    b = _engine_module()
    assert b.decode_packed("100300") == "10.3.0" and b.decode_packed("8502") == "8.5.2"
    banner = "&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec --onnx=model.onnx"
    assert b.banner_version(banner) == "10.3.0"
    assert b.same_release("10.3.0.30", "10.3.0") and not b.same_release("8.5.2", "10.3.0")
    exported = ('[\n  { "name" : "logits"\n  , "dimensions" : "1x4"\n'
                '  , "values" : [ 0.5, -nan, inf, -inf ]\n  }\n]\n')
    values = _bench_module().parse_exported_outputs(exported)["logits"]
    assert values[0] == 0.5 and np.isnan(values[1]) and values[2] == np.inf and values[3] < 0


def test_harness_refuses_an_engine_from_another_tensorrt(tmp_path):
    b = _engine_module()
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not really an engine")
    b.write_sidecar(str(engine), {"tensorrt": "8.5.2", "device": "Xavier"})
    tk = b.Toolkit(None, None)
    tk.version = "10.3.0"
    with pytest.raises(b.HarnessError) as e:
        b.ensure_engine(str(tmp_path), {}, tk, None, rebuild=False)
    assert "built by TensorRT 8.5.2" in str(e.value) and "10.3.0" in str(e.value)
    tk.version = "8.5.2"
    info = b.ensure_engine(str(tmp_path), {}, tk, None, rebuild=False)
    assert info["built_by"] == "8.5.2" and info["built_here"] is False


# --------------------------------------------------------------------------- options, shapes


def _profile(tmp_path: Path, name: str, **changes) -> Path:
    data = yaml.safe_load((ROOT / "targets" / "jetson-orin-nano.yaml").read_text())
    data.pop("aliases", None)
    data["name"] = name
    options = changes.pop("options", {})
    data.update(changes)
    data["options"].update(options)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _dynamic_cnn(path: Path) -> Path:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(8, 5)).eval()
    torch.onnx.export(model, (torch.randn(2, 3, 16, 16),), str(path), opset_version=17,
                      dynamo=False, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    return path


def test_dynamic_batch_optimization_profile(tmp_path):
    source = _dynamic_cnn(tmp_path / "cnn.onnx")
    shapes = {"input": {"min": [1, 3, 16, 16], "opt": [4, 3, 16, 16], "max": [8, 3, 16, 16]}}
    profile = _profile(tmp_path, "jetson-dynamic", static_shapes=False,
                       options={"shapes": shapes})
    out = tmp_path / "d"
    proc = run_cli("build", source, "--target", profile, "--target", "jetson",
                   "--precision", "fp16", "--out", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    dyn = out / "cnn-jetson-dynamic-fp16"
    model = onnx.load(str(dyn / "model.onnx"))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # batch stays dynamic
    text = (dyn / "build_engine.sh").read_text()
    for flag in ("--minShapes=input:1x3x16x16", "--optShapes=input:4x3x16x16",
                 "--maxShapes=input:8x3x16x16"):
        assert flag in text
    assert subprocess.run(["bash", "-n", dyn / "build_engine.sh"]).returncode == 0
    options = mf.read(dyn)["harness"]["runtime_options"]
    assert options["dynamic_inputs"] == ["input"] and options["shapes"] == shapes
    # the shipped profile fixes the dynamic batch to the run shape instead
    fixed = onnx.load(str(out / "cnn-jetson-orin-nano-fp16" / "model.onnx"))
    assert [d.dim_value for d in fixed.graph.input[0].type.tensor_type.shape.dim] == \
        [1, 3, 16, 16]
    assert "Shapes=" not in (out / "cnn-jetson-orin-nano-fp16" / "build_engine.sh").read_text()


@pytest.mark.parametrize("options, precision, words", [
    ({"dla_core": 0}, "fp16", ["dla_core", "0 DLA core"]),
    ({"tensorrt_version": "10"}, "fp16", ["unknown keys", "tensorrt_version"]),
    ({"tensorrt": "ten"}, "fp16", ["options.tensorrt"]),
    ({"shapes": {"input": {"min": [2], "opt": [1], "max": [3]}}}, "fp16",
     ["min <= opt <= max"]),
    ({"int8_float_fallback": "bf16"}, "int8", ["int8_float_fallback"]),
])
def test_bad_options_are_usage_errors(tmp_path, options, precision, words):
    from edgepack.backends.tensorrt import settings_for
    from edgepack.errors import UsageError
    from edgepack.profiles import load_profile_file

    profile = load_profile_file(_profile(tmp_path, "jetson-bad", options=options))
    with pytest.raises(UsageError) as e:
        settings_for(profile, precision)
    assert len(str(e.value).splitlines()) == 1
    for w in words:
        assert w in str(e.value), str(e.value)


def test_bad_option_on_the_command_line(tmp_path):
    profile = _profile(tmp_path, "jetson-bad", options={"tensorrt_version": "10"})
    proc = run_cli("build", _dynamic_cnn(tmp_path / "cnn.onnx"), "--target", profile,
                   "--precision", "fp16", "--out", tmp_path / "o")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr  # usage error
    assert "unknown keys ['tensorrt_version']" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stdout == ""


def test_dla_core_goes_to_trtexec(tmp_path):
    from edgepack.backends.tensorrt import render_build_script, settings_for, trtexec_flags
    from edgepack.errors import UsageError
    from edgepack.profiles import load_profile_file

    profile = load_profile_file(_profile(tmp_path, "jetson-dla", device={"dla_cores": 2},
                                         options={"dla_core": 1, "workspace_mib": 2048}))
    s = settings_for(profile, "int8")
    flags = trtexec_flags(s, "int8")
    assert flags[:4] == ["--int8", "--fp16", "--useDLACore=1", "--allowGPUFallback"]
    assert "--memPoolSize=workspace:2048" in flags
    script = tmp_path / "build_engine.sh"
    render_build_script(script, profile.name, s, "int8")
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    assert "--useDLACore=1 \\" in script.read_text()
    with pytest.raises(UsageError, match="DLA runs fp16 and int8 only"):
        settings_for(profile, "fp32")


# --------------------------------------------------------------------------- transformer


ENCODER = textwrap.dedent('''
    import torch
    from torch import nn


    class Block(nn.Module):
        def __init__(self, d=32, heads=4, ff=64):
            super().__init__()
            self.heads, self.dh = heads, d // heads
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
            self.ff1, self.ff2 = nn.Linear(d, ff), nn.Linear(ff, d)

        def forward(self, x):
            b, s, d = x.shape
            h = self.ln1(x)
            split = lambda t: t.reshape(b, s, self.heads, self.dh).transpose(1, 2)
            q, k, v = split(self.q(h)), split(self.k(h)), split(self.v(h))
            att = torch.softmax(q @ k.transpose(-1, -2) / self.dh ** 0.5, dim=-1)
            ctx = (att @ v).transpose(1, 2).reshape(b, s, d)
            x = x + self.o(ctx)
            return x + self.ff2(nn.functional.gelu(self.ff1(self.ln2(x))))


    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.Sequential(Block(), Block())
            self.head = nn.Linear(32, 6)

        def forward(self, x):
            return self.head(self.blocks(x).mean(dim=1))


    def build():
        torch.manual_seed(0)
        return Encoder().eval()
''')


def test_transformer_encoder_int8_structure(tmp_path):
    """A transformer encoder's MatMuls (projections and attention) get TensorRT's Q/DQ.

    Random weights and inputs: a STRUCTURE check only (tolerances left open)."""
    from edgepack.backends.base import Job
    from edgepack.backends.tensorrt import BACKEND
    from edgepack.data import seeded_inputs
    from edgepack.runners.base import run_samples
    from edgepack.signature import TensorSpec
    from edgepack.sources import load_source

    (tmp_path / "encoder.py").write_text(ENCODER)
    source = load_source(f"{tmp_path / 'encoder.py'}:build",
                         inputs=[TensorSpec("x", (1, 8, 32), "float32")], outputs=["y"])
    calib = seeded_inputs(source.signature, 32, 1)
    profile = resolve_targets(["jetson"])[0]
    job = Job(source=source, profile=profile, precision="int8", workdir=tmp_path / "w",
              tolerances={"cosine_min": 0.0}, calib=calib,
              calib_reference=run_samples(source.runner(), calib.inputs, 1), cache={})
    job.workdir.mkdir()
    artifact = BACKEND.build(job)
    model = onnx.load(str(artifact.main))
    kept = [n["name"] for n in artifact.quantization["nodes_kept_float"]]
    assert kept == []
    counts = assert_tensorrt_int8(model)
    matmuls = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm")]
    # per block: q, k, v, o, ff1, ff2 projections + 2 attention MatMuls; plus the head
    assert len(matmuls) == 2 * 8 + 1
    assert counts["weights"] == 2 * 6 + 1
    assert counts["activations"] == 2 * 6 + 2 * 2 * 2 + 1  # attention MatMuls: both inputs
    producer = _producers(model)
    for node in model.graph.node:  # no Q/DQ feeding normalization, softmax or GELU
        if node.op_type in ("LayerNormalization", "Softmax", "Erf", "Gelu", "ReduceMean"):
            assert producer.get(node.input[0]) is None or \
                producer[node.input[0]].op_type != "DequantizeLinear", node.name
    # the residual stream stays float: Adds are not quantized on their own (only layers
    # the search covers round anything), and here no Add reads two quantized layer outputs
    assert artifact.quantization["tensorrt"]["residual_adds_quantized"] == 0
    assert _opset(model) == 17 and model.ir_version <= 8


# --------------------------------------------------------------------------- real classifier


@pytest.mark.slow
def test_real_classifier_jetson_fp16_and_int8(effnet, tmp_path):
    """EfficientNet-Lite0 (pretrained, never seen by the project) on real photos."""
    data = effnet["onnx"].parent
    out = tmp_path / "dist"
    proc = run_cli("build", data / "effnet_lite0.onnx", "--target", "jetson",
                   "--precision", "fp16", "--precision", "int8", "--calib", data / "calib.npz",
                   "--eval", data / "eval.npz", "--task", "classification", "--out", out,
                   "--json", timeout=3000)
    assert proc.returncode == 0, proc.stderr
    for p in ("fp16", "int8"):
        m = mf.read(_bundle(out, p, model="effnet_lite0"))
        v = m["validation"]
        assert v["status"] == "deferred" and v["proxy"] and v["reason"].startswith(REASON)
        logits = v["metrics"]["logits"]
        assert logits["top1_agreement"] >= 0.93 and logits["cosine_mean"] >= 0.99
    m = mf.read(_bundle(out, "int8", model="effnet_lite0"))
    model = onnx.load(str(_bundle(out, "int8", model="effnet_lite0") / "model.onnx"))
    kept = [n["name"] for n in m["quantization"]["nodes_kept_float"]]
    counts = assert_tensorrt_int8(model, kept)
    assert counts["weights"] == 50 - len(kept)  # 49 Conv + 1 Gemm
    # Adds are not quantized on their own: Q/DQ stay on the residual Adds whose both
    # inputs are already quantized for the convs that produce or read them (6 of 9 with
    # 15 convs float, 9 with 8): counted here from the graph
    producer = _producers(model)
    both = [n for n in model.graph.node if n.op_type == "Add" and all(
        getattr(producer.get(t), "op_type", "") == "DequantizeLinear"
        and producer[t].input[0] in producer
        and producer[producer[t].input[0]].op_type == "QuantizeLinear" for t in n.input)]
    assert 0 < len(both) == m["quantization"]["tensorrt"]["residual_adds_quantized"] <= 9
    assert m["quantization"]["symmetric"] is True


def test_float_weights_stored_fp16_for_the_engines_fp16_layers(tmp_path):
    """int8 engines run kept-out layers in fp16 (--fp16), so their weights and the
    embedding tables ship fp16: Gather reads fp16 and casts the rows it took, a
    MatMul weight is cast once; conv kernels and what fp16 cannot hold stay fp32."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from edgepack.convert.onnx_fp16 import store_weights_fp16

    rng = np.random.default_rng(0)
    table = rng.normal(size=(300, 16)).astype(np.float32)
    w = rng.normal(size=(16, 64)).astype(np.float32)
    huge = (rng.normal(size=(64, 32)) * 1e5).astype(np.float32)  # beyond fp16's 65504
    kernel = rng.normal(size=(64, 3, 3, 3)).astype(np.float32)  # 1,728 elements
    inits = [numpy_helper.from_array(a, n) for a, n in
             [(table, "table"), (w, "w"), (huge, "huge"), (kernel, "kernel"),
              (np.zeros(64, np.float32), "bias")]]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["emb"]),
             helper.make_node("MatMul", ["emb", "w"], ["h"]),
             helper.make_node("Add", ["h", "bias"], ["y"]),
             helper.make_node("MatMul", ["y", "huge"], ["z"]),
             helper.make_node("Conv", ["img", "kernel"], ["c"])]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 5]),
         helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 64]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 5, 32]),
         helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 64, 4, 4])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    before = model.ByteSize()
    feeds = {"ids": np.array([[0, 7, 299, 7, 42]]),
             "img": rng.normal(size=(1, 3, 6, 6)).astype(np.float32)}

    def run(m):
        return ort.InferenceSession(m.SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, feeds)

    ref = run(model)
    assert store_weights_fp16(model) == {"tensors": 2, "bytes_saved": (300 + 64) * 16 * 2}
    onnx.checker.check_model(model)
    assert (300 + 64) * 16 * 2 - 100 < before - model.ByteSize() < (300 + 64) * 16 * 2  # Casts
    types = {t.name: t.data_type for t in model.graph.initializer}
    assert types == {"table": TensorProto.FLOAT16, "w": TensorProto.FLOAT16,
                     "huge": TensorProto.FLOAT, "kernel": TensorProto.FLOAT,
                     "bias": TensorProto.FLOAT}
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["Cast", "Gather", "Cast", "MatMul", "Add", "MatMul", "Conv"]
    assert model.graph.node[2].input[0] == model.graph.node[1].output[0]  # rows cast
    got = run(model)
    for r, g in zip(ref, got, strict=True):
        assert r.shape == g.shape
        assert np.abs(g - r).max() <= 2e-3 * np.abs(r).max()
    np.testing.assert_array_equal(got[2], ref[2])  # the conv did not change at all
