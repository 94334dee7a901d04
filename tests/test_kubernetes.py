"""The Helm chart (``deploy/kubernetes``), rendered by Helm itself and checked without a cluster.

- the chart is rendered by Helm's own engine (the ``helm-python-sdk`` wheel binds Helm's Go SDK; no ``helm``
  binary is needed), Consul's official chart included (vendored under ``charts/``), for the GPU, CPU and
  scaled-out variants, and every rendered object validates against the Kubernetes 1.33 API schemas in strict
  mode (``kubernetes-validate``, unknown fields rejected);
- per service: the workload kind, native gRPC probes on the standard health service, resources, the
  PodDisruptionBudget, the HorizontalPodAutoscaler on CPU and calls in flight (and the prometheus-adapter rule
  that serves that metric from what the chassis exports), graceful termination longer than the drain;
- the chart and the compose stack give each service the same settings (names, fixed values, ports), and the
  chart's environment loads with each service's own settings class;
- the NetworkPolicies, evaluated for pairs of real pod labels (the Consul agents' from HashiCorp's chart).

Every checker is also fed a broken input, to prove it notices.
"""

from __future__ import annotations

import copy
import json
import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import helm_python
import kubernetes_validate
import pytest
import yaml
from deploy_support import (
    COMPOSE_FILE,
    DEPLOY,
    SERVICES,
    dockerfile,
    env_of,
    environment,
    parse_dockerfile,
    project,
    settings_class,
    unknown_settings,
)
from helm_python import _native

from infermesh_chassis.metrics import Metrics
from infermesh_chassis.settings import GrpcServerSettings, load_settings

CHART = DEPLOY / "kubernetes"
KUBERNETES_VERSION = "1.33.0"
"""The Kubernetes version the chart is rendered for and validated against (schemas of kubernetes-validate)."""
OLDEST_KUBERNETES = "1.27.0"
"""The oldest version the chart accepts (Chart.yaml's kubeVersion): validated against too."""
RELEASE = "im"
NAMESPACE = "infermesh"
HASH_KEY = "test-unit-id-hash-key-0123456789"
SECRETS = {"unitIdHashKey": HASH_KEY, "clickhousePassword": "clickhouse-test-password"}
VALUES_KEY = {"model-gateway": "modelGateway", "data-gateway": "dataGateway", "biz-center": "bizCenter"}
VALUES_KEY["monitor"] = "monitor"

VARIANTS: dict[str, dict[str, Any]] = {
    # What `helm install` with the required secrets gives: GPU workers, SQLite registry, ClickHouse.
    "default": {"secrets": SECRETS},
    # CPU workers, a shared registry, every service autoscaled, API keys and scenes.
    "scaled-cpu": {
        "secrets": SECRETS
        | {
            "modelGatewayRegistryUrl": "postgresql://infermesh:pw@postgres.db.svc/registry",
            "bizCenterApiKeys": [{"name": "shop", "sha256": "ab" * 32, "scenes": ["*"]}],
        },
        "services": {
            "modelGateway": {"autoscaling": {"enabled": True}},
            "bizCenter": {"seed": {"version": 1, "scenes": []}, "serviceType": "LoadBalancer"},
        },
        "triton": {"gpu": {"enabled": False}, "cpu": {"enabled": True}},
    },
    # Both kinds of workers, the monitor on embedded ClickHouse, Consul elsewhere, a Secret made by hand.
    "chdb-external-consul": {
        "secrets": {"existingSecret": "made-by-hand"},
        "services": {"monitor": {"storageBackend": "chdb", "autoscaling": {"enabled": False}}},
        "triton": {"cpu": {"enabled": True}},
        "consul": {"enabled": False},
        "consulAddress": "http://consul.consul.svc:8500",
        "networkPolicy": {"consulFrom": [{"namespaceSelector": {"matchLabels": {"name": "consul"}}}]},
    },
}


# --- rendering ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rendered:
    source: str
    """The template that produced the object (``infermesh/templates/...``, ``infermesh/charts/consul/...``)."""
    obj: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.obj["kind"])

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])


def render(values: dict[str, Any], kube_version: str = KUBERNETES_VERSION) -> list[Rendered]:
    """The chart rendered as ``helm template --kube-version ... --api-versions ...`` renders it.

    The wheel's ``Chart.render`` does not pass Helm's kube and API versions on, so the call goes to the
    library's ``helm_render`` with them; without them Helm assumes an old cluster (Consul's chart then
    renders a policy/v1beta1 PodDisruptionBudget, as `helm template` without --api-versions does).
    """
    options = {
        "name": RELEASE,
        "namespace": NAMESPACE,
        "is_install": True,
        "kube_version": f"v{kube_version}",
        "api_versions": ["policy/v1/PodDisruptionBudget", "autoscaling/v2/HorizontalPodAutoscaler"],
    }
    with helm_python.Chart.load(CHART) as chart:
        out = json.loads(_native.call_string("helm_render", chart._raw(), json.dumps(values), json.dumps(options)))
    objects = []
    for source, text in sorted(out.items()):
        if source.endswith("NOTES.txt"):
            continue
        objects += [Rendered(source, obj) for obj in yaml.safe_load_all(text) if obj]
    return objects


_renders: dict[str, list[Rendered]] = {}


def rendered(variant: str) -> list[Rendered]:
    if variant not in _renders:
        _renders[variant] = render(VARIANTS[variant])
    return _renders[variant]


def ours(objects: list[Rendered]) -> list[Rendered]:
    return [o for o in objects if "/charts/" not in o.source]


def find(objects: list[Rendered], kind: str, name: str) -> dict[str, Any]:
    (match,) = [o.obj for o in objects if o.kind == kind and o.name == name]
    return match


def workload(objects: list[Rendered], component: str) -> dict[str, Any]:
    (match,) = [
        o.obj for o in ours(objects) if o.kind in ("Deployment", "StatefulSet") and o.name == f"{RELEASE}-{component}"
    ]
    return match


def container(work: dict[str, Any]) -> dict[str, Any]:
    return dict(work["spec"]["template"]["spec"]["containers"][0])


def validation_problems(objects: list[Rendered], version: str = KUBERNETES_VERSION) -> list[str]:
    problems = []
    for item in objects:
        try:
            kubernetes_validate.validate(item.obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{item.kind}/{item.name} ({item.source}): {exc.message} at {list(exc.path)}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{item.kind}/{item.name} ({item.source}): {item.obj['apiVersion']} is no API of {version}")
    return problems


# --- the chart renders, and every object is a valid Kubernetes object --------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_rendered_object_validates_against_the_kubernetes_schemas(variant: str):
    objects = rendered(variant)
    kinds = {o.kind for o in ours(objects)}
    assert {"Deployment", "StatefulSet", "Service", "PodDisruptionBudget", "NetworkPolicy"} <= kinds
    assert validation_problems(objects) == []


def test_the_oldest_kubernetes_the_chart_accepts_takes_every_object():
    assert yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"] == f">={OLDEST_KUBERNETES}-0"
    for variant, values in VARIANTS.items():
        assert validation_problems(render(values, OLDEST_KUBERNETES), OLDEST_KUBERNETES) == [], variant


def test_schema_validation_catches_broken_objects():
    objects = ours(rendered("default"))
    deployment = copy.deepcopy(find(objects, "Deployment", f"{RELEASE}-biz-center"))
    deployment["spec"]["replica"] = 2
    hpa = copy.deepcopy(find(objects, "HorizontalPodAutoscaler", f"{RELEASE}-biz-center"))
    hpa["spec"]["metrics"][1]["pods"]["target"]["averageValue"] = {"value": 3}
    service = copy.deepcopy(find(objects, "Service", f"{RELEASE}-data-gateway"))
    service["spec"]["ports"][0]["port"] = "grpc"
    pdb = copy.deepcopy(find(objects, "PodDisruptionBudget", f"{RELEASE}-monitor"))
    pdb["apiVersion"] = "policy/v1beta1"
    broken = [Rendered("broken", obj) for obj in (deployment, hpa, service, pdb)]
    problems = validation_problems(broken)
    assert len(problems) == 4, problems
    assert f"no API of {KUBERNETES_VERSION}" in problems[3]


def test_the_chart_refuses_clusters_without_native_grpc_probes():
    with pytest.raises(helm_python.HelmError, match=re.escape("needs 1.27 or newer")):
        render(VARIANTS["default"], kube_version="1.26.0")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_helm_lint_passes(variant: str):
    report = helm_python.lint(CHART, VARIANTS[variant], strict=True, kube_version=f"v{KUBERNETES_VERSION}")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "secrets.unitIdHashKey"),
        ({"secrets": SECRETS | {"unitIdHashKey": "too-short"}}, "at least 16 characters"),
        ({"secrets": {"unitIdHashKey": HASH_KEY}}, "secrets.clickhousePassword"),
        ({"secrets": SECRETS, "services": {"modelGateway": {"replicas": 2}}}, "modelGatewayRegistryUrl"),
        ({"secrets": SECRETS, "services": {"modelGateway": {"sharedRegistry": True}}}, "model-gateway-registry-url"),
        ({"secrets": SECRETS, "services": {"monitor": {"storageBackend": "chdb"}}}, "chdb backend"),
        (
            {"secrets": SECRETS, "services": {"monitor": {"storageBackend": "mysql"}}},
            "/services/monitor/storageBackend",
        ),
        ({"secrets": SECRETS, "triton": {"gpu": {"enabled": False}}}, "no worker"),
        # values.schema.json: a misspelled service, workers that are neither a number nor "auto".
        ({"secrets": SECRETS, "services": {"dataGateways": {}}}, "additional properties 'dataGateways'"),
        ({"secrets": SECRETS, "services": {"bizCenter": {"grpc": {"workers": "many"}}}}, "grpc/workers"),
    ],
)
def test_the_chart_refuses_values_that_cannot_work(values: dict[str, Any], message: str):
    with pytest.raises(helm_python.HelmError, match=re.escape(message)):
        render(values)


# --- per service ---------------------------------------------------------------------------------------------------


def service_values(service: str, variant: str = "default") -> dict[str, Any]:
    with helm_python.Chart.load(CHART) as chart:
        merged = chart.merge_values(VARIANTS[variant])
    return dict(merged["services"][VALUES_KEY[service]])


def env_entries(work: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container(work)["env"]}


def pod_problems(objects: list[Rendered], service: str, values: dict[str, Any]) -> list[str]:
    """What keeps a service's pods from being probed, drained, scaled, scraped and protected."""
    problems = []
    name = f"{RELEASE}-{service}"
    work = workload(objects, service)
    pod = work["spec"]["template"]
    main = container(work)
    prefix = settings_class(service).model_config["env_prefix"]
    env = {k: e.get("value") for k, e in env_entries(work).items()}
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    grpc_port = int(env[f"{prefix}GRPC__PORT"])
    if ports.get("grpc") != grpc_port or ports.get("metrics") != int(env[f"{prefix}METRICS__PORT"]):
        problems.append(f"{service}: container ports {ports} are not where it listens")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if main.get(probe, {}).get("grpc", {}).get("port") != grpc_port:
            problems.append(f"{service}: no native gRPC {probe} on the gRPC port")
    resources = main.get("resources", {})
    if not {"cpu", "memory"} <= set(resources.get("requests", {})) & set(resources.get("limits", {})):
        problems.append(f"{service}: requests and limits of cpu and memory are not all set")
    grace = float(env[f"{prefix}GRPC__GRACE_PERIOD_S"])
    if not pod["spec"].get("terminationGracePeriodSeconds", 30) > grace:
        problems.append(f"{service}: killed before its {grace} s drain ends")
    annotations = pod["metadata"].get("annotations", {})
    if annotations.get("prometheus.io/scrape") != "true" or annotations.get("prometheus.io/port") != str(
        ports.get("metrics")
    ):
        problems.append(f"{service}: not scraped on its metrics port")
    paths = [m["mountPath"] for m in main["volumeMounts"]]
    for index, path in enumerate(paths):
        if any(path.startswith(f"{later}/") for later in paths[index + 1 :]):
            problems.append(f"{service}: {path} is mounted before the volume that holds it")
    selector = work["spec"]["selector"]["matchLabels"]
    if not selector.items() <= pod["metadata"]["labels"].items():
        problems.append(f"{service}: the selector does not select its own pods")
    pdbs = [o.obj for o in objects if o.kind == "PodDisruptionBudget" and o.name == name]
    if not pdbs or pdbs[0]["spec"]["selector"]["matchLabels"] != selector:
        problems.append(f"{service}: no PodDisruptionBudget for its pods")
    else:
        fewest = values["autoscaling"]["minReplicas"] if values["autoscaling"]["enabled"] else values["replicas"]
        if int(pdbs[0]["spec"].get("minAvailable", 0)) >= fewest:
            problems.append(f"{service}: the PodDisruptionBudget lets no pod of {fewest} go: node drains would hang")
    services = [o.obj for o in objects if o.kind == "Service" and o.name == name]
    if not services or services[0]["spec"]["selector"] != selector:
        problems.append(f"{service}: no Service for its pods")
    elif {p["name"]: p["port"] for p in services[0]["spec"]["ports"]}.items() != ports.items():
        problems.append(f"{service}: the Service's ports are not the container's")
    hpas = [o.obj for o in objects if o.kind == "HorizontalPodAutoscaler" and o.name == name]
    if values["autoscaling"]["enabled"]:
        if not hpas:
            problems.append(f"{service}: no HorizontalPodAutoscaler")
        else:
            problems += hpa_problems(hpas[0], work, service)
    elif hpas:
        problems.append(f"{service}: a HorizontalPodAutoscaler while autoscaling is off")
    return problems


def hpa_problems(hpa: dict[str, Any], work: dict[str, Any], service: str) -> list[str]:
    problems = []
    target = hpa["spec"]["scaleTargetRef"]
    if (target["kind"], target["name"]) != (work["kind"], work["metadata"]["name"]):
        problems.append(f"{service}: the HorizontalPodAutoscaler scales {target['kind']}/{target['name']}")
    if "replicas" in work["spec"]:
        problems.append(f"{service}: replicas set while autoscaled (each upgrade would reset the count)")
    by_type = {m["type"]: m for m in hpa["spec"]["metrics"]}
    if by_type.get("Resource", {}).get("resource", {}).get("name") != "cpu":
        problems.append(f"{service}: does not scale on CPU")
    pods_metric = by_type.get("Pods", {}).get("pods", {}).get("metric", {}).get("name")
    if pods_metric != in_flight_metric(service):
        problems.append(f"{service}: scales on {pods_metric}, not on calls in flight")
    return problems


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("service", SERVICES)
def test_each_service_is_probed_drained_scaled_and_protected(service: str, variant: str):
    assert pod_problems(ours(rendered(variant)), service, service_values(service, variant)) == []


def test_pod_checks_catch_broken_services():
    objects = copy.deepcopy(ours(rendered("scaled-cpu")))
    work = workload(objects, "data-gateway")
    main = work["spec"]["template"]["spec"]["containers"][0]
    main["readinessProbe"] = {"tcpSocket": {"port": 50051}}
    main["volumeMounts"].reverse()
    del main["resources"]["limits"]["memory"]
    work["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 5
    work["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] = "50051"
    find(objects, "PodDisruptionBudget", f"{RELEASE}-data-gateway")["spec"]["selector"]["matchLabels"] = {"x": "y"}
    pdb = find(objects, "PodDisruptionBudget", f"{RELEASE}-biz-center")["spec"]
    del pdb["maxUnavailable"]
    pdb["minAvailable"] = 2
    hpa = find(objects, "HorizontalPodAutoscaler", f"{RELEASE}-data-gateway")
    hpa["spec"]["metrics"][1]["pods"]["metric"]["name"] = "infermesh_data_gateway_grpc_server_requests"
    problems = pod_problems(objects, "data-gateway", service_values("data-gateway", "scaled-cpu"))
    problems += pod_problems(objects, "biz-center", service_values("biz-center", "scaled-cpu"))
    for expected in (
        "no native gRPC readinessProbe",
        "requests and limits",
        "killed before",
        "not scraped",
        "no PodDisruptionBudget",
        "not on calls in flight",
        "node drains would hang",
        "is mounted before the volume that holds it",
    ):
        assert any(expected in p for p in problems), (expected, problems)


def test_stateful_services_run_as_statefulsets_with_their_own_volume():
    default, scaled = ours(rendered("default")), ours(rendered("scaled-cpu"))
    # The SQLite registry lives on the gateway's volume; with a shared registry it is stateless.
    assert workload(default, "model-gateway")["kind"] == "StatefulSet"
    assert workload(scaled, "model-gateway")["kind"] == "Deployment"
    assert "MODEL_GATEWAY_REGISTRY_URL" in env_entries(workload(scaled, "model-gateway"))
    assert "MODEL_GATEWAY_REGISTRY_URL" not in env_entries(workload(default, "model-gateway"))
    for objects in (default, scaled):
        for name in ("monitor", "nats", "redis", "clickhouse"):
            work = workload(objects, name)
            assert work["kind"] == "StatefulSet", name
            (claim,) = work["spec"]["volumeClaimTemplates"]
            mounts = {m["name"]: m["mountPath"] for m in container(work)["volumeMounts"]}
            assert claim["metadata"]["name"] in mounts, name
        for name in ("data-gateway", "biz-center"):
            assert workload(objects, name)["kind"] == "Deployment"
    # Mounted where compose keeps each store's data.
    services = project("cpu")["services"]
    for name in ("nats", "redis", "clickhouse"):
        mounts = {m["name"]: m["mountPath"] for m in container(workload(default, name))["volumeMounts"]}
        assert mounts["data"] in {m["target"] for m in services[name]["volumes"] if m["type"] == "volume"}, name
    nats = container(workload(default, "nats"))
    assert "--jetstream" in nats["args"] and "--store_dir=/data" in nats["args"]


@pytest.mark.parametrize(
    ("limit", "workers", "expected"),
    [("2", "", "2"), ("1500m", "", "2"), ("500m", "", "1"), ("4", "auto", "auto"), ("4", 3, "3"), (None, "", "auto")],
)
def test_grpc_workers_default_to_the_cpu_limit(limit: str | None, workers: Any, expected: str):
    # None deletes the chart's default limit (Helm's null).
    resources = {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi", "cpu": limit}}
    values = {"secrets": SECRETS, "services": {"dataGateway": {"resources": resources, "grpc": {"workers": workers}}}}
    env = env_entries(workload(render(values), "data-gateway"))
    assert env["DATA_GATEWAY_GRPC__WORKERS"]["value"] == expected


# --- the chart and the compose stack agree ------------------------------------------------------------------------


def chart_env(objects: list[Rendered], service: str) -> dict[str, str]:
    """The service container's environment with secrets, pod fields and $(VAR) references resolved."""
    work = workload(objects, service)
    secrets = {o.name: o.obj.get("stringData", {}) for o in objects if o.kind == "Secret"}
    fields = {"status.podIP": "10.244.1.7", "status.hostIP": "192.168.0.4"}
    env: dict[str, str] = {}
    for name, entry in env_entries(work).items():
        if "value" in entry:
            env[name] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], entry["value"])
        elif "secretKeyRef" in entry["valueFrom"]:
            ref = entry["valueFrom"]["secretKeyRef"]
            if ref["key"] in secrets.get(ref["name"], {}):
                env[name] = secrets[ref["name"]][ref["key"]]
            else:
                assert ref.get("optional"), f"{service}: {name} from a key the Secret lacks: {ref}"
        else:
            env[name] = fields[entry["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


SECRET_OF_COMPOSE_VARIABLE = {
    "INFERMESH_UNIT_ID_HASH_KEY": HASH_KEY,
    "CLICKHOUSE_PASSWORD": SECRETS["clickhousePassword"],
}
"""What the chart's Secret holds (as rendered here) for each variable compose reads from the shell."""


def compose_secrets(service: str) -> dict[str, str]:
    """Settings compose takes from the shell's secrets (``${VARIABLE...}``), by name: the chart takes them from its
    Secret. Other shell variables with a default (``${INFERMESH_TRACE_SAMPLE_RATIO:-0.01}``) are plain settings."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text())["services"][service].get("environment", {})
    found = {name: re.match(r"\$\{(\w+)(:?-)?", str(value)) for name, value in raw.items()}
    return {
        name: match.group(1)
        for name, match in found.items()
        if match and (match.group(2) is None or match.group(1) in SECRET_OF_COMPOSE_VARIABLE)
    }


def compose_default(value: str) -> str:
    """What compose gives a ``${VARIABLE:-default}`` setting when the shell sets nothing (other values as they are)."""
    match = re.fullmatch(r"\$\{\w+:?-([^}]*)\}", value)
    return value if match is None else match.group(1)


def compose_problems(service: str, chart: dict[str, str], compose: dict[str, str], image: dict[str, str]) -> list[str]:
    """Where the chart's settings of a service differ from the compose stack's (its image's ENV included)."""
    problems = []
    stack = image | compose
    for name, written in stack.items():
        value = compose_default(written)
        if name not in chart:
            if name.startswith(settings_class(service).model_config["env_prefix"]):
                problems.append(f"{service}: {name} is set by compose, not by the chart")
            continue
        mine = chart[name]
        if name in compose_secrets(service):
            if mine != SECRET_OF_COMPOSE_VARIABLE[compose_secrets(service)[name]]:
                problems.append(f"{service}: {name} is not the secret compose gives")
        elif "://" in value:
            ours_url, theirs = urlsplit(mine), urlsplit(value)
            if (ours_url.scheme, ours_url.port, ours_url.path) != (theirs.scheme, theirs.port, theirs.path):
                problems.append(f"{service}: {name} is {mine}, compose's is {value}")
            expected = {"consul": "192.168.0.4"}.get(theirs.hostname or "", f"{RELEASE}-{theirs.hostname}")
            if ours_url.hostname != expected:
                problems.append(f"{service}: {name} reaches {ours_url.hostname}, not the chart's {expected}")
        elif name.endswith("_TRACING__ENDPOINT"):
            # compose traces to its Jaeger, the chart (values tracing.endpoint empty) to the monitor's OTLP Export.
            if mine != f"{RELEASE}-monitor:50051":
                problems.append(f"{service}: traces to {mine}, not the monitor")
        elif name.endswith("__ADVERTISE_HOST"):
            if mine != "10.244.1.7":
                problems.append(f"{service}: registers {mine}, not its pod's address")
        elif mine != value:
            problems.append(f"{service}: {name} is {mine!r}, compose's is {value!r}")
    return problems


@pytest.mark.parametrize("service", SERVICES)
def test_chart_and_compose_give_each_service_the_same_settings(service: str):
    objects = rendered("default")
    image = env_of(parse_dockerfile(dockerfile(service))[-1])
    assert compose_problems(service, chart_env(objects, service), environment(service), image) == []
    # Ports: the container's and the Service's are those compose publishes and the image listens on.
    compose_ports = {p["target"] for p in project(None)["services"][service]["ports"]}
    container_ports = {p["containerPort"] for p in container(workload(objects, service))["ports"]}
    service_ports = {p["port"] for p in find(ours(objects), "Service", f"{RELEASE}-{service}")["spec"]["ports"]}
    image_ports = {int(v) for k, v in image.items() if k.endswith("PORT")}
    assert compose_ports <= container_ports == service_ports == image_ports
    # The same time to drain and close before a kill as compose gives.
    grace = project(None)["services"][service]["stop_grace_period"]
    pod = workload(objects, service)["spec"]["template"]["spec"]
    assert f"{pod['terminationGracePeriodSeconds']}s" == grace


def test_compose_agreement_catches_a_drifting_chart():
    chart = chart_env(rendered("default"), "monitor")
    image = env_of(parse_dockerfile(dockerfile("monitor"))[-1])
    broken = dict(chart)
    del broken["MONITOR_INGEST__NATS_ENABLED"]
    broken["MONITOR_EVENTS__NATS_URL"] = "nats://im-nats:4223"
    broken["MONITOR_STORAGE__CLICKHOUSE_URL"] = "http://clickhouse:8123"
    broken["MONITOR_STORAGE__DATABASE"] = "other"
    broken["MONITOR_GRPC__PORT"] = "50052"
    broken["MONITOR_EVENTS__UNIT_ID_HASH_KEY"] = "another-key-0123456789"
    problems = compose_problems("monitor", broken, environment("monitor"), image)
    for expected in (
        "MONITOR_INGEST__NATS_ENABLED is set by compose, not by the chart",
        "MONITOR_EVENTS__NATS_URL is nats://im-nats:4223",
        "reaches clickhouse, not the chart's im-clickhouse",
        "MONITOR_STORAGE__DATABASE is 'other'",
        "MONITOR_GRPC__PORT is '50052'",
        "MONITOR_EVENTS__UNIT_ID_HASH_KEY is not the secret",
    ):
        assert any(expected in p for p in problems), (expected, problems)


def pending_settings(prefix: str) -> set[str]:
    """Settings the chart sets ahead of the chassis (issue 14's ``grpc.workers``): allowed while
    GrpcServerSettings lacks the field, checked like any other once it has it."""
    return set() if "workers" in GrpcServerSettings.model_fields else {f"{prefix}GRPC__WORKERS"}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("service", SERVICES)
def test_the_charts_environment_loads_with_the_services_settings(
    service: str, variant: str, monkeypatch: pytest.MonkeyPatch
):
    objects = rendered(variant)
    if variant == "chdb-external-consul":  # the hand-made Secret, as deploy/README.md has users create it
        secret = {"unit-id-hash-key": HASH_KEY, "clickhouse-password": "pw", "biz-center-api-keys": "[]"}
        objects = [*objects, Rendered("by hand", {"kind": "Secret", "metadata": {"name": "made-by-hand"}})]
        objects[-1].obj["stringData"] = secret
    cls = settings_class(service)
    prefix = str(cls.model_config["env_prefix"])
    image = env_of(parse_dockerfile(dockerfile(service))[-1])
    env = image | chart_env(objects, service)
    assert set(unknown_settings(cls, env)) <= pending_settings(prefix)
    for key in [k for k in os.environ if k.startswith(prefix)]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith(prefix):
            monkeypatch.setenv(key, value)
    settings: Any = load_settings(cls)
    values = service_values(service, variant)
    assert settings.grpc.port == values["grpc"]["port"] and settings.metrics.port == values["metricsPort"]
    assert settings.grpc.host == "0.0.0.0" and settings.grpc.advertise_host == "10.244.1.7"
    assert settings.grpc.grace_period_s == values["grpc"]["gracePeriodSeconds"]
    assert settings.discovery.backend == "consul"
    expected_consul = VARIANTS[variant].get("consulAddress", "http://192.168.0.4:8500")
    assert settings.discovery.consul_addr == expected_consul
    settings.events.check_unit_id_hash_key(prefix)
    assert settings.events.transport == "nats"
    if service == "biz-center" and variant == "scaled-cpu":
        (key,) = settings.auth.api_keys
        assert key.name == "shop"
        assert settings.config.seed_file is not None
    if service == "monitor":
        assert settings.storage.backend == values["storageBackend"]


# --- Triton workers ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gpu", "cpu"])
def test_triton_workers_run_as_in_compose_and_register_where_the_gateway_looks(kind: str):
    objects = ours(rendered("chdb-external-consul"))
    work = workload(objects, f"triton-{kind}")
    pod = work["spec"]["template"]["spec"]
    main = container(work)
    requests, limits = main["resources"]["requests"], main["resources"]["limits"]
    compose_worker = project(kind)["services"][f"triton-{kind}"]
    if kind == "gpu":
        assert requests["nvidia.com/gpu"] == limits["nvidia.com/gpu"] == 1
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        assert "args" not in main, "GPU workers run the image's own arguments, as compose's triton-gpu"
    else:
        assert "nvidia.com/gpu" not in requests and "nvidia.com/gpu" not in limits
        assert "nodeSelector" not in pod and "tolerations" not in pod
        assert main["args"] == compose_worker["command"]
    env = {e["name"]: e.get("value") for e in main["env"]}
    assert env["TRITON_KIND"] == compose_worker["environment"]["TRITON_KIND"] == kind
    assert env["CONSUL_HTTP_ADDR"] == VARIANTS["chdb-external-consul"]["consulAddress"]
    assert env["TRITON_ADVERTISE_ADDRESS"] == "$(POD_IP)"
    # The ports and checks serve.sh registers (triton-service.json), the ID it registers under.
    template = json.loads((DEPLOY / "triton" / "triton-service.json").read_text())
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports["grpc"] == template["Port"] and str(ports["metrics"]) == template["Meta"]["metrics_port"]
    assert ports["http"] == urlsplit(template["Check"]["HTTP"]).port
    assert main["readinessProbe"]["httpGet"]["path"] == urlsplit(template["Check"]["HTTP"]).path
    registered_id = re.search(r'id="([^"]+)"', (DEPLOY / "triton" / "serve.sh").read_text()).group(1)  # type: ignore[union-attr]
    pre_stop = main["lifecycle"]["preStop"]["exec"]["command"][-1]
    assert registered_id.replace("${kind}", "${TRITON_KIND}") in pre_stop and "deregister" in pre_stop
    # One model repository: the gateway writes it, every worker reads it where compose mounts it.
    claim = find(objects, "PersistentVolumeClaim", f"{RELEASE}-model-repository")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in main["volumeMounts"]}
    assert volumes["model-repository"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    compose_mounts = {m["source"]: m for m in compose_worker["volumes"]}
    assert mounts["model-repository"]["mountPath"] == compose_mounts["model-repository"]["target"]
    assert mounts["model-repository"]["readOnly"] and compose_mounts["model-repository"]["read_only"]
    gateway = workload(objects, "model-gateway")
    gateway_volumes = {v["name"]: v for v in gateway["spec"]["template"]["spec"]["volumes"]}
    gateway_mounts = {m["name"]: m["mountPath"] for m in container(gateway)["volumeMounts"]}
    assert gateway_volumes["model-repository"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    compose_gateway = {m["source"]: m["target"] for m in project(None)["services"]["model-gateway"]["volumes"]}
    assert gateway_mounts["model-repository"] == compose_gateway["model-repository"]


# --- autoscaling on calls in flight -------------------------------------------------------------------------------


def in_flight_metric(service: str) -> str:
    """The metric prometheus-adapter serves for ``service``, from the latency histogram the chassis exports."""
    metrics = Metrics(service)
    (family,) = metrics.server.latency.describe()
    histogram = f"{family.name}_sum"
    (rule,) = yaml.safe_load((CHART / "prometheus-adapter-values.yaml").read_text())["rules"]["custom"]
    series = re.search(r'__name__=~"([^"]+)"', rule["seriesQuery"]).group(1)  # type: ignore[union-attr]
    assert re.fullmatch(series, histogram), f"the adapter's seriesQuery misses {histogram}"
    match = re.fullmatch(rule["name"]["matches"], histogram)
    assert match, f"the adapter's name rule misses {histogram}"
    return match.expand(rule["name"]["as"].replace("${", "\\g<").replace("}", ">"))


def test_prometheus_adapter_serves_calls_in_flight_from_what_the_chassis_exports():
    metrics = Metrics("biz-center")
    metrics.server.latency.labels("svc", "Method").observe(0.25)
    exported = {s.name for f in metrics.registry.collect() for s in f.samples}
    assert "infermesh_biz_center_grpc_server_latency_seconds_sum" in exported
    assert in_flight_metric("biz-center") == "infermesh_biz_center_grpc_server_in_flight"
    (rule,) = yaml.safe_load((CHART / "prometheus-adapter-values.yaml").read_text())["rules"]["custom"]
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    assert "rate(<<.Series>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]


# --- network policies --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pod:
    labels: dict[str, str]
    namespace_labels: dict[str, str]


def pod_of(objects: list[Rendered], kind: str, name: str) -> Pod:
    labels = find(objects, kind, name)["spec"]["template"]["metadata"]["labels"]
    return Pod(labels, {"kubernetes.io/metadata.name": NAMESPACE})


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"the evaluator reads matchLabels only: {selector}"
    return selector.get("matchLabels", {}).items() <= labels.items()


def peer_matches(peer: dict[str, Any], source: Pod) -> bool:
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], source.namespace_labels):
            return False
    elif source.namespace_labels.get("kubernetes.io/metadata.name") != NAMESPACE:
        return False
    return selects(peer.get("podSelector", {}), source.labels)


def allowed(objects: list[Rendered], source: Pod, target: Pod, port: int) -> bool:
    """Whether the chart's NetworkPolicies let ``source`` open ``port`` on ``target`` (Kubernetes' semantics)."""
    policies = [
        o.obj for o in objects if o.kind == "NetworkPolicy" and selects(o.obj["spec"]["podSelector"], target.labels)
    ]
    if not policies:
        return True
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            ports = {p["port"] for p in rule.get("ports", [])}
            if ports and port not in ports:
                continue
            if "from" not in rule or any(peer_matches(peer, source) for peer in rule["from"]):
                return True
    return False


WORKLOAD_KINDS = {
    "biz-center": "Deployment",
    "data-gateway": "Deployment",
    "model-gateway": "StatefulSet",
    "monitor": "StatefulSet",
    "triton-gpu": "Deployment",
    "nats": "StatefulSet",
    "redis": "StatefulSet",
}
"""The workloads whose pods the network policy test places (in both variants it renders), by kind."""


@pytest.mark.parametrize("variant", ["default", "chdb-external-consul"])
def test_only_the_biz_center_reaches_the_gateways(variant: str):
    objects = rendered(variant)
    pods = {name: pod_of(objects, kind, f"{RELEASE}-{name}") for name, kind in WORKLOAD_KINDS.items()}
    if variant == "default":
        consul = pod_of(objects, "DaemonSet", f"{RELEASE}-consul-client")
    else:
        consul = Pod({"app": "consul"}, {"name": "consul", "kubernetes.io/metadata.name": "consul"})
    prometheus = Pod({"app.kubernetes.io/name": "prometheus"}, {"kubernetes.io/metadata.name": "monitoring"})
    stranger = Pod({"app": "other"}, {"kubernetes.io/metadata.name": NAMESPACE})
    triton = "triton-gpu"
    for gateway in ("data-gateway", "model-gateway"):
        assert allowed(objects, pods["biz-center"], pods[gateway], 50051), gateway
        assert allowed(objects, consul, pods[gateway], 50051), f"{gateway}: Consul's health check"
        assert allowed(objects, prometheus, pods[gateway], 9100), gateway
        for caller in ("data-gateway", "model-gateway", "monitor", triton):
            assert not allowed(objects, pods[caller], pods[gateway], 50051), (caller, gateway)
        assert not allowed(objects, stranger, pods[gateway], 50051), gateway
        assert not allowed(objects, prometheus, pods[gateway], 50051), gateway
    assert allowed(objects, stranger, pods["biz-center"], 50051) and allowed(
        objects, stranger, pods["biz-center"], 9190
    )
    assert not allowed(objects, stranger, pods["biz-center"], 9100)
    assert allowed(objects, pods["model-gateway"], pods["monitor"], 50051), "rollout gates call CheckSlo"
    assert not allowed(objects, stranger, pods["monitor"], 50051)
    assert allowed(objects, pods["model-gateway"], pods[triton], 8001)
    assert allowed(objects, consul, pods[triton], 8000) and allowed(objects, prometheus, pods[triton], 8002)
    assert not allowed(objects, pods["biz-center"], pods[triton], 8001)
    assert allowed(objects, pods["biz-center"], pods["redis"], 6379)
    assert allowed(objects, pods["data-gateway"], pods["nats"], 4222)
    assert not allowed(objects, stranger, pods["redis"], 6379) and not allowed(objects, stranger, pods["nats"], 4222)


def test_network_policy_evaluation_catches_an_open_gateway():
    objects = copy.deepcopy(rendered("default"))
    policy = find(objects, "NetworkPolicy", f"{RELEASE}-data-gateway")
    policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] = "monitor"
    monitor = pod_of(objects, "StatefulSet", f"{RELEASE}-monitor")
    biz = pod_of(objects, "Deployment", f"{RELEASE}-biz-center")
    gateway = pod_of(objects, "Deployment", f"{RELEASE}-data-gateway")
    assert allowed(objects, monitor, gateway, 50051) and not allowed(objects, biz, gateway, 50051)
    del policy["spec"]["ingress"][0]["from"]
    assert allowed(objects, Pod({}, {"kubernetes.io/metadata.name": "elsewhere"}), gateway, 50051)


# --- Consul ------------------------------------------------------------------------------------------------------


def vendored_consul() -> tuple[dict[str, Any], dict[str, Any]]:
    """Chart.yaml and values.yaml of the vendored Consul chart."""
    (archive,) = (CHART / "charts").glob("consul-*.tgz")
    with tarfile.open(archive) as tar:
        chart = yaml.safe_load(tar.extractfile("consul/Chart.yaml").read())  # type: ignore[union-attr]
        values = yaml.safe_load(tar.extractfile("consul/values.yaml").read())  # type: ignore[union-attr]
    return chart, values


def test_consul_is_hashicorps_chart_vendored_at_the_declared_version():
    (dependency,) = yaml.safe_load((CHART / "Chart.yaml").read_text())["dependencies"]
    chart, values = vendored_consul()
    assert dependency["repository"] == "https://helm.releases.hashicorp.com"
    assert (dependency["name"], dependency["version"]) == (chart["name"], chart["version"]) == ("consul", "1.6.10")
    assert dependency["condition"] == "consul.enabled"
    # The same Consul release line as the compose stack's.
    compose_image = project(None)["services"]["consul"]["image"]
    minor = re.fullmatch(r"hashicorp/consul:(\d+\.\d+)\.\d+", compose_image).group(1)  # type: ignore[union-attr]
    assert values["global"]["image"].startswith(f"hashicorp/consul:{minor}.")


def test_services_register_through_the_consul_agent_of_their_node():
    objects = rendered("default")
    client = find(objects, "DaemonSet", f"{RELEASE}-consul-client")
    (agent,) = [c for c in client["spec"]["template"]["spec"]["containers"] if c["name"] == "consul"]
    host_ports = {p.get("hostPort") for p in agent["ports"]}
    for service in SERVICES:
        address = urlsplit(
            chart_env(objects, service)[f"{settings_class(service).model_config['env_prefix']}DISCOVERY__CONSUL_ADDR"]
        )
        assert address.hostname == "192.168.0.4" and address.port in host_ports, service
    # An agent on every node a service or worker may run on: the GPU nodes' taint is tolerated too.
    tolerated = client["spec"]["template"]["spec"].get("tolerations", [])
    for component in (*SERVICES, "triton-gpu"):
        for toleration in workload(objects, component)["spec"]["template"]["spec"].get("tolerations", []):
            assert toleration in tolerated, (component, toleration)
    assert not [o for o in objects if "/charts/" in o.source and o.kind == "CustomResourceDefinition"]
    assert not [o for o in rendered("chdb-external-consul") if "/charts/" in o.source]


def iter_secret_refs(obj: Any) -> Iterator[dict[str, Any]]:
    if isinstance(obj, dict):
        if "secretKeyRef" in obj:
            yield obj["secretKeyRef"]
        for value in obj.values():
            yield from iter_secret_refs(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from iter_secret_refs(value)


def test_every_secret_reference_names_a_key_the_secret_holds():
    for variant in ("default", "scaled-cpu"):
        objects = ours(rendered(variant))
        secrets = {o.name: o.obj["stringData"] for o in objects if o.kind == "Secret"}
        for item in objects:
            for ref in iter_secret_refs(item.obj):
                assert ref["key"] in secrets[ref["name"]] or ref.get("optional"), (variant, item.name, ref)
        (secret,) = secrets.values()
        assert secret["unit-id-hash-key"] == HASH_KEY
    assert not [o for o in ours(rendered("chdb-external-consul")) if o.kind == "Secret"]


def test_pod_checksums_follow_the_secret():
    before = workload(rendered("default"), "biz-center")["spec"]["template"]["metadata"]["annotations"]
    values = copy.deepcopy(VARIANTS["default"])
    values["secrets"]["unitIdHashKey"] = HASH_KEY + "-rotated"
    after = workload(render(values), "biz-center")["spec"]["template"]["metadata"]["annotations"]
    assert before["checksum/secret"] != after["checksum/secret"]
