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

import nats.errors
from nats.aio.msg import Msg

from infermesh_chassis.events import stream_config
from infermesh_chassis.jetstream import Batches, ConsumerSpec, DurableConsumer, ack_confirmed
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
        self._ingestor = ingestor
        spec = ConsumerSpec(
            url=events.nats_url,
            stream=stream_config(events),
            durable=settings.nats_durable,
            subjects=[f"{events.nats_subject}.>"],
            ack_wait_s=settings.ack_wait_s,
            max_ack_pending=settings.max_ack_pending,
            fetch_batch=settings.fetch_batch,
            fetch_timeout_s=settings.fetch_timeout_s,
            connect_timeout_s=events.nats_connect_timeout_s,
            request_timeout_s=events.nats_publish_timeout_s,
        )
        self._consumer = DurableConsumer(spec, "monitor-consumer", self._consume, metrics, "queue")
        self._messages = metrics.counter("queue_messages", "Queue messages (event batches) stored and acknowledged.")
        self._failures = metrics.counter(
            "queue_store_failures", "Fetched messages left unacknowledged because storing failed."
        )

    def start(self) -> None:
        """Connect and consume in the background."""
        self._consumer.start()

    async def stop(self) -> None:
        """Finish the batch in hand (stored and acknowledged), then disconnect."""
        await self._consumer.stop()

    async def _consume(self, batches: Batches) -> None:
        """Fetch, store and acknowledge as a pipeline: the next fetch runs while a batch is stored."""
        fetched: asyncio.Queue[list[Msg] | None] = asyncio.Queue(maxsize=2)
        fetcher = asyncio.get_running_loop().create_task(self._fetch(batches, fetched), name="jetstream-fetch")
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

    @staticmethod
    async def _fetch(batches: Batches, fetched: asyncio.Queue[list[Msg] | None]) -> None:
        try:
            async for messages in batches:
                await fetched.put(messages)
        finally:
            await fetched.put(None)

    async def _ack_all(self, messages: list[Msg]) -> None:
        # stored already: a message whose ack is lost comes back and is dropped as a duplicate
        await asyncio.gather(*(ack_confirmed(message) for message in messages))
        self._messages.inc(len(messages))
