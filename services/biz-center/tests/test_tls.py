"""TLS and mutual TLS by configuration, with certificates generated at test time: the gRPC front's TLS
listener, the Thrift front, and the business center's own calls to the data gateway, model gateway
and monitor."""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc
import pytest
from bizcenter_support import SCORING_KEY, Doubles, Pki, biz_settings, churn_request, make_pki, run_biz, scoring
from thriftpy2.contrib.aio.rpc import make_client
from thriftpy2.transport import TTransportException

from infermesh.bizcenter.v1 import biz_center_pb2_grpc as pb_grpc
from infermesh_biz_center.thrift_front import IDL


def _mutual(pki: Pki) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(pki.server_key.read_bytes(), pki.server_cert.read_bytes())],
        root_certificates=pki.ca.read_bytes(),
        require_client_auth=True,
    )


def _listener(pki: Pki) -> dict[str, str]:
    return {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key), "ca_file": str(pki.ca)}


async def test_mutual_tls_end_to_end(tmp_path: Path, doubles: Doubles):
    """Callers reach the business center over mutual TLS, and it reaches its downstreams over mutual TLS."""
    pki = make_pki(tmp_path)
    for server in (doubles.data_server, doubles.model_server, doubles.monitor_server):
        await server.stop()
        await server.start(_mutual(pki))
    settings = biz_settings(
        tmp_path,
        doubles.static(),
        grpc_tls=_listener(pki),
        thrift={"tls": _listener(pki)},
        client_tls={"cert_file": str(pki.client_cert), "key_file": str(pki.client_key), "ca_file": str(pki.ca)},
    )
    async with run_biz(settings) as biz:
        assert biz.biz.tls_port
        address = f"127.0.0.1:{biz.biz.tls_port}"
        with_cert = grpc.ssl_channel_credentials(
            pki.ca.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes()
        )
        async with grpc.aio.secure_channel(address, with_cert) as channel:
            reply = await pb_grpc.BizCenterServiceStub(channel).Predict(churn_request(1), metadata=scoring())
        assert reply.model == "churn" and not reply.degradation.degraded  # features and model came over mTLS

        async with grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(pki.ca.read_bytes())) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:  # no client certificate
                await pb_grpc.BizCenterServiceStub(channel).Predict(churn_request(1), metadata=scoring(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

        assert biz.biz.thrift is not None
        context = ssl.create_default_context(cafile=str(pki.ca))
        context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
        client = await make_client(IDL.BizCenter, "127.0.0.1", biz.biz.thrift.port, ssl_context=context, timeout=5000)
        try:
            answer = await client.predict(
                IDL.PredictRequest(scene="churn-score", unit_id="2"), IDL.CallOptions(api_key=SCORING_KEY)
            )
        finally:
            client.close()
        assert answer.model_name == "churn" and not answer.degraded

        bare = ssl.create_default_context(cafile=str(pki.ca))  # verifies the server, presents nothing
        with pytest.raises((ssl.SSLError, OSError, TTransportException)):
            bare_client = await make_client(
                IDL.BizCenter, "127.0.0.1", biz.biz.thrift.port, ssl_context=bare, timeout=1000
            )
            try:
                await bare_client.predict(
                    IDL.PredictRequest(scene="churn-score", unit_id="2"), IDL.CallOptions(api_key=SCORING_KEY)
                )
            finally:
                bare_client.close()


async def test_plain_downstream_calls_fail_against_a_mutual_tls_downstream(tmp_path: Path, doubles: Doubles):
    """Without client TLS the features cannot be fetched from an mTLS data gateway: the answer is degraded."""
    pki = make_pki(tmp_path)
    await doubles.data_server.stop()
    await doubles.data_server.start(_mutual(pki))
    async with run_biz(biz_settings(tmp_path, doubles.static())) as biz:
        reply = await biz.predict.Predict(churn_request(1), metadata=scoring())
    assert reply.degradation.degraded
    assert "features" in reply.degradation.detail
