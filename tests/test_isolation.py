"""Crashes, hangs and kills: one bundle fails with the reason, the rest complete,
and no half bundle is ever left in the output folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from conftest import DIGITS, ROOT, run_cli

from edgepack.bundle import folder as bundle
from edgepack.bundle import manifest as mf

PLUGINS = Path(__file__).parent / "plugins"


def _profile(tmp_path: Path) -> Path:
    data = yaml.safe_load((ROOT / "targets" / "onnx-cpu.yaml").read_text())
    data.update(name="crashy", aliases=[], backend="crashy_backend",
                precisions=["fp32", "fp16", "int8-dynamic"], auto_order=[])
    data["tolerances"].pop("int8")
    path = tmp_path / "crashy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _env(**extra: str) -> dict[str, str]:
    return {"PYTHONPATH": f"{PLUGINS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **extra}


def _run(*args, env: dict[str, str]) -> subprocess.CompletedProcess:
    old = dict(os.environ)
    os.environ.update(env)
    try:
        return run_cli(*args)
    finally:
        os.environ.clear()
        os.environ.update(old)


def test_crashes_fail_one_bundle_each_and_the_rest_complete(tmp_path):
    out = tmp_path / "dist"
    proc = _run("build", DIGITS / "edgepack.yaml", "--target", _profile(tmp_path),
                "--precision", "all", "--out", out, "--json", env=_env())
    summary = json.loads(proc.stdout)
    by = {b["precision"]: b for b in summary["bundles"]}
    assert proc.returncode == 3  # a conversion failed
    assert by["fp16"]["status"] == "failed"
    assert "conversion process crashed (SIGABRT)" in by["fp16"]["reason"]
    assert "about to abort" in by["fp16"]["reason"]  # the tool's last output
    assert by["fp32"]["status"] == "failed"
    assert "running the artifact crashed (SIGSEGV)" in by["fp32"]["reason"]
    assert by["int8-dynamic"]["status"] == "passed"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["digits-crashy-fp32", "digits-crashy-int8-dynamic", "summary.json"]
    assert mf.read(out / "digits-crashy-fp32")["validation"]["status"] == "failed"
    assert not (tmp_path / ".dist.partial").exists()


def test_runtime_crash_alone_is_a_validation_failure(tmp_path):
    proc = _run("build", DIGITS / "edgepack.yaml", "--target", _profile(tmp_path),
                "--precision", "fp32", "--out", tmp_path / "d", env=_env())
    assert proc.returncode == 1
    assert "SIGSEGV" in proc.stderr and "Traceback" not in proc.stderr


def test_hanging_step_times_out(tmp_path):
    started = time.monotonic()
    proc = _run("build", DIGITS / "edgepack.yaml", "--target", _profile(tmp_path),
                "--precision", "int8-dynamic", "--timeout", "8", "--out", tmp_path / "d",
                "--json", env=_env(CRASHY_SLEEP="1"))
    assert proc.returncode == 3
    bundle = json.loads(proc.stdout)["bundles"][0]
    assert "timed out after 8 s" in bundle["reason"]
    assert time.monotonic() - started < 120


def test_sigkill_mid_build_leaves_no_half_bundle_and_rerun_passes(tmp_path):
    out = tmp_path / "dist"
    args = [sys.executable, "-m", "edgepack.cli", "build", str(DIGITS / "edgepack.yaml"),
            "--target", "onnx", "--precision", "all", "--out", str(out), "--quiet"]
    proc = subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    partial = tmp_path / ".dist.partial"
    deadline = time.monotonic() + 300
    # kill as soon as the first of the four bundles has landed: the build is then
    # surely mid-way (three bundles to go, summary.json not written)
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and any(p.is_dir() for p in out.iterdir()):
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the build ended (exit {proc.returncode}) before the kill"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL  # died by the signal, not by finishing
    landed = sorted(p.name for p in out.iterdir())
    assert "summary.json" not in landed  # the build was really interrupted
    assert 1 <= len(landed) < 4, landed
    assert partial.is_dir()  # its staging folder was left behind by the kill...
    for name in landed:  # ...and every folder in OUT is a complete, intact bundle
        assert (out / name).is_dir() and not name.startswith(".")
        assert bundle.verify(out / name) == [], name
        assert mf.read(out / name)["validation"]["status"] == "passed"
    rerun = run_cli("build", DIGITS / "edgepack.yaml", "--target", "onnx", "--precision", "all",
                    "--out", out, "--quiet")
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [
        "digits-onnx-cpu-fp16", "digits-onnx-cpu-fp32", "digits-onnx-cpu-int8",
        "digits-onnx-cpu-int8-dynamic"]
    assert (out / "summary.json").is_file()
    assert not partial.exists()  # the rerun cleared the killed build's staging
