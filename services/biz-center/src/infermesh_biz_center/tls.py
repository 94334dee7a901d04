"""TLS and mutual TLS from settings: gRPC server and channel credentials, an SSL context for Thrift,
and a channel pool whose channels to other services are secure.

A listener with a ``ca_file`` requires and verifies a client certificate (mutual TLS); a client
with a ``cert_file`` presents one.
"""

from __future__ import annotations

import ssl

import grpc

from infermesh_biz_center.settings import TlsSettings
from infermesh_chassis.client import ChannelPool
from infermesh_chassis.metrics import Metrics

__all__ = ["SecureChannelPool", "channel_credentials", "server_credentials", "server_ssl_context"]


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    """Credentials of a gRPC TLS listener (client certificates required when ``ca_file`` is set)."""
    assert tls.cert_file is not None and tls.key_file is not None
    ca = tls.ca_file.read_bytes() if tls.ca_file is not None else None
    return grpc.ssl_server_credentials(
        [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


def channel_credentials(tls: TlsSettings) -> grpc.ChannelCredentials:
    """Credentials of a gRPC client (presenting ``cert_file`` for mutual TLS when set)."""
    return grpc.ssl_channel_credentials(
        root_certificates=tls.ca_file.read_bytes() if tls.ca_file is not None else None,
        private_key=tls.key_file.read_bytes() if tls.key_file is not None else None,
        certificate_chain=tls.cert_file.read_bytes() if tls.cert_file is not None else None,
    )


def server_ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    """An SSL context for a TLS listener other than gRPC (the Thrift front)."""
    assert tls.cert_file is not None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    if tls.ca_file is not None:
        context.load_verify_locations(str(tls.ca_file))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class SecureChannelPool(ChannelPool):
    """The chassis' channel pool with TLS channels (same options)."""

    def __init__(self, metrics: Metrics, tls: TlsSettings, *, max_message_bytes: int) -> None:
        super().__init__(metrics, max_message_bytes=max_message_bytes)
        self._credentials = channel_credentials(tls)
        if tls.server_name:
            self._options.append(("grpc.ssl_target_name_override", tls.server_name))

    def get(self, target: str) -> grpc.aio.Channel:
        """The TLS channel to ``target`` (``host:port``)."""
        channel = self._channels.get(target)
        if channel is None:
            channel = grpc.aio.secure_channel(target, self._credentials, options=self._options)
            self._channels[target] = channel
        return channel
