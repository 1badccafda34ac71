"""The bundle manifest: build it, check it against its JSON Schema, read and write it.

Deterministic by construction: no timestamps, no absolute paths, sorted keys.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from edgepack import __version__
from edgepack.errors import InputError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


@cache
def schema() -> dict[str, Any]:
    schemas = Path(__file__).resolve().parent.parent / "schemas"
    return json.loads((schemas / "manifest.schema.json").read_text())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def toolchain(packages: list[str]) -> dict[str, str]:
    """Installed versions of the packages that shaped an artifact."""
    out = {}
    for name in sorted(set(packages)):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def check(manifest: dict[str, Any], where: str = "manifest") -> None:
    """Raise InputError naming the first schema violation."""
    import jsonschema

    errors = sorted(jsonschema.Draft202012Validator(schema()).iter_errors(manifest), key=str)
    if errors:
        e = errors[0]
        at = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise InputError(f"{where} does not match the manifest schema: {at}: {e.message}")


def dumps(manifest: dict[str, Any]) -> str:
    return json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n"


def write(manifest: dict[str, Any], folder: Path) -> Path:
    check(manifest)
    path = folder / MANIFEST
    path.write_text(dumps(manifest))
    return path


def read(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise InputError(f"{folder} is not a bundle: no {MANIFEST}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON or not UTF-8
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise InputError(f"{path} is not readable JSON ({first}); rebuild the bundle") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} is not a manifest: expected a JSON object; rebuild the bundle")
    check(data, str(path))
    return data


def new(**fields: Any) -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "edgepack_version": __version__, **fields}
