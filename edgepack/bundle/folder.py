"""Bundle folders: atomic writing and integrity checks.

A bundle is assembled beside OUT, in ``.OUT.partial/`` (same file system, so the
final rename is atomic), and renamed into place only when complete: an
interrupted build never leaves a half bundle, or any folder without a manifest,
in OUT; the next build clears what an interrupted one left behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.bundle import manifest as mf
from edgepack.errors import InputError, UsageError

HARNESS_DIR = Path(__file__).resolve().parent.parent / "harness"
#: Harness library files every bundle carries beside its bench.py.
HARNESS_LIBS = ("edgepack_harness.py", "edgepack_metrics.py", "edgepack_tasks.py")


def prepare_out(out: Path) -> None:
    """Create OUT (or say it cannot be written) and clear leftovers of killed builds."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=out, prefix=".probe-", delete=True)
        probe.close()
    except OSError as e:
        raise UsageError(f"cannot write to --out {out}: {e.strerror or e}; choose a writable "
                         "folder with --out") from None
    shutil.rmtree(partial_dir(out), ignore_errors=True)


def partial_dir(out: Path) -> Path:
    out = out.absolute()
    return out.parent / f".{out.name}.partial"


def finish_out(out: Path) -> None:
    """Remove the staging folder once nothing is left in it."""
    try:
        partial_dir(out).rmdir()
    except OSError:
        pass


def staging(out: Path, name: str) -> Path:
    parent = partial_dir(out)
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{name}.", dir=parent))


def commit(stage: Path, final: Path) -> Path:
    """Move a complete staged bundle to its final name, replacing an older one."""
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix="old.", dir=stage.parent))
        os.replace(final, old / "bundle")
    os.replace(stage, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # np.savez writes fixed zip timestamps, so the bytes depend on the data only.
    with open(path, "wb") as f:
        np.savez(f, **{k: np.ascontiguousarray(v) for k, v in sorted(arrays.items())})


def copy_harness(stage: Path, harness: str, extra: tuple[str, ...] = ()) -> list[str]:
    """Copy the backend's harness in as bench.py, with the library files every bundle
    carries and the backend's ``extra`` modules beside it; returns those files."""
    shutil.copyfile(HARNESS_DIR / harness, stage / "bench.py")
    files = [*HARNESS_LIBS, *extra]
    for name in files:
        shutil.copyfile(HARNESS_DIR / name, stage / name)
    return files


def file_entry(stage: Path, rel: str, role: str) -> dict[str, Any]:
    p = stage / rel
    return {"path": rel, "sha256": mf.sha256_file(p), "bytes": p.stat().st_size, "role": role}


def files_of(folder: Path) -> list[str]:
    """Every regular file under folder, relative, sorted (a directory artifact such as
    an .mlpackage is listed file by file)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def verify(folder: Path) -> list[str]:
    """Problems found (empty = intact): each listed file's size and sha256."""
    manifest = mf.read(folder)
    problems = []
    for entry in manifest["artifacts"]:
        path = folder / entry["path"]
        if not path.is_file():
            problems.append(f"{entry['path']}: missing")
            continue
        size = path.stat().st_size
        if size != entry["bytes"]:
            problems.append(f"{entry['path']}: {size} bytes, manifest says {entry['bytes']}")
        elif mf.sha256_file(path) != entry["sha256"]:
            problems.append(f"{entry['path']}: sha256 differs from the manifest")
    listed = {e["path"] for e in manifest["artifacts"]} | {mf.MANIFEST}
    problems += [f"{rel}: not listed in the manifest" for rel in files_of(folder)
                 if rel not in listed and not _device_output(rel)]
    return problems


DEVICE_OUTPUTS = ("results/",)  # what a device run may add: harness JSON, engines
DEVICE_SUFFIXES = (".engine", ".plan", ".timing.cache")


def _device_output(rel: str) -> bool:
    return rel.startswith(DEVICE_OUTPUTS) or rel.endswith(DEVICE_SUFFIXES) \
        or "__pycache__" in rel


def find_bundles(paths: list[Path]) -> list[Path]:
    """Bundles named directly, or found one level below a dist folder."""
    found: list[Path] = []
    for p in paths:
        if not p.exists():
            raise InputError(f"no such bundle or folder: {p}")
        if (p / mf.MANIFEST).is_file():
            found.append(p)
            continue
        inner = sorted(c for c in p.iterdir() if c.is_dir() and (c / mf.MANIFEST).is_file()
                       and not c.name.startswith("."))
        if not inner:
            raise InputError(f"{p} holds no bundles (no */{mf.MANIFEST})")
        found.extend(inner)
    return found
