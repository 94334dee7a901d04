"""One error hierarchy for the whole mesh: each class carries the gRPC status it maps to.

Domain code raises these; the server interceptor turns them into the status and message
the caller sees, and the client boundary (:func:`from_rpc_error`) turns a downstream
``grpc.RpcError`` back into one of them. Anything else that escapes a handler becomes
INTERNAL with a generic message while the traceback goes to the log.
"""

from __future__ import annotations

import math
from typing import ClassVar

import grpc

__all__ = [
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InfermeshError",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "NotReady",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "from_rpc_error",
    "retry_after_ms",
]


class InfermeshError(Exception):
    """Base of every error a service raises on purpose; ``message`` is shown to the caller."""

    status_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, *, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.metadata = metadata
        """Trailing metadata sent with the status (hints such as ``retry-after-ms``)."""

    def __str__(self) -> str:
        return self.message


class InvalidArgument(InfermeshError):
    """The request itself is wrong (bad field, dtype, shape); retrying it unchanged cannot help."""

    status_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(InfermeshError):
    """A named thing (model, version, scene, feature service) does not exist."""

    status_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(InfermeshError):
    """A create collided with something that already exists under that name."""

    status_code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(InfermeshError):
    """The system is not in the state the operation needs (e.g. routing to a version not serving)."""

    status_code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(InfermeshError):
    """A concurrent change won (optimistic-concurrency conflict); re-read and retry."""

    status_code = grpc.StatusCode.ABORTED


class PermissionDenied(InfermeshError):
    """The caller is known but not allowed to do this."""

    status_code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(InfermeshError):
    """The caller did not prove who it is (missing or invalid API key or token)."""

    status_code = grpc.StatusCode.UNAUTHENTICATED


def retry_after_ms(seconds: float) -> int:
    """A retry hint in whole milliseconds: rounded up (float dust aside), at least 1."""
    return max(1, math.ceil(seconds * 1000 - 1e-6))


class ResourceExhausted(InfermeshError):
    """Refused early because of overload or a rate limit; ``retry_after_s`` says when to try again."""

    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        if retry_after_s is not None and not math.isfinite(retry_after_s):
            retry_after_s = None  # no wait helps: no hint rather than an unbounded one
        hint = () if retry_after_s is None else (("retry-after-ms", str(retry_after_ms(retry_after_s))),)
        super().__init__(message, metadata=hint)
        self.retry_after_s = retry_after_s


class Unavailable(InfermeshError):
    """A dependency cannot serve right now; callers and circuit breakers should retry elsewhere or later."""

    status_code = grpc.StatusCode.UNAVAILABLE


class NotReady(Unavailable):
    """This instance (or the thing asked for) is not ready yet: UNAVAILABLE, so callers retry."""


class DeadlineExceeded(InfermeshError):
    """The caller's deadline ran out before the work finished."""

    status_code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(InfermeshError):
    """The caller went away."""

    status_code = grpc.StatusCode.CANCELLED


class Unimplemented(InfermeshError):
    """The operation is not supported by this service or backend."""

    status_code = grpc.StatusCode.UNIMPLEMENTED


class Internal(InfermeshError):
    """A bug or broken invariant; the caller gets a generic message, the details go to the log."""

    status_code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[InfermeshError]] = {
    cls.status_code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Aborted,
        PermissionDenied,
        Unauthenticated,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
        Cancelled,
        Unimplemented,
        Internal,
    )
}


def from_rpc_error(error: grpc.RpcError, target: str = "") -> InfermeshError:
    """Convert a downstream ``grpc.RpcError`` into the project's error of the same status.

    The message keeps the downstream's details and names the target, so a log line or a
    caller can tell which hop failed. Statuses without a class of their own (UNKNOWN,
    DATA_LOSS, OUT_OF_RANGE) become :class:`Internal`, naming the original status.
    """
    code: grpc.StatusCode = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
    details = error.details() if callable(getattr(error, "details", None)) else str(error)
    where = f"{target}: " if target else ""
    message = f"{where}{details or code.name}"
    cls = _BY_CODE.get(code)
    if cls is ResourceExhausted:
        retry_after = _retry_after_s(error)
        return ResourceExhausted(message, retry_after_s=retry_after)
    if cls is None:
        return Internal(f"{message} ({code.name})")
    return cls(message)


def _retry_after_s(error: grpc.RpcError) -> float | None:
    trailing = error.trailing_metadata() if callable(getattr(error, "trailing_metadata", None)) else None
    for key, value in trailing or ():
        if key == "retry-after-ms":
            try:
                return int(value) / 1000
            except ValueError:
                return None
    return None
