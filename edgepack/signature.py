"""TensorSpec and Signature: the ordered inputs and outputs of a model."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from edgepack.errors import UsageError

Dim = int | str  # a str is a symbolic dimension ("batch", "N", ...)

DTYPES = (
    "float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool",
)
LAYOUTS = ("NCHW", "NHWC", "NCW", "NWC", "NC")


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor: shape (symbolic dims allowed), numpy dtype name, layout."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str = "float32"
    layout: str | None = None

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) and d > 0 for d in self.shape)

    @property
    def batch(self) -> int:
        """Samples per run: the static first dim, or 1 when it is symbolic."""
        if self.shape and isinstance(self.shape[0], int) and self.shape[0] > 0:
            return self.shape[0]
        return 1

    def concrete_shape(self) -> tuple[int, ...]:
        """Shape for one run; symbolic dims become 1 (only valid for the batch dim)."""
        return tuple(d if isinstance(d, int) and d > 0 else 1 for d in self.shape)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "layout": self.layout}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(name=str(d["name"]), shape=tuple(d.get("shape") or ()),
                   dtype=str(d.get("dtype", "float32")), layout=d.get("layout"))


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...] = field(default_factory=tuple)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @property
    def batch(self) -> int:
        return self.inputs[0].batch if self.inputs else 1

    def input(self, name: str) -> TensorSpec:
        for t in self.inputs:
            if t.name == name:
                return t
        raise UsageError(f"the model has no input named {name!r}; inputs: {self.input_names}")

    def with_inputs(self, overrides: list[TensorSpec]) -> Signature:
        """Fix input shapes/dtypes from --input; each override must match an input and rank."""
        by_name = {o.name: o for o in overrides}
        new = []
        for t in self.inputs:
            o = by_name.pop(t.name, None)
            if o is None:
                new.append(t)
                continue
            # e.g. --input input:1x3x224x224: the model's shape, symbolic dims set to 1
            fit = f"e.g. --input {o.name}:{'x'.join(map(str, t.concrete_shape()))}"
            if t.shape and len(o.shape) != len(t.shape):
                raise UsageError(
                    f"--input {o.name}: rank {len(o.shape)} does not fit the model's "
                    f"input of shape {list(t.shape)}; give {len(t.shape)} dims, {fit}"
                )
            for mine, given in zip(t.shape, o.shape, strict=False):
                if isinstance(mine, int) and mine > 0 and mine != given:
                    raise UsageError(
                        f"--input {o.name}: shape {list(o.shape)} does not fit the model's "
                        f"input of shape {list(t.shape)}; {fit}"
                    )
            new.append(replace(t, shape=o.shape, dtype=o.dtype, layout=o.layout or t.layout))
        if by_name:
            raise UsageError(
                f"--input names {sorted(by_name)} are not model inputs; inputs: {self.input_names}"
            )
        return replace(self, inputs=tuple(new))

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": [t.to_dict() for t in self.inputs],
                "outputs": [t.to_dict() for t in self.outputs]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Signature:
        return cls(inputs=tuple(TensorSpec.from_dict(t) for t in d.get("inputs", [])),
                   outputs=tuple(TensorSpec.from_dict(t) for t in d.get("outputs", [])))


_INPUT_RE = re.compile(
    r"^(?P<name>[^:]+):(?P<shape>[^:]+)(?::(?P<dtype>[^:]+))?(?::(?P<layout>[^:]+))?$"
)


def parse_input_option(text: str) -> TensorSpec:
    """Parse ``NAME:SHAPE[:DTYPE[:LAYOUT]]``, e.g. ``input:1x3x224x224:float32``."""
    m = _INPUT_RE.match(text.strip())
    if not m:
        raise UsageError(
            f"--input {text!r}: expected NAME:SHAPE[:DTYPE], e.g. input:1x3x224x224:float32"
        )
    dims: list[Dim] = []
    for part in m["shape"].lower().split("x"):
        # ASCII digits only: str.isdigit() also accepts "²", which int() refuses
        if not (part.isascii() and part.isdigit()) or int(part) <= 0:
            raise UsageError(
                f"--input {text!r}: shape dims must be positive integers separated by 'x', "
                "e.g. 1x3x224x224"
            )
        dims.append(int(part))
    dtype = m["dtype"] or "float32"
    if dtype not in DTYPES:
        raise UsageError(
            f"--input {text!r}: unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}"
        )
    layout = m["layout"].upper() if m["layout"] else None
    if layout is not None and layout not in LAYOUTS:
        raise UsageError(
            f"--input {text!r}: unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}"
        )
    return TensorSpec(name=m["name"], shape=tuple(dims), dtype=dtype, layout=layout)


def numpy_dtype(name: str) -> np.dtype:
    return np.dtype(name)
