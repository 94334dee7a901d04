"""Where the services are: the one place that turns options, environment and the local stack into addresses.

For each service the first of these that is set wins:

1. its option (``--model-gateway HOST:PORT``, ``--data-gateway``, ``--biz-center``, ``--monitor``);
2. its environment variable (``INFERMESH_MODEL_GATEWAY_ADDR``, ...);
3. the local stack started by ``infermesh up`` (its state file under ``--workdir``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from infermesh_cli.commands._errors import Unreachable, UsageError
from infermesh_cli.stack import LocalStack, StackError

__all__ = ["SERVICES", "Target", "Targets", "env_var", "option"]

SERVICES = ("model-gateway", "data-gateway", "biz-center", "monitor")
"""The services a command may call, by their discovery names."""


def option(service: str) -> str:
    """The command-line option naming ``service``'s address (``--model-gateway``)."""
    return f"--{service}"


def env_var(service: str) -> str:
    """The environment variable naming ``service``'s address (``INFERMESH_MODEL_GATEWAY_ADDR``)."""
    return f"INFERMESH_{service.upper().replace('-', '_')}_ADDR"


@dataclass(frozen=True, slots=True)
class Target:
    """A service's address and where it came from (for error messages)."""

    service: str
    address: str
    origin: str
    from_stack: bool = False
    """Whether the address is the local stack's (whose business center takes the stack's demo API key)."""


class Targets:
    """Resolves service addresses (see the module docstring); the local stack is read once, on first need."""

    def __init__(
        self, explicit: Mapping[str, str | None], workdir: Path, environ: Mapping[str, str] | None = None
    ) -> None:
        self._explicit = explicit
        self._workdir = workdir
        self._environ = os.environ if environ is None else environ
        self._stack: dict[str, str] | None = None

    def _from_stack(self) -> dict[str, str]:
        if self._stack is None:
            try:
                stack = LocalStack.attach(self._workdir)
            except StackError:
                self._stack = {}
            else:
                self._stack = {p.name: p.address for p in stack.processes}
        return self._stack

    def resolve(self, service: str) -> Target:
        """The address of ``service``, or an :class:`Unreachable` error saying how to give one."""
        given = self._explicit.get(service)
        if given:
            return self._checked(Target(service, given, option(service)))
        from_env = self._environ.get(env_var(service))
        if from_env:
            return self._checked(Target(service, from_env, env_var(service)))
        address = self._from_stack().get(service)
        if address:
            return Target(service, address, f"the local stack in {self._workdir}", from_stack=True)
        raise Unreachable(
            f"no address for {service}: pass {option(service)} HOST:PORT, set {env_var(service)}, "
            "or start the local mesh with `infermesh up`"
        )

    @staticmethod
    def _checked(target: Target) -> Target:
        host, sep, port = target.address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"{target.origin}: {target.address!r} is not HOST:PORT (e.g. 127.0.0.1:50051)")
        return target
