"""The checks behind tests/test_deploy.py: the compose project as resolved, the Dockerfiles parsed and
replayed, the services' settings as the stack gives them, and the metrics the dashboards may query.

Each checker returns the problems it finds (an empty list when none), so a test can feed it a broken
input and prove it notices.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deploy_support import (
    DEPLOY,
    ROOT,
    SERVICES,
    Instruction,
    dockerfile,
    env_of,
    environment,
    parse_dockerfile,
    project,
    settings_class,
)

from infermesh_chassis.corecalls import CoreCalls
from infermesh_chassis.events import EventEmitter
from infermesh_chassis.interceptors import DeadlineShedding
from infermesh_chassis.jetstream import CONSUMER_GAUGES
from infermesh_chassis.metrics import Metrics
from infermesh_chassis.settings import (
    EventSettings,
    ServiceSettings,
    load_settings,
)

HADOLINT = Path(sys.executable).parent / "hadolint"
UV = ROOT / ".tools" / "bin" / "uv"

INFRA = ("consul", "redis", "nats", "clickhouse", "jaeger", "prometheus", "grafana")
TRITON_BY_PROFILE = {None: set(), "cpu": {"triton-cpu"}, "gpu": {"triton-gpu"}}
TRITON_METRICS = frozenset(
    {
        "nv_inference_request_success",
        "nv_inference_request_failure",
        "nv_inference_count",
        "nv_inference_exec_count",
        "nv_inference_request_duration_us",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
    }
)
"""Triton's own metric names (its metrics documentation), which the dashboard may query."""


# --- helpers: compose ------------------------------------------------------------------------------------------


def has_healthcheck(service: dict[str, Any]) -> bool:
    """A health check in the compose file, or else in the image's Dockerfile when compose builds it."""
    check = service.get("healthcheck") or {}
    if check.get("disable") or (check.get("test") or [""])[0] == "NONE":
        return False
    if check.get("test"):
        return True
    build = service.get("build")
    if not build:
        return False
    final = parse_dockerfile((Path(build["context"]) / build.get("dockerfile", "Dockerfile")).read_text())[-1]
    return any(i.keyword == "HEALTHCHECK" and not i.args.startswith("NONE") for i in final)


def stack_problems(resolved: dict[str, Any]) -> list[str]:
    """What would keep the resolved stack from starting in order and staying observable."""
    problems = []
    services = resolved.get("services", {})
    for name, service in services.items():
        if not has_healthcheck(service):
            problems.append(f"{name}: no healthcheck")
        if service.get("restart") not in ("unless-stopped", "always"):
            problems.append(f"{name}: not restarted when it dies (restart: {service.get('restart')})")
        for dependency, spec in (service.get("depends_on") or {}).items():
            if spec.get("condition") != "service_healthy":
                problems.append(f"{name}: starts before {dependency} is healthy ({spec.get('condition')})")
            if dependency not in services:
                problems.append(f"{name}: depends on {dependency}, absent from this profile")
        for port in service.get("ports") or []:
            if port.get("published") and port.get("host_ip") != "127.0.0.1":
                problems.append(f"{name}: port {port.get('published')} published beyond 127.0.0.1")
        for mount in service.get("volumes") or []:
            if mount["type"] == "bind" and not Path(mount["source"]).exists():
                problems.append(f"{name}: bind mount source {mount['source']} does not exist")
            if mount["type"] == "volume" and mount.get("source") not in (resolved.get("volumes") or {}):
                problems.append(f"{name}: anonymous or undeclared volume at {mount['target']}")
    return problems


def triton_args(service: str, profile: str) -> dict[str, str]:
    """The ``--name=value`` arguments the Triton worker runs tritonserver with (compose's, else the image's)."""
    command = project(profile)["services"][service].get("command")
    if command is None:
        (cmd,) = [i.args for i in triton_image()[-1] if i.keyword == "CMD"]
        command = json.loads(cmd)
    return dict(arg[2:].split("=", 1) for arg in command if arg.startswith("--") and "=" in arg)


def triton_image() -> list[list[Instruction]]:
    return parse_dockerfile((DEPLOY / "triton" / "Dockerfile").read_text())


def locked_versions() -> dict[str, str]:
    """Package name -> version in uv.lock."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    return {package["name"]: package["version"] for package in lock["package"] if "version" in package}


# --- helpers: Dockerfiles ----------------------------------------------------------------------------------------


def copy_parts(instruction: Instruction) -> tuple[list[str], str, dict[str, str]]:
    """Sources, destination and ``--flags`` of a COPY."""
    words = shlex.split(instruction.args)
    flags = dict(w[2:].partition("=")[::2] for w in words if w.startswith("--"))
    paths = [w for w in words if not w.startswith("--")]
    return paths[:-1], paths[-1], flags


def uv_sync_args(instruction: Instruction) -> list[str] | None:
    """The arguments of ``uv sync`` when ``instruction`` runs it (BuildKit ``--mount`` flags dropped)."""
    words = [w for w in shlex.split(instruction.args) if not w.startswith("--mount=")]
    return words[2:] if instruction.keyword == "RUN" and words[:2] == ["uv", "sync"] else None


def option(args: list[str], name: str) -> str | None:
    for index, arg in enumerate(args):
        if arg == name and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def pyproject(path: Path) -> dict[str, Any]:
    return tomllib.loads((path / "pyproject.toml").read_text())


def workspace_members() -> dict[str, Path]:
    """Package name -> folder of every workspace member."""
    members = {}
    for pattern in pyproject(ROOT)["tool"]["uv"]["workspace"]["members"]:
        for folder in sorted(ROOT.glob(pattern)):
            if (folder / "pyproject.toml").is_file():
                members[pyproject(folder)["project"]["name"]] = folder
    return members


def workspace_closure(package: str) -> set[str]:
    """``package`` and the workspace members it depends on, transitively."""
    members = workspace_members()
    found, todo = set(), [package]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        sources = pyproject(members[name]).get("tool", {}).get("uv", {}).get("sources", {})
        todo += [dep for dep, spec in sources.items() if spec.get("workspace")]
    return found


def makefile_uv_version() -> str:
    match = re.search(r"^UV_VERSION\s*:?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match, "UV_VERSION not found in the Makefile"
    return match.group(1)


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out, index = "", 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            out, index = out + "(?:.*/)?", index + 3
        elif pattern.startswith("**", index):
            out, index = out + ".*", index + 2
        elif pattern[index] == "*":
            out, index = out + "[^/]*", index + 1
        elif pattern[index] == "?":
            out, index = out + "[^/]", index + 1
        else:
            out, index = out + re.escape(pattern[index]), index + 1
    return re.compile(out)


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether the build context leaves ``path`` out: the last pattern matching it or a parent decides."""
    parts = path.strip("/").split("/")
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _glob_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch("/".join(parts[:end])) for end in range(1, len(parts) + 1)):
            excluded = not negated
    return excluded


def context_files(source: str, patterns: list[str]) -> Iterator[Path]:
    """Files of the build context under ``source`` (a file or a folder, relative to the root)."""
    path = ROOT / source
    candidates = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for candidate in candidates:
        relative = candidate.relative_to(ROOT).as_posix()
        if not ignored(relative, patterns):
            yield candidate


def dockerfile_problems(text: str, service: str) -> list[str]:
    """What breaks the image rules: multi-stage, lock first, only declared libraries, non-root, health."""
    stages = parse_dockerfile(text)
    if len(stages) < 2:
        return [f"one stage only ({len(stages)}): build tools would ship in the image"]
    package = pyproject(ROOT / "services" / service)["project"]["name"]
    return [
        *lock_first_problems(stages[0], package),
        *context_problems(stages[0], package),
        *runtime_problems(stages[-1], service),
    ]


def lock_first_problems(builder: list[Instruction], package: str) -> list[str]:
    """The dependency layer comes from uv.lock and the manifests, before any source; then the service."""
    syncs = [(i, args) for i in builder if (args := uv_sync_args(i)) is not None]
    if not syncs:
        return ["the builder never runs uv sync"]
    problems = []
    first_sync, first_args = syncs[0]
    copies = [copy_parts(i) for i in builder if i.keyword == "COPY" and i.line < first_sync.line]
    before = [src for sources, _, _ in copies for src in sources]
    if "uv.lock" not in before:
        problems.append("uv.lock is not copied before the first uv sync")
    if any(not src.endswith(("pyproject.toml", "uv.lock")) for src in before):
        problems.append(f"sources copied before the dependency layer: {before}")
    if "--no-install-workspace" not in first_args and "--no-install-project" not in first_args:
        problems.append("the first uv sync installs the project, so it is not a dependencies-only layer")
    for instruction, args in syncs:
        if "--frozen" not in args and "--locked" not in args:
            problems.append(f"line {instruction.line}: uv sync without --frozen/--locked ignores the lock")
        if option(args, "--package") != package:
            problems.append(f"line {instruction.line}: uv sync --package {option(args, '--package')}, not {package}")
    if {"--no-install-workspace", "--no-install-project"} & set(syncs[-1][1]):
        problems.append("no uv sync installs the service itself")
    pins = re.findall(r"\buv==(\S+)", " ".join(i.args for i in builder if i.keyword == "RUN"))
    if pins != [makefile_uv_version()]:
        problems.append(f"uv pinned as {pins}, the Makefile bootstraps {makefile_uv_version()}")
    return problems


def context_problems(builder: list[Instruction], package: str) -> list[str]:
    """Only this service and the libraries it declares are copied, from paths the build context holds."""
    problems = []
    copies: list[tuple[Instruction, list[str]]] = []
    for instruction in builder:
        if instruction.keyword == "COPY":
            sources, _, flags = copy_parts(instruction)
            if "from" not in flags:
                copies.append((instruction, sources))
    members = workspace_members()
    wanted = {members[name].relative_to(ROOT).as_posix() for name in workspace_closure(package)}
    copied = {src.rsplit("/", 1)[0] for _, sources in copies for src in sources if "/" in src}
    if copied != wanted:
        problems.append(f"copies workspace folders {sorted(copied)}, the package needs {sorted(wanted)}")
    patterns = dockerignore_patterns()
    for instruction, sources in copies:
        for src in sources:
            if not (ROOT / src).exists():
                problems.append(f"line {instruction.line}: COPY {src}: no such path in the repository")
            elif not any(context_files(src, patterns)):
                problems.append(f"line {instruction.line}: COPY {src}: left out of the context by .dockerignore")
    return problems


def runtime_problems(final: list[Instruction], service: str) -> list[str]:
    """The runtime stage: non-root, healthy by the gRPC health protocol, the service's own entry point."""
    problems = []
    keywords = [i.keyword for i in final]
    users = [i.args for i in final if i.keyword == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append(f"the runtime stage runs as root (USER: {users})")
    elif "ENTRYPOINT" in keywords and keywords.index("USER") > keywords.index("ENTRYPOINT"):
        problems.append("USER comes after ENTRYPOINT")
    env = env_of(final)
    prefix = settings_class(service).model_config["env_prefix"]
    grpc_port, metrics_port = env.get(f"{prefix}GRPC__PORT"), env.get(f"{prefix}METRICS__PORT")
    exposed = {p.split("/")[0] for i in final if i.keyword == "EXPOSE" for p in i.args.split()}
    listening = {value for key, value in env.items() if key.endswith("PORT")}
    if not {grpc_port, metrics_port} <= exposed <= listening:
        problems.append(f"EXPOSE {sorted(exposed)} but the service listens on {sorted(listening)}")
    health = [i.args for i in final if i.keyword == "HEALTHCHECK"]
    if len(health) != 1 or "grpc_health" not in health[0] or f"{prefix}GRPC__PORT" not in health[0]:
        problems.append("no HEALTHCHECK through grpc_health on the service's own port")
    script = next(iter(pyproject(ROOT / "services" / service)["project"]["scripts"]))
    entrypoints = [i.args for i in final if i.keyword == "ENTRYPOINT"]
    if entrypoints != [json.dumps([f"/app/.venv/bin/{script}"])]:
        problems.append(f"ENTRYPOINT {entrypoints} is not the package's script {script}")
    return problems


def stack_settings(service: str, monkeypatch: pytest.MonkeyPatch) -> ServiceSettings:
    """The service's settings as its container gets them: the image's environment, then the compose file's."""
    cls = settings_class(service)
    prefix = str(cls.model_config["env_prefix"])
    for key in [k for k in os.environ if k.startswith(prefix)]:
        monkeypatch.delenv(key)
    env = env_of(parse_dockerfile(dockerfile(service))[-1]) | environment(service)
    for key, value in env.items():
        if key.startswith(prefix):
            monkeypatch.setenv(key, value)
    return load_settings(cls)


# --- helpers: dashboards -----------------------------------------------------------------------------------------


def known_metrics() -> set[str]:
    """Every series name the services can expose: the chassis' metrics and each service's own."""
    names = set(TRITON_METRICS) | {"up"}
    for service in SERVICES:
        metrics = Metrics(service)
        EventEmitter(sink=None, settings=EventSettings(), metrics=metrics)  # type: ignore[arg-type]
        DeadlineShedding(metrics)  # what every service's GrpcServer adds: calls shed, gRPC core's counts
        CoreCalls(0, lambda: 0, max_pending_calls=1).register(metrics)
        families = list(metrics.registry.collect())
        for source in (ROOT / "services" / service / "src").rglob("*.py"):
            text = source.read_text()
            for kind, name in re.findall(r"\.(counter|gauge|histogram)\(\s*\"(\w+)\"", text):
                names.add(f"{metrics.prefix}_{name}" + ("_total" if kind == "counter" else ""))
                if kind == "histogram":
                    names |= {f"{metrics.prefix}_{name}_{suffix}" for suffix in ("bucket", "sum", "count")}
            # The gauges of the chassis' JetStream consumers, named by the prefix each service gives.
            for prefix in re.findall(r"DurableConsumer\([^)]*\"(\w+)\"\)", text):
                names |= {f"{metrics.prefix}_{prefix}_{gauge}" for gauge in CONSUMER_GAUGES}
            # Families a custom collector builds under the service's prefix (the monitor's windows).
            names |= {f"{metrics.prefix}_{name}" for name in re.findall(r"f\"\{[\w.]*prefix\}_(\w+)\"", text)}
        for family in families:
            if family.type == "counter":
                names.add(f"{family.name}_total")
            elif family.type == "histogram":
                names |= {family.name, *(f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count"))}
            else:
                names.add(family.name)
    return names


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def dashboard_problems(dashboard: dict[str, Any], known: set[str], datasource_uid: str) -> list[str]:
    problems = []
    ids = [panel["id"] for panel in dashboard["panels"]]
    if len(ids) != len(set(ids)):
        problems.append("panel ids repeat")
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            if target.get("datasource", {}).get("uid") != datasource_uid:
                problems.append(f"{panel['title']}: datasource is not the provisioned {datasource_uid}")
            for name in re.findall(r"\b(?:infermesh|nv)_\w+", target["expr"]):
                if name not in known:
                    problems.append(f"{panel['title']}: {name} is defined nowhere")
    return problems


def port_settings(values: dict[str, Any]) -> Iterator[int]:
    """Every ``port`` setting, at any depth."""
    for key, value in values.items():
        if isinstance(value, dict):
            yield from port_settings(value)
        elif key == "port" and isinstance(value, int):
            yield value
