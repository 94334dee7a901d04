"""A tiny service for the worker tests: ``python -m workers_probe --config FILE``.

``probe.Probe/Sleep`` sleeps for the milliseconds its request names (ASCII digits, raw bytes) and
answers with the pid of the worker that served it: the tests see which worker a call reached.
``probe.Probe/Frozen`` answers with that pid and how many objects the worker's garbage collector has
frozen (``gc.get_freeze_count()``).
``infermesh_probe_sleeping`` counts the calls asleep now (a ``livesum`` gauge over the workers).
"""

from __future__ import annotations

import asyncio
import gc
import os

import grpc
from pydantic_settings import SettingsConfigDict

from infermesh_chassis.app import Runtime, run_service
from infermesh_chassis.settings import ServiceSettings

SERVICE = "probe.Probe"


class Settings(ServiceSettings):
    """The probe's settings (``PROBE_`` environment)."""

    model_config = SettingsConfigDict(env_prefix="PROBE_")

    service_name: str = "probe"


async def build(_settings: Settings, runtime: Runtime) -> None:
    """Add the Sleep method."""
    sleeping = runtime.metrics.gauge("sleeping", "Sleep calls asleep now.")

    async def sleep(request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        with sleeping.track_inprogress():
            await asyncio.sleep(int(request or b"0") / 1000)
        return str(os.getpid()).encode()

    async def frozen(_request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        return f"{os.getpid()} {gc.get_freeze_count()}".encode()

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {"Sleep": grpc.unary_unary_rpc_method_handler(sleep), "Frozen": grpc.unary_unary_rpc_method_handler(frozen)},
    )
    runtime.server.add_generic_handlers((handler,), SERVICE)


if __name__ == "__main__":
    run_service(Settings, build)
