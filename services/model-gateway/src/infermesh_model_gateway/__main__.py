"""Entry point of the model gateway process: ``python -m infermesh_model_gateway [--config FILE]``."""

from __future__ import annotations

from infermesh_chassis.app import Runtime, run_service
from infermesh_model_gateway.settings import Settings


async def build(settings: Settings, runtime: Runtime) -> None:
    """Add the service's servicers to ``runtime.server``; its RPCs arrive with issue #3."""


def main() -> None:
    """Run the model_gateway until SIGTERM or SIGINT."""
    run_service(Settings, build)


if __name__ == "__main__":
    main()
