"""Errors users can cause. Each carries the process exit code the CLI uses.

Exit codes (every command): 0 ok, 1 a validation failed, 2 usage or input
error, 3 a conversion failed.
"""

from __future__ import annotations


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
