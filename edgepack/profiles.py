"""Target profiles: data, not code. One YAML file per profile in ``targets/``."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from edgepack.errors import UsageError

PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8")


def profiles_dir() -> Path:
    """Installed wheels carry the profiles inside the package; a checkout keeps them at the top."""
    inside = Path(__file__).parent / "targets"
    return inside if inside.is_dir() else Path(__file__).parent.parent / "targets"


@cache
def _schema() -> dict[str, Any]:
    return json.loads((Path(__file__).parent / "schemas" / "profile.schema.json").read_text())


@dataclass(frozen=True)
class Profile:
    name: str
    backend: str
    runtime: dict[str, Any]
    precisions: tuple[str, ...]
    default_precision: str
    tolerances: dict[str, dict[str, float]]
    description: str = ""
    aliases: tuple[str, ...] = ()
    auto_order: tuple[str, ...] = ()
    auto_host_latency: bool = False  # the build host runs the target's runtime
    static_shapes: bool = False
    opset: int = 17
    int8: dict[str, Any] = field(default_factory=dict)
    latency_budget_ms: float | None = None
    device: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # backend-specific settings
    source: str = ""  # where it was read from, for messages

    def tolerances_for(self, precision: str) -> dict[str, float]:
        return dict(self.tolerances.get(precision, {}))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "backend": self.backend, "runtime": self.runtime["name"]}


def check_plain(data: Any, where: str) -> None:
    """Mapping keys must be strings and nothing may contain itself (YAML anchors can):
    what JSON Schema validation, and everything after it, takes for granted."""
    stack: list[tuple[Any, tuple[int, ...], str]] = [(data, (), "")]
    seen: set[int] = set()  # aliases share containers: walk each once
    while stack:
        value, parents, at = stack.pop()
        if not isinstance(value, (dict, list)):
            continue
        if id(value) in parents:
            raise UsageError(f"{where}: {at or '(top level)'} contains itself (a YAML alias "
                             "loop); write the values out")
        if id(value) in seen:
            continue
        seen.add(id(value))
        inner = (*parents, id(value))
        if isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str):
                    raise UsageError(f"{where}: {at or '(top level)'}: key {k!r} is not a "
                                     "string; quote it")
                stack.append((v, inner, f"{at}/{k}" if at else k))
        else:
            stack.extend((v, inner, f"{at}/{i}" if at else str(i)) for i, v in enumerate(value))


def _from_mapping(data: Any, where: str) -> Profile:
    import jsonschema

    if not isinstance(data, dict):
        raise UsageError(f"profile {where}: expected a mapping of settings")
    check_plain(data, f"profile {where}")
    errors = sorted(jsonschema.Draft202012Validator(_schema()).iter_errors(data), key=str)
    if errors:
        e = errors[0]
        at = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise UsageError(f"profile {where}: {at}: {e.message[:200]}; fix the profile "
                         "(schema: edgepack/schemas/profile.schema.json)")
    if data["default_precision"] not in data["precisions"]:
        raise UsageError(f"profile {where}: default_precision is not one of its precisions")
    # JSON Schema lets NaN through every bound (all comparisons with NaN are false)
    numbers = [(f"tolerances/{p}/{k}", v) for p, tol in data["tolerances"].items()
               for k, v in tol.items()]
    numbers.append(("latency_budget_ms", data.get("latency_budget_ms")))
    for at, value in numbers:
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"profile {where}: {at}: {value} is not a finite number")
    return Profile(
        name=data["name"],
        backend=data["backend"],
        runtime=dict(data["runtime"]),
        precisions=tuple(data["precisions"]),
        default_precision=data["default_precision"],
        tolerances={k: dict(v) for k, v in data["tolerances"].items()},
        description=data.get("description", ""),
        aliases=tuple(data.get("aliases", ())),
        auto_order=tuple(data.get("auto_order", ())),
        auto_host_latency=bool(data.get("auto_host_latency", False)),
        static_shapes=bool(data.get("static_shapes", False)),
        opset=int(data.get("opset", 17)),
        int8=dict(data.get("int8", {})),
        latency_budget_ms=data.get("latency_budget_ms"),
        device=dict(data.get("device", {})),
        options=dict(data.get("options", {})),
        source=where,
    )


def read_yaml(path: Path, what: str) -> Any:
    """A user's YAML file, or a one-line UsageError (never another exception)."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"cannot read {what} {path}: {e.strerror}") from None
    except (yaml.YAMLError, ValueError, RecursionError) as e:
        # ValueError: bytes that are not UTF-8, or a scalar PyYAML cannot build (a date
        # such as 2024-13-01); RecursionError: absurdly deep nesting.
        raise UsageError(f"{what} {path} is not valid YAML ({_yaml_reason(e)}); fix the "
                         "file") from None


def _yaml_reason(e: BaseException) -> str:
    """PyYAML's problem and where it is (its first line alone names only the context)."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:160]


def load_profile_file(path: Path) -> Profile:
    return _from_mapping(read_yaml(path, "profile"), str(path))


def builtin_profiles() -> dict[str, Profile]:
    """Every shipped profile, by name."""
    out = {}
    for p in sorted(profiles_dir().glob("*.yaml")):
        prof = load_profile_file(p)
        out[prof.name] = prof
    return out


def resolve_targets(names: list[str]) -> list[Profile]:
    """Aliases, profile names, paths to profile YAML files, or ``all``."""
    shipped = builtin_profiles()
    by_alias = {a: p for p in shipped.values() for a in p.aliases}
    out: list[Profile] = []
    for name in names:
        if name == "all":
            out.extend(shipped.values())
        elif name in shipped:
            out.append(shipped[name])
        elif name in by_alias:
            out.append(by_alias[name])
        elif name.endswith((".yaml", ".yml")) or "/" in name:
            path = Path(name)
            if not path.is_file():
                raise UsageError(f"no such profile file: {name}")
            out.append(load_profile_file(path))
        else:
            known = sorted(set(shipped) | set(by_alias) | {"all"})
            raise UsageError(f"unknown target {name!r}; use one of {', '.join(known)} "
                             "or a path to a profile YAML")
    seen: dict[str, Profile] = {}
    for p in out:
        seen.setdefault(p.name, p)
    return list(seen.values())
