"""The floor of a Python gRPC hop: a grpc.aio server that forwards every unary call unchanged.

It does nothing a gateway does (no parsing, routing, validation, metrics or error mapping): each
call's request bytes go to the upstream with the same method and the response bytes come back.
Benchmarks run it beside a service to separate what any Python gRPC hop costs on this machine from
what the service's own work costs. Chained (``--upstream`` pointing at another bare proxy) it gives
the floor of a mesh of several Python hops.

``python bench/bare_proxy.py --port P --upstream HOST:PORT``; it serves until terminated.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable

import grpc
import uvloop

__all__ = ["PassThrough", "serve"]

Forward = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


class PassThrough(grpc.GenericRpcHandler):
    """Every unary method, forwarded as bytes to the same method on ``channel``."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is None:
            handler = self._handlers[method] = grpc.unary_unary_rpc_method_handler(
                _forwarder(self._channel.unary_unary(method))
            )
        return handler


def _forwarder(upstream: grpc.aio.UnaryUnaryMultiCallable) -> Forward:
    async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        response: bytes = await upstream(request, timeout=context.time_remaining())
        return response

    return forward


async def serve(port: int, upstream: str) -> None:
    """Serve on 127.0.0.1:``port`` until SIGTERM or SIGINT."""
    async with grpc.aio.insecure_channel(upstream) as channel:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers((PassThrough(channel),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        with contextlib.suppress(asyncio.CancelledError):
            await server.stop(grace=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="host:port of the server to forward to")
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.upstream))


if __name__ == "__main__":
    main()
