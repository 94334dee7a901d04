"""Settings: file + environment overrides, and one clear line when something is wrong."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from infermesh_chassis.settings import ServiceSettings, SettingsError, load_settings


class GatewaySettings(ServiceSettings):
    """A service's settings with a required setting of its own."""

    model_config = SettingsConfigDict(env_prefix="TESTGW_")
    service_name: str = "test-gateway"
    upstream: str = Field(min_length=1)
    workers: int = Field(2, ge=1)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for key in ("TESTGW_UPSTREAM", "TESTGW_WORKERS", "TESTGW_GRPC__PORT", "TESTGW_CONFIG_FILE"):
        monkeypatch.delenv(key, raising=False)


def test_file_then_environment_overrides(tmp_path, monkeypatch):
    config = tmp_path / "gw.yaml"
    config.write_text("upstream: triton:8001\nworkers: 3\ngrpc:\n  port: 5000\n  host: 0.0.0.0\n")
    monkeypatch.setenv("TESTGW_CONFIG_FILE", str(config))
    monkeypatch.setenv("TESTGW_GRPC__PORT", "6000")
    monkeypatch.setenv("TESTGW_WORKERS", "4")
    settings = load_settings(GatewaySettings)
    assert settings.upstream == "triton:8001"
    assert settings.workers == 4
    assert settings.grpc.port == 6000
    assert settings.grpc.host == "0.0.0.0"


def test_missing_required_setting_names_env_var(monkeypatch):
    with pytest.raises(SettingsError) as failed:
        load_settings(GatewaySettings)
    message = str(failed.value)
    assert "\n" not in message
    assert "upstream: required but not set (set TESTGW_UPSTREAM or 'upstream' in the settings file)" in message


def test_malformed_values_are_named(monkeypatch):
    monkeypatch.setenv("TESTGW_UPSTREAM", "x:1")
    monkeypatch.setenv("TESTGW_GRPC__PORT", "70000")
    monkeypatch.setenv("TESTGW_WORKERS", "many")
    with pytest.raises(SettingsError) as failed:
        load_settings(GatewaySettings)
    message = str(failed.value)
    assert "grpc.port: Input should be less than or equal to 65535" in message
    assert "workers: Input should be a valid integer" in message


def test_unknown_setting_in_file_is_refused(tmp_path):
    config = tmp_path / "gw.yaml"
    config.write_text("upstream: a:1\nwokers: 3\n")
    with pytest.raises(SettingsError, match="wokers: unknown setting"):
        load_settings(GatewaySettings, config)


def test_bad_yaml_and_missing_file(tmp_path):
    config = tmp_path / "gw.yaml"
    config.write_text("upstream: a:1\n  bad: [\n")
    with pytest.raises(SettingsError, match=r"gw.yaml line \d+ is not valid YAML"):
        load_settings(GatewaySettings, config)
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(GatewaySettings, tmp_path / "nope.yaml")
    config.write_text("- a list\n")
    with pytest.raises(SettingsError, match="must hold a mapping"):
        load_settings(GatewaySettings, config)


def test_process_exits_with_one_clear_line(tmp_path):
    script = tmp_path / "svc.py"
    script.write_text(
        textwrap.dedent(
            """
            from pydantic import Field
            from pydantic_settings import SettingsConfigDict
            from infermesh_chassis.settings import ServiceSettings, load_settings_or_exit

            class S(ServiceSettings):
                model_config = SettingsConfigDict(env_prefix="TESTGW_")
                service_name: str = "test-gateway"
                upstream: str = Field(min_length=1)

            load_settings_or_exit(S)
            print("started")
            """
        )
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("test-gateway: invalid settings (TESTGW_* environment): upstream: required")
