"""Bearer tokens: Ed25519-signed JWTs with scopes.

One issuer key per installation signs every token; each service holds only the
public key, so verification is local and a compromised factory or frontend cannot
mint tokens. Identities always come from the verified token, never from a body.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

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
        self._key = serialization.load_pem_private_key(private_key_pem, password=None)

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
    """Checks signature, issuer and expiry; returns the caller's identity."""

    def __init__(self, public_key_pem: bytes) -> None:
        self._key = serialization.load_pem_public_key(public_key_pem)

    @classmethod
    def from_file(cls, path: Path) -> TokenVerifier:
        return cls(Path(path).read_bytes())

    def verify(self, token: str) -> Identity:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=["EdDSA"],
                issuer=ISSUER,
                options={"require": ["exp", "iss", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise TokenError(str(exc)) from exc
        scopes = frozenset(str(claims.get("scope", "")).split())
        return Identity(subject=str(claims["sub"]), scopes=scopes, claims=claims)
