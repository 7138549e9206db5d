"""Errors that map to the exit codes documented in docs/cli.md ("Exit codes").

The CLI prints them as one ``error:`` line (plus an optional ``hint:`` line) and exits with ``exit_code``;
library users catch :class:`EdgeoptError`.
"""
from __future__ import annotations

__all__ = ["EdgeoptError", "UsageError", "GateError", "DeviceError"]


class EdgeoptError(Exception):
    """Base class: a failure with a user-facing message, an optional hint and an exit code."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(EdgeoptError):
    """Bad input or usage: missing file, not a model, unknown target, data that does not fit (exit 2)."""

    exit_code = 2


class GateError(EdgeoptError):
    """A gate failed: accuracy below threshold, latency over budget, a regression (exit 1).

    ``result`` carries what was produced (e.g. the manifest) so callers can still report it.
    """

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None, result=None):
        super().__init__(message, hint)
        self.result = result


class DeviceError(EdgeoptError):
    """Device or connection error: unreachable, auth, host key, runtime missing, remote run failed (exit 3)."""

    exit_code = 3

    def __init__(self, message: str, hint: str | None = None, device: str | None = None):
        if device and not message.startswith(device):
            message = f"{device}: {message}"
        super().__init__(message, hint)
        self.device = device
