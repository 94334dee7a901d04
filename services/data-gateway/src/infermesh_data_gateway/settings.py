"""Settings of the data gateway: the chassis' settings under the ``DATA_GATEWAY_`` prefix."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from infermesh_chassis.settings import ServiceSettings


class Settings(ServiceSettings):
    """Data gateway settings.

    Read from a YAML file (``--config`` or ``DATA_GATEWAY_CONFIG_FILE``),
    overridden by ``DATA_GATEWAY_*`` variables.
    """

    model_config = SettingsConfigDict(env_prefix="DATA_GATEWAY_")

    service_name: str = "data-gateway"
