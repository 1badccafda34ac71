"""The bundle writer: artifact + golden I/O + harness + README + manifest, staged
beside the output folder and renamed into place only when complete (bundle.commit),
so a crash never leaves half a bundle."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from edgepack.backends.base import Artifact, Backend
from edgepack.bundle import folder as bd
from edgepack.bundle import manifest as mf
from edgepack.compare import ValidationResult
from edgepack.compare import golden_tolerances as subset_tolerances
from edgepack.config import BuildConfig
from edgepack.profiles import Profile
from edgepack.runners.base import Arrays
from edgepack.sources.base import SourceModel


def _readme(name: str, profile: Profile, precision: str, result: ValidationResult) -> str:
    return f"""# {name}

Target `{profile.name}` ({profile.runtime['name']}), precision `{precision}`.
Host validation: **{result.status}**{f' ({result.reason})' if result.reason else ''}.

On the device, from inside this folder:

```
python -m pip install -r requirements.txt
python bench.py                    # golden check + latency; exit 0 passed, 1 failed, 2 no runtime
python bench.py --runs 500 --threads 4 --json result.json
```

`manifest.json` lists every file with its sha256, the signature, the
quantization and the validation results; `reference/` holds the golden inputs
and the source model's outputs for them.
"""


def write_bundle(
    out: Path, name: str, source: SourceModel, profile: Profile, precision: str,
    backend: Backend, artifact: Artifact, result: ValidationResult,
    golden: tuple[Arrays, Arrays], cfg: BuildConfig, data_origin: str,
    selection: dict[str, Any] | None = None,
) -> Path:
    """Write bundle `name` into `out` (atomically) and return its folder."""
    stage = bd.staging(out, name)
    # golden I/O travels in the artifact's own layout (NHWC for TFLite, ...)
    golden = backend.golden_io(artifact, *golden)
    try:
        for rel in artifact.files:
            dst = stage / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            src = artifact.folder / rel
            if src.is_dir():
                shutil.copytree(src, dst)
            else:
                shutil.copyfile(src, dst)
        bd.save_npz(stage / "reference" / "inputs.npz", golden[0])
        bd.save_npz(stage / "reference" / "outputs.npz", golden[1])
        harness = bd.copy_harness(stage, backend.harness, backend.harness_extra)
        requirements = profile.runtime.get("requirements", [profile.runtime["name"], "numpy"])
        (stage / "requirements.txt").write_text("\n".join(requirements) + "\n")
        (stage / "README.md").write_text(_readme(name, profile, precision, result))
        entries = [bd.file_entry(stage, rel, "model")
                   for f in artifact.files for rel in _expand(stage, f)]
        entries += [
            bd.file_entry(stage, "reference/inputs.npz", "golden-inputs"),
            bd.file_entry(stage, "reference/outputs.npz", "golden-outputs"),
            bd.file_entry(stage, "bench.py", "harness"),
            *(bd.file_entry(stage, rel, "harness") for rel in harness),
            bd.file_entry(stage, "requirements.txt", "requirements"),
            bd.file_entry(stage, "README.md", "readme"),
        ]
        listed = {e["path"] for e in entries}
        entries += [bd.file_entry(stage, rel, "extra") for rel in bd.files_of(stage)
                    if rel not in listed]
        validation = result.to_dict()
        validation["data"] = data_origin
        golden_n = len(next(iter(golden[0].values())))
        manifest = mf.new(
            name=name,
            source={"format": source.format, "sha256": source.sha256, "name": source.name,
                    "parameters": source.parameter_count()},
            target={"name": profile.name, "backend": profile.backend,
                    "runtime": profile.runtime["name"]},
            precision=precision,
            signature=artifact.signature.to_dict(),
            artifacts=entries,
            quantization=artifact.quantization,
            validation=validation,
            toolchain=mf.toolchain(["edgepack", "numpy", *artifact.toolchain]),
            harness={
                "entry": "bench.py",
                "command": "python bench.py",
                "batch": source.signature.batch,
                "runtime_options": artifact.runtime_options,
                "golden": {"samples": golden_n,
                           "tolerances": subset_tolerances(result.tolerances)},
            },
            seed=cfg.seed,
        )
        if selection is not None:
            manifest["selection"] = selection
        mf.write(manifest, stage)
        return bd.commit(stage, out / name)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _expand(stage: Path, rel: str) -> list[str]:
    p = stage / rel
    if p.is_dir():
        return [str(Path(rel) / f) for f in bd.files_of(p)]
    return [rel]
