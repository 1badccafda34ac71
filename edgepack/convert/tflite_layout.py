"""Layouts of TFLite artifacts: which tensors change from the source's layout, and how.

TFLite is channel-last: litert-torch's channel-last I/O and onnx2tf turn NCHW
image tensors into NHWC (onnx2tf also turns NCW into NWC). A backend records,
per tensor, the permutation from the source layout to the artifact's, so the
host runner can take source-layout feeds and golden I/O can be stored in the
artifact's own layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgepack.signature import TensorSpec

# layout -> (channel-last layout, permutation from the channel-first one)
CHANNEL_LAST = {
    "NCHW": ("NHWC", (0, 2, 3, 1)),
    "NCW": ("NWC", (0, 2, 1)),
    "NCDHW": ("NDHWC", (0, 2, 3, 4, 1)),
}
_BY_RANK = {4: "NCHW", 3: "NCW", 5: "NCDHW"}

Perms = dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class Mapped:
    """One artifact tensor: its spec (source name, artifact shape/layout) and the permutation."""

    spec: TensorSpec
    perm: tuple[int, ...] | None  # source -> artifact; None = same layout


def is_channel_first_image(spec: TensorSpec) -> bool:
    return len(spec.shape) == 4 and spec.layout == "NCHW"


def channel_last(spec: TensorSpec) -> Mapped:
    """The NHWC twin of an NCHW spec (others unchanged)."""
    if spec.layout not in CHANNEL_LAST or len(spec.shape) != len(CHANNEL_LAST[spec.layout][1]):
        return Mapped(spec, None)
    layout, perm = CHANNEL_LAST[spec.layout]
    shape = tuple(spec.shape[i] for i in perm)
    return Mapped(TensorSpec(spec.name, shape, spec.dtype, layout), perm)


def match_shape(spec: TensorSpec, shape: Sequence[int], prefer_channel_last: bool) -> Mapped:
    """Map a source tensor to an artifact tensor of ``shape`` by shape alone.

    Same shape -> same layout; the channel-last permutation of the shape -> that
    layout. When both fit (square shapes) the converter's habit decides
    (``prefer_channel_last``); a wrong guess is caught by validation, whose
    metrics collapse when elements are compared with the wrong ones.
    """
    src = tuple(int(d) if isinstance(d, int) else -1 for d in spec.shape)
    got = tuple(int(d) for d in shape)
    layout = spec.layout or _BY_RANK.get(len(src))
    perm = CHANNEL_LAST.get(layout, (None, None))[1] if layout else None
    same = _fits(src, got)
    permuted = perm is not None and len(perm) == len(src) and _fits(
        tuple(src[i] for i in perm), got)
    if permuted and (prefer_channel_last or not same):
        new_layout = CHANNEL_LAST[layout][0]
        return Mapped(TensorSpec(spec.name, got, spec.dtype, new_layout), perm)
    if same:
        return Mapped(TensorSpec(spec.name, got, spec.dtype, spec.layout), None)
    return Mapped(TensorSpec(spec.name, got, spec.dtype, None), ())  # () = no known mapping


def _fits(src: tuple[int, ...], got: tuple[int, ...]) -> bool:
    return len(src) == len(got) and all(s < 0 or g < 0 or s == g for s, g in zip(src, got,
                                                                                  strict=True))


def to_layout(arrays: dict[str, np.ndarray], perms: Perms) -> dict[str, np.ndarray]:
    """Source-layout arrays -> artifact layout (names without a permutation pass as is)."""
    return {k: np.ascontiguousarray(np.transpose(v, perms[k])) if perms.get(k) else v
            for k, v in arrays.items()}
