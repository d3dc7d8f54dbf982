"""JWT bearer tokens: the verifier the access-control middleware asks (docs/SECURITY.md).

Keys are read once, when the app is built (a rotated key takes effect on restart):

- ``jwt_secret`` / ``jwt_secret_file``: an HMAC secret for HS256/HS384/HS512;
- ``jwt_public_key_file``: one PEM public key (or X.509 certificate), RSA or EC (or Ed25519);
- ``jwt_jwks_file``: a JWKS document (``{"keys": [...]}``) on disk; a token's ``kid`` picks
  the key (a token without ``kid`` is accepted only when one key fits its algorithm).

The algorithm comes from the token's header, so it is checked first: it must be in the
allowed list (``jwt_algorithms``, by default what the configured keys can verify; ``none``
is never allowed), and the key is chosen by the algorithm's family. An HS* token is only
ever verified with the HMAC secret and an RS*/ES* token only with a public key, which rules
out the algorithm-confusion attack (a public key used as an HMAC secret).

Claims: ``exp`` (required unless ``jwt_require_exp`` is off), ``nbf`` and ``iat`` honoured,
``aud`` and ``iss`` compared when ``jwt_audience`` / ``jwt_issuer`` are set, all with
``jwt_leeway_s`` of clock skew. A refusal raises :class:`JwtRejected` with a reason for the
log (never the token).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.types import Options

from pytrickle_worker.config import HMAC_ALGORITHMS, WorkerConfig
from pytrickle_worker.core.errors import WorkerError

logger = logging.getLogger(__name__)

__all__ = ["JwtRejected", "JwtVerifier", "looks_like_jwt"]

RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGORITHMS: Mapping[str, str] = {
    "secp256r1": "ES256",
    "secp384r1": "ES384",
    "secp521r1": "ES512",
    "secp256k1": "ES256K",
}
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
#: RFC 7518 section 3.2: an HMAC key at least as long as the hash output.
_HMAC_MIN_BYTES: Mapping[str, int] = {"HS256": 32, "HS384": 48, "HS512": 64}
#: A kid from a token ends up in a log line: keep it short.
_KID_LOG_CHARS = 64


class JwtRejected(Exception):  # noqa: N818 - a refusal, not an error of the worker
    """The token is not accepted; ``reason`` is for the log only."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class VerificationKey:
    key: PublicKey
    algorithms: frozenset[str]
    kid: str | None
    origin: str  # where it came from, for messages


def looks_like_jwt(token: str) -> bool:
    """Three dot-separated parts: worth asking the verifier (the static token never is)."""
    return token.count(".") == 2


def algorithms_for(key: PublicKey) -> frozenset[str]:
    if isinstance(key, rsa.RSAPublicKey):
        return RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        algorithm = _EC_ALGORITHMS.get(key.curve.name)
        return frozenset() if algorithm is None else frozenset({algorithm})
    return frozenset({"EdDSA"})


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise WorkerError(f"cannot read {setting} {path}: {exc}") from None


def load_pem_key(path: Path) -> VerificationKey:
    data = _read(path, "jwt_public_key_file")
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            loaded: object = x509.load_pem_x509_certificate(data).public_key()
        else:
            loaded = load_pem_public_key(data)
    except ValueError as exc:
        hint = " (it holds a private key: give the public one)" if b"PRIVATE KEY" in data else ""
        raise WorkerError(
            f"jwt_public_key_file {path}: not a PEM public key or certificate{hint}: {exc}"
        ) from None
    if not isinstance(
        loaded, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
    ):
        raise WorkerError(
            f"jwt_public_key_file {path}: unsupported key type {type(loaded).__name__} "
            "(RSA, EC or Ed25519)"
        )
    key: PublicKey = loaded
    algorithms = algorithms_for(key)
    if not algorithms:
        raise WorkerError(f"jwt_public_key_file {path}: unsupported EC curve")
    return VerificationKey(key, algorithms, None, f"jwt_public_key_file {path}")


def load_jwks(path: Path) -> list[VerificationKey]:
    try:
        document: object = json.loads(_read(path, "jwt_jwks_file"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WorkerError(f"jwt_jwks_file {path}: not JSON: {exc}") from None
    entries: object = (
        cast(dict[str, object], document).get("keys") if isinstance(document, dict) else None
    )
    if not isinstance(entries, list):
        raise WorkerError(f'jwt_jwks_file {path}: not a JWKS document ({{"keys": [...]}})')
    keys: list[VerificationKey] = []
    for index, entry in enumerate(cast(list[object], entries)):
        where = f"jwt_jwks_file {path}: key {index}"
        if not isinstance(entry, dict):
            raise WorkerError(f"{where}: not a JSON object")
        jwk = cast(dict[str, object], entry)
        kid = jwk.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise WorkerError(f"{where}: kid must be a string")
        where = f"{where} (kid {kid!r})" if kid is not None else where
        if jwk.get("use", "sig") != "sig":
            continue  # an encryption key: not for signatures
        if jwk.get("kty") == "oct":
            raise WorkerError(f"{where}: a symmetric key; put HMAC secrets in jwt_secret_file")
        try:
            parsed = jwt.PyJWK(jwk)
        except jwt.PyJWTError as exc:
            raise WorkerError(f"{where}: {exc}") from None
        if not isinstance(
            parsed.key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
        ):
            raise WorkerError(f"{where}: not a public key")
        key: PublicKey = parsed.key
        algorithms = algorithms_for(key)
        declared = jwk.get("alg")
        if isinstance(declared, str):
            if declared not in algorithms:
                raise WorkerError(f"{where}: alg {declared} does not fit the key type")
            algorithms = frozenset({declared})
        keys.append(VerificationKey(key, algorithms, kid, where))
    if not keys:
        raise WorkerError(f"jwt_jwks_file {path}: no signature keys")
    return keys


class JwtVerifier:
    """Verifies bearer JWTs against the configured keys and claims."""

    def __init__(
        self,
        *,
        secret: bytes | None,
        keys: Iterable[VerificationKey],
        algorithms: Iterable[str] | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        leeway_s: float = 30.0,
        require_exp: bool = True,
    ) -> None:
        self._secret = secret
        self._keys = tuple(keys)
        available = {
            algorithm
            for algorithm in HMAC_ALGORITHMS
            if secret is not None and len(secret) >= _HMAC_MIN_BYTES[algorithm]
        }
        for key in self._keys:
            available |= key.algorithms
        if algorithms is None:
            allowed = frozenset(available)
        else:
            allowed = frozenset(algorithms)
            unusable = sorted(allowed - available)
            if unusable:
                raise WorkerError(
                    f"jwt_algorithms: no configured key can verify {', '.join(unusable)} "
                    f"(the keys allow {', '.join(sorted(available)) or 'nothing'}; an HS384/"
                    "HS512 secret must be at least 48/64 bytes)"
                )
        if not allowed:
            raise WorkerError("JWT: no algorithm left to verify tokens with")
        self.algorithms = allowed
        self._audience = audience
        self._issuer = issuer
        self._leeway_s = leeway_s
        self._require_exp = require_exp

    @classmethod
    def from_config(cls, config: WorkerConfig) -> JwtVerifier | None:
        """None when no JWT key is configured; reads the key files now (raises
        :class:`~pytrickle_worker.core.errors.WorkerError` when one cannot be used)."""
        secret = config.resolved_jwt_secret()
        keys: list[VerificationKey] = []
        if config.jwt_public_key_file is not None:
            keys.append(load_pem_key(config.jwt_public_key_file))
        if config.jwt_jwks_file is not None:
            keys.extend(load_jwks(config.jwt_jwks_file))
        if secret is None and not keys:
            return None
        return cls(
            secret=None if secret is None else secret.get_secret_value().encode("utf-8"),
            keys=keys,
            algorithms=config.jwt_algorithms,
            audience=config.jwt_audience,
            issuer=config.jwt_issuer,
            leeway_s=config.jwt_leeway_s,
            require_exp=config.jwt_require_exp,
        )

    def describe(self) -> str:
        parts = [f"algorithms {', '.join(sorted(self.algorithms))}"]
        if self._audience is not None:
            parts.append(f"audience {self._audience!r}")
        if self._issuer is not None:
            parts.append(f"issuer {self._issuer!r}")
        return "; ".join(parts)

    def _key_for(self, algorithm: str, kid: object) -> PublicKey | bytes:
        if algorithm in HMAC_ALGORITHMS:
            if self._secret is None:  # excluded by the allowed list; kept for safety
                raise JwtRejected(f"no secret for {algorithm}")
            return self._secret
        fitting = [k for k in self._keys if algorithm in k.algorithms]
        if isinstance(kid, str):
            by_kid = [k for k in fitting if k.kid == kid]
            if by_kid:
                return by_kid[0].key
            # A PEM key has no kid: a token naming one may still be meant for it.
            unnamed = [k for k in fitting if k.kid is None]
            if len(unnamed) == 1:
                return unnamed[0].key
            raise JwtRejected(f"no {algorithm} key with kid {kid[:_KID_LOG_CHARS]!r}")
        if len(fitting) == 1:
            return fitting[0].key
        if not fitting:
            raise JwtRejected(f"no key for {algorithm}")
        raise JwtRejected(f"no kid, and {len(fitting)} keys fit {algorithm}")

    @property
    def leeway_s(self) -> float:
        """Clock skew allowed on ``exp``/``nbf``: a token is valid until ``exp + leeway_s``."""
        return self._leeway_s

    def verify(self, token: str) -> dict[str, object]:
        """The token's claims; raises :class:`JwtRejected` when it is not accepted."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise JwtRejected(f"malformed JWT ({_describe(exc)})") from None
        algorithm: object = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self.algorithms:
            shown = algorithm[:16] if isinstance(algorithm, str) else algorithm
            raise JwtRejected(f"JWT algorithm {shown!r} not allowed")
        key = self._key_for(algorithm, header.get("kid"))
        options: Options = {
            "require": ["exp"] if self._require_exp else [],
            "verify_aud": self._audience is not None,
            "verify_iss": self._issuer is not None,
        }
        try:
            claims: dict[str, object] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                options=options,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway_s,
            )
        except jwt.PyJWTError as exc:
            raise JwtRejected(_describe(exc)) from None
        # Issuers that sign access and refresh tokens with one key mark them (fastapi-jwt,
        # which the streaming web backend uses, in "type"): a refresh token, long-lived and
        # meant only for the issuer, must not open the worker.
        kind = claims.get("type")
        if kind is not None and kind != "access":
            shown = kind[:16] if isinstance(kind, str) else type(kind).__name__
            raise JwtRejected(f"JWT type {shown!r} is not an access token")
        return claims


def _describe(exc: Exception) -> str:
    """Why PyJWT refused, in words for the log; PyJWT's messages never quote the token."""
    match exc:
        case jwt.ExpiredSignatureError():
            return "JWT expired"
        case jwt.ImmatureSignatureError():
            return "JWT not yet valid (nbf/iat in the future)"
        case jwt.InvalidAudienceError():
            return "JWT audience wrong"
        case jwt.InvalidIssuerError():
            return "JWT issuer wrong"
        case jwt.InvalidSignatureError():
            return "JWT signature invalid"
        case jwt.MissingRequiredClaimError():
            return f"JWT lacks the {exc.claim} claim"
        case _:
            return f"invalid JWT: {type(exc).__name__}: {str(exc)[:120]}"
