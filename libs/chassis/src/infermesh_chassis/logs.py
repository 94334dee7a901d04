"""structlog configured for JSON lines on stderr, with contextvars merged into every event.

Every log line written while the server handles a call carries that call's ``request_id``
and ``rpc`` (read from :mod:`.context`, which the server interceptor sets per call), inside a
sampled request also its ``trace_id`` and ``span_id`` (the current span, see :mod:`.tracing`), and
anything bound with ``structlog.contextvars``.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog
from opentelemetry.trace import get_current_span

from infermesh_chassis.context import current

__all__ = ["configure_logging", "get_logger"]


def configure_logging(service: str, level: str = "INFO", *, json: bool = True, stream: TextIO | None = None) -> None:
    """Configure structlog (and stdlib logging) for one service process.

    ``json=False`` renders human-readable lines for a terminal. Every event carries the
    service name, an ISO timestamp, the level, and whatever is bound in contextvars.
    """
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}")
    out = stream or sys.stderr
    logging.basicConfig(level=numeric, stream=out, format="%(message)s", force=True)
    # grpc's own debug records hold references to its Cython call objects; kept alive past the
    # event loop (by a log capture, say) they crash the interpreter when finally freed.
    logging.getLogger("grpc").setLevel(max(numeric, logging.INFO))
    # Alembic narrates every open in plain lines; the store logs what a migration changed instead
    logging.getLogger("alembic").setLevel(max(numeric, logging.WARNING))
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )

    def add_service(_logger: object, _method: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
        event.setdefault("service", service)
        call = current()
        if call is not None:
            event.setdefault("request_id", call.request_id)
            event.setdefault("rpc", call.rpc)
            if call.tracing is not None:
                span_context = get_current_span().get_span_context()
                if span_context.trace_flags.sampled:
                    event.setdefault("trace_id", f"{span_context.trace_id:032x}")
                    event.setdefault("span_id", f"{span_context.span_id:016x}")
        return event

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            add_service,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks if json else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str | None = None) -> structlog.typing.FilteringBoundLogger:
    """A structlog logger; ``name`` is added as ``logger_name`` to its events."""
    # Initial values keep the logger lazy, so loggers made at import time follow configure_logging().
    logger: structlog.typing.FilteringBoundLogger = (
        structlog.get_logger(logger_name=name) if name else structlog.get_logger()
    )
    return logger
