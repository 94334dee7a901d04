"""Authentication and authorization: hashed API keys and JWTs (RS256 and HS256), accepted and refused,
with each credential allowed its own scenes; through the gRPC front end to end."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import jwt
import pytest
from bizcenter_support import Doubles, biz_settings, churn_request, run_biz
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from infermesh_biz_center.auth import ANONYMOUS, Authenticator, hash_api_key
from infermesh_biz_center.settings import AuthSettings
from infermesh_chassis.errors import PermissionDenied, Unauthenticated

ISSUER = "https://login.example.com"
AUDIENCE = "biz-center"


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[rsa.RSAPrivateKey, str]:
    """A signing key and its public key in PEM."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public.decode()


def _settings(public_pem: str, **jwt_extra) -> AuthSettings:
    return AuthSettings.model_validate(
        {
            "api_keys": [
                {"name": "batch-job", "sha256": hash_api_key("k-123"), "scenes": ["churn-score"]},
                {"name": "ops", "sha256": hash_api_key("k-ops"), "scenes": ["*"], "admin": True},
            ],
            "jwt": {
                "issuer": ISSUER,
                "audience": AUDIENCE,
                "keys": [
                    {"kid": "rsa-1", "algorithm": "RS256", "public_key": public_pem},
                    {"kid": "hs-1", "algorithm": "HS256", "secret": "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t"},
                ],
                **jwt_extra,
            },
        }
    )


def _token(key, *, kid: str = "rsa-1", algorithm: str = "RS256", **claims) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "crm-app", "exp": now + 300, "iat": now, "scenes": ["churn-score"]}
    body.update(claims)
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=algorithm, headers={"kid": kid})


def test_matched_api_keys_are_remembered_and_refused_ones_are_not(rsa_keys):
    auth = Authenticator(_settings(rsa_keys[1]))
    first = auth.authenticate("k-123", None)
    assert auth.authenticate("k-123", None) is first
    for i in range(50):
        with pytest.raises(Unauthenticated, match="the API key is not valid"):
            auth.authenticate(f"guess-{i}", None)
    assert auth.authenticate("k-ops", None).name == "api-key:ops"
    assert set(auth._presented) == {"k-123", "k-ops"}, "only keys that matched are remembered"


def test_api_keys_are_matched_by_hash(rsa_keys):
    auth = Authenticator(_settings(rsa_keys[1]))
    principal = auth.authenticate("k-123", None)
    assert principal.name == "api-key:batch-job"
    auth.authorize(principal, "churn-score")
    with pytest.raises(PermissionDenied, match="may not use scene 'fraud-score'"):
        auth.authorize(principal, "fraud-score")
    with pytest.raises(PermissionDenied, match="may not administer"):
        auth.authorize_admin(principal)
    auth.authorize_admin(auth.authenticate("k-ops", None))
    with pytest.raises(Unauthenticated, match="API key is not valid"):
        auth.authenticate("k-124", None)
    with pytest.raises(Unauthenticated, match="credentials required"):
        auth.authenticate(None, None)
    assert "k-123" not in _settings(rsa_keys[1]).model_dump_json()  # only the hash is configured


def test_jwt_accepted_and_its_scenes_claim_decides(rsa_keys):
    private, public = rsa_keys
    auth = Authenticator(_settings(public))
    principal = auth.authenticate(None, _token(private, scenes="churn-score fraud-score", roles=["biz-center-admin"]))
    assert principal.name == "jwt:crm-app"
    assert principal.allows("fraud-score") and not principal.allows("other")
    auth.authorize_admin(principal)
    hs = auth.authenticate(None, _token("s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t", kid="hs-1", algorithm="HS256"))
    assert hs.allows("churn-score") and not hs.admin


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"exp": int(time.time()) - 120}, "expired"),
        ({"aud": "someone-else"}, "Audience doesn't match"),
        ({"iss": "https://evil.example.com"}, "issuer"),
        ({"sub": None}, '"sub"'),
        ({"nbf": int(time.time()) + 600}, "not yet valid"),
    ],
)
def test_jwt_refused(rsa_keys, claims, message):
    auth = Authenticator(_settings(rsa_keys[1]))
    with pytest.raises(Unauthenticated, match=message):
        auth.authenticate(None, _token(rsa_keys[0], **claims))


def test_jwt_with_a_foreign_key_or_algorithm_is_refused(rsa_keys):
    auth = Authenticator(_settings(rsa_keys[1]))
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(Unauthenticated, match="Signature verification failed"):
        auth.authenticate(None, _token(stranger))
    with pytest.raises(Unauthenticated, match="no key verifies tokens with alg 'HS256' and kid 'rsa-1'"):
        auth.authenticate(None, _token("s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t", kid="rsa-1", algorithm="HS256"))
    with pytest.raises(Unauthenticated, match="malformed"):
        auth.authenticate(None, "not.a.jwt")


def test_verified_tokens_are_remembered_until_they_expire(rsa_keys):
    auth = Authenticator(_settings(rsa_keys[1], leeway_s=0))
    token = _token(rsa_keys[0], exp=int(time.time()) + 1)
    first = auth.authenticate(None, token)
    assert auth.authenticate(None, token) is first  # cached: no second verification
    time.sleep(max(0.0, _expiry(token) - time.time()) + 0.05)
    with pytest.raises(Unauthenticated, match="expired"):
        auth.authenticate(None, token)


def _expiry(token: str) -> float:
    return float(jwt.decode(token, options={"verify_signature": False})["exp"])


def test_anonymous_only_when_not_required():
    auth = Authenticator(AuthSettings(required=False))
    assert auth.authenticate(None, None) is ANONYMOUS


async def test_grpc_front_accepts_and_refuses(tmp_path: Path, doubles: Doubles, rsa_keys):
    private, public = rsa_keys
    settings = biz_settings(
        tmp_path,
        doubles.static(),
        auth={"jwt": {"issuer": ISSUER, "audience": AUDIENCE, "keys": [{"kid": "rsa-1", "public_key": public}]}},
    )
    async with run_biz(settings) as biz:
        good = (("authorization", f"Bearer {_token(private)}"),)
        reply = await biz.predict.Predict(churn_request(1), metadata=good)
        assert reply.prediction.scores
        cases = [
            ((("authorization", f"Bearer {_token(private, scenes=['fraud-score'])}"),), "PERMISSION_DENIED"),
            ((("authorization", f"Bearer {_token(private, aud='x')}"),), "UNAUTHENTICATED"),
            ((("authorization", "Basic dXNlcjpwdw=="),), "UNAUTHENTICATED"),
        ]
        for metadata, code in cases:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await biz.predict.Predict(churn_request(1), metadata=metadata)
            assert failed.value.code().name == code
