"""The JetStream consumer: pull event batches, store them, then acknowledge them.

One durable pull consumer (``ingest.nats_durable``) on the events stream, shared by every
monitor instance. Each fetch takes up to ``fetch_batch`` messages, stores all of them in one
insert (:class:`~infermesh_monitor.ingest.Ingestor`), and only then acknowledges each with a
confirmed ack (``ack_sync``). Fetching, storing and acknowledging overlap: the next messages are
fetched while the current ones are stored, and acknowledged while the next ones are. When
storing fails nothing is acknowledged: the messages come back
after ``ack_wait_s`` (or at once, negatively acknowledged) and are stored exactly once. A message
that is not an ``EventBatch`` at all is acknowledged and counted, so it cannot block the stream.
When NATS is unreachable the consumer keeps reconnecting in the background; the monitor keeps
serving (ReportEvents still works).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import nats.errors
from nats.js import api as js_api

from infermesh_chassis.events import connect_nats, ensure_stream
from infermesh_chassis.logs import get_logger
from infermesh_chassis.metrics import Metrics
from infermesh_chassis.settings import EventSettings
from infermesh_chassis.tasks import cancel_and_wait
from infermesh_monitor.ingest import Ingestor
from infermesh_monitor.settings import IngestSettings
from infermesh_monitor.store import StoreError

__all__ = ["JetStreamConsumer"]

_log = get_logger("infermesh_monitor.consumer")


class JetStreamConsumer:
    """Consumes the events stream into the store (see the module docstring)."""

    def __init__(self, events: EventSettings, settings: IngestSettings, ingestor: Ingestor, metrics: Metrics) -> None:
        self._events = events
        self._settings = settings
        self._ingestor = ingestor
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._nc: Any = None
        self._messages = metrics.counter("queue_messages", "Queue messages (event batches) stored and acknowledged.")
        self._failures = metrics.counter(
            "queue_store_failures", "Fetched messages left unacknowledged because storing failed."
        )
        self._connected = metrics.gauge("queue_connected", "1 while the consumer is connected to NATS.")
        self._pending = metrics.gauge(
            "queue_pending_messages", "Messages in the stream not yet delivered to the consumer."
        )

    def start(self) -> None:
        """Connect and consume in the background."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="jetstream-consumer")

    async def _subscribe(self) -> Any:
        self._nc = await connect_nats(self._events, "monitor-consumer")
        js = self._nc.jetstream(timeout=self._events.nats_publish_timeout_s)
        await ensure_stream(js, self._events)
        config = js_api.ConsumerConfig(
            durable_name=self._settings.nats_durable,
            ack_policy=js_api.AckPolicy.EXPLICIT,
            deliver_policy=js_api.DeliverPolicy.ALL,
            ack_wait=self._settings.ack_wait_s,
            max_ack_pending=self._settings.max_ack_pending,
            filter_subject=f"{self._events.nats_subject}.>",
        )
        return await js.pull_subscribe(
            f"{self._events.nats_subject}.>",
            durable=self._settings.nats_durable,
            stream=self._events.nats_stream,
            config=config,
        )

    async def _run(self) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                subscription = await self._subscribe()
            except (ConnectionError, nats.errors.Error, OSError, TimeoutError) as exc:
                _log.warning("queue_unreachable", error=str(exc), retry_in_s=backoff)
                await self._close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), backoff)
                backoff = min(5.0, backoff * 2)
                continue
            backoff = 0.5
            self._connected.set(1)
            _log.info("queue_consuming", stream=self._events.nats_stream, durable=self._settings.nats_durable)
            try:
                await self._consume(subscription)
            finally:
                self._connected.set(0)
                await self._close()

    async def _consume(self, subscription: Any) -> None:
        """Fetch, store and acknowledge as a pipeline: the next fetch runs while a batch is stored."""
        fetched: asyncio.Queue[list[Any] | None] = asyncio.Queue(maxsize=2)
        fetcher = asyncio.get_running_loop().create_task(self._fetch(subscription, fetched), name="jetstream-fetch")
        acks: set[asyncio.Task[None]] = set()
        try:
            while (messages := await fetched.get()) is not None:
                try:
                    await self._ingestor.ingest([message.data for message in messages])
                except StoreError as exc:
                    self._failures.inc(len(messages))
                    _log.error("queue_store_failed", error=str(exc), messages=len(messages))
                    for message in messages:
                        with contextlib.suppress(nats.errors.Error):
                            await message.nak(delay=1.0)
                    await asyncio.sleep(1.0)
                    continue
                ack = asyncio.get_running_loop().create_task(self._ack_all(messages))
                acks.add(ack)
                ack.add_done_callback(acks.discard)
        finally:
            await cancel_and_wait(fetcher)
            if acks:
                await asyncio.gather(*acks)

    async def _fetch(self, subscription: Any, fetched: asyncio.Queue[list[Any] | None]) -> None:
        polls = 0
        try:
            while not self._stopping.is_set():
                try:
                    messages = await subscription.fetch(
                        self._settings.fetch_batch, timeout=self._settings.fetch_timeout_s
                    )
                except TimeoutError:
                    messages = []
                except nats.errors.ConnectionClosedError:
                    return
                except nats.errors.Error as exc:
                    _log.info("queue_fetch_failed", error=str(exc))
                    await asyncio.sleep(0.2)
                    continue
                polls += 1
                if polls % 20 == 1:
                    await self._observe(subscription)
                if messages:
                    await fetched.put(messages)
        finally:
            await fetched.put(None)

    async def _ack_all(self, messages: list[Any]) -> None:
        await asyncio.gather(*(self._ack(message) for message in messages))
        self._messages.inc(len(messages))

    @staticmethod
    async def _ack(message: Any) -> None:
        try:
            await message.ack_sync(timeout=5.0)
        except (nats.errors.Error, TimeoutError) as exc:  # stored already: a redelivery is dropped as a duplicate
            _log.info("queue_ack_failed", error=str(exc))

    async def _observe(self, subscription: Any) -> None:
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            info = await subscription.consumer_info()
            self._pending.set(info.num_pending)

    async def _close(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await nc.close()

    async def stop(self) -> None:
        """Finish the batch in hand (stored and acknowledged), then disconnect."""
        self._stopping.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 30)
            except TimeoutError:
                await cancel_and_wait(self._task)
            self._task = None
        await self._close()
