"""What every management subcommand shares: its options, its clients of the services, how it runs.

A subcommand is an ``async def handler(ctx, args) -> int | None`` registered through
:func:`command`, which runs it on a fresh event loop, closes its channels, and turns any error
into one line on stderr and the exit code of :mod:`._errors` (never a traceback; set
``INFERMESH_DEBUG=1`` to see one).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn

import grpc

from infermesh.common.v1 import common_pb2
from infermesh_chassis.client import ChannelPool, ServiceClient
from infermesh_chassis.discovery import DiscoverySettings, StaticDiscovery
from infermesh_chassis.errors import InfermeshError, Unavailable, from_rpc_error
from infermesh_chassis.metrics import Metrics
from infermesh_chassis.settings import ClientSettings
from infermesh_cli.commands._errors import EXIT_USAGE, error_line
from infermesh_cli.commands._output import print_json
from infermesh_cli.commands._targets import SERVICES, Target, Targets, env_var, option
from infermesh_cli.stack import DEMO_API_KEY

__all__ = [
    "Context",
    "Handler",
    "Parser",
    "Remote",
    "add_global_options",
    "all_pages",
    "audit_filter",
    "command",
    "leaf_options",
    "subcommand",
]

DEFAULT_TIMEOUT_S = 30.0
"""Deadline of a call when ``--timeout`` is not given."""
BATCH_TIMEOUT_S = 600.0
"""Deadline of long work (deployments, materialization, training sets) when ``--timeout`` is not given."""

Handler = Callable[["Context", argparse.Namespace], Awaitable[int | None]]

GLOBAL_OPTIONS_NOTE = (
    "Global options (--model-gateway, --data-gateway, --biz-center, --monitor, --timeout, --api-key, --actor, "
    "--workdir) may also follow the command; see `infermesh --help`."
)

_IDEMPOTENT_PREFIXES = ("Get", "List", "Describe", "Query", "Check", "Model", "Server")
"""Reads (and the KServe v2 calls, ModelInfer included: scoring has no side effect) may be retried."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr, exit code 2 (its subparsers too)."""

    def error(self, message: str) -> NoReturn:
        """Print ``message`` in one line with where to find help, and exit with the usage code."""
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def add_global_options(parser: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    """Where the services are, the deadline, the caller's identity and the output format.

    The top-level parser gets them with their defaults and their help; every subcommand gets
    them again with ``suppress`` (no default, no help line but ``--json``), so they may be written
    before or after the subcommand.
    """

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    def described(text: str) -> str:
        return argparse.SUPPRESS if suppress else text

    if suppress:
        parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
        parser.add_argument("--workdir", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    for service in SERVICES:
        parser.add_argument(
            option(service),
            dest=service.replace("-", "_"),
            metavar="HOST:PORT",
            default=default(None),
            help=described(f"address of the {service} (else ${env_var(service)}, else the local stack)"),
        )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        default=default(None),
        help=described(
            f"deadline of each call (default {DEFAULT_TIMEOUT_S:.0f}; {BATCH_TIMEOUT_S:.0f} for deployments, "
            "materialization and training sets)"
        ),
    )
    parser.add_argument(
        "--api-key",
        metavar="KEY",
        default=default(None),
        help=described("API key for the business center (else $INFERMESH_API_KEY, else the local stack's)"),
    )
    parser.add_argument(
        "--actor",
        metavar="NAME",
        default=default(None),
        help=described("who makes a change, for the audit log (else $INFERMESH_ACTOR, else cli:<user>)"),
    )


def leaf_options() -> argparse.ArgumentParser:
    """A parent parser giving a subcommand the global options (see :func:`add_global_options`)."""
    parent = Parser(add_help=False)
    add_global_options(parent, suppress=True)
    return parent


class Remote:
    """One service a command calls: its address, a chassis client, and the metadata every call carries."""

    def __init__(
        self,
        target: Target,
        stub_factory: Callable[[grpc.aio.Channel], Any],
        pool: ChannelPool,
        settings: ClientSettings,
        metadata: tuple[tuple[str, str], ...],
    ) -> None:
        self.target = target
        self._stub_factory = stub_factory
        self._pool = pool
        self._metadata = metadata
        self._timeout_s = settings.default_timeout_s
        discovery = StaticDiscovery(DiscoverySettings(static={target.service: [target.address]}))
        idempotent = [m for m in dir(stub_factory(pool.get(target.address))) if m.startswith(_IDEMPOTENT_PREFIXES)]
        self._client = ServiceClient(
            target.service,
            stub_factory,
            discovery=discovery,
            channels=pool,
            settings=settings,
            idempotent=idempotent,
        )

    def _located(self, error: InfermeshError) -> InfermeshError:
        if isinstance(error, Unavailable):
            return type(error)(f"{error.message} (address from {self.target.origin})")
        return error

    async def call(self, method: str, request: Any, *, timeout_s: float | None = None) -> Any:
        """One unary call; a failure raises the project's error naming the service, method and address."""
        try:
            return await self._client.call(method, request, timeout_s=timeout_s, metadata=self._metadata)
        except InfermeshError as error:
            raise self._located(error) from None

    async def call_with_trailers(self, method: str, request: Any) -> tuple[Any, dict[str, str]]:
        """One unary call (not retried) and its trailing metadata, with the same error conversion."""
        stub = self._stub_factory(self._pool.get(self.target.address))
        call = getattr(stub, method)(request, timeout=self._timeout_s, metadata=self._metadata)
        try:
            response = await call
        except grpc.RpcError as exc:
            where = f"{self.target.service}/{method} at {self.target.address}"
            raise self._located(from_rpc_error(exc, where)) from None
        return response, {key: str(value) for key, value in await call.trailing_metadata() or ()}

    async def stream(self, method: str, request: Any, *, timeout_s: float | None = None) -> AsyncIterator[Any]:
        """The messages of a server-streaming call, with the same error conversion."""
        stub = self._stub_factory(self._pool.get(self.target.address))
        call = getattr(stub, method)(request, timeout=timeout_s or self._timeout_s, metadata=self._metadata)
        where = f"{self.target.service}/{method} at {self.target.address}"
        try:
            async for message in call:
                yield message
        except grpc.RpcError as exc:
            raise self._located(from_rpc_error(exc, where)) from None


async def all_pages(
    remote: Remote,
    method: str,
    request: Any,
    field: str,
    *,
    limit: int | None = None,
    keep: Callable[[Any], bool] | None = None,
) -> list[Any]:
    """Every item of a paginated List call that ``keep`` accepts (at most ``limit``)."""
    items: list[Any] = []
    while True:
        reply = await remote.call(method, request)
        items.extend(item for item in getattr(reply, field) if keep is None or keep(item))
        if not reply.page.next_page_token or (limit is not None and len(items) >= limit):
            return items[:limit] if limit is not None else items
        request.page.page_token = reply.page.next_page_token


def audit_filter(target: str) -> Callable[[common_pb2.AuditEntry], bool]:
    """Keeps the entries of ``target`` itself and of what lies under it (not of names it is a prefix of)."""
    if target.endswith("/"):
        return lambda entry: True
    return lambda entry: entry.target == target or entry.target.startswith(f"{target}/")


class Context:
    """Per invocation: the parsed options, address resolution, channels, and output."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.json: bool = args.json
        self.targets = Targets({s: getattr(args, s.replace("-", "_")) for s in SERVICES}, args.workdir)
        self._settings = ClientSettings(default_timeout_s=args.timeout or DEFAULT_TIMEOUT_S)
        self.batch_timeout_s: float = args.timeout or BATCH_TIMEOUT_S
        """Deadline of long work: deployments, materialization, training sets."""
        self._pool = ChannelPool(Metrics("infermesh-cli"))
        self._remotes: dict[str, Remote] = {}

    @property
    def actor(self) -> str:
        """Who makes a change: ``--actor``, ``$INFERMESH_ACTOR``, or ``cli:<user>``."""
        return self.args.actor or os.environ.get("INFERMESH_ACTOR") or f"cli:{getpass.getuser()}"

    def remote(self, service: str, stub_factory: Callable[[grpc.aio.Channel], Any]) -> Remote:
        """A client of ``service`` through ``stub_factory`` (one per service and stub)."""
        key = f"{service}/{stub_factory.__name__}"
        remote = self._remotes.get(key)
        if remote is None:
            metadata: tuple[tuple[str, str], ...] = ()
            target = self.targets.resolve(service)
            api_key = self.args.api_key or os.environ.get("INFERMESH_API_KEY")
            if api_key is None and target.from_stack:
                api_key = DEMO_API_KEY
            if service == "biz-center" and api_key:
                metadata = (("x-api-key", api_key),)
            remote = self._remotes[key] = Remote(target, stub_factory, self._pool, self._settings, metadata)
        return remote

    def emit(self, data: Any, render: Callable[[], None]) -> None:
        """``data`` as JSON with ``--json``, else what ``render`` prints."""
        if self.json:
            print_json(data)
        else:
            render()

    @staticmethod
    def warn(line: str) -> None:
        """A warning for the user, on stderr (stdout stays parseable)."""
        print(line, file=sys.stderr)

    async def close(self) -> None:
        """Close every channel opened."""
        await self._pool.close()


async def _run(handler: Handler, args: argparse.Namespace) -> int:
    ctx = Context(args)
    try:
        return await handler(ctx, args) or 0
    finally:
        await ctx.close()


def command(handler: Handler) -> Callable[[argparse.Namespace], int]:
    """``handler`` as a subcommand's ``run``: its exit code, or one error line on stderr and the error's code."""

    def run(args: argparse.Namespace) -> int:
        try:
            return asyncio.run(_run(handler, args))
        except KeyboardInterrupt:
            print("infermesh: interrupted", file=sys.stderr)
            return 130
        except Exception as exc:
            if os.environ.get("INFERMESH_DEBUG"):
                raise
            line, code = error_line(exc)
            print(f"infermesh: {line}", file=sys.stderr)
            return code

    run.__doc__ = handler.__doc__
    return run


def subcommand(sub: Any, name: str, handler: Handler, parent: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add subcommand ``name`` running ``handler`` (its docstring is the help), with the global options."""
    doc = handler.__doc__ or ""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, parents=[parent], help=doc.replace("%", "%%"), description=doc, epilog=GLOBAL_OPTIONS_NOTE
    )
    parser.set_defaults(run=command(handler))
    return parser
