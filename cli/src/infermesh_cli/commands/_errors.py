"""Exit codes, the CLI's own errors, and the one place an error becomes the single line a user reads.

Exit codes (the same for every subcommand):

- 0: done;
- 1: a service refused or failed the call (its gRPC status and message are printed), or a
  check did not pass (``status`` with an unhealthy service, ``events slo`` without PASS);
- 2: bad usage: an unknown option, a malformed value, an input file that cannot be read;
- 3: a service could not be reached: no address is known for it, or it is UNAVAILABLE or did
  not answer within the deadline (``--timeout``).
"""

from __future__ import annotations

import grpc

from infermesh_chassis.errors import InfermeshError

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "CliError",
    "Unreachable",
    "UsageError",
    "error_line",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

_UNREACHABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class CliError(Exception):
    """An error of the command itself; ``exit_code`` says which kind (see the module docstring)."""

    exit_code = EXIT_FAILED


class UsageError(CliError):
    """A malformed option value or an unreadable input file."""

    exit_code = EXIT_USAGE


class Unreachable(CliError):
    """No address is known for a service."""

    exit_code = EXIT_UNREACHABLE


def error_line(error: BaseException) -> tuple[str, int]:
    """The one line printed for ``error`` (without the ``infermesh:`` prefix) and the exit code."""
    if isinstance(error, InfermeshError):
        code = error.status_code
        exit_code = EXIT_UNREACHABLE if code in _UNREACHABLE_CODES else EXIT_FAILED
        return f"{code.name}: {' '.join(error.message.split())}", exit_code
    if isinstance(error, CliError):
        return " ".join(str(error).split()), error.exit_code
    return f"unexpected {type(error).__name__}: {' '.join(str(error).split())}", EXIT_FAILED
