"""Request coalescing: concurrent calls with the same key share one downstream call.

Every hop of the mesh is a Python gRPC service, and a gRPC call costs far more CPU than the
work it carries, so under load the business center merges the feature fetches of concurrent
requests (one ``GetFeatures`` with many entities) and their model calls (one ``ModelInfer`` with
a batch tensor). A call goes out at once when fewer than ``max_in_flight`` calls with its key
are running and no other call of that key arrived within the last ``window_s``; otherwise it
joins the next batch, which leaves when one of the running calls returns, when the window
closes, or when it is full, whichever comes first. So a lone caller never waits, and under
concurrent traffic a short window (like Triton's dynamic-batching queue delay) gathers batches
that cut the gRPC calls, and their CPU, of every hop behind.

Each member keeps its own deadline: a batch runs until the latest of its members' deadlines
(bound as the call context's deadline, with the first member's request id and trace context: its
downstream call is a span of the first member's trace), and a member whose
own deadline passes stops waiting (DEADLINE_EXCEEDED) while the batch goes on for the others.
A batch that fails with an error about its content (INVALID_ARGUMENT, FAILED_PRECONDITION) is
retried one member at a time, so one bad request cannot fail the others; any other failure is
every member's.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from infermesh_chassis import context as ctx
from infermesh_chassis import tracing
from infermesh_chassis.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument

__all__ = ["Coalescer"]

I = TypeVar("I")  # noqa: E741
R = TypeVar("R")

BatchCall = Callable[[Hashable, list[I], float], Awaitable[Sequence[R]]]
"""``call(key, items, timeout_s)`` → one result per item, in order."""

_SPLIT_ON = (InvalidArgument, FailedPrecondition)


@dataclass(slots=True)
class _Member(Generic[I, R]):
    item: I
    deadline: float
    future: asyncio.Future[R]
    request_id: str
    trace: tracing.Captured
    """The member's trace context (:func:`infermesh_chassis.tracing.captured`)."""


@dataclass(slots=True)
class _Lane(Generic[I, R]):
    pending: list[_Member[I, R]] = field(default_factory=list)
    in_flight: int = 0
    last_seen: float = float("-inf")
    """When the key's previous call arrived (monotonic): a recent one means concurrent traffic."""
    timer: asyncio.TimerHandle | None = None
    """The pending batch's departure when it waits for the window to close."""


class Coalescer(Generic[I, R]):
    """Merges concurrent calls with equal keys (see the module docstring)."""

    def __init__(
        self,
        call: BatchCall[I, R],
        *,
        max_batch: int,
        max_in_flight: int,
        window_s: float = 0.0,
        max_keys: int = 4096,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._call = call
        self._on_batch = on_batch
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._window_s = window_s
        self._max_keys = max_keys
        self._lanes: OrderedDict[Hashable, _Lane[I, R]] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        """Batches running (held so that they are not garbage-collected while they run)."""
        self.batches = 0
        """Downstream calls made (for tests and metrics)."""

    async def submit(self, key: Hashable, item: I, timeout_s: float, *, batchable: bool = True) -> R:
        """The result of ``item``, computed alone or in a batch with others of ``key``."""
        if not batchable or self._max_batch <= 1:
            self._count(1)
            return (await self._call(key, [item], timeout_s))[0]
        lane = self._lane(key)
        now = time.monotonic()
        busy = now - lane.last_seen < self._window_s
        lane.last_seen = now
        if lane.in_flight < self._max_in_flight and not lane.pending and not busy:
            return await self._alone(key, lane, item, timeout_s)
        loop = asyncio.get_running_loop()
        member = _Member(
            item, now + timeout_s, loop.create_future(), ctx.current_request_id() or "", tracing.captured()
        )
        lane.pending.append(member)
        if lane.in_flight < self._max_in_flight:
            if len(lane.pending) >= self._max_batch:
                self._launch(key, lane)
            elif lane.timer is None:  # concurrent traffic: let the window gather the batch
                lane.timer = loop.call_later(self._window_s, self._launch, key, lane)
        try:
            async with asyncio.timeout(timeout_s):
                return await member.future  # a timeout cancels the future: its batch then skips it
        except TimeoutError:
            raise DeadlineExceeded(f"no answer within {timeout_s * 1000:.0f} ms") from None

    async def _alone(self, key: Hashable, lane: _Lane[I, R], item: I, timeout_s: float) -> R:
        """The fast path of an idle key: call at once in this task, no future, no extra task."""
        lane.in_flight += 1
        self._count(1)
        try:
            return (await self._call(key, [item], timeout_s))[0]
        finally:
            self._done(key, lane)

    def _count(self, size: int) -> None:
        self.batches += 1
        if self._on_batch is not None:
            self._on_batch(size)

    def _lane(self, key: Hashable) -> _Lane[I, R]:
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
            if len(self._lanes) > self._max_keys:  # forget the least recently used idle key
                for old, idle in self._lanes.items():
                    if idle.in_flight == 0 and not idle.pending:
                        del self._lanes[old]
                        break
        else:
            self._lanes.move_to_end(key)
        return lane

    def _launch(self, key: Hashable, lane: _Lane[I, R]) -> None:
        if lane.timer is not None:
            lane.timer.cancel()
            lane.timer = None
        lane.pending = [m for m in lane.pending if not m.future.done()]
        batch, lane.pending = lane.pending[: self._max_batch], lane.pending[self._max_batch :]
        if not batch:
            return
        lane.in_flight += 1
        task = asyncio.get_running_loop().create_task(self._run(key, lane, batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, key: Hashable, lane: _Lane[I, R], batch: list[_Member[I, R]]) -> None:
        try:
            await self._settle(key, batch)
        finally:
            self._done(key, lane)

    def _done(self, key: Hashable, lane: _Lane[I, R]) -> None:
        """A call of ``key`` ended: send what waits for it (it has waited long enough)."""
        lane.in_flight -= 1
        if lane.pending:
            self._launch(key, lane)

    async def _settle(self, key: Hashable, batch: list[_Member[I, R]]) -> None:
        batch = [m for m in batch if not m.future.done()]
        if not batch:
            return
        deadline = max(m.deadline for m in batch)
        timeout = deadline - time.monotonic()
        # the batch runs for its members (the first one's request id, the latest deadline), not for
        # whichever request's task happened to launch it
        token = ctx.bind(ctx.CallContext(batch[0].request_id or ctx.new_request_id(), deadline))
        try:
            if timeout <= 0:
                raise DeadlineExceeded("the deadline passed before the call went out")
            self._count(len(batch))
            with tracing.attached(batch[0].trace):
                results = await self._call(key, [m.item for m in batch], timeout)
        except _SPLIT_ON as exc:
            if len(batch) == 1:
                _fail(batch, exc)
                return
            await asyncio.gather(*(self._settle(key, [member]) for member in batch))
            return
        except BaseException as exc:  # every member gets the batch's failure, cancellation included
            _fail(batch, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        finally:
            ctx.unbind(token)
        for member, result in zip(batch, results, strict=True):
            if not member.future.done():
                member.future.set_result(result)


def _fail(batch: Sequence[_Member[I, R]], exc: BaseException) -> None:
    """Fail every member of ``batch`` still waiting with ``exc``."""
    for member in batch:
        if not member.future.done():
            member.future.set_exception(exc)
