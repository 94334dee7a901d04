"""Per-request context carried in one contextvar: the request id, the caller's deadline, the RPC.

The server interceptor sets it for every call it handles; the client side reads it to pass
the request id on (metadata ``x-request-id``) and to bound downstream deadlines by what is
left of the caller's; the logging configuration adds ``request_id`` and ``rpc`` to every
log line written while it is set.
"""

from __future__ import annotations

import os
import time
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from infermesh_chassis.tracing import Tracing

__all__ = [
    "REQUEST_ID_METADATA_KEY",
    "CallContext",
    "bind",
    "current",
    "current_deadline",
    "current_request_id",
    "new_request_id",
    "remaining_time",
    "unbind",
]

REQUEST_ID_METADATA_KEY = "x-request-id"
"""gRPC metadata key that carries the request id between hops (lower case, as gRPC requires)."""


class CallContext:
    """What is known about the call being handled."""

    __slots__ = ("deadline", "request_id", "rpc", "traceparent", "tracing")

    def __init__(
        self, request_id: str, deadline: float | None = None, rpc: str = "", tracing: Tracing | None = None
    ) -> None:
        self.request_id = request_id
        self.deadline = deadline
        """Absolute deadline on the ``time.monotonic()`` clock, or None."""
        self.rpc = rpc
        """Full method name (``/pkg.Service/Method``), or empty outside an RPC."""
        self.tracing = tracing
        """The service's tracing when it is on (for spans a service opens inside the call)."""
        self.traceparent = ""
        """The W3C trace context of an unsampled call, passed on as it came by the calls it makes."""


_call: ContextVar[CallContext | None] = ContextVar("infermesh_call", default=None)


def new_request_id() -> str:
    """A fresh request id (32 hex characters)."""
    return os.urandom(16).hex()


def bind(call: CallContext) -> Token[CallContext | None]:
    """Make ``call`` current (until :func:`unbind` with the returned token)."""
    return _call.set(call)


def unbind(token: Token[CallContext | None]) -> None:
    """Restore what was current before :func:`bind`."""
    _call.reset(token)


def current() -> CallContext | None:
    """The call being handled, if any."""
    return _call.get()


def current_request_id() -> str | None:
    """The request id of the call being handled, if any."""
    call = _call.get()
    return None if call is None else call.request_id


def current_deadline() -> float | None:
    """The inbound call's absolute deadline (monotonic seconds), if the caller set one."""
    call = _call.get()
    return None if call is None else call.deadline


def remaining_time() -> float | None:
    """Seconds left before the inbound call's deadline, or None without a deadline."""
    deadline = current_deadline()
    return None if deadline is None else deadline - time.monotonic()
