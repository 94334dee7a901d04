"""Entry point of the data gateway process: ``python -m infermesh_data_gateway [--config FILE]``."""

from __future__ import annotations

from infermesh.datagateway.v1 import data_gateway_pb2_grpc
from infermesh_chassis.app import Runtime, run_service
from infermesh_data_gateway.gateway import DataGateway
from infermesh_data_gateway.push import NatsPushSubscriber
from infermesh_data_gateway.servicer import SERVICE_NAME, DataGatewayServicer
from infermesh_data_gateway.settings import Settings


async def build(settings: Settings, runtime: Runtime) -> None:
    """Load the definitions, open the sources, consume the push stream, and add the servicer.

    Of several workers only the first materializes the views named in ``materialize_on_start``
    (they share the online store); every worker pulls from the one durable push consumer.
    """
    if runtime.worker_index > 0:
        settings = settings.model_copy(update={"materialize_on_start": []})
    gateway = DataGateway(settings, runtime.metrics)
    runtime.on_stop(gateway.stop)
    await gateway.start()
    if settings.nats.url:
        subscriber = NatsPushSubscriber(gateway, settings.nats, runtime.metrics)
        subscriber.start()
        runtime.on_stop(subscriber.stop)
    runtime.server.add_servicer(
        data_gateway_pb2_grpc.add_DataGatewayServiceServicer_to_server, DataGatewayServicer(gateway), SERVICE_NAME
    )


def main() -> None:
    """Run the data gateway until SIGTERM or SIGINT."""
    run_service(Settings, build)


if __name__ == "__main__":
    main()
