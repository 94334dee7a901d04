"""Per-request context carried in contextvars: the request id and the caller's deadline.

The server interceptor sets both for every call it handles; the client side reads them to
pass the request id on (metadata ``x-request-id``) and to bound downstream deadlines by
what is left of the caller's.
"""

from __future__ import annotations

import time
import uuid
from contextvars import ContextVar

__all__ = [
    "REQUEST_ID_METADATA_KEY",
    "current_deadline",
    "current_request_id",
    "new_request_id",
    "remaining_time",
]

REQUEST_ID_METADATA_KEY = "x-request-id"
"""gRPC metadata key that carries the request id between hops (lower case, as gRPC requires)."""

request_id_var: ContextVar[str | None] = ContextVar("infermesh_request_id", default=None)
deadline_var: ContextVar[float | None] = ContextVar("infermesh_deadline", default=None)
"""Absolute deadline of the inbound call on the ``time.monotonic()`` clock, or None."""


def new_request_id() -> str:
    """A fresh request id (32 hex characters)."""
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    """The request id of the call being handled, if any."""
    return request_id_var.get()


def current_deadline() -> float | None:
    """The inbound call's absolute deadline (monotonic seconds), if the caller set one."""
    return deadline_var.get()


def remaining_time() -> float | None:
    """Seconds left before the inbound call's deadline, or None without a deadline."""
    deadline = deadline_var.get()
    return None if deadline is None else deadline - time.monotonic()
