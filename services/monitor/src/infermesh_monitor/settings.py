"""Settings of the monitor: the chassis' settings under the ``MONITOR_`` prefix."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from infermesh_chassis.settings import ServiceSettings


class Settings(ServiceSettings):
    """Monitor settings.

    Read from a YAML file (``--config`` or ``MONITOR_CONFIG_FILE``),
    overridden by ``MONITOR_*`` variables.
    """

    model_config = SettingsConfigDict(env_prefix="MONITOR_")

    service_name: str = "monitor"
