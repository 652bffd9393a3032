"""Exception classes of streamcore.

Every exception streamcore raises on purpose derives from ``StreamcoreError``
and from the builtin that fits it, so callers can catch either. The native
modules raise these same classes.
"""

from __future__ import annotations


class StreamcoreError(Exception):
    """Base class of every error streamcore raises on purpose."""


class ConfigError(StreamcoreError, ValueError):
    """An option is outside its allowed range.

    Attributes name the option, the value received and the allowed range.
    """

    def __init__(self, option: str, value: object, allowed: str) -> None:
        self.option = option
        self.value = value
        self.allowed = allowed
        super().__init__(f"{option}={value!r} is invalid: expected {allowed}")


class InvalidRecordsError(StreamcoreError, ValueError):
    """Input records cannot be stored (missing or null key, bad type, reserved name).

    ``row`` is the 0-based index of the first offending row, when one is to blame.
    """

    def __init__(self, message: str, *, row: int | None = None) -> None:
        self.row = row
        super().__init__(message)


class AppStateError(StreamcoreError, RuntimeError):
    """An operation does not fit the App's current state (e.g. run while running)."""
