"""Bearer tokens: Ed25519-signed JWTs with scopes.

One issuer key per installation signs every token; each service holds only the
public key, so verification is local and a compromised factory or frontend cannot
mint tokens. Identities always come from the verified token, never from a body.

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
SCOPES = ("user", "pilot", "frontend", "admin")


class TokenError(Exception):
    """A token is missing, malformed, expired, or not signed by our issuer."""


@dataclass(frozen=True)
class Identity:
    """Who is calling, as the token says."""

    subject: str
    scopes: frozenset[str]
    claims: dict = field(default_factory=dict, compare=False, hash=False)

    def has(self, *wanted: str) -> bool:
        return "admin" in self.scopes or bool(self.scopes.intersection(wanted))

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes


def generate_keypair(directory: Path) -> tuple[Path, Path]:
    """Create `issuer.key` (0600) and `issuer.pub` in `directory` unless present."""
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / "issuer.key", directory / "issuer.pub"
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
    """Signs tokens with the installation's private key."""

    def __init__(self, private_key_pem: bytes) -> None:
        key = serialization.load_pem_private_key(private_key_pem, password=None)
        if not isinstance(key, (Ed25519PrivateKey, Ed448PrivateKey)):
            raise ValueError(f"the issuer key must be an EdDSA key, not {type(key).__name__}")
        self._key = key

    @classmethod
    def from_file(cls, path: Path) -> TokenIssuer:
        return cls(Path(path).read_bytes())

    def issue(
        self,
        subject: str,
        scopes: list[str] | tuple[str, ...],
        lifetime: float = 3600.0,
        **extra: str,
    ) -> str:
        unknown = set(scopes) - set(SCOPES)
        if unknown:
            raise ValueError(f"unknown scope(s) {sorted(unknown)}; expected some of {SCOPES}")
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
        return jwt.encode(claims, self._key, algorithm="EdDSA")


class TokenVerifier:
    """Checks signature, issuer and expiry; returns the caller's identity.

    Verified tokens are remembered (at most `cache_size`, least recently used
    first out) until they expire: see the module docstring. `clock` gives
    the time expiry is judged by, cached or not (tests move it)."""

    def __init__(
        self, public_key_pem: bytes, cache_size: int = 4096, clock: Callable[[], float] = time.time
    ) -> None:
        key = serialization.load_pem_public_key(public_key_pem)
        if not isinstance(key, (Ed25519PublicKey, Ed448PublicKey)):
            raise ValueError(f"the issuer key must be an EdDSA key, not {type(key).__name__}")
        self._key = key
        self._clock = clock
        self._cache_size = cache_size
        self._verified: OrderedDict[str, Identity] = OrderedDict()
        self._cache_lock = threading.Lock()  # services verify from several threads

    @classmethod
    def from_file(cls, path: Path) -> TokenVerifier:
        return cls(Path(path).read_bytes())

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
            claims = jwt.decode(
                token,
                self._key,
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
        return Identity(subject=str(claims["sub"]), scopes=scopes, claims=claims)


def _copy(identity: Identity) -> Identity:
    """A caller's own Identity: its claims dict is not shared with the cache."""
    return Identity(identity.subject, identity.scopes, dict(identity.claims))
