"""Settings of the business center: the chassis' settings under the ``BIZ_CENTER_`` prefix."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from infermesh_chassis.settings import ServiceSettings


class Settings(ServiceSettings):
    """Business center settings.

    Read from a YAML file (``--config`` or ``BIZ_CENTER_CONFIG_FILE``),
    overridden by ``BIZ_CENTER_*`` variables.
    """

    model_config = SettingsConfigDict(env_prefix="BIZ_CENTER_")

    service_name: str = "biz-center"
