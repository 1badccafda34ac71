"""The Core ML proxy on hosts without Core ML: the converted torch program, in torch,
with Core ML's compressed weights and its fp16 compute.

Core ML folds batch norm into the preceding conv before compressing, so a
compressed weight is ``s_c * W_c`` per output channel of a torch weight ``W``.
Each compressed tensor is matched to the torch parameter it came from (same
shape, per-channel proportional to within fp16 precision), and the parameter is
replaced by ``expanded_c / s_c``: the device's exact weight error, carried back
to the unfused parameter. Weights are not re-quantized here; they come from the
saved package.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgepack.errors import InputError
from edgepack.runners.torch import TorchRunner


@dataclass
class CompressedTensor:
    """A weight Core ML stores compressed (produced by quantize.coreml_compress)."""

    name: str               # the float const it replaced, in the uncompressed program
    original: np.ndarray    # float weights before compression (as the program stored them)
    expanded: np.ndarray    # what the constexpr op expands to on the device
    axis: int | None = None  # the per-channel axis of the compression (None: per tensor)


FIT_TOLERANCE = 2e-2  # relative residual of the per-channel fit; fp16 storage gives ~1e-3


@dataclass
class WeightMatch:
    tensor: str          # compressed tensor (program const name)
    parameter: str       # torch parameter / buffer name
    axis: int            # channel axis of the per-channel fit
    transposed: bool     # the program stores the parameter transposed (2-D)
    replacement: np.ndarray  # the parameter's new value (float32, parameter layout)
    residual: float


def _fit(original: np.ndarray, param: np.ndarray, axis: int
         ) -> tuple[np.ndarray, float, np.ndarray]:
    """Per-channel scale s with original ~ s * param along ``axis``.

    Returns (s, the worst channel's relative residual, channels that fit). A
    channel far below the tensor's largest (a dead channel of ~1e-8 weights,
    which fp16 rounds to a few subnormals) is measured against 1e-3 of the
    largest channel norm: it cannot be fitted and does not matter.
    """
    f = np.moveaxis(original.astype(np.float64), axis, 0).reshape(original.shape[axis], -1)
    w = np.moveaxis(param.astype(np.float64), axis, 0).reshape(param.shape[axis], -1)
    ww = np.einsum("ij,ij->i", w, w)
    scale = np.where(ww > 0, np.einsum("ij,ij->i", f, w) / np.where(ww > 0, ww, 1.0), 0.0)
    resid = np.linalg.norm(f - scale[:, None] * w, axis=1)
    norm = np.linalg.norm(f, axis=1)
    if not norm.size:
        return scale, 0.0, np.ones(0, dtype=bool)
    floor = max(float(norm.max()) * 1e-3, 1e-30)
    fits = resid <= FIT_TOLERANCE * np.maximum(norm, 0.0)
    rel = resid / np.maximum(norm, floor)
    return scale, float(rel.max()), fits


def _carry_back(expanded: np.ndarray, param: np.ndarray, scale: np.ndarray,
                axis: int, fits: np.ndarray) -> np.ndarray:
    """param with each fitted channel replaced by expanded / s (others keep param)."""
    e = np.moveaxis(expanded.astype(np.float64), axis, 0)
    p = np.moveaxis(param.astype(np.float64), axis, 0)
    shape = (-1,) + (1,) * (e.ndim - 1)
    keep = ~fits | (np.abs(scale) < 1e-30)
    s = np.where(keep, 1.0, scale).reshape(shape)
    out = np.where(keep.reshape(shape), p, e / s)
    return np.moveaxis(out, 0, axis).astype(np.float32)


def float_parameters(module: Any) -> dict[str, np.ndarray]:
    """Float parameters and buffers of a torch module, as numpy (names as torch gives them)."""
    out = {}
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        if t.is_floating_point() and t.dim() >= 1 and name not in out:
            out[name] = t.detach().float().cpu().numpy()
    return out


def match_weights(module: Any, tensors: list[CompressedTensor]) -> tuple[list[WeightMatch],
                                                                           list[str]]:
    """Match each compressed tensor to the torch parameter it came from.

    Returns (matches, names of compressed tensors with no parameter). Largest
    tensors first; a parameter is used at most once.
    """
    params = float_parameters(module)
    used: set[str] = set()
    matches, unmatched = [], []
    for t in sorted(tensors, key=lambda t: (-t.original.size, t.name)):
        best: WeightMatch | None = None
        for name, p in params.items():
            if name in used:
                continue
            for transposed in (False, True):
                q = p.T if transposed else p
                if transposed and p.ndim != 2:
                    continue
                if q.shape != t.original.shape:
                    continue
                # the output-channel axis first: batch norm folds along it (axis 1 only
                # for transposed convs); a parameter with no fold fits any axis
                for axis in range(min(2, q.ndim)):
                    scale, resid, fits = _fit(t.original, q, axis)
                    if resid > FIT_TOLERANCE:
                        continue
                    if best is None or resid < best.residual - 1e-6:
                        new = _carry_back(t.expanded, q, scale, axis, fits)
                        best = WeightMatch(t.name, name, axis, transposed,
                                           new.T if transposed else new, resid)
                    break
        if best is None:
            unmatched.append(t.name)
        else:
            used.add(best.parameter)
            matches.append(best)
    return matches, sorted(unmatched)


def weight_error(tensors: list[CompressedTensor]) -> dict[str, Any]:
    """What compression did to the weights: expanded vs uncompressed, in the package.

    Both sides are the program's own weights (batch norm already folded in, fp16
    at fp16 compute), so this is exactly the compression's error. ``rel_err`` of
    a tensor is ||W' - W|| / ||W||; ``max_abs_err`` is over all elements;
    ``max_rel_to_range`` is the largest error relative to the largest |W| of its
    channel along the compression's channel axis (of the tensor for per-tensor
    palettes). int8 symmetric rounding bounds it by half a step (0.5/127) plus
    fp16 rounding of scales and values. Channels whose range is below 1e-3 of
    the tensor's are left out of it: fp16 cannot hold their scales, so their
    relative error is large while their absolute error is negligible.
    """
    rel, max_abs, max_range, elements = [], 0.0, 0.0, 0
    for t in tensors:
        w = t.original.astype(np.float64)
        d = t.expanded.astype(np.float64) - w
        elements += w.size
        norm = np.linalg.norm(w)
        rel.append(float(np.linalg.norm(d) / norm) if norm > 0 else 0.0)
        max_abs = max(max_abs, float(np.abs(d).max()) if d.size else 0.0)
        axis = t.axis
        if axis is None:
            ch_max, ch_err = np.abs(w).reshape(1, -1).max(axis=1), np.abs(d).reshape(1, -1).max(1)
        else:
            ch_max = np.moveaxis(np.abs(w), axis, 0).reshape(w.shape[axis], -1).max(axis=1)
            ch_err = np.moveaxis(np.abs(d), axis, 0).reshape(d.shape[axis], -1).max(axis=1)
        ok = (ch_max >= 1e-3 * ch_max.max()) & (ch_max > 0) if ch_max.size else ch_max > 0
        if ok.any():
            max_range = max(max_range, float((ch_err[ok] / ch_max[ok]).max()))
    return _rounded({
        "tensors": len(tensors), "elements": elements, "max_abs_err": max_abs,
        "rel_err_max": max(rel, default=0.0), "rel_err_mean": float(np.mean(rel)) if rel else 0.0,
        "max_rel_to_range": max_range,
    })


def fp16_weight_error(module: Any) -> dict[str, Any]:
    """What storing the weights as fp16 does to them (fp16 and int8 packages).

    Over every weight tensor (rank >= 2) of the torch program; the relative
    error is the same after batch norm is folded in (fp16 rounding is relative),
    while ``max_abs_err`` is in the unfolded parameters' units.
    """
    rel, max_abs, elements = [], 0.0, 0
    for w in float_parameters(module).values():
        if w.ndim < 2:
            continue
        w = w.astype(np.float64)
        d = w.astype(np.float16).astype(np.float64) - w
        elements += w.size
        norm = np.linalg.norm(w)
        rel.append(float(np.linalg.norm(d) / norm) if norm > 0 else 0.0)
        if np.isfinite(d).all() and d.size:
            max_abs = max(max_abs, float(np.abs(d).max()))
        else:
            max_abs = float("inf")  # a weight beyond fp16's range
    return _rounded({"tensors": len(rel), "elements": elements, "max_abs_err": max_abs,
                     "rel_err_max": max(rel, default=0.0),
                     "rel_err_mean": float(np.mean(rel)) if rel else 0.0})


def _rounded(d: dict[str, Any]) -> dict[str, Any]:
    from edgepack.harness.edgepack_metrics import rounded

    return {k: rounded(v) if isinstance(v, float) else v for k, v in d.items()}


class _Call:
    """A module as a plain callable: TorchRunner calls ``eval()`` on anything that has it,
    and modules of torch.export programs refuse that."""

    def __init__(self, module: Any) -> None:
        self.module = eval_mode(module)

    def __call__(self, *args: Any) -> Any:
        return self.module(*args)


def torch_runner(module: Any, input_names: list[str], output_names: list[str]
                 ) -> TorchRunner:
    return TorchRunner(_Call(module), input_names, output_names)


class ProxyRunner:
    """The torch program with Core ML's weights, at fp16 (or fp32) compute."""

    def __init__(self, module: Any, input_names: list[str], output_names: list[str],
                 dtype: str = "float32") -> None:
        self.name = f"torch-proxy-{dtype}"
        self.dtype = dtype
        self._inner = torch_runner(module, input_names, output_names)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.dtype == "float16":
            feeds = {k: v.astype(np.float16) if np.issubdtype(v.dtype, np.floating) else v
                     for k, v in feeds.items()}
        out = self._inner.run(feeds)
        return {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in out.items()}


def proxy_module(module: Any, matches: list[WeightMatch], fp16: bool) -> Any:
    """A copy of ``module`` with the matched parameters replaced (and cast to fp16)."""
    import torch

    proxy = copy.deepcopy(module)
    tensors = dict(proxy.named_parameters())
    tensors.update(dict(proxy.named_buffers()))
    with torch.no_grad():
        for m in matches:
            t = tensors[m.parameter]
            t.copy_(torch.from_numpy(m.replacement).to(t.dtype))
    if fp16:
        proxy = proxy.half()
    return eval_mode(proxy)


def eval_mode(module: Any) -> Any:
    """``module.eval()`` where allowed (torch.export modules refuse it: already inference)."""
    try:
        module.eval()
    except (NotImplementedError, AttributeError):
        pass
    return module


def make_proxy(module: Any, matches: list[WeightMatch], fp16: bool, input_names: list[str],
               output_names: list[str], probe: dict[str, np.ndarray]) -> tuple[ProxyRunner, str]:
    """The proxy runner and how it computes; fp16 falls back to fp32 when torch cannot."""
    if fp16:
        runner = ProxyRunner(proxy_module(module, matches, True), input_names, output_names,
                             "float16")
        try:
            out = runner.run(probe)
            if all(np.isfinite(v).all() for v in out.values()):
                return runner, "fp16 compute"
            why = "non-finite outputs at fp16"
        except InputError:
            raise
        except Exception as e:
            from edgepack.errors import one_line

            why = one_line(e, 120)
        fallback = _fp16_rounded(module, matches)
        return (ProxyRunner(fallback, input_names, output_names, "float32"),
                f"fp32 compute with fp16-rounded weights (torch CPU could not run it at fp16: "
                f"{why})")
    return (ProxyRunner(proxy_module(module, matches, False), input_names, output_names),
            "fp32 compute")


def _fp16_rounded(module: Any, matches: list[WeightMatch]) -> Any:
    import torch

    proxy = proxy_module(module, matches, False)
    with torch.no_grad():
        for t in [*proxy.parameters(), *proxy.buffers()]:
            if t.is_floating_point():
                t.copy_(t.half().float())
    return proxy
