"""JWT bearer tokens (PyJWT), issued by the server or by an external identity provider.

The rules that keep forged tokens out (RFC 8725): the algorithm comes from configuration
and is never read from the token; HMAC and public-key algorithms are never mixed; ``exp``,
``iat`` and ``sub`` are required; issuer and audience are checked when configured;
lifetimes longer than the policy are refused; keys come only from the local
configuration (``jku``/``x5u``/``jwk`` headers are ignored, an unknown ``kid`` is
refused); an HMAC secret shorter than 32 bytes refuses to start.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from jwt import PyJWK, PyJWKSet

from conveyor.auth.principal import ROLES
from conveyor.errors import AuthenticationError, ConfigurationError

HMAC_ALGORITHMS = ("HS256",)
PUBLIC_KEY_ALGORITHMS = ("RS256", "ES256")
MIN_HMAC_BYTES = 32
MAX_LEEWAY_S = 60


def read_key_material(value: str) -> str:
    """A PEM/JSON string given inline, or ``@path`` to read it from a file."""
    if value.startswith("@"):
        try:
            return Path(value[1:]).read_text()
        except OSError as exc:
            raise ConfigurationError(f"cannot read key file {value[1:]}: {exc}") from exc
    return value


@dataclass(frozen=True)
class TokenPolicy:
    algorithm: str = "HS256"
    issuer: str | None = "conveyor"
    audience: str | None = "conveyor"
    ttl_s: int = 3600
    max_lifetime_s: int = 86_400
    leeway_s: float = 30.0


@dataclass(frozen=True)
class Claims:
    subject: str
    username: str | None
    roles: frozenset[str]
    expires_at: float
    issued_by_us: bool
    token_id: str | None = None  # the ``jti`` claim: what signing out revokes


class TokenService:
    """Issues (when it holds a signing key) and verifies bearer tokens."""

    def __init__(
        self,
        policy: TokenPolicy,
        *,
        secret: str | None = None,
        private_key: str | None = None,
        public_key: str | None = None,
        jwks: str | None = None,
    ) -> None:
        self.policy = policy
        alg = policy.algorithm
        if alg not in HMAC_ALGORITHMS + PUBLIC_KEY_ALGORITHMS:
            raise ConfigurationError(f"unsupported JWT algorithm {alg!r}")
        if not 0 <= policy.leeway_s <= MAX_LEEWAY_S:
            raise ConfigurationError(f"JWT leeway must be 0-{MAX_LEEWAY_S} seconds")
        if not 60 <= policy.ttl_s <= policy.max_lifetime_s:
            raise ConfigurationError("token ttl must be >= 60 s and <= the maximum lifetime")
        self._jwt = jwt.PyJWT(options={"enforce_minimum_key_length": True})
        self._signing_key: Any = None
        self._verify_key: Any = None
        self._keys_by_kid: dict[str, PyJWK] = {}
        if alg in HMAC_ALGORITHMS:
            if private_key or public_key or jwks:
                raise ConfigurationError("HS256 uses a shared secret, not public/private keys")
            if not secret or len(secret.encode()) < MIN_HMAC_BYTES:
                raise ConfigurationError(
                    f"the JWT secret must be at least {MIN_HMAC_BYTES} bytes for HS256"
                )
            self._signing_key = self._verify_key = secret.encode()
        else:
            if secret:
                raise ConfigurationError(f"{alg} uses keys, not a shared secret")
            if private_key:
                self._signing_key = read_key_material(private_key)
            if public_key:
                self._verify_key = read_key_material(public_key)
            if jwks:
                try:
                    key_set = PyJWKSet.from_json(read_key_material(jwks))
                except (jwt.PyJWTError, json.JSONDecodeError, ValueError) as exc:
                    raise ConfigurationError(f"invalid JWKS: {exc}") from exc
                self._keys_by_kid = {k.key_id: k for k in key_set.keys if k.key_id}
            if self._verify_key is None and not self._keys_by_kid:
                if self._signing_key is None:
                    raise ConfigurationError(f"{alg} needs a public key or a JWKS file")
                self._verify_key = self._public_from_private(self._signing_key)

    @staticmethod
    def _public_from_private(pem: str) -> Any:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        try:
            return load_pem_private_key(pem.encode(), password=None).public_key()
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"invalid private key: {exc}") from exc

    @property
    def can_issue(self) -> bool:
        return self._signing_key is not None

    def issue(
        self, subject: str, *, username: str, roles: list[str], ttl_s: int | None = None
    ) -> tuple[str, int]:
        """A signed token for ``subject`` and how many seconds it is valid."""
        if self._signing_key is None:
            raise ConfigurationError("this server verifies tokens but cannot issue them")
        lifetime = ttl_s or self.policy.ttl_s
        if not 1 <= lifetime <= self.policy.max_lifetime_s:
            raise ConfigurationError("token lifetime beyond the configured maximum")
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": subject,
            "name": username,
            "roles": roles,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "jti": secrets.token_urlsafe(16),
        }
        if self.policy.issuer:
            claims["iss"] = self.policy.issuer
        if self.policy.audience:
            claims["aud"] = self.policy.audience
        token = self._jwt.encode(claims, self._signing_key, algorithm=self.policy.algorithm)
        return token, lifetime

    def verify(self, token: str) -> Claims:
        """Decode and check a token; anything wrong is an :class:`AuthenticationError`."""
        key = self._key_for(token)
        try:
            claims = self._jwt.decode(
                token,
                key,
                algorithms=[self.policy.algorithm],
                audience=self.policy.audience,
                issuer=self.policy.issuer,
                leeway=self.policy.leeway_s,
                options={"require": ["exp", "iat", "sub"], "verify_signature": True},
            )
        except jwt.ExpiredSignatureError:
            raise AuthenticationError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthenticationError("token not valid yet") from None
        except jwt.InvalidAudienceError:
            raise AuthenticationError("token has the wrong audience") from None
        except jwt.InvalidIssuerError:
            raise AuthenticationError("token has the wrong issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthenticationError(f"token lacks the {exc.claim!r} claim") from None
        except jwt.PyJWTError:
            raise AuthenticationError("invalid token") from None
        subject = claims.get("sub")
        issued = claims.get("iat")
        expires = claims.get("exp")
        if not isinstance(subject, str) or not subject:
            raise AuthenticationError("token subject must be a non-empty string")
        if not isinstance(issued, int | float) or not isinstance(expires, int | float):
            raise AuthenticationError("token times must be numbers")
        if expires - issued > self.policy.max_lifetime_s:
            raise AuthenticationError("token lifetime is longer than this server allows")
        roles = claims.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise AuthenticationError("token roles must be a list of strings")
        username = claims.get("name")
        token_id = claims.get("jti")
        return Claims(
            subject=subject,
            username=username if isinstance(username, str) else None,
            roles=frozenset(r for r in roles if r in ROLES),
            expires_at=float(expires),
            issued_by_us=self.can_issue and claims.get("iss", None) == self.policy.issuer,
            token_id=token_id if isinstance(token_id, str) and 0 < len(token_id) <= 64 else None,
        )

    def _key_for(self, token: str) -> Any:
        if not self._keys_by_kid:
            if self._verify_key is None:
                raise AuthenticationError("no key to verify tokens with")
            return self._verify_key
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise AuthenticationError("invalid token") from None
        if not isinstance(kid, str) or kid not in self._keys_by_kid:
            raise AuthenticationError("token signed with an unknown key")
        return self._keys_by_kid[kid]
