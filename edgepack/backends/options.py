"""Declared profile options: each backend lists its ``options:`` keys once (type,
default, allowed values, what it does) and one function checks a profile against them.

Checked in the build process before any work starts, so a bad option is a usage error
(exit 2) naming the key, never a failed conversion.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from edgepack.errors import UsageError

_NO_DEFAULT = object()


@dataclass(frozen=True)
class Option:
    """One key of a backend's profile ``options:``."""

    name: str
    kind: type | tuple[Any, ...]  # a type (int, bool, str, dict), or the allowed values
    default: Any
    description: str
    minimum: int | None = None  # for ints
    # further rule: the problem with a value ("must ..."), or None when it is fine
    rule: Callable[[Any], str | None] | None = None

    def problem(self, value: Any) -> str | None:
        if value is None and self.default is None:  # "not set", as in the shipped YAML
            return None
        if isinstance(self.kind, tuple):
            if value not in self.kind:
                return f"must be one of {', '.join(map(str, self.kind))}, not {value!r}"
        elif self.kind is int:
            if not isinstance(value, int) or isinstance(value, bool) or (
                    self.minimum is not None and value < self.minimum):
                floor = "" if self.minimum is None else f" >= {self.minimum}"
                return f"must be an integer{floor}, not {value!r}"
        elif not isinstance(value, self.kind):
            return f"must be a {self.kind.__name__}, not {value!r}"
        return self.rule(value) if self.rule is not None else None


def read_options(profile: Any, table: Sequence[Option], backend: str) -> dict[str, Any]:
    """``profile.options`` checked against ``table``, with the defaults filled in."""
    where = f"profile {profile.name}: options"
    given = dict(profile.options or {})
    known = {o.name: o for o in table}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise UsageError(f"{where}: unknown keys {unknown}; {backend} takes "
                         f"{', '.join(sorted(known)) or 'none'}")
    values = {}
    for name, option in known.items():
        if name not in given:
            values[name] = option.default
            continue
        why = option.problem(given[name])
        if why is not None:
            raise UsageError(f"{where}.{name} {why}")
        values[name] = given[name]
    return values


def describe(table: Sequence[Option]) -> list[dict[str, Any]]:
    """The table as data (for ``edgepack targets`` and docs)."""
    return [{"name": o.name, "default": o.default, "description": o.description,
             "allowed": list(o.kind) if isinstance(o.kind, tuple) else o.kind.__name__}
            for o in table]
