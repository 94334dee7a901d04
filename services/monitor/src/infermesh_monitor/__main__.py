"""Entry point of the monitor process: ``python -m infermesh_monitor [--config FILE]``."""

from __future__ import annotations

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from infermesh.monitor.v1 import monitor_pb2, monitor_pb2_grpc
from infermesh_chassis.app import Runtime, run_service
from infermesh_monitor.service import Monitor
from infermesh_monitor.settings import Settings


async def build(settings: Settings, runtime: Runtime) -> None:
    """Open the store, bring the schema up to date, start ingest and exports, add the servicers."""
    monitor = await Monitor.open(settings, runtime.metrics)
    runtime.on_stop(monitor.close)
    add_servicers(runtime, monitor)


def add_servicers(runtime: Runtime, monitor: Monitor) -> None:
    """Serve the monitor's own service and the OTLP trace receiver on the runtime's server."""
    runtime.server.add_servicer(
        monitor_pb2_grpc.add_MonitorServiceServicer_to_server,
        monitor.servicer,
        monitor_pb2.DESCRIPTOR.services_by_name["MonitorService"].full_name,
    )
    runtime.server.add_servicer(
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server,
        monitor.trace_receiver,
        trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"].full_name,
    )


def main() -> None:
    """Run the monitor until SIGTERM or SIGINT."""
    run_service(Settings, build)


if __name__ == "__main__":
    main()
