"""Entry point of the monitor process: ``python -m infermesh_monitor [--config FILE]``."""

from __future__ import annotations

from infermesh_chassis.app import Runtime, run_service
from infermesh_monitor.settings import Settings


async def build(settings: Settings, runtime: Runtime) -> None:
    """Add the service's servicers to ``runtime.server``; its RPCs arrive with issue #6."""


def main() -> None:
    """Run the monitor until SIGTERM or SIGINT."""
    run_service(Settings, build)


if __name__ == "__main__":
    main()
