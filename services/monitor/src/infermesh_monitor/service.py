"""The monitor assembled: store, schema, ingest (RPC and queue), window exports, reports, the trace receiver."""

from __future__ import annotations

from dataclasses import dataclass

from infermesh_chassis.logs import get_logger
from infermesh_chassis.metrics import Metrics
from infermesh_monitor.consumer import JetStreamConsumer
from infermesh_monitor.drift import DriftQueries
from infermesh_monitor.ingest import Ingestor
from infermesh_monitor.outcomes import OutcomeQueries
from infermesh_monitor.schema import SchemaManager
from infermesh_monitor.servicer import MonitorServicer
from infermesh_monitor.settings import Settings
from infermesh_monitor.shadow import ShadowQueries
from infermesh_monitor.slo import SloGate
from infermesh_monitor.stats import StatsQueries, WindowExporter
from infermesh_monitor.store import Store, open_store
from infermesh_monitor.traces import OtlpTraceServicer, TraceQueries

__all__ = ["Monitor"]

_log = get_logger("infermesh_monitor.service")


@dataclass
class Monitor:
    """Every running part of one monitor process."""

    store: Store
    ingestor: Ingestor
    exporter: WindowExporter
    consumer: JetStreamConsumer | None
    servicer: MonitorServicer
    trace_receiver: OtlpTraceServicer

    @classmethod
    async def open(cls, settings: Settings, metrics: Metrics) -> Monitor:
        """Open the store, apply the schema, start the queue consumer (if enabled) and the exporter."""
        store = open_store(settings.storage)
        try:
            await SchemaManager(store, settings.storage).apply()
        except Exception:
            await store.close()
            raise
        ingestor = Ingestor(store, settings.ingest, metrics)
        shadow = ShadowQueries(store)
        outcomes = OutcomeQueries(store, settings.analysis.experiment_max_predictions)
        traces = TraceQueries(store)
        servicer = MonitorServicer(
            settings=settings,
            ingestor=ingestor,
            stats=StatsQueries(store),
            shadow=shadow,
            drift=DriftQueries(store, settings.analysis),
            outcomes=outcomes,
            slo=SloGate(store, shadow, outcomes),
            traces=traces,
        )
        exporter = WindowExporter(store, metrics, settings.analysis)
        exporter.start()
        consumer = None
        if settings.ingest.nats_enabled:
            consumer = JetStreamConsumer(settings.events, settings.ingest, ingestor, metrics)
            consumer.start()
        _log.info(
            "monitor_ready",
            backend=settings.storage.backend,
            queue=settings.events.nats_url if consumer is not None else None,
        )
        return cls(store, ingestor, exporter, consumer, servicer, OtlpTraceServicer(traces, metrics))

    async def close(self) -> None:
        """Stop consuming (the batch in hand is stored and acknowledged), stop exporting, close the store."""
        if self.consumer is not None:
            await self.consumer.stop()
        await self.exporter.stop()
        await self.store.close()
