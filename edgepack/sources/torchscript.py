"""TorchScript sources (.pt / .pth): loaded with torch.jit.load only, never unpickled."""

from __future__ import annotations

import warnings
from pathlib import Path

from edgepack.errors import InputError, one_line
from edgepack.frameworks import import_torch
from edgepack.signature import TensorSpec
from edgepack.sources.base import SourceModel, check_zip, file_sha256, safe_name, torch_signature


def load(spec: str, path: Path, inputs: list[TensorSpec],
         outputs: list[str] | None) -> SourceModel:
    check_zip(spec, path, "a TorchScript file", "save it with torch.jit.save, or name a "
              "Python entry (file.py:callable) that builds the model")
    torch = import_torch()
    try:
        with warnings.catch_warnings():  # "torch.jit.load is deprecated": not the user's concern
            warnings.simplefilter("ignore", DeprecationWarning)
            model = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        # A torch.save() pickle (state_dict or whole model) lands here too: edgepack
        # never unpickles it; a Python entry that builds the model can load it.
        raise InputError(
            f"{spec} is not a TorchScript file ({one_line(e, 120)}); save it with "
            "torch.jit.save, or name a Python entry (file.py:callable) that builds the model"
        ) from e
    model.eval()
    signature = torch_signature(model, inputs, outputs)
    return SourceModel(
        format="torchscript", location=spec, sha256=file_sha256(path), signature=signature,
        name=safe_name(path.stem), torch_model=model,
        parameters=sum(p.numel() for p in model.parameters()),
    )
