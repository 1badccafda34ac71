"""Errors users can cause. Each carries the process exit code the CLI uses.

Exit codes (every command): 0 ok, 1 a validation failed, 2 usage or input
error, 3 a conversion failed.
"""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path


class EdgepackError(Exception):
    """Base class: a message that says what was wrong and what to do."""

    exit_code = 2


class UsageError(EdgepackError):
    """Bad flags, unknown target or precision, malformed option values."""

    exit_code = 2


class InputError(EdgepackError):
    """A user file that cannot be used: missing, corrupt, wrong shape or dtype."""

    exit_code = 2


class MissingExtraError(EdgepackError):
    """An optional framework is not installed; the message names the extra."""

    exit_code = 2

    def __init__(self, module: str, extra: str, what: str = "") -> None:
        why = f" ({what})" if what else ""
        super().__init__(
            f"{module} is not installed{why}: pip install 'edgepack[{extra}]'"
        )


class ConversionError(EdgepackError):
    """A converter or quantizer failed on a valid input."""

    exit_code = 3


class ValidationFailed(EdgepackError):
    """An artifact missed its tolerance or failed an integrity check."""

    exit_code = 1


class Status(str, Enum):
    """A bundle's validation status, as the manifest, summary and reports spell it."""

    PASSED = "passed"
    FAILED = "failed"
    DEFERRED = "deferred"  # this host cannot run the artifact; its device harness checks it

    def __str__(self) -> str:
        return self.value

    # equal to its plain string (manifests read back from JSON hold plain strings), so
    # it must hash like one too: dicts keyed either way find each other
    __hash__ = str.__hash__


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_TORCHSCRIPT_TRACEBACK = "The following operation failed in the TorchScript interpreter"
_ERROR_LINE = re.compile(r"^[A-Za-z_.]*(Error|Exception): ")

#: Exceptions whose message alone does not say what went wrong (a bug inside a tool or
#: the user's code, e.g. "list index out of range"): the one-line reason also names
#: the type and the innermost frame, which is what a search or bug report needs.
_BARE = (AssertionError, AttributeError, IndexError, KeyError, NotImplementedError,
         TypeError, UnboundLocalError, ZeroDivisionError)


def origin(exc: BaseException) -> str:
    """' (IndexError in pkg/module.py:609 function)' for a bare exception, else ''."""
    import traceback

    if not isinstance(exc, _BARE) or exc.__traceback__ is None:
        return ""
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    path = frame.filename.replace("\\", "/")
    path = path.split("site-packages/")[-1] if "site-packages/" in path else Path(path).name
    return f" ({type(exc).__name__} in {path}:{frame.lineno} {frame.name})"


def one_line(exc: BaseException | str, limit: int = 240, tail: list[str] | None = None) -> str:
    """The one line a user sees for an error: what went wrong, shortened.

    Our own errors (``EdgepackError``) are already written for users and pass whole.
    Otherwise the first non-empty line of the message (after a TorchScript traceback,
    its last error line); with ``tail`` (the last lines a converter printed, see
    ``frameworks.quiet``) a line naming an error is preferred, and an empty message
    falls back to the converter's last line. A bare exception (IndexError, ...) also
    names its type and innermost frame.
    """
    if isinstance(exc, EdgepackError):
        return str(exc).strip() or type(exc).__name__
    text = exc if isinstance(exc, str) else str(exc)
    lines = [ln.strip() for ln in _ANSI.sub("", text).splitlines() if ln.strip()]
    if lines and lines[0].startswith(_TORCHSCRIPT_TRACEBACK):
        # The reason is the last line ("RuntimeError: ..."), after the script traceback.
        errors = [ln for ln in lines if _ERROR_LINE.match(ln)]
        if errors:
            lines = [_ERROR_LINE.sub("", errors[-1])]
    if tail is not None:
        lines = [ln for ln in lines if "error" in ln.lower()] or lines or tail[-1:]
    line = lines[0] if lines else type(exc).__name__
    line = line if len(line) <= limit else line[: limit - 3] + "..."
    return line + ("" if isinstance(exc, str) else origin(exc))
