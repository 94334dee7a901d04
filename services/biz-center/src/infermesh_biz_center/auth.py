"""Who is calling: API keys (stored hashed) and JWT bearer tokens (pyjwt).

An API key is looked up by its SHA-256 (the configuration never holds a key itself), computed once
per key: a key that matched is remembered (at most one entry per configured key, so the memory is
bounded by the configuration and a caller sending random keys fills nothing); a JWT is
verified with the configured keys (by ``kid`` when the token names one), issuer, audience and
expiry, and remembered until it expires so that a caller reusing its token pays the signature
check once. Either way the caller becomes a :class:`~.domain.Principal` naming the scenes it may
call, whether it may administer, and its own rate limit. No credentials, or bad ones, are
UNAUTHENTICATED; a scene the caller may not use is PERMISSION_DENIED.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import jwt

from infermesh_biz_center.domain import Principal
from infermesh_biz_center.settings import AuthSettings, JwtKeySettings, KeyRateLimit
from infermesh_chassis.errors import PermissionDenied, Unauthenticated

__all__ = ["ANONYMOUS", "Authenticator", "hash_api_key"]

ANONYMOUS = Principal("anonymous", None, admin=True)
"""The caller when authentication is not required and none was presented."""

ALL_SCENES = "*"


def hash_api_key(key: str) -> str:
    """The hex SHA-256 of an API key, as configured."""
    return hashlib.sha256(key.encode()).hexdigest()


def _scenes(granted: Sequence[str]) -> frozenset[str] | None:
    return None if ALL_SCENES in granted else frozenset(granted)


def _claim_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return []


def _limited(name: str, scenes: frozenset[str] | None, admin: bool, limit: KeyRateLimit) -> Principal:
    return Principal(
        name,
        scenes,
        admin=admin,
        rate_per_s=limit.requests_per_second,
        burst=limit.burst,
        limit_mode=limit.mode,
    )


class _JwtKey:
    def __init__(self, spec: JwtKeySettings) -> None:
        self.kid = spec.kid
        self.algorithm = spec.algorithm
        if spec.secret is not None:
            self.key: Any = spec.secret
        else:
            pem = spec.public_key if spec.public_key is not None else spec.public_key_file.read_text()  # type: ignore[union-attr]
            self.key = jwt.algorithms.get_default_algorithms()[spec.algorithm].prepare_key(pem)


class Authenticator:
    """Turns presented credentials into a :class:`Principal` (see the module docstring)."""

    def __init__(self, settings: AuthSettings) -> None:
        self._settings = settings
        self._keys = {
            key.sha256: _limited(f"api-key:{key.name}", _scenes(key.scenes), key.admin, key.rate_limit)
            for key in settings.api_keys
        }
        self._presented: dict[str, Principal] = {}
        """Keys presented that matched, by the key itself (bounded by the configured keys)."""
        self._jwt_keys = [_JwtKey(spec) for spec in settings.jwt.keys]
        self._tokens: OrderedDict[str, tuple[Principal, float]] = OrderedDict()

    def authenticate(self, api_key: str | None, bearer: str | None) -> Principal:
        """The caller presenting ``api_key`` or ``bearer`` (UNAUTHENTICATED when neither is valid)."""
        if api_key:
            principal = self._presented.get(api_key)
            if principal is not None:
                return principal
            principal = self._keys.get(hash_api_key(api_key))
            if principal is None:
                raise Unauthenticated("the API key is not valid")
            if len(self._presented) < len(self._keys):
                self._presented[api_key] = principal
            return principal
        if bearer:
            return self._verify(bearer)
        if not self._settings.required:
            return ANONYMOUS
        raise Unauthenticated("credentials required: send an x-api-key or an authorization: Bearer <jwt> header")

    @staticmethod
    def authorize(principal: Principal, scene: str) -> None:
        """PERMISSION_DENIED unless ``principal`` may use ``scene``."""
        if not principal.allows(scene):
            raise PermissionDenied(f"{principal.name} may not use scene '{scene}'")

    @staticmethod
    def authorize_admin(principal: Principal) -> None:
        """PERMISSION_DENIED unless ``principal`` may administer scenes and experiments."""
        if not principal.admin:
            raise PermissionDenied(f"{principal.name} may not administer scenes and experiments")

    def _verify(self, token: str) -> Principal:
        now = time.time()
        cached = self._tokens.get(token)
        if cached is not None:
            principal, expires = cached
            if now < expires:
                self._tokens.move_to_end(token)
                return principal
            del self._tokens[token]
        if not self._jwt_keys:
            raise Unauthenticated("bearer tokens are not accepted by this service")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"the bearer token is malformed: {exc}") from None
        kid = header.get("kid")
        candidates = [
            k for k in self._jwt_keys if k.algorithm == header.get("alg") and (kid is None or k.kid in (None, kid))
        ]
        if not candidates:
            raise Unauthenticated(f"no key verifies tokens with alg {header.get('alg')!r} and kid {kid!r}")
        error: jwt.InvalidTokenError | None = None
        for key in candidates:
            try:
                claims = self._decode(token, key)
            except jwt.InvalidSignatureError as exc:
                error = exc
                continue
            except jwt.InvalidTokenError as exc:
                raise Unauthenticated(f"the bearer token is not valid: {exc}") from None
            return self._remember(token, claims)
        raise Unauthenticated(f"the bearer token is not valid: {error}")

    def _decode(self, token: str, key: _JwtKey) -> dict[str, Any]:
        cfg = self._settings.jwt
        options: dict[str, Any] = {"require": ["exp", "sub"], "verify_iss": cfg.issuer is not None}
        return jwt.decode(  # type: ignore[no-any-return]
            token,
            key.key,
            algorithms=[key.algorithm],
            audience=cfg.audience,
            issuer=cfg.issuer,
            leeway=cfg.leeway_s,
            options=options,
        )

    def _remember(self, token: str, claims: dict[str, Any]) -> Principal:
        cfg = self._settings.jwt
        principal = _limited(
            f"jwt:{claims['sub']}",
            _scenes(_claim_list(claims.get(cfg.scenes_claim))),
            cfg.admin_role in _claim_list(claims.get(cfg.admin_claim)),
            cfg.rate_limit,
        )
        if cfg.cache_size > 0:
            self._tokens[token] = (principal, float(claims["exp"]) + cfg.leeway_s)
            if len(self._tokens) > cfg.cache_size:
                self._tokens.popitem(last=False)
        return principal
