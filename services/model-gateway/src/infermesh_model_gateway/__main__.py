"""Entry point of the model gateway process: ``python -m infermesh_model_gateway [--config FILE]``."""

from __future__ import annotations

import uuid

from infermesh.common.v1 import common_pb2
from infermesh.modelgateway.v1 import model_gateway_pb2_grpc
from infermesh.monitor.v1 import monitor_pb2, monitor_pb2_grpc
from infermesh_chassis.app import Runtime, run_service
from infermesh_chassis.events import EventEmitter, IngestRpc
from infermesh_model_gateway.control import ControlServicer
from infermesh_model_gateway.domain import utc_now
from infermesh_model_gateway.gateway import ModelGateway
from infermesh_model_gateway.inference import InferenceCore
from infermesh_model_gateway.kserve_front import InferenceServicer, add_to_server
from infermesh_model_gateway.rollouts import Clock, RolloutController, RolloutOperations
from infermesh_model_gateway.settings import Settings

INFERENCE_SERVICE = "inference.GRPCInferenceService"
CONTROL_SERVICE = "infermesh.modelgateway.v1.ModelControlService"
HEALTH_FOLLOWS_WORKERS = ("", INFERENCE_SERVICE)
"""Health names that say NOT_SERVING while no Triton worker can serve (the server as a whole, which
discovery and readiness probes check, and the data plane); the control plane stays SERVING."""
MONITOR_INGEST = IngestRpc(
    monitor_pb2_grpc.MonitorServiceStub, "ReportEvents", monitor_pb2.ReportEventsRequest.FromString
)
"""Where events go when ``events.transport`` is ``grpc``: the monitor's ReportEvents."""


async def assemble(
    settings: Settings,
    runtime: Runtime,
    emitter: EventEmitter | None,
    *,
    clock: Clock = utc_now,
) -> ModelGateway:
    """Start the registry and the Triton workers, then add the data and control planes to the server.

    ``clock`` is what rollouts, retirements and the router's retirement answers read the time from
    (tests move one by hand). With several worker processes, the first owns the instance's embedded
    Triton workers and the others follow it (see :mod:`.instance`).
    """
    gateway = ModelGateway(
        settings,
        runtime.metrics,
        runtime.discovery,
        clock=clock,
        worker_index=runtime.worker_index,
        worker_count=runtime.worker_count,
        instance_dir=runtime.instance_dir,
    )
    gateway.on_health = lambda serving: runtime.server.set_serving(HEALTH_FOLLOWS_WORKERS, serving)
    runtime.on_stop(gateway.stop)
    await gateway.start()
    assert gateway.registry is not None and gateway.deployer is not None
    inference = InferenceCore(
        gateway.router,
        gateway.pool,
        settings.inference,
        runtime.metrics,
        emitter=emitter,
        instance=settings.instance_id or settings.service_name,
    )
    runtime.on_stop(inference.drain_shadows)
    runtime.server.add_servicer(add_to_server, InferenceServicer(inference, settings.inference), INFERENCE_SERVICE)
    instance = settings.instance_id or f"{settings.service_name}-{uuid.uuid4().hex[:8]}"
    operations = RolloutOperations(gateway.registry, gateway.changed, emitter, instance, clock=clock)
    monitor = runtime.client(settings.monitor_service, monitor_pb2_grpc.MonitorServiceStub, idempotent=("CheckSlo",))

    async def check_slo(request: monitor_pb2.CheckSloRequest) -> common_pb2.SloEvaluation:
        reply: monitor_pb2.CheckSloResponse = await monitor.call("CheckSlo", request)
        return reply.evaluation

    # each worker process holds leases as itself: processes of one instance compete for a model's
    # controller lease like instances do, so one process drives each model
    holder = instance if runtime.worker_count == 1 else f"{instance}/worker-{runtime.worker_index}"
    controller = RolloutController(
        gateway.registry, operations, gateway.deployer, check_slo, settings=settings.rollouts, instance=holder
    )
    controller.start()
    runtime.on_stop(controller.stop)
    runtime.server.add_servicer(
        model_gateway_pb2_grpc.add_ModelControlServiceServicer_to_server,
        ControlServicer(gateway.registry, gateway.deployer, operations, settings.rollouts),
        CONTROL_SERVICE,
    )
    return gateway


async def build(settings: Settings, runtime: Runtime) -> None:
    """The service as ``run_service`` builds it: events go to the monitor when enabled."""
    await assemble(settings, runtime, runtime.event_emitter(MONITOR_INGEST) if settings.events.enabled else None)


def main() -> None:
    """Run the model gateway until SIGTERM or SIGINT."""
    run_service(Settings, build)


if __name__ == "__main__":
    main()
