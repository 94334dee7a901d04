"""Settings of the model gateway: the chassis' settings under the ``MODEL_GATEWAY_`` prefix."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from infermesh_chassis.settings import ServiceSettings


class Settings(ServiceSettings):
    """Model gateway settings.

    Read from a YAML file (``--config`` or ``MODEL_GATEWAY_CONFIG_FILE``),
    overridden by ``MODEL_GATEWAY_*`` variables.
    """

    model_config = SettingsConfigDict(env_prefix="MODEL_GATEWAY_")

    service_name: str = "model-gateway"
