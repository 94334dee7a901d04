"""What the gateway writes into Triton's model repository for a version."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from infermesh_model_gateway.domain import DeploymentConfig, ModelFormat, ModelVersionRecord, TensorSchema
from infermesh_model_gateway.triton import ModelRepository, model_config


def _record(fmt: ModelFormat = ModelFormat.ONNX, **deployment: object) -> ModelVersionRecord:
    return ModelVersionRecord(
        model="churn",
        version=3,
        format=fmt,
        artifact_uri="/models/churn.onnx",
        artifact_sha256="a" * 64,
        inputs=(TensorSchema("X", "FP32", (6,)),),
        outputs=(TensorSchema("label", "INT64", (1,)), TensorSchema("name", "BYTES", (1,))),
        deployment=DeploymentConfig(**deployment),  # type: ignore[arg-type]
    )


def test_a_complete_python_backend_config_from_the_schema():
    config = model_config(
        _record(
            max_batch_size=16,
            max_queue_delay_us=250,
            preferred_batch_sizes=(4, 16),
            instance_count=2,
            backend_parameters={"k": "v"},
        )
    )
    assert config.name == "churn__3"
    assert config.backend == "python"
    assert config.max_batch_size == 16
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [("X", mc.TYPE_FP32, [6])]
    assert [o.data_type for o in config.output] == [mc.TYPE_INT64, mc.TYPE_STRING]
    assert config.instance_group[0].count == 2
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert config.dynamic_batching.max_queue_delay_microseconds == 250
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 16]
    assert config.version_policy.latest.num_versions == 1
    assert config.parameters["infermesh.format"].string_value == "onnx"
    assert config.parameters["infermesh.artifact"].string_value == "model.onnx"
    assert config.parameters["k"].string_value == "v"


def test_no_batching_means_no_dynamic_batching():
    config = model_config(_record(max_batch_size=0))
    assert config.max_batch_size == 0
    assert not config.HasField("dynamic_batching")


def test_without_preferred_batch_sizes_triton_decides():
    config = model_config(_record(max_batch_size=16))
    assert config.HasField("dynamic_batching") and not config.dynamic_batching.preferred_batch_size
    assert model_config(
        _record(preferred_batch_sizes=(4,)), native_onnx=True
    ).dynamic_batching.preferred_batch_size == [4]


def test_native_onnx_uses_tritons_onnxruntime_backend(tmp_path: Path):
    assert model_config(_record(), native_onnx=True).platform == "onnxruntime_onnx"
    assert model_config(_record(ModelFormat.XGBOOST), native_onnx=True).backend == "python"
    artifact = tmp_path / "churn.onnx"
    artifact.write_bytes(b"onnx")
    written = ModelRepository(tmp_path / "repo", native_onnx=True).write(_record(), artifact)
    assert sorted(p.name for p in (written / "1").iterdir()) == ["model.onnx"]


def test_a_python_backend_model_directory_is_self_contained(tmp_path: Path):
    artifact = tmp_path / "churn.onnx"
    artifact.write_bytes(b"onnx")
    repository = ModelRepository(tmp_path / "repo")
    written = repository.write(_record(preferred_batch_sizes=(8, 32)), artifact)
    assert sorted(p.name for p in (written / "1").iterdir()) == ["infermesh_runtime.py", "model.onnx", "model.py"]
    text = (written / "config.pbtxt").read_text()
    parsed = text_format.Parse(text, mc.ModelConfig())
    assert parsed.name == "churn__3"
    assert list(parsed.dynamic_batching.preferred_batch_size) == [8, 32]
    assert "preferred_batch_size: 8" in text
    assert not list((tmp_path / "repo").glob(".staging-*"))
    repository.remove("churn__3")
    assert not written.exists()
