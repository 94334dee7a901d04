"""Entry point of the business center process: ``python -m infermesh_biz_center [--config FILE]``."""

from __future__ import annotations

from infermesh_biz_center.service import create
from infermesh_biz_center.settings import Settings
from infermesh_chassis.app import Runtime, run_service


async def build(settings: Settings, runtime: Runtime) -> None:
    """Build the business center on the runtime: its fronts, core, store and downstream clients."""
    await create(settings, runtime)


def main() -> None:
    """Run the business center until SIGTERM or SIGINT."""
    run_service(Settings, build)


if __name__ == "__main__":
    main()
