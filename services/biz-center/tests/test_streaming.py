"""Stream bindings against a real nats-server (JetStream on disk) and the downstream doubles.

Results equal PredictBatch's; a business center killed (SIGKILL) mid-stream and started again
loses and doubles nothing (counted by message id); poison messages reach the dead-letter subject
with their reasons and can be replayed; two instances split one binding; a change to a binding
takes effect without a restart.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import nats
import nats.js.errors
import pytest
import yaml
from bizcenter_support import (
    ADMIN_KEY,
    EXAMPLE,
    Doubles,
    biz_settings,
    biz_settings_values,
    churn_request,
    edit_scene,
    run_biz,
    scoring,
    until,
)
from google.protobuf import json_format
from nats.js import JetStreamContext
from nats.js import api as js_api

from infermesh.bizcenter.v1 import biz_center_pb2 as pb
from infermesh_biz_center.streaming import HEADER_DEGRADED, HEADER_INPUT_ID, HEADER_REASON, HEADER_SOURCE_SUBJECT
from infermesh_chassis.ready import wait_ready
from infermesh_chassis.testing import NatsServer

STREAM = "TXN"
RESULTS = "TXN_RESULTS"


def binding(name: str = "txn", **fields: Any) -> pb.StreamBinding:
    """A protobuf binding of ``txn.<name>`` to ``scored.<name>`` (``fields`` override)."""
    values: dict[str, Any] = {
        "name": name,
        "stream": STREAM,
        "subjects": [f"txn.{name}"],
        "format": pb.STREAM_FORMAT_PROTOBUF,
        "output_subject": f"scored.{name}",
        "enabled": True,
        **fields,
    }
    message = pb.StreamBinding(**{k: v for k, v in values.items() if k not in ("retry_delay", "ack_wait")})
    for key in ("retry_delay", "ack_wait"):
        if key in values:
            getattr(message, key).FromNanoseconds(int(values[key] * 1e9))
    return message


async def until_async(condition: Callable[[], Awaitable[bool]], timeout_s: float = 60.0) -> None:
    """Wait until ``condition()`` holds (a safety net of ``timeout_s`` against a hung test)."""
    deadline = time.monotonic() + timeout_s
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@asynccontextmanager
async def jetstream(server: NatsServer) -> AsyncIterator[JetStreamContext]:
    """A JetStream client, with the input stream ``TXN`` over ``txn.>`` created (the producer's stream)."""
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream(timeout=5)
        config = js_api.StreamConfig(name=STREAM, subjects=["txn.>"], storage=js_api.StorageType.FILE)
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:  # a business center created it first, over its binding's subjects
            await js.update_stream(config)
        yield js
    finally:
        await nc.close()


async def count(js: JetStreamContext, subject: str) -> int:
    """Messages stored on ``subject`` (0 while no stream holds it)."""
    try:
        stream = await js.find_stream_name_by_subject(subject)
        info = await js.stream_info(stream, subjects_filter=subject)
    except nats.js.errors.NotFoundError:
        return 0
    return int((info.state.subjects or {}).get(subject, 0))


async def read(js: JetStreamContext, subject: str) -> list[tuple[dict[str, str], bytes]]:
    """Every message stored on ``subject``, in order: (headers, data)."""
    stream = await js.find_stream_name_by_subject(subject)
    found: list[tuple[dict[str, str], bytes]] = []
    seq = 1
    while True:
        try:
            msg = await js.get_msg(stream, seq=seq, subject=subject, next=True)
        except nats.js.errors.NotFoundError:
            return found
        found.append((msg.headers or {}, msg.data or b""))
        seq = (msg.seq or seq) + 1


def streaming_settings(server: NatsServer) -> dict[str, Any]:
    return {"nats_url": server.url, "fetch_timeout_s": 0.2, "lag_interval_s": 0.2}


COMPARED = ("prediction", "variant", "assignments", "model", "model_version", "degradation", "scene", "route")


def comparable(response: pb.PredictResponse) -> dict[str, Any]:
    as_dict = json_format.MessageToDict(response, preserving_proto_field_name=True)
    return {key: as_dict.get(key) for key in COMPARED}


async def test_streamed_results_equal_predict_batch_and_reach_the_monitor(doubles: Doubles, nats_server, tmp_path):
    settings = biz_settings(tmp_path, doubles.static(), streaming=streaming_settings(nats_server))
    async with run_biz(settings) as biz, jetstream(nats_server) as js:

        def bind(scene: pb.Scene) -> None:
            scene.stream_bindings.append(binding(batch_size=16))
            scene.slo_deadline.FromSeconds(30)  # answers compared must not depend on this machine's speed

        await edit_scene(biz, bind)
        customers = [1, 2, 3, 4, 9001, 77, 2, 3]  # 9001 is in the gray release's allowlist
        requests = [
            churn_request(c, region=("eu-west", "us-east")[i % 2], channel="staff" if i == 5 else "web")
            for i, c in enumerate(customers * 5)
        ]
        for i, request in enumerate(requests):
            await js.publish("txn.txn", request.SerializeToString(), headers={"Nats-Msg-Id": f"m{i}"})
        await until_async(lambda: _has(js, "scored.txn", len(requests)))
        streamed = {h["Nats-Msg-Id"]: pb.PredictResponse.FromString(d) for h, d in await read(js, "scored.txn")}
        batch = await biz.predict.PredictBatch(pb.PredictBatchRequest(items=requests), metadata=scoring())
        assert len(streamed) == len(requests)
        for i, result in enumerate(batch.results):
            assert comparable(streamed[f"m{i}"]) == comparable(result.response)
        assert {r.route for r in streamed.values()} >= {pb.ROUTE_SOURCE_EXPERIMENT, pb.ROUTE_SOURCE_GRAY_RELEASE}
        # the events of streamed answers reach the monitor as a Predict's do (and the batch's too)
        await until(lambda: len(doubles.monitor.payloads("inference")) >= 2 * len(requests))
        metrics = biz.runtime.metrics.registry
        labels = {"scene": "churn-score", "binding": "txn"}
        assert metrics.get_sample_value("infermesh_biz_center_stream_scored_total", labels) == len(requests)
        assert metrics.get_sample_value("infermesh_biz_center_stream_consumed_total", labels) == len(requests)


async def _has(js: JetStreamContext, subject: str, wanted: int) -> bool:
    return await count(js, subject) >= wanted


async def test_json_binding_maps_fields_and_poison_reaches_the_dead_letter_subject(doubles, nats_server, tmp_path):
    settings = biz_settings(tmp_path, doubles.static(), streaming=streaming_settings(nats_server))
    mapping = pb.JsonMapping(unit_id="customer.id", attributes={"region": "where", "plan": "customer.plan"})
    json_binding = binding(
        "json", format=pb.STREAM_FORMAT_JSON, json_mapping=mapping, max_deliver=2, retry_delay=0.05, batch_size=8
    )

    def bind(scene: pb.Scene) -> None:
        scene.stream_bindings.extend([json_binding, binding("proto", retry_delay=0.05)])
        del scene.fallback_chain[:]  # a failing data gateway then fails the scoring
        scene.slo_deadline.FromSeconds(30)  # and only that: not this machine's speed

    async with run_biz(settings) as biz, jetstream(nats_server) as js:
        await edit_scene(biz, bind)
        await js.publish("txn.json", b'{"customer": {"id": 3, "plan": "basic"}, "where": "eu-west"}')
        await until_async(lambda: _has(js, "scored.json", 1))
        (headers, data), *_ = await read(js, "scored.json")
        streamed = json_format.Parse(data, pb.PredictResponse())
        direct = await biz.predict.Predict(churn_request(3, region="eu-west", plan="basic"), metadata=scoring())
        assert comparable(streamed) == comparable(direct) and headers[HEADER_DEGRADED] == "false"

        doubles.data.fail = grpc.StatusCode.UNAVAILABLE
        poison = {
            "not-json": ("txn.json", b"{{{", "undecodable: not JSON"),
            "no-unit": ("txn.json", b'{"customer": {}}', "unit_id: the message has no string or integer"),
            "bad-unit": ("txn.json", b'{"customer": {"id": "forty-two"}}', "unit_id"),
            "garbage": ("txn.proto", b"\xff\xff\xff\xff", "undecodable: not a protobuf PredictRequest"),
            "failing": ("txn.json", b'{"customer": {"id": 4}}', "scoring failed at delivery 2"),
        }
        for msg_id, (subject, payload, _) in poison.items():
            await js.publish(subject, payload, headers={"Nats-Msg-Id": msg_id})
        await until_async(
            lambda: _sum_at_least(js, ("scored.json.dead", "scored.proto.dead"), len(poison)), timeout_s=30
        )
        dead = {h[HEADER_INPUT_ID]: h for s in ("scored.json.dead", "scored.proto.dead") for h, _ in await read(js, s)}
        assert set(dead) == set(poison)
        for msg_id, (subject, _, reason) in poison.items():
            assert reason in dead[msg_id][HEADER_REASON], (msg_id, dead[msg_id][HEADER_REASON])
            assert dead[msg_id][HEADER_SOURCE_SUBJECT] == subject
        assert await count(js, "scored.json") == 1  # the failing one was not answered by anything

        # the downstream is back: a replay publishes the dead letters again; the failing one is scored now
        doubles.data.fail = None
        admin = scoring(ADMIN_KEY)
        replayed = await biz.admin.ReplayDeadLetters(
            pb.ReplayDeadLettersRequest(scene="churn-score", binding="json"), metadata=admin
        )
        assert replayed.replayed == 4
        await until_async(lambda: _has(js, "scored.json", 2))
        statuses = await biz.admin.ListStreamBindings(pb.ListStreamBindingsRequest(scene="churn-score"), metadata=admin)
        by_name = {s.binding.name: s for s in statuses.bindings}
        assert by_name["json"].consuming and by_name["proto"].dead_letters == 1
        await until_async(lambda: _dead_letters_are(biz, "json", 3))


async def _sum_at_least(js: JetStreamContext, subjects: tuple[str, ...], wanted: int) -> bool:
    return sum([await count(js, s) for s in subjects]) >= wanted


async def _dead_letters_are(biz: Any, name: str, wanted: int) -> bool:
    reply = await biz.admin.ListStreamBindings(pb.ListStreamBindingsRequest(), metadata=scoring(ADMIN_KEY))
    return any(s.binding.name == name and s.dead_letters == wanted for s in reply.bindings)


async def test_a_binding_change_takes_effect_without_restart_and_bad_bindings_are_refused(
    doubles, nats_server, tmp_path
):
    settings = biz_settings(tmp_path, doubles.static(), streaming=streaming_settings(nats_server))
    async with run_biz(settings) as biz, jetstream(nats_server) as js:
        await edit_scene(biz, lambda scene: scene.stream_bindings.append(binding(output_subject="scored.a")))
        await js.publish("txn.txn", churn_request(1).SerializeToString())
        await until_async(lambda: _has(js, "scored.a", 1))

        def move(scene: pb.Scene) -> None:
            scene.stream_bindings[0].output_subject = "scored.b"

        await edit_scene(biz, move)
        streams = biz.biz.streams
        assert streams is not None
        await until(lambda: getattr(streams.consuming("churn-score", "txn"), "output_subject", "") == "scored.b")
        await js.publish("txn.txn", churn_request(2).SerializeToString())
        await until_async(lambda: _has(js, "scored.b", 1))
        assert await count(js, "scored.a") == 1
        entries = await biz.admin.ListAuditEntries(pb.ListAuditEntriesRequest(), metadata=scoring(ADMIN_KEY))
        assert any('"scored.b"' in e.after_json for e in entries.entries)

        def loop(scene: pb.Scene) -> None:
            scene.stream_bindings[0].output_subject = "txn.txn"

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await edit_scene(biz, loop)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "stream_bindings[0].output_subject" in (refused.value.details() or "")


async def _consumers(js: JetStreamContext) -> set[str]:
    """The names of the input stream's consumers."""
    return {info.name for info in await js.consumers_info(STREAM)}


async def test_a_binding_that_leaves_the_configuration_takes_its_durable_consumer_along(
    doubles: Doubles, nats_server, tmp_path
):
    settings = biz_settings(tmp_path, doubles.static(), streaming=streaming_settings(nats_server))
    admin = scoring(ADMIN_KEY)
    async with run_biz(settings) as biz, jetstream(nats_server) as js:
        names = ("gone", "moved", "refiltered")
        await edit_scene(biz, lambda scene: scene.stream_bindings.extend([binding(n) for n in names]))
        copy = (await biz.admin.GetScene(pb.GetSceneRequest(name="churn-score"), metadata=admin)).scene
        copy.name = "churn-copy"
        del copy.stream_bindings[:]
        copy.stream_bindings.append(binding("copy"))
        await biz.admin.UpsertScene(pb.UpsertSceneRequest(scene=copy), metadata=admin)
        refiltered = "biz-center_churn-score_refiltered"
        first = {f"biz-center_churn-score_{n}" for n in names} | {"biz-center_churn-copy_copy"}
        await until_async(lambda: _consumers_are(js, first))
        created = (await js.consumer_info(STREAM, refiltered)).created
        await js.publish("txn.gone", churn_request(1).SerializeToString(), headers={"Nats-Msg-Id": "g1"})
        await until_async(lambda: _has(js, "scored.gone", 1))

        def shrink(scene: pb.Scene) -> None:
            del scene.stream_bindings[0]  # "gone"
            scene.stream_bindings[0].durable = "moved-2"
            scene.stream_bindings[1].subjects[:] = ["txn.refiltered.v2"]

        await edit_scene(biz, shrink)
        await biz.admin.DeleteScene(pb.DeleteSceneRequest(name="churn-copy"), metadata=admin)
        await until_async(lambda: _consumers_are(js, {"moved-2", refiltered}))
        # new subjects, same durable name: the old consumer was deleted and a new one made
        await until_async(lambda: _filters(js, refiltered, "txn.refiltered.v2"))
        assert (await js.consumer_info(STREAM, refiltered)).created != created

        # nothing consumes the removed binding's subject any more: a message on it stays unanswered
        await js.publish("txn.gone", churn_request(2).SerializeToString(), headers={"Nats-Msg-Id": "g2"})
        await js.publish("txn.moved", churn_request(3).SerializeToString(), headers={"Nats-Msg-Id": "m1"})
        await until_async(lambda: _has(js, "scored.moved", 1))
        metrics = biz.runtime.metrics.registry
        gone = {"scene": "churn-score", "binding": "gone"}
        assert metrics.get_sample_value("infermesh_biz_center_stream_consumed_total", gone) == 1
        assert await count(js, "scored.gone") == 1

        # added again, the binding gets a new consumer, from the stream's first message on its subject
        # (the first message's result again, within the output's duplicate window, is dropped)
        await edit_scene(biz, lambda scene: scene.stream_bindings.append(binding("gone")))
        await until_async(lambda: _has(js, "scored.gone", 2))
        assert [h["Nats-Msg-Id"] for h, _ in await read(js, "scored.gone")] == ["g1", "g2"]
        assert await _consumers(js) == {"moved-2", refiltered, "biz-center_churn-score_gone"}


async def _consumers_are(js: JetStreamContext, wanted: set[str]) -> bool:
    return await _consumers(js) == wanted


async def _filters(js: JetStreamContext, durable: str, subject: str) -> bool:
    try:
        return (await js.consumer_info(STREAM, durable)).config.filter_subject == subject
    except nats.js.errors.NotFoundError:
        return False


def _seed_with_binding(tmp_path: Path, name: str, **fields: Any) -> Path:
    """The example seed file with a binding on churn-score."""
    data = yaml.safe_load(EXAMPLE.read_text())
    data["scenes"][0]["stream_bindings"] = [
        json_format.MessageToDict(binding(name, **fields), preserving_proto_field_name=True)
    ]
    path = tmp_path / f"seed-{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def test_two_instances_split_one_binding(doubles: Doubles, nats_server, tmp_path):
    seed = _seed_with_binding(tmp_path, "split", batch_size=10)
    doubles.models.delay_s = 0.005
    first = tmp_path / "a"
    second = tmp_path / "b"
    first.mkdir()
    second.mkdir()
    streaming = streaming_settings(nats_server)
    config = {"seed_file": str(seed), "watch_interval_s": 0.1}
    async with (
        run_biz(biz_settings(first, doubles.static(), streaming=streaming, config=config)) as one,
        run_biz(biz_settings(second, doubles.static(), streaming=streaming, config=config)) as two,
        jetstream(nats_server) as js,
    ):

        async def both_pulling() -> bool:
            try:
                info = await js.consumer_info(STREAM, "biz-center_churn-score_split")
            except nats.js.errors.NotFoundError:
                return False
            return (info.num_waiting or 0) >= 2

        await until_async(both_pulling)
        sent = 300
        for i in range(sent):
            request = churn_request(1 + i % 4).SerializeToString()
            await js.publish("txn.split", request, headers={"Nats-Msg-Id": f"s{i}"})
        await until_async(lambda: _has(js, "scored.split", sent))
        ids = [h["Nats-Msg-Id"] for h, _ in await read(js, "scored.split")]
        assert sorted(ids) == sorted(f"s{i}" for i in range(sent))
        assert one.biz.streams is not None and two.biz.streams is not None
        scored = [h.biz.streams.statuses() for h in (one, two)]
        counts = [(await s)[0].scored for s in scored]
        assert all(c > 0 for c in counts), counts
        assert sum(counts) == sent


class BizProcess:
    """``python -m infermesh_biz_center`` with a settings file; killed (SIGKILL) and started again by PID."""

    def __init__(self, workdir: Path, settings: dict[str, Any]) -> None:
        self.config = workdir / "biz.yaml"
        self.config.write_text(yaml.safe_dump(settings))
        self.log = workdir / "biz.log"
        self.ready_file = workdir / "biz.ready"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BIZ_CENTER_")}
        argv = [sys.executable, "-m", "infermesh_biz_center", "--config", str(self.config)]
        self.ready_file.unlink(missing_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*argv, "--ready-file", str(self.ready_file)], stdout=out, stderr=subprocess.STDOUT, env=env
            )
        try:
            wait_ready(self.ready_file, self.proc.pid, 60, exited=self.proc.poll)
        except (ChildProcessError, TimeoutError) as exc:
            raise RuntimeError(f"biz-center {exc}: {self.log.read_text()[-3000:]}") from None

    def kill(self) -> None:
        """SIGKILL: nothing in hand is finished or acknowledged."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


async def test_killed_mid_stream_and_restarted_loses_and_doubles_nothing(doubles: Doubles, nats_server, tmp_path):
    seed = _seed_with_binding(tmp_path, "crash", batch_size=32, ack_wait=1.0)
    doubles.models.delay_s = 0.002
    settings = biz_settings_values(
        tmp_path,
        doubles.static(),
        streaming=streaming_settings(nats_server),
        config={"seed_file": str(seed)},
        grpc={"host": "127.0.0.1", "port": 0, "workers": 1, "grace_period_s": 0.5},
        thrift={"enabled": False},
    )
    process = BizProcess(tmp_path, settings)
    sent = 1500
    ids = [f"k{i}" for i in range(sent)]
    async with jetstream(nats_server) as js:
        try:
            process.start()
            for i, msg_id in enumerate(ids):
                request = churn_request(1 + i % 4).SerializeToString()
                await js.publish("txn.crash", request, headers={"Nats-Msg-Id": msg_id})
                if i == sent // 3:
                    await until_async(lambda: _has(js, "scored.crash", 100))
                    process.kill()  # mid-stream: fetched, scored, published and not yet acknowledged
                if i == 2 * sent // 3:
                    await asyncio.to_thread(process.start)
            await until_async(lambda: _has(js, "scored.crash", sent), timeout_s=120)

            async def drained() -> bool:
                info = await js.consumer_info(STREAM, "biz-center_churn-score_crash")
                return info.num_pending == 0 and info.num_ack_pending == 0

            await until_async(drained)
            published = [h["Nats-Msg-Id"] for h, _ in await read(js, "scored.crash")]
            assert len(published) == sent
            assert sorted(published) == sorted(ids)
        finally:
            process.stop()


async def test_degraded_results_are_flagged_or_paused_as_the_binding_says(doubles: Doubles, nats_server, tmp_path):
    settings = biz_settings(
        tmp_path,
        doubles.static(),
        streaming=streaming_settings(nats_server),
        resilience={"breaker_reset_timeout_s": 0.2},  # the data gateway's breaker tries again soon once it is back
    )

    def bind(scene: pb.Scene) -> None:
        scene.stream_bindings.extend([binding("flag"), binding("pause", pause_when_degraded=True, retry_delay=0.05)])

    async with run_biz(settings) as biz, jetstream(nats_server) as js:
        await edit_scene(biz, bind)
        doubles.data.fail = grpc.StatusCode.UNAVAILABLE
        for name in ("flag", "pause"):
            await js.publish(f"txn.{name}", churn_request(2).SerializeToString(), headers={"Nats-Msg-Id": name})
        await until_async(lambda: _has(js, "scored.flag", 1))
        (headers, data), *_ = await read(js, "scored.flag")
        flagged = pb.PredictResponse.FromString(data)
        assert headers[HEADER_DEGRADED] == "true" and flagged.degradation.degraded
        metrics = biz.runtime.metrics.registry
        retried = {"scene": "churn-score", "binding": "pause"}
        await until(lambda: (metrics.get_sample_value("infermesh_biz_center_stream_retried_total", retried) or 0) >= 3)
        assert await count(js, "scored.pause") == 0  # delivered again and again, never answered by a fallback
        doubles.data.fail = None
        await until_async(lambda: _has(js, "scored.pause", 1))
        (headers, data), *_ = await read(js, "scored.pause")
        assert headers[HEADER_DEGRADED] == "false" and not pb.PredictResponse.FromString(data).degradation.degraded
        assert await count(js, "scored.pause.dead") == 0


async def test_the_scene_rate_limit_holds_a_binding_back_without_dead_letters(doubles: Doubles, nats_server, tmp_path):
    settings = biz_settings(tmp_path, doubles.static(), streaming=streaming_settings(nats_server))

    def bind(scene: pb.Scene) -> None:
        scene.stream_bindings.append(binding("limited", max_deliver=1, retry_delay=0.05, batch_size=32))
        scene.rate_limit.requests_per_second = 40
        scene.rate_limit.burst = 5

    async with run_biz(settings) as biz, jetstream(nats_server) as js:
        await edit_scene(biz, bind)
        sent = 30
        for i in range(sent):
            await js.publish(
                "txn.limited", churn_request(1 + i % 4).SerializeToString(), headers={"Nats-Msg-Id": f"r{i}"}
            )
        await until_async(lambda: _has(js, "scored.limited", sent))
        metrics = biz.runtime.metrics.registry
        labels = {"scene": "churn-score", "binding": "limited"}
        assert (metrics.get_sample_value("infermesh_biz_center_stream_retried_total", labels) or 0) > 0  # it was held
        assert await count(js, "scored.limited.dead") == 0  # max_deliver 1, and yet nothing was dead-lettered
