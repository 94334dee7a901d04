"""NATS JetStream plumbing shared by every service that publishes to or consumes from a stream.

- :func:`connect` opens a connection that reconnects by itself, or raises ConnectionError.
- :func:`ensure_stream` creates a stream or brings an existing one to the given configuration.
- :class:`DurableConsumer` keeps one durable pull consumer subscribed — connecting, ensuring the
  stream, binding the consumer, reconnecting with a growing backoff while NATS is away — and hands
  the fetched batches to the owner's ``consume`` coroutine, which acknowledges each message itself
  (:func:`ack_confirmed`, ``message.nak(delay=...)``). Every process that names the same durable
  shares it: JetStream hands each message to one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import api as js_api

from infermesh_chassis.logs import get_logger
from infermesh_chassis.metrics import Metrics
from infermesh_chassis.retry import Backoff, retry
from infermesh_chassis.tasks import cancel_and_wait

__all__ = [
    "CONSUMER_GAUGES",
    "ConsumerSpec",
    "DurableConsumer",
    "ack_confirmed",
    "connect",
    "ensure_stream",
]

_log = get_logger("infermesh_chassis.jetstream")

CONSUMER_GAUGES = ("connected", "pending_messages")
"""The gauges of a :class:`DurableConsumer`, each named ``<metric_prefix>_<gauge>``."""


async def connect(urls: str, name: str, timeout_s: float) -> Client:
    """A connection to ``urls`` (comma-separated) that reconnects by itself, or ConnectionError within ``timeout_s``."""

    async def quiet(exc: Exception) -> None:
        _log.debug("nats_error", error=str(exc))

    try:
        return await asyncio.wait_for(
            nats.connect(
                [url.strip() for url in urls.split(",")],
                name=name,
                connect_timeout=max(1, round(timeout_s)),
                reconnect_time_wait=0.5,
                max_reconnect_attempts=-1,
                error_cb=quiet,
            ),
            timeout_s,
        )
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        raise ConnectionError(f"NATS at {urls} is unreachable: {exc or type(exc).__name__}") from None


async def ensure_stream(js: Any, config: js_api.StreamConfig, *, update: bool = True) -> None:
    """Create the stream ``config`` names, or bring an existing one to ``config`` (idempotent); with
    ``update`` False an existing stream is left as it is (a stream someone else owns)."""
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError:  # it exists with another configuration
        if update:
            await js.update_stream(config)


async def ack_confirmed(message: Msg, timeout_s: float = 5.0) -> bool:
    """Acknowledge ``message`` and wait for JetStream to confirm; False (logged) when it did not.

    An unconfirmed ack is only logged: the message comes back after the consumer's ack wait, so
    whoever acknowledges after doing the work must be able to do it twice.
    """
    try:
        await message.ack_sync(timeout=timeout_s)
    except (nats.errors.Error, TimeoutError) as exc:
        _log.info("jetstream_ack_failed", error=str(exc))
        return False
    return True


_UNREACHABLE = (ConnectionError, nats.errors.Error, OSError, TimeoutError)
"""What connecting and subscribing raise while NATS cannot be reached (retried with a backoff)."""


class _Stopped(Exception):
    """The consumer stopped while it waited to connect again."""


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    """Where a :class:`DurableConsumer` reads: the server, the stream (created when missing), the durable."""

    url: str
    """NATS server(s), comma-separated."""
    stream: js_api.StreamConfig
    """The stream, ensured at every (re)connection."""
    durable: str
    """The durable consumer's name, shared by every process that consumes the same way."""
    subjects: Sequence[str]
    """Subjects of the stream the consumer takes (its filter)."""
    ack_wait_s: float
    """A message not acknowledged within this is delivered again."""
    max_ack_pending: int
    """Messages delivered and not yet acknowledged, at most (across every process sharing the durable)."""
    fetch_batch: int
    """Messages pulled per fetch."""
    fetch_timeout_s: float
    """Longest a fetch waits for messages."""
    connect_timeout_s: float
    """How long a connection attempt may take."""
    request_timeout_s: float
    """Deadline of JetStream API calls (stream and consumer management)."""
    update_stream: bool = True
    """Bring an existing stream to ``stream``; False uses it as it is (only a missing one is created)."""
    update_consumer: bool = False
    """Bring an existing durable consumer to :meth:`consumer_config` at every (re)connection (its
    editable fields: ack wait, max ack pending, filter); False binds it as it is."""

    def consumer_config(self) -> js_api.ConsumerConfig:
        """The durable consumer: explicit acks, every message of the stream from the first one."""
        one = len(self.subjects) == 1
        return js_api.ConsumerConfig(
            durable_name=self.durable,
            ack_policy=js_api.AckPolicy.EXPLICIT,
            deliver_policy=js_api.DeliverPolicy.ALL,
            ack_wait=self.ack_wait_s,
            max_ack_pending=self.max_ack_pending,
            filter_subject=self.subjects[0] if one else None,
            filter_subjects=None if one else list(self.subjects),
        )


Batches = AsyncIterator[list[Msg]]
"""The fetched messages, one non-empty batch at a time, until the consumer stops or the connection closes."""


class DurableConsumer:
    """Keeps a durable pull consumer subscribed and hands its batches to ``consume`` (see the module docstring).

    ``consume`` gets the batches of one subscription and returns when they end; it is called again
    after every reconnection. ``metric_prefix`` names two gauges: ``<prefix>_connected`` and
    ``<prefix>_pending_messages``; several consumers of one service pass ``gauges`` instead, the
    children (connected, pending) of labelled gauges their owner registered once.
    """

    def __init__(
        self,
        spec: ConsumerSpec,
        name: str,
        consume: Callable[[Batches], Awaitable[None]],
        metrics: Metrics,
        metric_prefix: str,
        *,
        gauges: tuple[Any, Any] | None = None,
    ) -> None:
        self._spec = spec
        self._name = name
        self._consume = consume
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._nc: Client | None = None
        if gauges is not None:
            self._connected, self._pending = gauges
            return
        connected, pending = CONSUMER_GAUGES
        self._connected = metrics.gauge(
            f"{metric_prefix}_{connected}", "1 while the consumer is connected to NATS.", multiprocess_mode="livemin"
        )
        self._pending = metrics.gauge(  # every worker reads the same durable consumer's figure
            f"{metric_prefix}_{pending}",
            "Messages in the stream not yet delivered to the consumer.",
            multiprocess_mode="livemax",
        )

    def start(self) -> None:
        """Connect and consume in the background (needs a running event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self._name)

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Stop fetching, let ``consume`` finish the batch in hand (within ``timeout_s``), then disconnect."""
        self._stopping.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except TimeoutError:
                await cancel_and_wait(self._task)
            self._task = None
        await self._close()

    async def _subscribe(self) -> Any:
        spec = self._spec
        self._nc = await connect(spec.url, self._name, spec.connect_timeout_s)
        js = self._nc.jetstream(timeout=spec.request_timeout_s)
        await ensure_stream(js, spec.stream, update=spec.update_stream)
        if spec.update_consumer:
            await js.add_consumer(spec.stream.name, spec.consumer_config())
        return await js.pull_subscribe(
            spec.subjects[0], durable=spec.durable, stream=spec.stream.name, config=spec.consumer_config()
        )

    async def _connect(self) -> Any:
        """:meth:`_subscribe`, closing what it opened when NATS cannot be reached."""
        try:
            return await self._subscribe()
        except _UNREACHABLE:
            await self._close()
            raise

    def _unreachable(self, exc: Exception, delay_s: float) -> None:
        _log.warning("jetstream_unreachable", consumer=self._name, error=str(exc), retry_in_s=delay_s)

    async def _pause(self, delay_s: float) -> None:
        """Wait ``delay_s`` before connecting again; raise :class:`_Stopped` as soon as the consumer stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay_s)
        if self._stopping.is_set():
            raise _Stopped

    async def _run(self) -> None:
        backoff = Backoff(0.5, 5.0)
        while not self._stopping.is_set():
            try:
                subscription = await retry(
                    self._connect,
                    backoff,
                    retry_on=lambda exc: isinstance(exc, _UNREACHABLE),
                    on_failure=self._unreachable,
                    sleep=self._pause,
                )
            except _Stopped:
                return
            backoff.reset()
            self._connected.set(1)
            _log.info(
                "jetstream_consuming", consumer=self._name, stream=self._spec.stream.name, durable=self._spec.durable
            )
            try:
                await self._consume(self._batches(subscription))
            finally:
                self._connected.set(0)
                await self._close()

    async def _batches(self, subscription: Any) -> Batches:
        polls = 0
        while not self._stopping.is_set():
            try:
                messages = await subscription.fetch(self._spec.fetch_batch, timeout=self._spec.fetch_timeout_s)
            except TimeoutError:
                messages = []
            except nats.errors.ConnectionClosedError:
                return
            except nats.errors.Error as exc:
                _log.info("jetstream_fetch_failed", consumer=self._name, error=str(exc))
                await asyncio.sleep(0.2)
                continue
            polls += 1
            if polls % 20 == 1:
                await self._observe(subscription)
            if messages:
                yield messages

    async def _observe(self, subscription: Any) -> None:
        # bounded like a fetch: while NATS is away this must not hold up a stop for a whole API timeout
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            info = await asyncio.wait_for(subscription.consumer_info(), self._spec.fetch_timeout_s)
            self._pending.set(info.num_pending)

    async def _close(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await nc.close()
