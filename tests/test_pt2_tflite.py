"""A torch.export (.pt2) source on the TFLite target (a README source x target cell).

Its module refuses train()/eval() ("Calling train() is not supported yet") and is fixed
to the batch it was exported at: both failed every .pt2 build for TFLite before.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from conftest import DIGITS, run_cli

torch = pytest.importorskip("torch")


def test_pt2_source_builds_tflite_fp32_and_int8(tmp_path):
    sys.path.insert(0, str(DIGITS))
    try:
        from model import build
    finally:
        sys.path.remove(str(DIGITS))
    program = torch.export.export(build(), (torch.zeros(1, 1, 8, 8),))
    torch.export.save(program, tmp_path / "digits.pt2")
    data = np.load(DIGITS / "eval.npz")
    np.savez(tmp_path / "eval.npz", x=data["input"][:96], labels=data["labels"][:96])
    np.savez(tmp_path / "calib.npz", x=data["input"][96:192])
    proc = run_cli("build", tmp_path / "digits.pt2", "--target", "tflite", "--precision",
                   "fp32,int8", "--calib", tmp_path / "calib.npz", "--eval",
                   tmp_path / "eval.npz", "--out", tmp_path / "d", "--json", timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    bundles = {b["precision"]: b for b in json.loads(proc.stdout)["bundles"]}
    assert bundles["fp32"]["status"] == "passed"
    assert bundles["fp32"]["metrics"]["output0"]["cosine_min"] > 0.9999
    assert bundles["int8"]["status"] == "passed"
    assert bundles["int8"]["metrics"]["output0"]["top1_agreement"] >= 0.95
