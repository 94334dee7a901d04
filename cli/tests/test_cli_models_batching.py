"""``models register --dynamic-batching DELAY`` and what ``models get`` shows of it, without a mesh:
the request the CLI builds, and its rendering of a version the gateway answers with."""

from __future__ import annotations

import json

import pytest

from infermesh.modelgateway.v1 import model_gateway_pb2 as pb
from infermesh_cli.__main__ import build_parser
from infermesh_cli.commands._context import Context
from infermesh_cli.commands._errors import UsageError
from infermesh_cli.commands.models import _print_version, register_request, version_view


def _request(*options: str) -> pb.RegisterModelVersionRequest:
    args = build_parser().parse_args(
        ["models", "register", "fraud", "/no/such/model.onnx", "--format", "onnx", "--sha256", "0" * 64, *options]
    )
    return register_request(Context(args), args)


@pytest.mark.parametrize(
    ("delay", "micros"),
    [("500us", 500), ("500µs", 500), ("2ms", 2000), ("1.5ms", 1500), ("1s", 1_000_000)],
)
def test_the_queue_delay_takes_us_ms_and_s(delay: str, micros: int):
    batching = _request("--max-batch-size", "64", "--dynamic-batching", delay).deployment.dynamic_batching
    assert batching.enabled
    assert batching.max_queue_delay.ToMicroseconds() == micros


def test_without_a_delay_the_gateway_default_applies():
    batching = _request("--max-batch-size", "64", "--dynamic-batching").deployment.dynamic_batching
    assert batching.enabled and not batching.HasField("max_queue_delay")


def test_a_bare_number_is_refused_with_the_units_to_choose_from():
    with pytest.raises(UsageError) as refused:
        _request("--dynamic-batching", "500")
    assert str(refused.value) == (
        "--dynamic-batching: give a unit: 500us, 500ms or 500s (a bare number is ambiguous here)"
    )


def _version(delay_us: int | None) -> pb.ModelVersion:
    version = pb.ModelVersion(model="fraud", version=3, state=pb.MODEL_VERSION_STATE_SERVING)
    version.deployment.max_batch_size = 64
    if delay_us is not None:
        version.deployment.dynamic_batching.enabled = True
        version.deployment.dynamic_batching.max_queue_delay.FromMicroseconds(delay_us)
    version.replicas.add(
        worker_id="embedded-0",
        address="127.0.0.1:1",
        state=pb.REPLICA_STATE_FAILED,
        detail="the worker is down (tritonserver exited with -9); the gateway is restarting it",
        worker_restarts=2,
    )
    return version


@pytest.mark.parametrize(
    ("delay_us", "shown"),
    [(500, "dynamic batching yes, max queue delay 500us,"), (2500, "max queue delay 2.5ms,"), (None, "batching no,")],
)
def test_models_get_shows_the_queue_delay_and_worker_restarts(capsys, delay_us: int | None, shown: str):
    view = version_view(_version(delay_us))
    assert view["deployment"]["max_queue_delay_us"] == delay_us
    assert view["replicas"][0]["worker_restarts"] == 2
    json.dumps(view)
    _print_version(view)
    out = capsys.readouterr().out
    assert shown in out
    replica = next(line for line in out.splitlines() if line.startswith("embedded-0"))
    assert replica.split()[2:4] == ["FAILED", "2"]
