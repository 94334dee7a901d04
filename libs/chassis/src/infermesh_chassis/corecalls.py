"""What gRPC core counts of one server's calls (channelz), and a warning when calls go unanswered.

Beyond ``grpc.max_pending_calls`` gRPC core refuses a call itself, before any Python runs: no handler
or interceptor sees it, and its caller gets CANCELLED. Channelz (on in gRPC core by default, read here
in process through ``grpc_channelz``) counts such a call in the server's ``calls_started`` but in
neither ``calls_succeeded`` nor ``calls_failed``, which count the calls that ended with a status (every
call a handler took up, an UNIMPLEMENTED one too). So::

    unanswered = started - succeeded - failed - held

(``held``: the calls the chassis interceptor's handlers hold now) is the number of calls core refused,
or dropped while they waited (their caller cancelled, the server stopped), plus those waiting for the
event loop now and, for an instant, a call whose handler ended before core recorded its status. Once
a burst is over, it is the number of calls no handler ever saw.

:class:`CoreCalls` reads these counts when /metrics is scraped (the counters
``infermesh_<service>_grpc_core_calls_{started,succeeded,failed}_total`` and the gauge
``infermesh_<service>_grpc_core_calls_unanswered``); :meth:`CoreCalls.check`, which the server runs
every :data:`CHECK_EVERY_S`, logs the warning ``grpc_core_calls_unanswered`` when the lower of its two
latest readings is above the last one it logged, at most once per :data:`WARN_EVERY_S`. The lower of
two readings leaves out calls that only waited for the event loop at one of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from grpc_channelz.v1 import channelz, channelz_pb2

from infermesh_chassis.logs import get_logger
from infermesh_chassis.metrics import Metrics

__all__ = ["CHECK_EVERY_S", "WARN_EVERY_S", "CoreCalls", "CoreCounts", "server_ids"]

_log = get_logger("infermesh_chassis.corecalls")

CHECK_EVERY_S = 10.0
"""How often the server compares gRPC core's counts with the calls its handlers hold."""
WARN_EVERY_S = 60.0
"""At most one ``grpc_core_calls_unanswered`` warning per this many seconds."""


@dataclass(frozen=True, slots=True)
class CoreCounts:
    """A server's call counts as gRPC core keeps them (channelz ``ServerData``)."""

    started: int = 0
    succeeded: int = 0
    failed: int = 0


class _Context:
    """What ``ChannelzServicer`` needs of a servicer context when it is called in process."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        pass


def server_ids() -> set[int]:
    """The channelz ids of every gRPC server of this process."""
    ids: set[int] = set()
    start = 0
    while True:
        reply = channelz.ChannelzServicer.GetServers(channelz_pb2.GetServersRequest(start_server_id=start), _Context())
        if reply is None:
            return ids
        ids.update(server.ref.server_id for server in reply.server)
        if reply.end or not reply.server:
            return ids
        start = max(ids) + 1


class CoreCalls:
    """gRPC core's counts of one server's calls, compared with the calls its handlers hold."""

    def __init__(
        self,
        server_id: int,
        held: Callable[[], int],
        *,
        max_pending_calls: int,
        clock: Callable[[], float] = time.monotonic,
        warn_every_s: float = WARN_EVERY_S,
    ) -> None:
        self.server_id = server_id
        self._held = held
        self._max_pending_calls = max_pending_calls
        self._clock = clock
        self._warn_every_s = warn_every_s
        self._counts = CoreCounts()
        self._previous = 0
        self._logged = 0
        self._logged_at: float | None = None

    @classmethod
    def created_since(cls, known: set[int], held: Callable[[], int], *, max_pending_calls: int) -> CoreCalls | None:
        """The one server created since ``known`` (:func:`server_ids`) was read; None when channelz
        shows none (disabled with ``grpc.enable_channelz``) or several (created from other threads)."""
        new = server_ids() - known
        if len(new) != 1:
            _log.warning("grpc_core_calls_unavailable", new_servers=len(new))
            return None
        return cls(new.pop(), held, max_pending_calls=max_pending_calls)

    def counts(self) -> CoreCounts:
        """The server's counts now (the last ones read, once the server is gone)."""
        reply = channelz.ChannelzServicer.GetServer(channelz_pb2.GetServerRequest(server_id=self.server_id), _Context())
        if reply is not None and reply.HasField("server"):
            data = reply.server.data
            self._counts = CoreCounts(data.calls_started, data.calls_succeeded, data.calls_failed)
        return self._counts

    def unanswered(self, counts: CoreCounts | None = None) -> int:
        """Calls core started that ended with no status or wait for the event loop (see the module docstring)."""
        counts = self.counts() if counts is None else counts
        return max(0, counts.started - counts.succeeded - counts.failed - self._held())

    def register(self, metrics: Metrics) -> None:
        """Expose the counts in ``metrics``, read when scraped."""
        metrics.counter_function(
            "grpc_core_calls_started",
            "Calls gRPC core started on this server, those it refused beyond grpc.max_pending_calls "
            "before any handler included (those end with no status: neither succeeded nor failed).",
            lambda: self.counts().started,
        )
        metrics.counter_function(
            "grpc_core_calls_succeeded",
            "Calls gRPC core ended with status OK on this server.",
            lambda: self.counts().succeeded,
        )
        metrics.counter_function(
            "grpc_core_calls_failed",
            "Calls gRPC core ended with another status on this server (handled or UNIMPLEMENTED).",
            lambda: self.counts().failed,
        )
        metrics.gauge(
            "grpc_core_calls_unanswered",
            "Calls gRPC core started that no handler holds and that ended with no status: refused "
            "beyond grpc.max_pending_calls (CANCELLED to their callers) or dropped while waiting, "
            "plus those waiting for the event loop now.",
        ).set_function(self.unanswered)

    def check(self) -> None:
        """Log ``grpc_core_calls_unanswered`` when unanswered calls grew (see the module docstring)."""
        counts = self.counts()
        reading = self.unanswered(counts)
        floor = min(reading, self._previous)
        self._previous = reading
        if floor <= self._logged:
            return
        now = self._clock()
        if self._logged_at is not None and now - self._logged_at < self._warn_every_s:
            return
        _log.warning(
            "grpc_core_calls_unanswered",
            unanswered=floor,
            new=floor - self._logged,
            started=counts.started,
            succeeded=counts.succeeded,
            failed=counts.failed,
            max_pending_calls=self._max_pending_calls,
            hint="gRPC core refused calls beyond grpc.max_pending_calls before any handler (CANCELLED to their "
            "callers), or the event loop was held that long",
        )
        self._logged, self._logged_at = floor, now
