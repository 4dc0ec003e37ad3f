"""Bearer tokens: Ed25519-signed JWTs with scopes.

Two issuers sign tokens. The installation's issuer (`issuer.key`, held by the
operator only) signs tokens of any scope. The pilot issuer
(`pilot_issuer.key`, held by the pool, which mints pilot tokens for
frontends) signs pilot tokens only: its tokens name it in the JWT header
(`kid: pilot`), and a verifier refuses any of them that carries a scope but
`pilot`. So the one service users' jobs can reach holds no key that can mint
a user, frontend or admin token. Every service holds both public keys, so
verification is local. Identities always come from the verified token, never
from a body.

The `metrics` scope reads `GET /metrics` of each service and nothing else
(glidewms/metrics.py): what a Prometheus scrapes with.

The pilot scope is exclusive: a token that carries `pilot` beside `user` or
`frontend` is not a pilot token (`Identity.has("pilot")` is false for it,
unless it is admin), and neither issuer signs one.

A pilot sends the same token with every call (hundreds a second on a busy
pool) and an Ed25519 signature check costs ~0.2 ms, so a verifier remembers
the tokens it has verified, keyed by their exact text: a token already seen
is accepted without a new signature check, but only while its `exp` is in
the future (the one check that can change for an unchanged token: the
signature, issuer, `nbf` and `iat` of the same bytes verify the same way
forever). There is no revocation list: a token is good until it expires.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PrivateKey, Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ISSUER = "glidewms"
SCOPES = ("user", "pilot", "frontend", "admin", "metrics")  # metrics: read /metrics only
PILOT_KID = "pilot"  # the JWT `kid` of tokens the pilot issuer signs
MAIN_KID = "main"  # the installation's issuer (tokens without a `kid` are its too)
KEY_NAMES = {MAIN_KID: "issuer", PILOT_KID: "pilot_issuer"}  # file stems in keys/


class TokenError(Exception):
    """A token is missing, malformed, expired, or not signed by our issuer."""


@dataclass(frozen=True)
class Identity:
    """Who is calling, as the token says."""

    subject: str
    scopes: frozenset[str]
    claims: dict = field(default_factory=dict, compare=False, hash=False)

    def has(self, *wanted: str) -> bool:
        """Admin, or one of `wanted`; `pilot` counts only in a pure pilot token."""
        if "admin" in self.scopes:
            return True
        return any(s in self.scopes and (s != "pilot" or self.is_pilot) for s in wanted)

    @property
    def is_pilot(self) -> bool:
        """The token carries the pilot scope and nothing but it."""
        return self.scopes == _PILOT_ONLY

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes


_PILOT_ONLY = frozenset({"pilot"})


def generate_keypair(directory: Path, name: str = "issuer") -> tuple[Path, Path]:
    """Create `<name>.key` (0600) and `<name>.pub` in `directory` unless present
    (`name` "pilot_issuer": the pilot issuer's pair)."""
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / f"{name}.key", directory / f"{name}.pub"
    if private_path.exists() and public_path.exists():
        return private_path, public_path
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private_path, public_path


def write_secret(path: Path, text: str) -> Path:
    """Write a secret (a token) readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text.strip() + "\n")
    return path


class TokenIssuer:
    """Signs tokens with one issuer's private key.

    `kid` names the issuer in the token's header: None for the installation's
    issuer, `PILOT_KID` for the pilot issuer, which signs only pilot tokens."""

    def __init__(self, private_key_pem: bytes, kid: str | None = None) -> None:
        key = serialization.load_pem_private_key(private_key_pem, password=None)
        if not isinstance(key, (Ed25519PrivateKey, Ed448PrivateKey)):
            raise ValueError(f"the issuer key must be an EdDSA key, not {type(key).__name__}")
        if kid not in (None, MAIN_KID, PILOT_KID):
            raise ValueError(f"unknown issuer {kid!r}; expected {MAIN_KID} or {PILOT_KID}")
        self._key = key
        self.kid = kid

    @classmethod
    def from_file(cls, path: Path, kid: str | None = None) -> TokenIssuer:
        return cls(Path(path).read_bytes(), kid)

    def issue(
        self,
        subject: str,
        scopes: list[str] | tuple[str, ...],
        lifetime: float = 3600.0,
        **extra: str,
    ) -> str:
        wanted = frozenset(scopes)
        unknown = wanted - set(SCOPES)
        if unknown:
            raise ValueError(f"unknown scope(s) {sorted(unknown)}; expected some of {SCOPES}")
        if self.kid == PILOT_KID and wanted != _PILOT_ONLY:
            raise ValueError("the pilot issuer signs tokens of the pilot scope only")
        if "pilot" in wanted and wanted - {"pilot", "admin"}:
            raise ValueError("the pilot scope is exclusive: a pilot token carries no other scope")
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "scope": " ".join(scopes),
            "iat": now,
            "exp": now + int(lifetime),
            "jti": uuid.uuid4().hex,
            **extra,
        }
        headers = {"kid": self.kid} if self.kid else None
        return jwt.encode(claims, self._key, algorithm="EdDSA", headers=headers)


class TokenVerifier:
    """Checks signature, issuer and expiry; returns the caller's identity.

    Verified tokens are remembered (at most `cache_size`, least recently used
    first out) until they expire: see the module docstring. `clock` gives
    the time expiry is judged by, cached or not (tests move it)."""

    def __init__(
        self,
        public_key_pem: bytes,
        cache_size: int = 4096,
        clock: Callable[[], float] = time.time,
        *,
        pilot_public_key_pem: bytes | None = None,
    ) -> None:
        self._keys = {MAIN_KID: _public_key(public_key_pem)}
        if pilot_public_key_pem is not None:
            self._keys[PILOT_KID] = _public_key(pilot_public_key_pem)
        self._clock = clock
        self._cache_size = cache_size
        self._verified: OrderedDict[str, Identity] = OrderedDict()
        self._cache_lock = threading.Lock()  # services verify from several threads

    @classmethod
    def from_file(cls, path: Path, pilot_path: Path | None = None) -> TokenVerifier:
        """The installation's public key, and the pilot issuer's if given (without
        it, tokens of the pilot issuer are refused)."""
        pilot = Path(pilot_path).read_bytes() if pilot_path is not None else None
        return cls(Path(path).read_bytes(), pilot_public_key_pem=pilot)

    def verify(self, token: str) -> Identity:
        now = self._clock()
        with self._cache_lock:
            known = self._verified.get(token)
            if known is not None:
                if now < known.claims["exp"]:
                    self._verified.move_to_end(token)
                    return _copy(known)
                del self._verified[token]  # expired: verified afresh, refused below
        identity = self._verify(token, now)
        if self._cache_size > 0:
            with self._cache_lock:
                self._verified[token] = identity
                while len(self._verified) > self._cache_size:
                    self._verified.popitem(last=False)
        return _copy(identity)

    def _verify(self, token: str, now: float) -> Identity:
        try:
            kid = jwt.get_unverified_header(token).get("kid", MAIN_KID)
        except jwt.PyJWTError as exc:
            raise TokenError(str(exc)) from exc
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise TokenError(f"unknown issuer key id {kid!r}")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=["EdDSA"],
                issuer=ISSUER,
                # expiry is judged below, by the same clock as remembered tokens
                options={"require": ["exp", "iss", "sub"], "verify_exp": False},
            )
        except jwt.PyJWTError as exc:
            raise TokenError(str(exc)) from exc
        exp = claims["exp"]
        if isinstance(exp, bool) or not isinstance(exp, (int, float)):
            raise TokenError("Expiration Time claim (exp) must be a number")
        if not now < exp:
            raise TokenError("Signature has expired")
        scopes = frozenset(str(claims.get("scope", "")).split())
        if kid == PILOT_KID and scopes != _PILOT_ONLY:
            raise TokenError("the pilot issuer signs tokens of the pilot scope only")
        return Identity(subject=str(claims["sub"]), scopes=scopes, claims=claims)


def _public_key(pem: bytes) -> Ed25519PublicKey | Ed448PublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, (Ed25519PublicKey, Ed448PublicKey)):
        raise ValueError(f"the issuer key must be an EdDSA key, not {type(key).__name__}")
    return key


def _copy(identity: Identity) -> Identity:
    """A caller's own Identity: its claims dict is not shared with the cache."""
    return Identity(identity.subject, identity.scopes, dict(identity.claims))
