"""Python entries: ``file.py:callable`` or ``pkg.module:callable`` returning an nn.Module.

The user's code is imported and run only because the user named it. The
callable is called with no arguments; its module's folder (or the working
directory, for dotted modules) is on sys.path while it imports and runs, so
the file can import its siblings.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from edgepack.errors import EdgepackError, InputError, MissingExtraError, UsageError, one_line
from edgepack.frameworks import import_torch
from edgepack.signature import TensorSpec
from edgepack.sources.base import SourceModel, check_file, safe_name, torch_signature

# Factory names that say nothing about the model: fall back to the file/module name.
_GENERIC = {"build", "create", "make", "load", "get", "factory", "main", "model", "net",
            "network", "module", "init", "get_model", "build_model", "create_model",
            "make_model", "load_model", "model_fn"}

# The user's own code failed: its traceback is theirs to read (the CLI shows it with --debug).
DEBUG_HINT = " (rerun with --debug for the traceback)"


def load(spec: str, target: str, attr: str, inputs: list[TensorSpec],
         outputs: list[str] | None) -> SourceModel:
    # The user's module first: a missing or broken entry is reported without waiting
    # seconds for torch to import (a module that needs torch imports it itself).
    module = _import(spec, target)
    factory: Any = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise UsageError(f"{spec}: {target} has no attribute {attr!r}; name a function "
                             "or class it defines that returns the model")
        factory = getattr(factory, part)
    if not callable(factory):
        raise UsageError(f"{spec}: {attr} is of type {type(factory).__name__}, not a callable "
                         "that returns the model")
    with _on_path(_search_dir(target)):
        try:
            model = factory()
        except EdgepackError:
            raise
        except Exception as e:
            _torch_missing(e)
            raise InputError(f"{spec}: calling {attr}() raised "
                             f"{type(e).__name__}: {one_line(e)}{DEBUG_HINT}") from e
    torch = import_torch()
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"{spec}: {attr}() returned an object of type "
                         f"{type(model).__name__}, not a torch.nn.Module; return the model "
                         "object")
    model.eval()
    signature = torch_signature(model, inputs, outputs)
    source_file = _source_file(module)
    return SourceModel(
        format="python", location=spec, sha256=entry_sha256(model, source_file, attr),
        signature=signature, name=_model_name(target, attr), torch_model=model,
        parameters=sum(p.numel() for p in model.parameters()),
    )


def entry_sha256(model: Any, source_file: Path | None, attr: str) -> str:
    """Content hash: state_dict (sorted names, dtype, shape, bytes) + source bytes + callable."""
    import torch

    h = hashlib.sha256(b"edgepack-python-entry\0")
    state = model.state_dict()
    for name in sorted(state):
        t = state[name]
        if not isinstance(t, torch.Tensor):
            h.update(f"{name}\0{t!r}\0".encode())
            continue
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}\0{t.dtype}\0{tuple(state[name].shape)}\0".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update(f"\0callable\0{attr}\0source\0".encode())
    if source_file is not None:
        h.update(source_file.read_bytes())
    return h.hexdigest()


def _import(spec: str, target: str) -> ModuleType:
    if target.endswith(".py"):
        path = Path(target)
        check_file(path)
        # A private module name: the user's "model.py" must not shadow or be shadowed.
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
        name = f"_edgepack_entry_{safe_name(path.stem).replace('.', '_')}_{digest}"
        with _on_path(path.resolve().parent):
            try:
                mspec = importlib.util.spec_from_file_location(name, path)
                if mspec is None or mspec.loader is None:
                    raise UsageError(f"{spec}: cannot import {target}")
                module = importlib.util.module_from_spec(mspec)
                sys.modules[name] = module  # dataclasses/pickling look modules up by name
                mspec.loader.exec_module(module)
            except EdgepackError:
                raise
            except Exception as e:
                sys.modules.pop(name, None)
                _torch_missing(e)
                raise InputError(f"{spec}: importing {target} raised "
                                 f"{type(e).__name__}: {one_line(e)}{DEBUG_HINT}") from e
        return module
    with _on_path(Path.cwd(), append=True):
        try:
            return importlib.import_module(target)
        except ModuleNotFoundError as e:
            _torch_missing(e)
            if e.name and target.startswith(e.name):
                raise UsageError(f"{spec}: no module named {target!r} (run from the folder "
                                 "that holds it, or install it)") from e
            raise InputError(f"{spec}: importing {target} raised {one_line(e)}{DEBUG_HINT}") \
                from e
        except Exception as e:
            raise InputError(f"{spec}: importing {target} raised "
                             f"{type(e).__name__}: {one_line(e)}{DEBUG_HINT}") from e


def _torch_missing(e: BaseException) -> None:
    """The entry needs torch and it is not installed: name the extra, as for other sources."""
    if isinstance(e, ModuleNotFoundError) and e.name == "torch":
        raise MissingExtraError("torch", "torch", "needed to load PyTorch models") from e


def _search_dir(target: str) -> Path:
    if target.endswith(".py"):
        return Path(target).resolve().parent
    return Path.cwd()


@contextlib.contextmanager
def _on_path(folder: Path, append: bool = False) -> Iterator[None]:
    entry = os.fspath(folder)
    if entry in sys.path:
        yield
        return
    if append:
        sys.path.append(entry)
    else:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(entry)


def _source_file(module: ModuleType) -> Path | None:
    try:
        found = inspect.getsourcefile(module)
    except TypeError:  # built-in / namespace modules
        found = None
    found = found or getattr(module, "__file__", None)
    return Path(found) if found and Path(found).is_file() else None


def _model_name(target: str, attr: str) -> str:
    """The callable's name, else the file/module name, else its folder, else "model"."""
    last = attr.split(".")[-1]
    if target.endswith(".py"):
        path = Path(target).resolve()
        candidates = [last, path.stem, path.parent.name]
    else:
        parts = target.split(".")
        candidates = [last, *reversed(parts)]
    for c in candidates:
        if c and c.lower() not in _GENERIC and not c.startswith("_"):
            return safe_name(c)
    return "model"
