"""Exceptions shared by every layer.

Every error a user can cause derives from LocalityError: the CLI prints it as
one line (message, then the fix) and exits with status 2, without a traceback.
Kernel errors carry the PID, as psutil's do.
"""

from __future__ import annotations


class LocalityError(Exception):
    """A problem the user can fix. ``str(e)`` is one line; ``hint`` says how."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class InvalidArgument(LocalityError, ValueError):
    """An argument is out of range, unaligned, or of the wrong kind."""


class ConfigError(LocalityError):
    """A configuration file or --set value is invalid; message names the key."""


class ProcessError(LocalityError):
    """Base for errors about a specific process."""

    def __init__(self, pid: int, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.pid = pid


class NoSuchProcess(ProcessError, ProcessLookupError):
    def __init__(self, pid: int, hint: str | None = None) -> None:
        super().__init__(pid, f"no process with PID {pid}", hint or "check the PID with `ps`")


class AccessDenied(ProcessError, PermissionError):
    def __init__(self, pid: int, what: str, hint: str | None = None) -> None:
        super().__init__(
            pid,
            f"permission denied: {what} of PID {pid}",
            hint or "run as root or as the process owner (ptrace access is needed)",
        )
        self.what = what


class Unsupported(LocalityError):
    """A kernel feature this instrument needs is missing here."""

    def __init__(self, feature: str, reason: str, hint: str | None = None) -> None:
        super().__init__(f"{feature} is not available: {reason}", hint)
        self.feature = feature
        self.reason = reason


class LocalityWarning(UserWarning):
    """Something the user should know that does not stop the command (the CLI prints one line)."""
